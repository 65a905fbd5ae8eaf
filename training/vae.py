"""Choosing the VAE: a registry name, a diffusers VAE folder, or one `.safetensors`/`.pt` file.

A model without a baked-in VAE decodes to coloured noise, and a better VAE (sd-vae-ft-mse, the
SDXL fp16-fix) changes colours and fine detail, so the VAE is a choice of its own: training
encodes latents with it (the latent cache key holds its hash), samples decode with it, the run
records it, and `atelier merge --vae` bakes it into a single-file checkpoint.

Single files come in two key layouts — diffusers' (`encoder.down_blocks.…`) and the original
LDM one (`encoder.down.…`, bare or under `first_stage_model.`/`vae.`); both load, the LDM one
through diffusers' own converter, with the base model's VAE config (scaling factor included).
Pickled files load with torch.load(weights_only=True) only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from store.config_files import ConfigError

LDM_PREFIXES = ("first_stage_model.", "vae.")


@dataclass
class ChosenVAE:
    name: str  # what the config said (registry name or path)
    path: Path
    sha256: str
    vae: Any = None  # AutoencoderKL, float32 on CPU

    def record(self) -> dict[str, str]:
        """What a run records: {name, path, sha256}."""
        return {"name": self.name, "path": str(self.path), "sha256": self.sha256}


def resolve_vae(name_or_path: str, field: str = "vae"):
    """Registry name (kind `vae`) or local path → store.registry.ResolvedModel; errors name the field."""
    from store.registry import ModelMissing, load_registry

    try:
        return load_registry().resolve(name_or_path, kind="vae")
    except ModelMissing as error:
        raise ModelMissing(f"{field}: {error}") from None
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"{field}: {error}") from None


def _vae_folder(path: Path) -> Path | None:
    """The folder holding the VAE's config.json (a VAE folder, or a pipeline folder's vae/)."""
    for folder in (path, path / "vae"):
        if (folder / "config.json").exists():
            return folder
    return None


def read_vae_state(path: Path) -> dict[str, torch.Tensor]:
    """The VAE tensors of a single file, prefix stripped, training-only keys (loss, EMA) dropped."""
    from store.registry import load_state_dict

    state = load_state_dict(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for prefix in LDM_PREFIXES:
        if any(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            break
    return {k: v for k, v in tensors.items() if k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv."))}


def latent_channels(path: Path) -> int:
    """Latent channels of a VAE folder or file, read from its config or its decoder's first conv."""
    path = Path(path)
    if path.is_dir():
        folder = _vae_folder(path)
        if folder is None:
            raise ConfigError(f"vae: {path} is a folder without a VAE config.json (nor vae/config.json)")
        return int(json.loads((folder / "config.json").read_text()).get("latent_channels", 4))
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if key == "decoder.conv_in.weight" or key.endswith(tuple(p + "decoder.conv_in.weight" for p in LDM_PREFIXES)):
                    return int(handle.get_slice(key).get_shape()[1])
    else:
        state = read_vae_state(path)
        if "decoder.conv_in.weight" in state:
            return int(state["decoder.conv_in.weight"].shape[1])
    raise ConfigError(f"vae: {path} has no decoder.conv_in.weight: not a VAE file")


def check_channels(channels: int, unet_channels: int, source: str) -> None:
    if channels != unet_channels:
        raise ConfigError(f"vae: {source} has {channels} latent channels but the base model's UNet works on "
                          f"{unet_channels}: this VAE belongs to another model family")


def unet_latent_channels(base_path: Path, config_folder: str | None = None) -> int | None:
    """The base UNet's out_channels (= its latent channels) from the diffusers folder's unet/config.json."""
    folder = Path(base_path) if Path(base_path).is_dir() else Path(config_folder) if config_folder else None
    if folder is None or not (folder / "unet" / "config.json").exists():
        return None
    return int(json.loads((folder / "unet" / "config.json").read_text()).get("out_channels", 4))


def preflight(config, base_path: Path):
    """Resolve config.vae and check its latent channels against the base, before anything runs."""
    resolved = resolve_vae(config.vae)
    unet_channels = unet_latent_channels(base_path, config.base_model_config)
    if unet_channels is not None:
        check_channels(latent_channels(resolved.path), unet_channels, str(resolved.path))
    return resolved


