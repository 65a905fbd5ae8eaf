"""A tiny DINO-style ViT (transformers ViTModel + ViTImageProcessor) saved with save_pretrained.

Same layout as facebook/dino-vits16 (config.json with model_type vit, model.safetensors,
preprocessor_config.json), so `AutoModel.from_pretrained` loads it; 32 px images, patch 8, two
layers of width 32. Weights are random but seeded: the same folder every build.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SIZE = 32
HIDDEN = 32


def build_tiny_dino(folder: Path, *, seed: int = 0) -> Path:
    """Save the tiny ViT into `folder` (once) and return `folder`."""
    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder.mkdir(parents=True, exist_ok=True)
    config = ViTConfig(image_size=IMAGE_SIZE, patch_size=8, hidden_size=HIDDEN, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=37, initializer_range=0.2)
    torch.manual_seed(seed)
    model = ViTModel(config, add_pooling_layer=False).eval()
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    model.save_pretrained(folder)  # config.json last: its presence marks a finished folder
    return folder
