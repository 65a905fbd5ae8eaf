"""Textual inversion and hypernetwork runs stopped at step k and resumed end bitwise equal to uninterrupted ones."""

import pytest
import torch
from safetensors.torch import load_file

from tests.training.conftest import tiny_config

METHODS = {
    "textual_inversion": ({"textual_inversion": {"placeholder_token": "<sks>", "num_vectors": 2, "initializer_token": "a"}},
                          ("embedding",)),
    # pivotal tuning: the new tokens and a UNet LoRA in one run
    "pivotal": ({"method": "textual_inversion", "rank": 2,
                 "textual_inversion": {"placeholder_token": "<sks>", "initializer_token": "a", "with_lora": True}},
                ("embedding", "lora_peft")),
    # dropout draws from torch's global RNG: the checkpoint's RNG state has to carry it across the restart
    "hypernetwork": ({"hypernetwork": {"layer_structure": [1, 2, 1], "activation_func": "relu", "use_dropout": True,
                                       "last_layer_dropout": True}}, ("hypernetwork",)),
}


def _trained(outputs, keys):
    """Every trained tensor of a run's output files, by a name that says which file it came from."""
    tensors = {}
    for key in keys:
        path = outputs[key]["path"]
        path = f"{path}/pytorch_lora_weights.safetensors" if key == "lora_peft" else path
        tensors.update({f"{key}:{name}": value for name, value in _weights(path).items()})
    return tensors


def _weights(path):
    if str(path).endswith(".safetensors"):
        return load_file(path)
    state = torch.load(path, weights_only=True)
    return {f"{w}.{i}.{k}": v for w, pair in state.items() if isinstance(w, int) for i, sd in enumerate(pair)
            for k, v in sd.items()}


@pytest.mark.parametrize("method", list(METHODS))
def test_stop_and_resume_equals_uninterrupted(method, tiny_sd_dir, kohya_folder, tmp_path):
    from training.config import load_config
    from training.train import run_training

    fields, output = METHODS[method]
    config = load_config(tiny_config(tiny_sd_dir, **{"method": method, **fields}, max_train_steps=5, train_batch_size=2,
                                     gradient_accumulation_steps=2, use_ema=True, lr_scheduler="cosine",
                                     checkpointing_steps=2, caption={"shuffle_tags": True, "keep_tokens": 1,
                                                                     "caption_dropout_rate": 0.3}))
    run = dict(cache_dir=tmp_path / "cache", log=lambda line: None)
    whole = run_training(config, kohya_folder, tmp_path / "whole", **run)
    assert run_training(config, kohya_folder, tmp_path / "split", stop_at_step=3, **run)["status"] == "stopped"
    torch.manual_seed(4321)  # a resumed process starts with other global RNG state
    resumed = run_training(config, kohya_folder, tmp_path / "split", **run)

    a, b = _trained(whole["outputs"], output), _trained(resumed["outputs"], output)
    assert set(a) == set(b) and a and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["metrics"]["loss_history"] == whole["metrics"]["loss_history"]
    short = run_training(config.model_copy(update={"max_train_steps": 2}), kohya_folder, tmp_path / "short", **run)
    c = _trained(short["outputs"], output)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the comparison can tell runs apart
