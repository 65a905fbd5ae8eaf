"""Bitwise-repeatable training: the pins the training subprocess sets before torch starts.

- `MKL_CBWR=AUTO,STRICT`: MKL's conditional numerical reproducibility. Without it two identical
  CPU runs at full model size differ by ~1e-8 (MKL picks kernels by memory alignment), and a resumed
  run is not bitwise equal to an uninterrupted one.
- `CUBLAS_WORKSPACE_CONFIG=:4096:8`: cuBLAS' deterministic workspace (only read on a GPU).
- `torch.use_deterministic_algorithms(True, warn_only=True)`: deterministic kernels where torch has
  them; an op without one warns instead of failing the run.

Each variable already in the environment is left as the user set it. `current()` is what a run records.
"""

from __future__ import annotations

import os

ENVIRONMENT = {"MKL_CBWR": "AUTO,STRICT", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


def pin_environment() -> None:
    """Set the variables MKL and cuBLAS read at load: call before torch is imported."""
    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def pin_torch() -> None:
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def current() -> dict:
    """The pins in force in this process (recorded in a run's metrics)."""
    import torch

    return {**{key: os.environ.get(key) for key in ENVIRONMENT},
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled()}
