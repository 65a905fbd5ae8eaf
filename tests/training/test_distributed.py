"""Data-parallel training (num_processes: 2, gloo on CPU) trains what one process trains on the same global batch.

The two-process runs go through the launcher `atelier train` uses (accelerate launch of training.run).
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.training.conftest import tiny_config

# One process computes a global batch of up to 4 in one forward/backward; two compute 2 + 2 (or 2 + 1, or 2 + 0)
# and sum their gradients, so float32 sums run in another order. Measured after 4 steps: max |Δw| = 6.9e-8, about
# one float32 ulp at |w| ≈ 1 (LoRA down-weights start gaussian). 1e-6 is ~15× that and ~1/1000 of one Adam step
# (lr 1e-3); a sharding bug (a sample dropped or counted twice, a wrong loss share) moves weights by ~1e-4 or more.
ATOL = 1e-6

# gradient accumulation, EMA, min-SNR, noise offset, tag shuffle, caption dropout and the text encoder's
# LoRA all draw randomness or add gradients. 3 photos × 3 repeats fall in two buckets (6 and 3 samples), so an
# epoch's global batches of 4 are 4, 2 and 3: ranks train on 2 + 2, 2 + 0 (rank 1 idle) and 2 + 1 samples
FIELDS = {"max_train_steps": 4, "gradient_accumulation_steps": 2, "use_ema": True, "snr_gamma": 5.0,
          "noise_offset": 0.05, "lr_scheduler": "cosine", "lr_warmup_steps": 1, "checkpointing_steps": 2,
          "train_text_encoder": True, "caption": {"shuffle_tags": True, "keep_tokens": 1, "caption_dropout_rate": 0.3}}


def launch(processes: int, config: dict, data, out, cache, stop_at_step=None) -> str:
    """Train through the flow's launcher (N processes); returns the streamed output."""
    from flows.train import launcher, stream_process

    out.mkdir(parents=True, exist_ok=True)
    job = out / "job.json"
    job.write_text(json.dumps({"config": config, "data_dir": str(data), "output_dir": str(out),
                               "dataset": {"name": "dogs", "version": 1}, "cache_dir": str(cache),
                               "stop_at_step": stop_at_step}))
    lines: list[str] = []
    code, tail = stream_process([*launcher(processes), str(job)], lines.append)
    assert code == 0, "\n".join(tail)
    return "\n".join(lines)


def peft_weights(out) -> dict[str, torch.Tensor]:
    return load_file(out / "lora_peft" / "pytorch_lora_weights.safetensors")


@pytest.fixture(scope="module")
def runs(tiny_sd_dir, kohya_folder, tmp_path_factory, monkeypatch_module):
    """One process at batch 4 (and at batch 2, the run N independent copies would make); two processes at
    batch 2 each; and two processes resumed from the two-process run's step-2 checkpoint.

    (The resumed run starts from a copy of the checkpoint the uninterrupted run wrote at step 2, which is
    the folder a run stopped at step 2 leaves: one launch fewer, ~40 s on the shared build machine.)
    """
    from training.config import load_config
    from training.train import run_training

    monkeypatch_module.delenv("ATELIER_TRAIN_LAUNCHER", raising=False)
    root = tmp_path_factory.mktemp("ddp")
    cache, dataset = root / "cache", {"name": "dogs", "version": 1}
    single = run_training(load_config(tiny_config(tiny_sd_dir, train_batch_size=4, **FIELDS)), kohya_folder,
                          root / "one", dataset=dataset, cache_dir=cache, log=lambda line: None)
    run_training(load_config(tiny_config(tiny_sd_dir, train_batch_size=2, **FIELDS)), kohya_folder, root / "half",
                 dataset=dataset, cache_dir=cache, log=lambda line: None)
    two = load_config(tiny_config(tiny_sd_dir, train_batch_size=2, num_processes=2, **FIELDS)).model_dump(mode="json")
    whole_log = launch(2, two, kohya_folder, root / "two", cache)
    shutil.copytree(root / "two" / "checkpoints" / "checkpoint-000002", root / "split" / "checkpoints" / "checkpoint-000002")
    resumed_log = launch(2, two, kohya_folder, root / "split", cache)
    return {"root": root, "single": single, "whole_log": whole_log, "resumed_log": resumed_log}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains_on_the_same_global_batch(runs):
    root = runs["root"]
    one, two = peft_weights(root / "one"), peft_weights(root / "two")
    assert set(one) == set(two) and any(k.startswith("text_encoder.") for k in one)
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    assert worst <= ATOL, f"max |Δw| = {worst:.3g}"
    # the comparison tells apart a run that trains on half the global batch (what N independent copies do)
    half = peft_weights(root / "half")
    assert max((one[k] - half[k]).abs().max().item() for k in one) > 100 * ATOL
    result = json.loads((root / "two" / "result.json").read_text())
    assert result["metrics"]["processes"] == 2 and result["metrics"]["global_batch_size"] == 4
    assert result["metrics"]["loss_history"] == pytest.approx(runs["single"]["metrics"]["loss_history"], rel=1e-5)
    assert runs["whole_log"].count("training succeeded") == 1  # rank 0 alone reports
    assert runs["whole_log"].count("step 4/4") == 1


