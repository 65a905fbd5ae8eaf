"""Training checkpoints for exact resume: trainable weights, optimizer, LR scheduler, EMA, RNG, step.

The data order is not stored: it is a pure function of (seed, epoch) (see training.data.epoch_batches),
and each step's noise, timesteps and caption choices come from generators seeded by (seed, step).
A checkpoint folder is written under a temporary name and renamed, so a kill never leaves half of one.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "training_state.pt"


def trainable_state(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """{"unet.<param>": tensor} for every parameter that requires grad."""
    return {f"{prefix}.{name}": p.detach().float().cpu().contiguous()
            for prefix, module in modules.items() for name, p in module.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, step: int, modules: dict[str, torch.nn.Module], optimizer, lr_scheduler,
                    scaler=None, ema=None, extra: dict[str, Any] | None = None, keep: int | None = None) -> Path:
    """Write `folder/checkpoint-<step>/`; keep only the newest `keep` checkpoints."""
    folder = Path(folder)
    final = folder / f"checkpoint-{step:06d}"
    tmp = folder / f".checkpoint-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(modules), str(tmp / "trainable.safetensors"))
    torch.save({
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "rng": rng_state(),
    }, tmp / STATE_FILE)
    (tmp / "state.json").write_text(json.dumps({"step": step, **(extra or {})}, indent=2, default=str))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    if keep:
        for old in list_checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("checkpoint-*") if (p / "state.json").exists())


def latest_checkpoint(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer, lr_scheduler,
                    scaler=None, ema=None) -> dict[str, Any]:
    """Restore everything save_checkpoint wrote; returns state.json (with "step")."""
    path = Path(path)
    weights = load_file(str(path / "trainable.safetensors"))
    for prefix, module in modules.items():
        params = dict(module.named_parameters())
        for key, value in weights.items():
            head, _, name = key.partition(".")
            if head == prefix:
                if name not in params:
                    raise ValueError(f"{path}: parameter {key} is not in the model — was the config changed?")
                params[name].data.copy_(value.to(params[name].dtype))
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    if ema is not None and state["ema"] is not None:
        ema.load_state_dict(state["ema"])
    set_rng_state(state["rng"])
    return json.loads((path / "state.json").read_text())
