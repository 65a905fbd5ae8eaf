"""Training fixtures: the tiny SD built once, and a kohya-layout folder of real photos.

Package-scoped, under one-thread torch: on a CPU shared by several test runs, torch's default
thread pool spins against the other processes and a tiny training step goes from ~0.1 s to ~2 s.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="package", autouse=True)
def one_cpu_thread():
    """torch (and training subprocesses, through OMP_NUM_THREADS) on one thread while these tests run."""
    import os

    import torch

    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(scope="package")
def tiny_sd_dir(tmp_path_factory) -> Path:
    from tests.tiny_models.sd import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="package")
def tiny_sd_file(tiny_sd_dir) -> Path:
    from tests.tiny_models.sd import build_tiny_sd_single_file

    return build_tiny_sd_single_file(tiny_sd_dir.parent)


@pytest.fixture(scope="package")
def kohya_folder(tmp_path_factory, photos) -> Path:
    """`3_sks dog/` with three real photos of different aspect ratios and tag captions."""
    root = tmp_path_factory.mktemp("kohya")
    sub = root / "3_sks dog"
    sub.mkdir()
    captions = {
        "messi5.jpg": "sks dog, 1boy, football, grass",
        "MilkyWay_1080x1920.png": "sks dog, night sky, stars",
        "HappyFish.jpg": "sks dog, fish, water",
    }
    for name, caption in captions.items():
        shutil.copy(photos / name, sub / name)
        (sub / name).with_suffix(".txt").write_text(caption)
    return root


def tiny_config(base_model, **fields) -> dict:
    """A config for the tiny SD: 64 px, small buckets, no TensorBoard unless asked."""
    return {"base_model": str(base_model), "resolution": 64, "bucket_reso_steps": 32, "min_bucket_reso": 32,
            "max_bucket_reso": 128, "max_train_steps": 4, "learning_rate": 1e-3, "report_to": "none",
            "checkpointing_steps": 1000, "identifier": "sks", "class_word": "dog", **fields}


@pytest.fixture(scope="package")
def lora_run(tiny_sd_dir, kohya_folder, tmp_path_factory):
    """One LoRA run (UNet + text encoder) of 4 steps on three real photos, with validation samples."""
    from training.config import load_config
    from training.train import run_training

    out = tmp_path_factory.mktemp("lora-run")
    config = load_config(tiny_config(tiny_sd_dir, train_text_encoder=True, rank=4, lora_alpha=2, train_batch_size=2,
                                     caption={"shuffle_tags": True, "keep_tokens": 1}, report_to="tensorboard",
                                     validation_prompts=["sks dog"], validation_inference_steps=2))
    result = run_training(config, kohya_folder, out, dataset={"name": "dogs", "version": 1},
                          cache_dir=out / "cache", log=lambda line: None)
    return {"config": config, "result": result, "out": out}