@pytest.mark.slow
def test_two_process_run_writes_one_output_with_honest_batch_metadata(runs):
    out = runs["root"] / "two"
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(files) == 1 and re.fullmatch(r"dogs-v1-\d{8}T\d{6}\.safetensors", files[0])  # one, named per run
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-000002", "checkpoint-000004"]
    with safe_open(str(out / files[0]), "pt") as handle:
        meta = handle.metadata()
    assert meta["ss_batch_size_per_device"] == "2"
    assert meta["ss_total_batch_size"] == "8"  # 2 per process × 2 processes × 2 accumulation steps
    assert meta["atelier_num_processes"] == "2"


@pytest.mark.slow
def test_two_process_resume_equals_an_uninterrupted_two_process_run(runs):
    root = runs["root"]
    assert "resumed from checkpoint-000002 at step 2" in runs["resumed_log"]
    a, b = peft_weights(root / "two"), peft_weights(root / "split")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    whole = json.loads((root / "two" / "result.json").read_text())["metrics"]["loss_history"]
    resumed = json.loads((root / "split" / "result.json").read_text())["metrics"]["loss_history"]
    assert resumed == whole


def test_more_processes_than_devices_fails_at_once_naming_the_field(tiny_sd_dir, kohya_folder, tmp_path):
    from store.config_files import ConfigError
    from training.config import load_config
    from training.distributed import check_num_processes, device_limit
    from training.train import run_training

    have, _ = device_limit()
    with pytest.raises(ConfigError, match=rf"preset.yaml: num_processes: {have + 1} is more than this machine has — {have} "):
        check_num_processes(have + 1, "preset.yaml")
    check_num_processes(have)
    # a process started alone for a two-process config says so before loading anything
    config = load_config(tiny_config(tiny_sd_dir, train_batch_size=2, num_processes=2))
    with pytest.raises(ValueError, match="num_processes: 2, but 1 training process was started"):
        run_training(config, kohya_folder, tmp_path / "out", cache_dir=tmp_path / "cache", log=lambda line: None)
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_cli_processes_above_the_devices_fails_before_recording_anything(atelier_env, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app
    from training.distributed import device_limit

    preset = tmp_path / "preset.yaml"
    preset.write_text("base_model: sd15\n")
    have, _ = device_limit()
    result = CliRunner().invoke(app, ["train", "dogs@1", "--config", str(preset), "--processes", str(have + 1), "--json"])
    message = " ".join(result.output.split())
    assert result.exit_code == 1 and result.stdout == ""
    assert f"--processes: num_processes: {have + 1} is more than this machine has" in message
    assert not (atelier_env / "runs").exists()


def test_each_rank_takes_its_shard_of_the_global_batch_and_samples_draw_alike():
    from training.distributed import Processes, sample_seed, shard

    ranks = [Processes(r, 2, torch.device("cpu")) for r in range(2)]
    assert [list(shard([7, 8, 9, 10], 2, p)) for p in ranks] == [[0, 1], [2, 3]]
    assert [list(shard([7, 8, 9], 2, p)) for p in ranks] == [[0, 1], [2]]
    assert [list(shard([7], 2, p)) for p in ranks] == [[0], []]
    # a sample's seed is its position in the global batch, not in a process's shard
    assert sample_seed(0, 3, 1, 2, "noise") != sample_seed(0, 3, 1, 0, "noise")
    assert sample_seed(0, 3, 1, 2, "noise") == sample_seed(0, 3, 1, 2, "noise")


@pytest.mark.slow
def test_a_failing_rank_fails_the_run_with_its_reason(tmp_path, monkeypatch):
    """torch.distributed's launcher prints a long failure report after the ranks' own lines: the reason survives."""
    from flows.train import failure_reason, launcher, stream_process

    monkeypatch.delenv("ATELIER_TRAIN_LAUNCHER", raising=False)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"config": {"base_model": "sd15", "num_processes": 2, "max_train_steps": 0},
                               "data_dir": str(tmp_path), "output_dir": str(tmp_path / "out")}))
    code, tail = stream_process([*launcher(2), str(job)], lambda line: None)
    assert code != 0
    assert failure_reason(code, tail).startswith(f"ConfigError: {job}: max_train_steps: Input should be greater")
