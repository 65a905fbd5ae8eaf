"""Diffusers ↔ original (LDM / CompVis) key names for SD 1.x/2.x UNet, VAE and CLIP text encoder.

The LDM layout is what single-file checkpoints, AUTOMATIC1111 and ComfyUI use:
`model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE), `cond_stage_model.transformer.*`
(CLIP text encoder). Loading goes through diffusers' own `from_single_file`; this module holds the
other direction (diffusers → LDM), derived from the UNet config so any block layout maps.
"""

from __future__ import annotations

import re
from typing import Any

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."

_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
           ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
_VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _resnet(rest: str) -> str:
    for new, old in _RESNET:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def unet_key_to_ldm(key: str, config: dict[str, Any]) -> str:
    """A diffusers UNet2DConditionModel key → its LDM name (without the `model.diffusion_model.` prefix)."""
    per = int(config["layers_per_block"]) + 1
    module, _, param = key.rpartition(".")
    if module in _UNET_FIXED:
        return f"{_UNET_FIXED[module]}.{param}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + i * per + j
        return f"input_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * per}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = i * per + j
        return f"output_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        i = int(m[1])
        has_attention = "CrossAttn" in config["up_block_types"][i]
        return f"output_blocks.{i * per + per - 1}.{2 if has_attention else 1}.conv.{m[2]}"
    raise KeyError(f"UNet key {key!r} has no LDM name")


def vae_key_to_ldm(key: str, config: dict[str, Any]) -> str:
    """A diffusers AutoencoderKL key → its LDM name (without the `first_stage_model.` prefix)."""
    n_up = len(config["up_block_types"])
    key = key.replace("conv_norm_out", "norm_out")
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        rest = m[2]
        for new, old in _VAE_ATTN:
            if rest.startswith(new + "."):
                rest = old + rest[len(new):]
        return f"{m[1]}.mid.attn_1.{rest}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
    return key  # conv_in, conv_out, norm_out, quant_conv, post_quant_conv keep their names


def vae_state_to_ldm(state: dict[str, Any], up_blocks: int) -> dict[str, Any]:
    """diffusers AutoencoderKL tensors → `first_stage_model.*` tensors (what a single-file checkpoint holds)."""
    out = {}
    for key, value in state.items():
        ldm = vae_key_to_ldm(key, {"up_block_types": [None] * up_blocks})
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM stores attention projections as 1×1 convs
        out[VAE_PREFIX + ldm] = value
    return out


def pipeline_to_ldm(unet, vae, text_encoder) -> dict[str, Any]:
    """One LDM-layout state dict (SD 1.x/2.x with a CLIP text encoder) from diffusers modules."""
    out: dict[str, Any] = {}
    for key, value in unet.state_dict().items():
        out[UNET_PREFIX + unet_key_to_ldm(key, unet.config)] = value
    out.update(vae_state_to_ldm(vae.state_dict(), len(vae.config["up_block_types"])))
    for key, value in text_encoder.state_dict().items():
        # transformers 5 drops the `text_model.` level in state_dict(); the LDM layout keeps it
        if not key.startswith(("text_model.", "text_projection")):
            key = "text_model." + key
        out[TEXT_ENCODER_PREFIX + key] = value
    return {k: v.detach().contiguous() for k, v in out.items()}


def diffusers_unet_names(config: dict[str, Any], keys) -> dict[str, str]:
    """{LDM UNet key (with prefix) → diffusers UNet key} for the given diffusers keys."""
    return {UNET_PREFIX + unet_key_to_ldm(k, config): k for k in keys}
