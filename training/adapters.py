"""Adapter kinds: LoRA (peft) and LoCon, LoHa, LoKr, DoRA (lycoris-lora), in the kohya/LyCORIS file layout.

`network: lora` is peft's LoRA on `target_modules` (training/export.py converts it to kohya keys).
The other kinds wrap the UNet (and, with train_text_encoder, the text encoders) with lycoris-lora's
kohya network — the class sd-scripts builds for `--network_module lycoris.kohya` — on the module set
of LyCORIS's `full` preset for SD: every Linear/Conv inside the transformers (attention, ff,
proj_in/out), the resnets (conv1/2, time_emb_proj, conv_shortcut), down/upsamplers, conv_in/out and
the time embedding; CLIP's attention and MLP. LoCon/LoHa/LoKr include the 3×3 convs (conv_dim);
DoRA (LoRA with weight decomposition, `dora_wd`) keeps to linear and 1×1 layers, as LoRA does.

Its state dict already carries sd-scripts' names (`lora_unet_<diffusers path>.hada_w1_a`,
`.lokr_w1`, `.lora_up.weight` + `.dora_scale`, `.alpha`); the export renames only what sd-scripts
names differently: SDXL UNet modules by their SGM path, and the `text_model` level that
transformers 5 dropped from CLIP.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

LYCORIS_KINDS = {"locon": "locon", "loha": "loha", "lokr": "lokr", "dora": "lora"}  # network → LyCORIS algo
UNET_MODULES = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
UNET_NAMES = ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"]
TEXT_ENCODER_MODULES = ["CLIPAttention", "CLIPMLP"]


def conv_dim(config) -> int:
    """Rank of 3×3 conv layers: conv_dim, else rank; 0 (none) for DoRA unless conv_dim is set."""
    if config.conv_dim is not None:
        return config.conv_dim
    return 0 if config.network == "dora" else config.rank


def conv_alpha(config) -> float:
    return float(config.conv_alpha if config.conv_alpha is not None else (conv_dim(config) and config.alpha))


def network_args(config) -> dict[str, str]:
    """The `--network_args` sd-scripts would be given for this run (strings, as it records them)."""
    if config.network == "lora":
        return {}
    args = {"algo": LYCORIS_KINDS[config.network], "preset": "full",
            "conv_dim": str(conv_dim(config)), "conv_alpha": str(conv_alpha(config))}
    if config.network == "dora":
        args["dora_wd"] = "True"
        if not config.dora_wd_on_output:
            args["wd_on_output"] = "False"
    if config.network == "lokr":
        args["factor"] = str(config.lokr_factor)
    return args


def network_metadata(config) -> dict[str, str]:
    """ss_network_module / dim / alpha / args as sd-scripts writes them for this adapter kind."""
    if config.network == "lora":
        return {"ss_network_module": "networks.lora", "ss_network_dim": str(config.rank),
                "ss_network_alpha": str(config.alpha),
                "ss_network_args": json.dumps({"target_modules": config.target_modules})}
    return {"ss_network_module": "lycoris.kohya", "ss_network_dim": str(config.rank),
            "ss_network_alpha": str(config.alpha), "ss_network_args": json.dumps(network_args(config))}


def add_network(config, model, trained: dict[str, torch.nn.Module], device) -> None:
    """Wrap the UNet (and text encoders if trained) with the configured adapter; its modules go into `trained`."""
    if config.network == "lora":
        _add_peft_lora(config, model, trained)
        return
    from lycoris.kohya import LycorisNetworkKohya

    logging.getLogger("LyCORIS").setLevel(logging.WARNING)
    LycorisNetworkKohya.apply_preset({
        "enable_conv": True, "unet_target_module": UNET_MODULES, "unet_target_name": UNET_NAMES,
        "text_encoder_target_module": TEXT_ENCODER_MODULES, "text_encoder_target_name": []})
    encoders = None
    if config.train_text_encoder:  # one encoder: lora_te_*; SDXL's two: lora_te1_*, lora_te2_*
        encoders = model.text_encoders[0] if len(model.text_encoders) == 1 else list(model.text_encoders)
    unet = model.pipeline.unet
    network = LycorisNetworkKohya(
        encoders, unet, multiplier=1.0, lora_dim=config.rank, alpha=config.alpha, conv_lora_dim=conv_dim(config),
        conv_alpha=conv_alpha(config), network_module=LYCORIS_KINDS[config.network],
        weight_decompose=config.network == "dora", wd_on_out=config.dora_wd_on_output, factor=config.lokr_factor,
        warn_on_unmatched=False)
    network.apply_to(encoders, unet, apply_text_encoder=encoders is not None, apply_unet=True)
    trained["unet_lycoris"] = torch.nn.ModuleDict({m.lora_name: m for m in network.unet_loras}).to(device)
    if network.text_encoder_loras:  # its name starts with text_encoder: text_encoder_lr applies
        trained["text_encoder_lycoris"] = torch.nn.ModuleDict({m.lora_name: m for m in network.text_encoder_loras}).to(device)


def _add_peft_lora(config, model, trained: dict[str, torch.nn.Module]) -> None:
    from peft import LoraConfig

    model.pipeline.unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.alpha, init_lora_weights="gaussian",
                                               target_modules=config.target_modules))
    if config.train_text_encoder:
        from peft import inject_adapter_in_model  # transformers' add_adapter wants a newer peft

        for index, encoder in enumerate(model.text_encoders):
            inject_adapter_in_model(LoraConfig(r=config.rank, lora_alpha=config.alpha, init_lora_weights="gaussian",
                                               target_modules=config.text_encoder_target_modules), encoder)
            trained[f"text_encoder{'_2' if index else ''}"] = encoder


def is_lycoris(trained: dict[str, torch.nn.Module]) -> bool:
    return "unet_lycoris" in trained


def kohya_state(trained: dict[str, torch.nn.Module], family: str, unet) -> dict[str, torch.Tensor]:
    """The LyCORIS modules' weights under sd-scripts' key names, fp16 (alpha as a float32 scalar)."""
    from training.ldm_keys import unet_key_to_ldm

    paths = {"lora_unet_" + name.replace(".", "_"): name for name, _ in unet.named_modules() if name}
    out = {}
    for part in ("unet_lycoris", "text_encoder_lycoris"):
        for key, value in trained[part].state_dict().items() if part in trained else ():
            module, _, suffix = key.partition(".")
            if family == "sdxl" and module.startswith("lora_unet_"):
                module = "lora_unet_" + unet_key_to_ldm(paths[module] + ".weight", unet.config)[: -len(".weight")] \
                    .replace(".", "_")
            elif module.startswith("lora_te") and "_text_model_" not in module:
                head, _, rest = module.partition("_te")
                number, _, name = rest.partition("_")
                module = f"{head}_te{number}_text_model_{name}"  # transformers 5 flattens CLIPTextModel
            value = value.detach().cpu()
            out[f"{module}.{suffix}"] = value.float() if suffix == "alpha" else value.to(torch.float16).contiguous()
    return out


def save_network_kohya(path: Path, trained: dict[str, torch.nn.Module], family: str, unet,
                       metadata: dict[str, str]) -> dict[str, str]:
    """Write the LyCORIS-layout file (atomically) and return {path, sha256}."""
    from safetensors.torch import save_file

    from training.export import sha256_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    from training.metadata import lora_hashes

    state = kohya_state(trained, family, unet)
    save_file(state, str(tmp), metadata={**metadata, **lora_hashes(state, metadata)})  # sshs_* as sd-scripts
    tmp.chmod(0o644)
    tmp.replace(path)
    return {"path": str(path), "sha256": sha256_file(path)}


def save_dora_peft(folder: Path, trained: dict[str, torch.nn.Module], pipe) -> dict[str, str]:
    """DoRA in diffusers' peft layout (`lora_A`/`lora_B`/`lora_magnitude_vector`), which `load_lora_weights(folder)`
    applies with the magnitude — diffusers drops `dora_scale` from kohya files. alpha/rank is folded into lora_B."""
    from training.export import sha256_folder

    encoders = [e for e in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)) if e is not None]
    where = {"lora_unet_" + p.replace(".", "_"): ("unet", p) for p, _ in pipe.unet.named_modules() if p}
    for index, encoder in enumerate(encoders):  # LyCORIS's own names: lora_te_<path>, SDXL lora_te1_/lora_te2_
        prefix = f"lora_te{index + 1}_" if len(encoders) > 1 else "lora_te_"
        component = "text_encoder_2" if index else "text_encoder"
        where.update({prefix + p.replace(".", "_"): (component, p) for p, _ in encoder.named_modules() if p})
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for part in ("unet_lycoris", "text_encoder_lycoris"):
        for name, module in (trained[part].items() if part in trained else ()):
            component, path = where[name]
            down, up = module.lora_down.weight.detach().float().cpu(), module.lora_up.weight.detach().float().cpu()
            magnitude = module.dora_scale.detach().float().cpu()
            layers = groups.setdefault(component, {})
            layers[f"{path}.lora_A.weight"] = down.contiguous()
            layers[f"{path}.lora_B.weight"] = (up * float(module.alpha) / down.shape[0]).contiguous()
            # peft: (out,) for linear, (1, out, 1, 1) for conv; transformers' CLIP wants the `.weight` form
            key = f"{path}.lora_magnitude_vector" + (".weight" if component != "unet" else "")
            layers[key] = (magnitude.flatten() if down.ndim == 2 else magnitude.reshape(1, -1, 1, 1)).contiguous()
    folder = Path(folder)
    type(pipe).save_lora_weights(folder, safe_serialization=True, unet_lora_layers=groups.get("unet"),
                                 **{f"{c}_lora_layers": groups[c] for c in ("text_encoder", "text_encoder_2") if c in groups})
    return {"path": str(folder), "sha256": sha256_folder(folder)}


def pipeline_modules(pipe) -> dict[str, torch.nn.Module]:
    """{kohya module name → the pipeline's layer}: UNet (SD: diffusers paths, SDXL: SGM paths) and text encoders."""
    from training.ldm_keys import unet_key_to_ldm

    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    modules = {}
    for path, module in pipe.unet.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            try:
                name = unet_key_to_ldm(path + ".weight", pipe.unet.config)[: -len(".weight")] if sdxl else path
            except KeyError:  # a layer sd-scripts never targets (e.g. SDXL's add_embedding)
                continue
            modules["lora_unet_" + name.replace(".", "_")] = module
    encoders = [e for e in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)) if e is not None]
    for index, encoder in enumerate(encoders):
        prefix = f"lora_te{index + 1}_" if len(encoders) > 1 else "lora_te_"
        for path, module in encoder.named_modules():
            if isinstance(module, torch.nn.Linear):
                path = path if path.startswith("text_model.") else "text_model." + path  # transformers 5 flattens CLIP
                modules[prefix + path.replace(".", "_")] = module
    return modules


