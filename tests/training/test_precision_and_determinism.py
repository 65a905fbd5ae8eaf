"""A base model saved in fp16 trains on a CPU; the training subprocess pins what makes runs bitwise repeatable."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.training.conftest import tiny_config


def test_fp16_diffusers_folder_trains_on_cpu(tiny_sd_dir, kohya_folder, tmp_path):
    """Before: `expected m1 and m2 to have the same dtype` (the text encoder stayed fp16 beside fp32 LoRA)."""
    from diffusers import StableDiffusionPipeline

    from training.config import load_config
    from training.models import load_base_model
    from training.train import run_training

    half = tmp_path / "tiny-sd-fp16"
    StableDiffusionPipeline.from_pretrained(tiny_sd_dir, local_files_only=True).to(torch.float16).save_pretrained(half)
    saved = json.loads((half / "text_encoder" / "config.json").read_text())
    assert (saved.get("dtype") or saved.get("torch_dtype")) == "float16"
    model = load_base_model(str(half))
    assert {p.dtype for m in (model.pipeline.unet, model.pipeline.text_encoder, model.pipeline.vae)
            for p in m.parameters()} == {torch.float32}
    config = load_config(tiny_config(half, max_train_steps=2, train_text_encoder=True, enable_bucket=False))
    result = run_training(config, kohya_folder, tmp_path / "out", cache_dir=tmp_path / "cache", log=lambda s: None)
    assert result["status"] == "succeeded" and all(math.isfinite(loss) for loss in result["metrics"]["loss_history"])


def test_training_subprocess_pins_mkl_and_deterministic_algorithms(tiny_sd_dir, kohya_folder, tmp_path):
    """`python -m training.run` (what the flow starts) records MKL_CBWR=AUTO,STRICT and deterministic algorithms."""
    from training.config import load_config

    config = load_config(tiny_config(tiny_sd_dir, max_train_steps=1, enable_bucket=False))
    job = {"config": config.model_dump(mode="json"), "data_dir": str(kohya_folder), "output_dir": str(tmp_path / "out"),
           "dataset": {"name": "dogs", "version": 1}, "cache_dir": str(tmp_path / "cache")}
    (tmp_path / "job.json").write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "CUBLAS_WORKSPACE_CONFIG")}
    done = subprocess.run([sys.executable, "-m", "training.run", str(tmp_path / "job.json")], env=env,
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    pins = json.loads((tmp_path / "out" / "result.json").read_text())["metrics"]["determinism"]
    assert pins == {"MKL_CBWR": "AUTO,STRICT", "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
                    "deterministic_algorithms": True, "warn_only": True}
