"""A run stopped at step k and resumed ends with exactly the weights of an uninterrupted run."""

import torch
from safetensors.torch import load_file

from tests.training.conftest import tiny_config


def test_stop_and_resume_equals_uninterrupted(tiny_sd_dir, kohya_folder, tmp_path):
    from training.checkpoint import list_checkpoints
    from training.config import load_config
    from training.train import run_training

    # gradient accumulation, EMA, min-SNR, noise offset, tag shuffle and caption dropout all draw randomness
    config = load_config(tiny_config(
        tiny_sd_dir, max_train_steps=6, train_batch_size=2, gradient_accumulation_steps=2, use_ema=True,
        snr_gamma=5.0, noise_offset=0.05, lr_scheduler="cosine", lr_warmup_steps=2, checkpointing_steps=2,
        caption={"shuffle_tags": True, "keep_tokens": 1, "caption_dropout_rate": 0.3}))
    run = dict(cache_dir=tmp_path / "cache", log=lambda line: None)

    whole = run_training(config, kohya_folder, tmp_path / "whole", **run)
    stopped = run_training(config, kohya_folder, tmp_path / "split", stop_at_step=3, **run)
    assert stopped == {"status": "stopped", "step": 3}
    assert [p.name for p in list_checkpoints(tmp_path / "split" / "checkpoints")] == ["checkpoint-000002", "checkpoint-000003"]
    torch.manual_seed(1234)  # a resumed process starts with other global RNG state
    resumed = run_training(config, kohya_folder, tmp_path / "split", **run)

    a = load_file(tmp_path / "whole" / "lora_peft" / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "split" / "lora_peft" / "pytorch_lora_weights.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["metrics"]["loss_history"] == whole["metrics"]["loss_history"]
    run_training(config.model_copy(update={"max_train_steps": 1}), kohya_folder, tmp_path / "one", **run)
    c = load_file(tmp_path / "one" / "lora_peft" / "pytorch_lora_weights.safetensors")
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the comparison can tell runs apart
