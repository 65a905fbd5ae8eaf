"""Training metadata as sd-scripts writes it (`ss_*`, `sshs_*`, `modelspec.*`), and the hashes clients compute.

Every value is a string, as sd-scripts stores them (`str(value)`: `None`, `True`, `(512, 512)`); nested
values are JSON. Keys and meanings follow sd-scripts' `train_network.py`; the hashes are:

- `sshs_model_hash`: sha256 of the safetensors data section (the bytes after the header), which
  sd-webui-additional-networks and A1111 show as the LoRA's hash; `modelspec.hash_sha256` is the same
  digest with a `0x` prefix, as ModelSpec's reference implementation computes it.
- `sshs_legacy_hash`: the first 8 hex digits of sha256 of the 0x10000 bytes at offset 0x100000 of the
  file serialized with only its `ss_*` entries (sd-scripts' `precalculate_safetensors_hashes`).
- `ss_sd_model_hash`: A1111's legacy checkpoint hash of the base model file, the same 64 KiB window of
  the file itself; `ss_new_sd_model_hash`: sha256 of the whole file.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}
IMPL_STABILITY_AI = "https://github.com/Stability-AI/generative-models"
IMPL_DIFFUSERS = "diffusers"
LEGACY_OFFSET, LEGACY_LENGTH = 0x100000, 0x10000


def modelspec_architecture(family: str, v_prediction: bool) -> str:
    """ModelSpec's base architecture id, as sd-scripts' `determine_architecture` names it."""
    if family == "sdxl":
        return "stable-diffusion-xl-v1-base"
    if family == "sd2":
        return "stable-diffusion-v2-768-v" if v_prediction else "stable-diffusion-v2-512"
    return "stable-diffusion-v1"


def modelspec_implementation(family: str, kind: str) -> str:
    """sd-scripts' `determine_implementation`: SGM for SDXL LoRAs, embeddings and checkpoints, else diffusers."""
    if kind in ("textual_inversion", "checkpoint") or (kind == "lora" and family == "sdxl"):
        return IMPL_STABILITY_AI
    return IMPL_DIFFUSERS


# --- hashes --------------------------------------------------------------------------------------

def legacy_window_hash(data: bytes) -> str:
    """First 8 hex digits of sha256 of `data[0x100000:0x110000]` (A1111's and additional-networks' old hash)."""
    return hashlib.sha256(data[LEGACY_OFFSET:LEGACY_OFFSET + LEGACY_LENGTH]).hexdigest()[:8]


def a1111_model_hash(path: Path) -> str:
    """A1111's legacy checkpoint hash of a file; sd-scripts writes "IsADirectory" for a folder, and so do we."""
    path = Path(path)
    if path.is_dir():
        return "IsADirectory"
    with open(path, "rb") as handle:
        handle.seek(LEGACY_OFFSET)
        return hashlib.sha256(handle.read(LEGACY_LENGTH)).hexdigest()[:8]


