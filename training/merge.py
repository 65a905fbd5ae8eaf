"""Checkpoint merging: block-weighted merge of two SD checkpoints, and a LoRA or LyCORIS adapter merged into one.

Block-weighted (as the widely shared `merge_unet_blocks.py`, without its substring bug): each weight
is the second model's share, `A·(1−w) + B·w`, for UNet keys under `model.diffusion_model.` in
`input_blocks.N.`, `middle_block.N.`, `output_blocks.N.`, `out.N.`, `time_embed.N.`. A number names
exactly one block (matched on the whole path segment). Other UNet keys take `base_alpha`; keys
outside the UNet (text encoder, VAE) come from the first model; keys only in the second are dropped.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from training.ldm_keys import UNET_PREFIX

BLOCK_GROUPS = ("input_blocks", "middle_block", "output_blocks", "out", "time_embed")
_BLOCK = re.compile(rf"^{re.escape(UNET_PREFIX)}({'|'.join(BLOCK_GROUPS)})\.(\d+)\.")


class MergeError(ValueError):
    """The inputs cannot be merged; the message says which key or option and why."""


def parse_block_weights(text: str | None, option: str) -> dict[int, float]:
    """`"0:0.5, 1:0.25"` → {0: 0.5, 1: 0.25}; an unreadable entry fails naming the option."""
    weights: dict[int, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        match = re.fullmatch(r"\s*(\d+)\s*:\s*([-+0-9.eE]+)\s*", part)
        if not match:
            raise MergeError(f"--{option}: {part.strip()!r} is not BLOCK:WEIGHT (e.g. \"0:0.5, 1:0.3\")")
        weights[int(match[1])] = float(match[2])
    return weights


def block_of(key: str) -> tuple[str, int] | None:
    """("input_blocks", 1) for `model.diffusion_model.input_blocks.1.…`; None outside the named blocks."""
    match = _BLOCK.match(key)
    return (match[1], int(match[2])) if match else None


def load_checkpoint_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or a .ckpt/.pt (torch.load with weights_only=True; `state_dict` unwrapped)."""
    from store.registry import load_state_dict

    path = Path(path)
    if not path.exists():
        raise MergeError(f"{path}: no such file")
    state = load_state_dict(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def save_checkpoint_file(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Format from the file name: .safetensors, or .ckpt/.pt (a {"state_dict": ...} pickle of tensors only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    state = {k: v.contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(tmp), metadata=metadata)
    elif path.suffix in (".ckpt", ".pt", ".pth"):
        torch.save({"state_dict": state}, tmp)
    else:
        raise MergeError(f"{path}: unknown checkpoint format (use .safetensors or .ckpt)")
    tmp.replace(path)


def merge_block_weighted(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                         weights: dict[str, dict[int, float]], base_alpha: float = 0.0
                         ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Merge B into A per block; returns (merged state, summary of which keys took which weight)."""
    unet_a = sorted(k for k in a if k.startswith(UNET_PREFIX))
    if not unet_a:
        raise MergeError(f"the first checkpoint has no UNet keys ({UNET_PREFIX}*): is it an SD checkpoint?")
    present: dict[str, set[int]] = defaultdict(set)
    for key in unet_a:
        if block := block_of(key):
            present[block[0]].add(block[1])
    for group, named in weights.items():
        if group not in BLOCK_GROUPS:
            raise MergeError(f"unknown block group {group!r} (use {', '.join(BLOCK_GROUPS)})")
        if missing := sorted(set(named) - present[group]):
            have = sorted(present[group])
            raise MergeError(f"--{group}: block {missing[0]} does not exist; this UNet's {group} are "
                             f"{have[0]}–{have[-1]}" if have else f"--{group}: this UNet has no {group}")
    only_a = [k for k in unet_a if k not in b]
    mismatched = [k for k in unet_a if k in b and b[k].shape != a[k].shape]
    if only_a or mismatched:
        detail = (f"{len(only_a)} UNet keys missing in the second (e.g. {only_a[0]})" if only_a else
                  f"{len(mismatched)} UNet keys differ in shape (e.g. {mismatched[0]}: "
                  f"{tuple(a[mismatched[0]].shape)} vs {tuple(b[mismatched[0]].shape)})")
        raise MergeError(f"the two checkpoints' UNets do not match: {detail} — different model families?")

    merged: dict[str, torch.Tensor] = {}
    blocks: dict[str, dict[str, Any]] = {}
    counts = {"base_alpha_keys": 0, "from_first": 0, "dropped_from_second": 0}
    for key, value in a.items():
        if not key.startswith(UNET_PREFIX):
            merged[key] = value
            counts["from_first"] += 1
            continue
        block = block_of(key)
        if block and block[1] in weights.get(block[0], {}):
            w = weights[block[0]][block[1]]
            entry = blocks.setdefault(f"{block[0]}.{block[1]}", {"weight": w, "keys": 0})
            entry["keys"] += 1
        else:
            w = base_alpha
            counts["base_alpha_keys"] += 1
        if value.is_floating_point():
            merged[key] = (value.float() * (1 - w) + b[key].float() * w).to(value.dtype)
        else:
            merged[key] = value  # integer buffers (e.g. position ids) are not interpolated
    counts["dropped_from_second"] = sum(1 for k in b if k not in a)
    summary = {"blocks": dict(sorted(blocks.items())), "base_alpha": base_alpha, **counts, "keys": len(merged)}
    return merged, summary


def _ldm_to_diffusers_unet(keys: list[str]) -> dict[str, str]:
    """{diffusers UNet key → LDM key}, through diffusers' own LDM converter (the UNet layout read from the keys)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet_keys = [k for k in keys if k.startswith(UNET_PREFIX)]
    levels = 1 + len({m[1] for k in unet_keys if (m := re.search(r"input_blocks\.(\d+)\.0\.op\.", k))})
    outputs = len({int(m[1]) for k in unet_keys if (m := re.search(r"output_blocks\.(\d+)\.", k))})
    config = {"layers_per_block": outputs // levels - 1}
    if any(".label_emb." in k for k in unet_keys):
        config["addition_embed_type"] = "text_time"
    probe = {k: torch.tensor(i) for i, k in enumerate(unet_keys)}
    converted = convert_ldm_unet_checkpoint(probe, config)
    return {d: unet_keys[int(t)] for d, t in converted.items()}


def kohya_targets(keys: list[str]) -> dict[str, str]:
    """{kohya LoRA module name (`lora_unet_…`, `lora_te_…`/`lora_te1_…`) → LDM weight key} for a checkpoint."""
    targets = {}
    for diffusers_key, ldm_key in _ldm_to_diffusers_unet(keys).items():
        if diffusers_key.endswith(".weight"):
            targets["lora_unet_" + diffusers_key[: -len(".weight")].replace(".", "_")] = ldm_key
            # sd-scripts names SDXL modules by their SGM path: lora_unet_input_blocks_4_1_…
            targets["lora_unet_" + ldm_key[len(UNET_PREFIX): -len(".weight")].replace(".", "_")] = ldm_key
    for prefix, name in (("cond_stage_model.transformer.", "lora_te_"), ("conditioner.embedders.0.transformer.", "lora_te1_")):
        for key in keys:
            if key.startswith(prefix) and key.endswith(".weight"):
                module = key[len(prefix): -len(".weight")]
                if not module.startswith("text_model."):
                    module = "text_model." + module
                targets[name + module.replace(".", "_")] = key
                if name == "lora_te_":
                    targets["lora_te1_" + module.replace(".", "_")] = key  # diffusers-style name for SD 1.x
    return targets


def lora_delta(down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """up·down for linear and 1×1 conv layers; 3×3 convs through a conv2d of down by up (as kohya)."""
    down, up = down.float(), up.float()
    if down.ndim == 2:
        return up @ down
    if down.shape[2:] == (1, 1):
        return (up.squeeze(3).squeeze(2) @ down.squeeze(3).squeeze(2))[:, :, None, None]
    return torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)


ADAPTER_KEYS = {"lora_down.weight": "lora", "hada_w1_a": "loha", "lokr_w1": "lokr", "lokr_w1_a": "lokr"}
_TUCKER = ("lora_mid.weight", "hada_t1", "hada_t2", "lokr_t2")


def _factor(lora: dict[str, torch.Tensor], module: str, name: str) -> tuple[torch.Tensor, int | None]:
    """A LoKr factor: the full matrix `lokr_wN`, or `lokr_wN_a`·`lokr_wN_b` (then its rank, for the alpha scale)."""
    if f"{module}.{name}" in lora:
        return lora[f"{module}.{name}"].float(), None
    a, b = lora[f"{module}.{name}_a"].float(), lora[f"{module}.{name}_b"].float()
    return a @ b.flatten(1), b.shape[0]


def adapter_delta(lora: dict[str, torch.Tensor], module: str, shape: torch.Size) -> torch.Tensor:
    """ΔW of one module, alpha scale included: LoRA/LoCon up·down, LoHa (w1a·w1b)⊙(w2a·w2b), LoKr w1⊗w2."""
    if any(f"{module}.{t}" in lora for t in _TUCKER):
        raise MergeError(f"{module}: Tucker-decomposed (use_tucker) conv weights cannot be merged yet")
    alpha = lora.get(f"{module}.alpha")
    if f"{module}.lora_down.weight" in lora:
        down = lora[f"{module}.lora_down.weight"]
        delta, rank = lora_delta(down, lora[f"{module}.lora_up.weight"]), down.shape[0]
    elif f"{module}.hada_w1_a" in lora:
        w1 = lora[f"{module}.hada_w1_a"].float() @ lora[f"{module}.hada_w1_b"].float().flatten(1)
        w2 = lora[f"{module}.hada_w2_a"].float() @ lora[f"{module}.hada_w2_b"].float().flatten(1)
        delta, rank = w1 * w2, lora[f"{module}.hada_w1_b"].shape[0]
    else:
        (w1, rank1), (w2, rank2) = _factor(lora, module, "lokr_w1"), _factor(lora, module, "lokr_w2")
        delta, rank = torch.kron(w1.flatten(1), w2.flatten(1)), rank2 or rank1  # no rank: both full, scale 1
        if rank is None:
            alpha = None
    scale = float(alpha) / rank if alpha is not None and rank else 1.0
    return scale * delta.reshape(shape)


def apply_adapter(weight: torch.Tensor, delta: torch.Tensor, strength: float,
                  dora_scale: torch.Tensor | None = None) -> torch.Tensor:
    """W + strength·ΔW; with DoRA's magnitude m: W + strength·(m·(W+ΔW)/‖W+ΔW‖ − W).

    The norm is per output channel when m has one entry per output (LyCORIS `wd_on_output`, peft), else per
    input channel (m shaped (1, in, …)), as ComfyUI tells the two apart.
    """
    w = weight.float()
    if dora_scale is None:
        return (w + strength * delta).to(weight.dtype)
    combined = w + delta
    if dora_scale.shape[0] == w.shape[0] and dora_scale.numel() == w.shape[0]:
        norm = combined.flatten(1).norm(dim=1).reshape(-1, *[1] * (w.ndim - 1))
    else:
        norm = combined.transpose(0, 1).flatten(1).norm(dim=1).reshape(1, -1, *[1] * (w.ndim - 2))
    decomposed = dora_scale.float().reshape(norm.shape) * combined / norm
    return (w + strength * (decomposed - w)).to(weight.dtype)


def merge_lora(checkpoint: dict[str, torch.Tensor], lora: dict[str, torch.Tensor], strength: float = 1.0
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Merge a kohya/LyCORIS-layout adapter (LoRA, LoCon, LoHa, LoKr, DoRA) into a checkpoint; returns (state, summary)."""
    targets = kohya_targets(list(checkpoint))
    kinds = {}
    for key in lora:
        module, _, suffix = key.partition(".")
        if suffix in ADAPTER_KEYS:
            kinds[module] = ADAPTER_KEYS[suffix] + ("+dora" if f"{module}.dora_scale" in lora else "")
    if not kinds:
        raise MergeError("the file has no `*.lora_down.weight`, `*.hada_w1_a` or `*.lokr_w1` keys: "
                         "not a kohya-layout LoRA or LyCORIS file")
    merged = dict(checkpoint)
    modules = sorted(kinds)
    unmatched = [m for m in modules if m not in targets]
    if unmatched:
        raise MergeError(f"{len(unmatched)} of {len(modules)} LoRA modules have no layer in the checkpoint "
                         f"(e.g. {unmatched[0]}): was the LoRA trained on another model family?")
    for module in modules:
        key = targets[module]
        weight = merged[key]
        merged[key] = apply_adapter(weight, adapter_delta(lora, module, weight.shape), strength,
                                    lora.get(f"{module}.dora_scale"))
    counts: dict[str, int] = {}
    for kind in kinds.values():
        counts[kind] = counts.get(kind, 0) + 1
    return merged, {"modules": len(modules), "strength": strength, "kinds": counts}
