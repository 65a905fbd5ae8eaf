"""The aesthetic-gradients options of eval presets and training configs (training/aesthetic_gradients.py
applies them). Apart from it so that reading a config imports no torch: the CLI that only checks a
preset and starts a training subprocess would otherwise spend a second and a half importing it."""

from __future__ import annotations

from pydantic import BaseModel, Field


class AestheticOptions(BaseModel):
    """The sampling options (in eval presets and training configs); off unless an embedding is named."""

    aesthetic_embedding: str | None = None  # .pt/.safetensors (1, D) file, or a registry name
    aesthetic_steps: int = Field(5, ge=0, le=200)
    aesthetic_lr: float = Field(1e-4, ge=0, le=1)
    aesthetic_weight: float = Field(0.9, ge=0, le=1)
    aesthetic_clip: str = "clip-vit-l14"  # CLIP model whose text_projection matches the SD text encoder

    @property
    def aesthetic_settings(self) -> dict:
        """What a sample's lineage records."""
        if not self.aesthetic_embedding:
            return {}
        return self.model_dump(include={"aesthetic_embedding", "aesthetic_steps", "aesthetic_lr", "aesthetic_weight",
                                        "aesthetic_clip"})
