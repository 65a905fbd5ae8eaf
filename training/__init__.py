"""LoRA / DreamBooth training on a dataset version; exports; checkpoint merging."""


def run_training(*args, **kwargs):
    """training.train.run_training, imported on first use (torch and diffusers are heavy)."""
    from training.train import run_training as run

    return run(*args, **kwargs)