def data_section_sha256(path: Path) -> str:
    """sha256 of a safetensors file's tensor bytes (everything after the 8-byte length and the header)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        header_length = int.from_bytes(handle.read(8), "little")
        handle.seek(8 + header_length)
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def lora_hashes(tensors: dict, metadata: dict[str, str]) -> dict[str, str]:
    """sshs_model_hash, sshs_legacy_hash and modelspec.hash_sha256 of the file `tensors` will be saved as."""
    from safetensors.torch import save

    data = save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    header_length = int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[8 + header_length:]).hexdigest()
    return {"sshs_model_hash": model_hash, "sshs_legacy_hash": legacy_window_hash(data),
            "modelspec.hash_sha256": f"0x{model_hash}"}


# --- what a run knows at export --------------------------------------------------------------------

@dataclass
class RunFacts:
    """What the training loop knows at export time that the config does not say."""

    started_at: float  # unix time
    steps: int  # optimizer steps done
    num_epochs: int  # epochs the run spans (sd-scripts' ss_num_epochs)
    epoch: int  # epochs begun at the last step (ss_epoch)
    num_batches_per_epoch: int
    optimizer: str  # ss_optimizer: `module.Class` plus `(key=value,...)` for arguments not at their defaults
    mixed_precision: str  # what ran: "no" on CPU even when bf16 was asked for
    buckets: dict[int, tuple[int, int]] = field(default_factory=dict)  # example index → (width, height)
    bucket_list: list[tuple[int, int]] = field(default_factory=list)  # every bucket the run could use
    class_images: int = 0  # prior-preservation images (sd-scripts' reg images)
    run_id: int | None = None
    finished_at: float | None = None


def epochs_spanned(max_train_steps: int, accumulation: int, epoch_length: int) -> int:
    return max(1, math.ceil(max_train_steps * accumulation / max(1, epoch_length)))


def output_name(dataset: dict[str, Any], started_at: float, run_id: int | None = None) -> str:
    """A name unique per run (A1111 lists LoRAs by `ss_output_name`): `dogs-v1-run12`, or the start time."""
    base = f"{dataset.get('name') or 'lora'}-v{dataset.get('version', 0)}"
    if run_id is not None:
        return f"{base}-run{run_id}"
    return f"{base}-{datetime.fromtimestamp(started_at, UTC).strftime('%Y%m%dT%H%M%S')}"


def bucket_info(examples: list, facts: RunFacts, enable_bucket: bool) -> dict | None:
    """sd-scripts' bucket_info: images per bucket (with repeats) and the mean aspect-ratio error (without)."""
    if not enable_bucket:
        return None
    counts: dict[tuple[int, int], int] = {}
    errors = []
    for index, example in enumerate(examples):
        bucket = facts.buckets[index]
        counts[bucket] = counts.get(bucket, 0) + example.repeats
        errors.append(abs(bucket[0] / bucket[1] - example.size[0] / example.size[1]))
    order = facts.bucket_list or sorted(counts)
    buckets = {i: {"resolution": list(b), "count": counts[b]} for i, b in enumerate(order) if b in counts}
    return {"buckets": buckets, "mean_img_ar_error": sum(errors) / len(errors) if errors else 0}


def dataset_entries(config, examples: list, tag_frequency: dict, facts: RunFacts, resolution: tuple[int, int]) -> dict:
    """ss_datasets, ss_dataset_dirs and ss_tag_frequency as sd-scripts' DreamBooth-style dataset writes them."""
    folders: dict[str, dict[str, int]] = {}
    for example in examples:
        entry = folders.setdefault(example.folder, {"n_repeats": example.repeats, "img_count": 0})
        entry["img_count"] += 1
    subsets = [{
        "img_count": entry["img_count"], "num_repeats": entry["n_repeats"], "color_aug": False, "flip_aug": False,
        "random_crop": False, "shuffle_caption": config.caption.shuffle_tags, "keep_tokens": config.caption.keep_tokens,
        "keep_tokens_separator": "", "secondary_separator": None, "enable_wildcard": False, "caption_prefix": None,
        "caption_suffix": None, "resize_interpolation": None, "image_dir": folder,
        "class_tokens": folder.split("_", 1)[1] if "_" in folder else folder, "is_reg": False,
    } for folder, entry in folders.items()]
    dataset = {
        "is_dreambooth": True, "batch_size_per_device": config.train_batch_size,
        "num_train_images": sum(e.repeats for e in examples), "num_reg_images": facts.class_images,
        "resolution": list(resolution), "enable_bucket": config.enable_bucket,
        "min_bucket_reso": config.min_bucket_reso, "max_bucket_reso": config.max_bucket_reso,
        "tag_frequency": tag_frequency, "bucket_info": bucket_info(examples, facts, config.enable_bucket),
        "resize_interpolation": None, "subsets": subsets,
    }
    return {"ss_datasets": json.dumps([dataset]), "ss_dataset_dirs": json.dumps(folders),
            "ss_reg_dataset_dirs": json.dumps({}), "ss_tag_frequency": json.dumps(tag_frequency),
            "ss_bucket_info": json.dumps(dataset["bucket_info"])}


