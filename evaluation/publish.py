"""Publish a champion's weights at a stable path (e.g. ComfyUI's models/loras) by an atomic replace.

Readers of the path see the old file or the new one, never half a file: the copy goes to a
temporary file in the same folder, is flushed to disk, then `os.replace`d over the target.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def published_path(publish_path: str, slot: str, source: Path) -> Path:
    """The file users load: `publish_path` itself, or `<slot><ext>` inside it when it is a folder."""
    target = Path(os.path.expandvars(publish_path)).expanduser()
    if publish_path.endswith(("/", os.sep)) or target.is_dir():
        return target / f"{slot}{source.suffix}"
    return target


def publish_file(source: Path, target: Path) -> Path:
    """Copy `source` over `target` atomically; returns `target`."""
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise FileNotFoundError(f"cannot publish {source}: no such file (was the run's output folder removed?)")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out, open(source, "rb") as src:
            os.fchmod(out.fileno(), 0o644)  # mkstemp makes 0600: ComfyUI or A1111 may run as another user
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


def weights_file(method: str, outputs: dict[str, Any]) -> Path:
    """The main file a run publishes: its kohya LoRA, single-file DreamBooth checkpoint, embedding or hypernetwork."""
    keys = {"lora": ("lora",), "dreambooth-lora": ("lora",), "textual_inversion": ("embedding",),
            "hypernetwork": ("hypernetwork",)}.get(method, ("checkpoint", "lora"))
    for key in keys:
        if key in outputs and outputs[key].get("path"):
            return Path(outputs[key]["path"])
    raise ValueError(f"the {method} run has no weights file to publish (outputs: {', '.join(outputs) or 'none'})")


def companion_lora(method: str, outputs: dict[str, Any]) -> Path | None:
    """A pivotal-tuning run's UNet LoRA, which only works together with its embedding (None for other runs)."""
    if method == "textual_inversion" and outputs.get("lora", {}).get("path"):
        return Path(outputs["lora"]["path"])
    return None


def companion_path(publish_lora_path: str | None, main_target: Path, slot: str, source: Path) -> Path:
    """Where the companion LoRA goes: `publish_lora_path` (a file or a folder such as ComfyUI's
    models/loras), else beside the embedding as `<name>.lora.safetensors`."""
    if publish_lora_path:
        return published_path(publish_lora_path, slot, source)
    return main_target.with_name(f"{main_target.stem}.lora{source.suffix}")
