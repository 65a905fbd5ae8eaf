"""The optimizer a run trains with (`optimizer:` in the training config), and its name as sd-scripts records it.

| optimizer | class (its `ss_optimizer` name) | notes |
| --- | --- | --- |
| adamw | torch.optim.adamw.AdamW | betas, weight decay and epsilon from adam_* |
| adamw8bit | bitsandbytes.optim.adamw.AdamW8bit | 8-bit states; bitsandbytes ≥ 0.49 runs them on CPU too |
| prodigy | prodigyopt.prodigy.Prodigy | learns its own step size: learning_rate is a multiplier (1.0 is usual) |
| adafactor | transformers.optimization.Adafactor | with the config's learning rate (relative_step=False) |
| lion | lion_pytorch.lion_pytorch.Lion | betas and weight decay from adam_*; use a ~3-10× smaller learning rate |

`optimizer_args` adds keyword arguments (kohya's `--optimizer_args`). `ss_optimizer` is `module.Class`
followed by `(key=value,...)` for the arguments that differ from the class' own defaults, as sd-scripts
writes the arguments it was given.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from typing import Any

# optimizer → (module, class, the pip package that provides it)
OPTIMIZERS = {
    "adamw": ("torch.optim", "AdamW", "torch"),
    "adamw8bit": ("bitsandbytes.optim", "AdamW8bit", "bitsandbytes"),
    "prodigy": ("prodigyopt", "Prodigy", "prodigyopt"),
    "adafactor": ("transformers.optimization", "Adafactor", "transformers"),
    "lion": ("lion_pytorch", "Lion", "lion-pytorch"),
}


class OptimizerUnavailable(ValueError):
    """The chosen optimizer's package is missing or cannot run here; the message names the field and the fix."""


def chosen_optimizer(config) -> str:
    """`optimizer`, with the older `use_8bit_adam: true` read as adamw8bit."""
    return "adamw8bit" if config.use_8bit_adam and config.optimizer == "adamw" else config.optimizer


def optimizer_class(name: str):
    module, cls, package = OPTIMIZERS[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as error:
        raise OptimizerUnavailable(
            f"optimizer: {name} needs the `{package}` package, which cannot be imported here ({error}); "
            f"install it (`pip install {package}`) or choose another optimizer"
        ) from None


def check_optimizer(config) -> None:
    """Fail before the run is recorded when the optimizer's package is missing (found without importing it)."""
    name = chosen_optimizer(config)
    module, _, package = OPTIMIZERS[name]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise OptimizerUnavailable(f"optimizer: {name} needs the `{package}` package, which is not installed; "
                                   f"install it (`pip install {package}`) or choose another optimizer")


def optimizer_kwargs(config, name: str) -> dict[str, Any]:
    """Keyword arguments from the config for optimizer `name` (before `optimizer_args` overrides)."""
    betas = (config.adam_beta1, config.adam_beta2)
    if name in ("adamw", "adamw8bit"):
        return {"betas": betas, "weight_decay": config.adam_weight_decay, "eps": config.adam_epsilon}
    if name == "prodigy":
        return {"betas": betas, "weight_decay": config.adam_weight_decay, "eps": config.adam_epsilon}
    if name == "adafactor":  # a fixed learning rate from the schedule, as kohya recommends for LoRA
        return {"scale_parameter": False, "relative_step": False, "warmup_init": False,
                "weight_decay": config.adam_weight_decay}
    if name == "lion":
        return {"betas": betas, "weight_decay": config.adam_weight_decay}
    raise KeyError(name)


def kohya_name(cls, kwargs: dict[str, Any]) -> str:
    """`module.Class(key=value,...)`: sd-scripts' ss_optimizer, listing arguments not at the class' defaults."""
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    changed = {k: v for k, v in kwargs.items() if k not in defaults or defaults[k] != v}
    args = ",".join(f"{k}={v}" for k, v in changed.items())
    return f"{cls.__module__}.{cls.__name__}" + (f"({args})" if args else "")


def build_optimizer(config, groups: list[dict], notes: list[str] | None = None):
    """(optimizer over the parameter groups, its ss_optimizer name); groups carry their own learning rates."""
    name = chosen_optimizer(config)
    cls = optimizer_class(name)
    extra = {k: tuple(v) if isinstance(v, list) else v for k, v in config.optimizer_args.items()}  # betas=(…)
    kwargs = {**optimizer_kwargs(config, name), **extra}
    if "lr" in kwargs:
        raise OptimizerUnavailable("optimizer_args: lr is set by learning_rate / text_encoder_lr")
    if name == "prodigy" and notes is not None and config.learning_rate < 0.1:
        notes.append(f"optimizer prodigy: learning_rate={config.learning_rate} scales Prodigy's own estimate "
                     f"(1.0 is usual); the run will barely move")
    try:
        optimizer = cls(groups, **kwargs)
    except TypeError as error:
        raise OptimizerUnavailable(f"optimizer_args: {error}") from None
    return optimizer, kohya_name(cls, kwargs)
