"""Checks that need the base model's files (tokenizer, UNet config), run before a training run is recorded.

Each failure is a ValueError naming the field: an optimizer whose package is missing, a placeholder token the tokenizer already has, an
initializer word of several tokens, an unknown hypernetwork
activation, a VAE whose latent channels differ from the base UNet's.
"""

from __future__ import annotations

from pathlib import Path


def check_before_training(config, base_path: Path) -> None:
    from training.optimizers import check_optimizer

    check_optimizer(config)  # its package importable (an OptimizerUnavailable naming `optimizer:`)
    if config.method == "textual_inversion":
        from training.textual_inversion import preflight

        preflight(config, base_path)
    if config.method == "hypernetwork":
        from training.hypernetwork import check_activation

        check_activation(config.hypernetwork.activation_func)
    if config.vae:
        from training.vae import preflight as vae_preflight

        vae_preflight(config, base_path)