def lora_metadata(config, family: str, base_path: Path, base_sha256: str, dataset: dict[str, Any], examples: list,
                  tag_frequency: dict, facts: RunFacts, v_prediction: bool = False,
                  resolution: tuple[int, int] | None = None, vae=None) -> dict[str, str]:
    """The header sd-scripts' train_network.py writes for this run (hashes of the file itself: `lora_hashes`)."""
    from training.adapters import network_metadata

    res = resolution or (config.resolution, config.resolution)
    name = output_name(dataset, facts.started_at, facts.run_id)
    finished_at = facts.finished_at if facts.finished_at is not None else datetime.now(UTC).timestamp()
    base_path = Path(base_path)
    ss: dict[str, Any] = {
        "ss_session_id": random.Random(f"{name}:{facts.started_at}").randint(0, 2**32),
        "ss_training_started_at": facts.started_at,
        "ss_output_name": name,
        "ss_learning_rate": config.learning_rate,
        "ss_text_encoder_lr": config.text_encoder_lr or config.learning_rate,
        "ss_unet_lr": config.learning_rate,
        "ss_num_train_images": sum(e.repeats for e in examples),
        "ss_num_validation_images": 0,
        "ss_num_reg_images": facts.class_images,
        "ss_num_batches_per_epoch": facts.num_batches_per_epoch,
        "ss_num_epochs": facts.num_epochs,
        "ss_gradient_checkpointing": config.gradient_checkpointing,
        "ss_gradient_accumulation_steps": config.gradient_accumulation_steps,
        "ss_max_train_steps": config.max_train_steps,
        "ss_lr_warmup_steps": config.lr_warmup_steps,
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_network_dropout": None,
        "ss_mixed_precision": facts.mixed_precision,
        "ss_full_fp16": False,
        "ss_v2": family == "sd2",
        "ss_base_model_version": BASE_MODEL_VERSION[family],
        "ss_clip_skip": None,
        "ss_max_token_length": None,
        "ss_cache_latents": config.cache_latents,
        "ss_seed": config.seed,
        "ss_lowram": False,
        "ss_noise_offset": config.noise_offset,
        "ss_multires_noise_iterations": None,
        "ss_multires_noise_discount": 0.3,
        "ss_adaptive_noise_scale": None,
        "ss_zero_terminal_snr": False,
        "ss_training_comment": None,
        "ss_optimizer": facts.optimizer,
        "ss_max_grad_norm": config.max_grad_norm,
        "ss_caption_dropout_rate": config.caption.caption_dropout_rate,
        "ss_caption_dropout_every_n_epochs": 0,
        "ss_caption_tag_dropout_rate": 0.0,
        "ss_face_crop_aug_range": None,
        "ss_prior_loss_weight": config.prior.prior_loss_weight,
        "ss_min_snr_gamma": config.snr_gamma,
        "ss_scale_weight_norms": None,
        "ss_ip_noise_gamma": None,
        "ss_debiased_estimation": False,
        "ss_loss_type": "l2",
        # single-dataset keys (sd-scripts writes these beside ss_datasets' copy)
        "ss_batch_size_per_device": config.train_batch_size,
        # as sd-scripts counts it: per device × processes × accumulation steps (one optimizer step's samples)
        "ss_total_batch_size": config.train_batch_size * config.num_processes * config.gradient_accumulation_steps,
        "ss_resolution": f"({res[0]}, {res[1]})",
        "ss_color_aug": False,
        "ss_flip_aug": False,
        "ss_random_crop": False,
        "ss_shuffle_caption": config.caption.shuffle_tags,
        "ss_enable_bucket": config.enable_bucket,
        "ss_bucket_no_upscale": False,
        "ss_min_bucket_reso": config.min_bucket_reso,
        "ss_max_bucket_reso": config.max_bucket_reso,
        "ss_keep_tokens": config.caption.keep_tokens,
        "ss_sd_model_name": base_path.name,
        "ss_sd_model_hash": a1111_model_hash(base_path) if base_path.exists() else base_sha256[:8],
        "ss_new_sd_model_hash": base_sha256,
        "ss_training_finished_at": finished_at,
        "ss_steps": facts.steps,
        "ss_epoch": facts.epoch,
    }
    if vae is not None:  # a swapped-in VAE (training/vae.py's ChosenVAE)
        vae_path = Path(vae.path)
        ss.update({"ss_vae_name": vae_path.name, "ss_vae_hash": a1111_model_hash(vae_path) if vae_path.exists() else
                   vae.sha256[:8], "ss_new_vae_hash": vae.sha256})
    meta = {key: str(value) for key, value in ss.items()}
    meta.update(network_metadata(config))  # ss_network_module, _dim, _alpha, _args (training/adapters.py)
    meta.update(dataset_entries(config, examples, tag_frequency, facts, res))
    meta.update({
        "atelier_num_processes": str(config.num_processes),
        "atelier_dataset": dataset.get("name", ""),
        "atelier_dataset_version": str(dataset.get("version", "")),
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": f"{modelspec_architecture(family, v_prediction)}/lora",
        "modelspec.implementation": modelspec_implementation(family, "lora"),
        "modelspec.title": name,
        "modelspec.resolution": f"{res[0]}x{res[1]}",
        "modelspec.date": datetime.fromtimestamp(int(finished_at), UTC).isoformat(),
        "modelspec.prediction_type": "v" if v_prediction else "epsilon",
    })
    if facts.run_id is not None:
        meta["atelier_run_id"] = str(facts.run_id)
    if config.identifier or config.class_word:
        meta["modelspec.trigger_phrase"] = " ".join(p for p in (config.identifier, config.class_word) if p)
    if config.method == "textual_inversion":  # pivotal tuning: the LoRA goes with the embedding's word
        meta["modelspec.trigger_phrase"] = config.textual_inversion.placeholder_token
    return meta