def is_lycoris_file(path: Path | str) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return (handle.metadata() or {}).get("ss_network_module") == "lycoris.kohya"


@torch.no_grad()
def merge_into_pipeline(pipe, path: Path | str, strength: float = 1.0) -> int:
    """Merge a kohya/LyCORIS file into the pipeline's weights in place (what diffusers cannot load: LoHa, LoKr,
    DoRA's magnitude); returns the number of layers changed. The math is training/merge.py's."""
    from safetensors.torch import load_file

    from training.merge import ADAPTER_KEYS, MergeError, adapter_delta, apply_adapter

    state = load_file(str(path))
    layers = pipeline_modules(pipe)
    names = sorted({k.partition(".")[0] for k in state if k.partition(".")[2] in ADAPTER_KEYS})
    if missing := [n for n in names if n not in layers]:
        raise MergeError(f"{path}: {len(missing)} modules have no layer in this pipeline (e.g. {missing[0]})")
    for name in names:
        weight = layers[name].weight
        delta = adapter_delta(state, name, weight.shape).to(weight.device)
        dora = state.get(f"{name}.dora_scale")
        weight.copy_(apply_adapter(weight, delta, strength, None if dora is None else dora.to(weight.device)))
    return len(names)


def load_adapter(pipe, path: Path | str, scale: float = 1.0, adapter_name: str = "trained") -> None:
    """A trained adapter file into a pipeline: LoRA through diffusers (an adapter), LyCORIS kinds merged in place."""
    if is_lycoris_file(path):
        merge_into_pipeline(pipe, path, scale)
        return
    pipe.load_lora_weights(str(path), adapter_name=adapter_name)
    pipe.set_adapters([adapter_name], adapter_weights=[scale])


def describe(state: dict[str, Any]) -> dict[str, int]:
    """{suffix: count} of a kohya-layout state dict (e.g. {"hada_w1_a": 95, "alpha": 95}); for notes and tests."""
    counts: dict[str, int] = {}
    for key in state:
        suffix = key.partition(".")[2]
        counts[suffix] = counts.get(suffix, 0) + 1
    return counts
