"""optimizer: adamw | adamw8bit | prodigy | adafactor | lion — each trains on the tiny SD and is named as sd-scripts names it."""

import pytest
import torch
from safetensors import safe_open

from tests.training.conftest import tiny_config

KOHYA_NAMES = {
    "adamw": "torch.optim.adamw.AdamW",
    "adamw8bit": "bitsandbytes.optim.adamw.AdamW8bit",
    "prodigy": "prodigyopt.prodigy.Prodigy",
    "adafactor": "transformers.optimization.Adafactor",
    "lion": "lion_pytorch.lion_pytorch.Lion",
}


@pytest.mark.parametrize("optimizer", list(KOHYA_NAMES))
def test_each_optimizer_trains_two_steps_and_is_recorded(optimizer, tiny_sd_dir, kohya_folder, tmp_path):
    from training.config import load_config
    from training.train import run_training

    lr = 1.0 if optimizer == "prodigy" else 1e-3
    config = load_config(tiny_config(tiny_sd_dir, max_train_steps=2, optimizer=optimizer, learning_rate=lr,
                                     enable_bucket=False))
    result = run_training(config, kohya_folder, tmp_path / "out", dataset={"name": "dogs", "version": 1},
                          cache_dir=tmp_path / "cache", log=lambda s: None)
    assert result["status"] == "succeeded" and len(result["metrics"]["loss_history"]) == 2
    with safe_open(result["outputs"]["lora"]["path"], "pt") as handle:
        meta = handle.metadata()
        ups = [handle.get_tensor(k) for k in handle.keys() if k.endswith(".lora_up.weight")]
    assert meta["ss_optimizer"].split("(")[0] == KOHYA_NAMES[optimizer]
    assert result["metrics"]["optimizer"] == meta["ss_optimizer"]
    assert any(up.abs().max() > 0 for up in ups)  # lora_up starts at zero: the optimizer moved it


def test_optimizer_arguments_show_in_ss_optimizer_as_sd_scripts_writes_them():
    from training.config import load_config
    from training.optimizers import build_optimizer

    param = torch.nn.Parameter(torch.zeros(4))
    config = load_config({"base_model": "x", "optimizer": "adafactor"})
    _, name = build_optimizer(config, [{"params": [param], "lr": 1e-4}])
    assert name == "transformers.optimization.Adafactor(scale_parameter=False,relative_step=False,weight_decay=0.01)"
    config = load_config({"base_model": "x", "optimizer": "lion", "adam_weight_decay": 0.0,
                          "optimizer_args": {"betas": [0.95, 0.98]}})
    _, name = build_optimizer(config, [{"params": [param], "lr": 1e-4}])
    assert name == "lion_pytorch.lion_pytorch.Lion(betas=(0.95, 0.98))"
    _, name = build_optimizer(load_config({"base_model": "x"}), [{"params": [param], "lr": 1e-4}])
    assert name == "torch.optim.adamw.AdamW"  # adam_* at AdamW's own defaults: nothing listed


def test_adamw8bit_keeps_8_bit_states_on_the_cpu():
    """bitsandbytes ≥ 0.49 runs its 8-bit optimizers on CPU (blockwise-quantized uint8 moments)."""
    from training.config import load_config
    from training.optimizers import build_optimizer

    param = torch.nn.Parameter(torch.randn(64, 64))  # 4096 elements: bitsandbytes' min_8bit_size
    optimizer, _ = build_optimizer(load_config({"base_model": "x", "use_8bit_adam": True}),
                                   [{"params": [param], "lr": 1e-3}])
    before = param.detach().clone()
    param.grad = torch.randn_like(param)
    optimizer.step()
    state = optimizer.state[param]
    assert state["state1"].dtype == torch.uint8 and state["state2"].dtype == torch.uint8
    assert not torch.equal(before, param.detach())


def test_unknown_optimizer_fails_naming_the_field():
    from store.config_files import ConfigError
    from training.config import load_config

    with pytest.raises(ConfigError, match=r"optimizer: Input should be 'adamw', 'adamw8bit', 'prodigy'"):
        load_config({"base_model": "x", "optimizer": "sgd"})
    with pytest.raises(ValueError, match="optimizer_args: lr is set by learning_rate"):
        from training.optimizers import build_optimizer

        build_optimizer(load_config({"base_model": "x", "optimizer_args": {"lr": 1.0}}),
                        [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1e-4}])


def test_a_missing_optimizer_package_fails_before_the_run_is_recorded(monkeypatch, tmp_path):
    import importlib.util

    from training.config import load_config
    from training.optimizers import OptimizerUnavailable
    from training.preflight import check_before_training

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "prodigyopt" else real(name, *a))
    with pytest.raises(OptimizerUnavailable, match=r"optimizer: prodigy needs the `prodigyopt` package"):
        check_before_training(load_config({"base_model": "x", "optimizer": "prodigy"}), tmp_path)
    check_before_training(load_config({"base_model": "x", "optimizer": "lion"}), tmp_path)