def checkpoint_metadata(family: str, title: str, merged_from: list[str], v_prediction: bool = False,
                        extra: dict[str, str] | None = None) -> dict[str, str]:
    """modelspec.* for a merged checkpoint, as sd-scripts' merge scripts write them (`merged_from`: titles)."""
    now = datetime.now(UTC)
    res = 1024 if family == "sdxl" else (768 if v_prediction else 512)
    return {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": modelspec_architecture(family, v_prediction),
        "modelspec.implementation": modelspec_implementation(family, "checkpoint"),
        "modelspec.title": title,
        "modelspec.resolution": f"{res}x{res}",
        "modelspec.date": datetime.fromtimestamp(int(now.timestamp()), UTC).isoformat(),
        "modelspec.merged_from": ", ".join(merged_from),
        "modelspec.prediction_type": "v" if v_prediction else "epsilon",
        **(extra or {}),
    }


HASH_PLACEHOLDER = "0x" + "0" * 64


def fill_hash_sha256(path: Path) -> str:
    """Write modelspec.hash_sha256 into a saved file whose header holds HASH_PLACEHOLDER there; returns it.

    The hash covers only the tensor bytes, so the header is patched in place (same length) instead of
    serializing a multi-gigabyte checkpoint twice.
    """
    path = Path(path)
    value = f"0x{data_section_sha256(path)}"
    with open(path, "r+b") as handle:
        header_length = int.from_bytes(handle.read(8), "little")
        header = handle.read(header_length)
        needle = f'"modelspec.hash_sha256":"{HASH_PLACEHOLDER}"'.encode()
        at = header.find(needle)
        if at < 0:
            raise ValueError(f"{path}: no modelspec.hash_sha256 placeholder in the header")
        handle.seek(8 + at)
        handle.write(needle.replace(HASH_PLACEHOLDER.encode(), value.encode()))
    return value


def merge_metadata(state_keys: list[str], title: str, inputs: list[Path], summary: dict) -> dict[str, str]:
    """modelspec.* of a merged checkpoint (with the placeholder fill_hash_sha256 replaces) and what was merged."""
    from safetensors import safe_open

    if any(k.startswith("conditioner.embedders.1.") for k in state_keys):
        family = "sdxl"
    elif any(k.startswith("cond_stage_model.model.") for k in state_keys):
        family = "sd2"
    else:
        family = "sd1"
    titles = []
    for path in inputs:  # sd-scripts' build_merged_from: each input's modelspec.title, else its file name
        title_of = None
        if Path(path).suffix == ".safetensors" and Path(path).is_file():
            with safe_open(str(path), "pt") as handle:
                title_of = (handle.metadata() or {}).get("modelspec.title")
        titles.append(title_of or Path(path).stem)
    return checkpoint_metadata(family, title, titles, extra={"modelspec.hash_sha256": HASH_PLACEHOLDER,
                                                            "atelier_merge": json.dumps(summary, default=str)})