def load_vae(name_or_path: str, base_vae_config: dict[str, Any], unet_channels: int) -> ChosenVAE:
    """An AutoencoderKL from a registry name, folder or single file (float32, CPU), checked against the base."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    resolved = resolve_vae(name_or_path)
    path = Path(resolved.path)
    check_channels(latent_channels(path), unet_channels, str(path))
    if path.is_dir():
        vae = AutoencoderKL.from_pretrained(_vae_folder(path), local_files_only=True, torch_dtype=torch.float32)
    else:
        state = read_vae_state(path)
        vae = AutoencoderKL.from_config(dict(base_vae_config))
        if not any(".down_blocks." in k or ".up_blocks." in k for k in state):  # the LDM layout
            state = convert_ldm_vae_checkpoint(state, vae.config)
        missing, unexpected = vae.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        if missing or unexpected:
            detail = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
            raise ConfigError(f"vae: {path} does not fit the base model's VAE layout ({len(missing)} keys missing, "
                              f"{len(unexpected)} unexpected; {detail})")
    vae.requires_grad_(False)
    return ChosenVAE(name_or_path, path, resolved.sha256, vae.eval())


def swap_vae(pipe, name_or_path: str | None) -> ChosenVAE | None:
    """Put the chosen VAE into a loaded pipeline (None: keep its own); returns what was chosen."""
    if not name_or_path:
        return None
    chosen = load_vae(name_or_path, pipe.vae.config, pipe.unet.config.out_channels)
    pipe.vae = chosen.vae.to(pipe.vae.device)
    return chosen


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL as `first_stage_model.*` tensors."""
    from training.ldm_keys import vae_state_to_ldm

    return {k: v.detach().contiguous() for k, v in vae_state_to_ldm(vae.state_dict(), len(vae.config.up_block_types)).items()}


def bake_vae(checkpoint: dict[str, torch.Tensor], vae_path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Replace a single-file checkpoint's `first_stage_model.*` tensors with a VAE's; returns (state, summary).

    The VAE's dtype follows the checkpoint's (an fp16 checkpoint gets an fp16 VAE).
    """
    import re

    from training.ldm_keys import VAE_PREFIX, vae_state_to_ldm

    old = {k: v for k, v in checkpoint.items() if k.startswith(VAE_PREFIX)}
    if not old:
        raise ConfigError("--vae: the checkpoint has no first_stage_model.* keys: is it an SD single-file checkpoint?")
    vae_path = Path(vae_path)
    if vae_path.is_dir():
        from diffusers import AutoencoderKL

        folder = _vae_folder(vae_path)
        if folder is None:
            raise ConfigError(f"--vae: {vae_path} is a folder without a VAE config.json")
        new = vae_to_ldm(AutoencoderKL.from_pretrained(folder, local_files_only=True))
    else:
        state = read_vae_state(vae_path)
        if any(".down_blocks." in k or ".up_blocks." in k for k in state):  # diffusers layout
            ups = {int(m[1]) for k in state if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))}
            new = vae_state_to_ldm(state, len(ups))
        else:
            new = {VAE_PREFIX + k: v for k, v in state.items()}
    key = VAE_PREFIX + "decoder.conv_in.weight"
    if key not in new:
        raise ConfigError(f"--vae: {vae_path} has no decoder.conv_in.weight: not a VAE")
    channels, base_channels = int(new[key].shape[1]), int(old[key].shape[1])
    if channels != base_channels:
        raise ConfigError(f"--vae: {vae_path} has {channels} latent channels but the checkpoint's VAE has "
                          f"{base_channels}: this VAE belongs to another model family")
    mismatched = [k for k in old if k in new and new[k].shape != old[k].shape]
    missing = sorted(set(old) - set(new))
    if mismatched or missing:
        raise ConfigError(f"--vae: {vae_path} does not fit the checkpoint's VAE "
                          f"({'shape of ' + mismatched[0] if mismatched else 'no ' + missing[0]})")
    dtype = old[key].dtype
    merged = {k: v for k, v in checkpoint.items() if not k.startswith(VAE_PREFIX)}
    merged.update({k: new[k].to(dtype) for k in old})
    return merged, {"vae": str(vae_path), "vae_keys": len(old)}
