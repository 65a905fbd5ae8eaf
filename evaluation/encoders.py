"""The image and text encoders the metrics use, loaded once from the model registry.

CLIP (transformers CLIPModel folder): L2-normalised projected image and text embeddings, as
CLIP-T and CLIP-I use them. DINO (a transformers ViT folder, e.g. facebook/dino-vits16): the
L2-normalised CLS token of the last layer, as the DreamBooth paper measures subject fidelity.
The face embedder and the aesthetic head live in evaluation/faces.py and preprocess/aesthetic.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from preprocess.tagging import batches, pick_device, rgb_on_white
from store.registry import Registry, ResolvedModel


def _folder(model: ResolvedModel, field: str) -> Path:
    if not (model.path / "config.json").exists():
        raise ValueError(f"{field}: {model.path} is not a transformers model folder (no config.json)")
    return model.path


def _normalise(tensor) -> np.ndarray:
    import torch

    return torch.nn.functional.normalize(tensor.float(), dim=-1).cpu().numpy().astype(np.float32)


@dataclass
class ImageEncoder:
    """A transformers vision model + its image processor; subclasses say which vector an image gets."""

    model: Any
    processor: Any
    device: str
    resolved: ResolvedModel
    batch_size: int = 16

    @property
    def model_hash(self) -> str:
        return self.resolved.sha256

    def vectors(self, pixel_values):  # (N, D) tensor for a batch of preprocessed pixels
        raise NotImplementedError

    def images(self, images: list[Image.Image]) -> np.ndarray:
        """(N, D) unit vectors, in batches of `batch_size`."""
        import torch

        chunks = []
        for batch in batches(images, self.batch_size):
            pixels = self.processor(images=[rgb_on_white(im) for im in batch], return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                chunks.append(_normalise(self.vectors(pixels.to(self.device))))
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


class ClipEncoder(ImageEncoder):
    @classmethod
    def load(cls, name: str, registry: Registry, device: str = "auto") -> ClipEncoder:
        from transformers import CLIPModel, CLIPProcessor

        resolved = registry.resolve(name, kind="clip")
        folder = _folder(resolved, "clip_model")
        device = pick_device(device)
        model = CLIPModel.from_pretrained(folder).to(device).eval()
        return cls(model, CLIPProcessor.from_pretrained(folder), device, resolved)

    def vectors(self, pixel_values):
        """The projected pooled vision output (what CLIP compares with text)."""
        return self.model.visual_projection(self.model.vision_model(pixel_values=pixel_values).pooler_output)

    def texts(self, texts: list[str]) -> np.ndarray:
        """(N, D) unit vectors: the projected pooled text output (prompts truncated to the model's length)."""
        import torch

        tokens = self.processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            pooled = self.model.text_model(input_ids=tokens["input_ids"].to(self.device),
                                           attention_mask=tokens["attention_mask"].to(self.device)).pooler_output
            return _normalise(self.model.text_projection(pooled))


class DinoEncoder(ImageEncoder):
    @classmethod
    def load(cls, name: str, registry: Registry, device: str = "auto") -> DinoEncoder:
        from transformers import AutoImageProcessor, AutoModel

        resolved = registry.resolve(name, kind="dino")
        folder = _folder(resolved, "dino_model")
        device = pick_device(device)
        # DINO checkpoints carry no pooler; ask ViT not to build one (and not to warn about it)
        vit = json.loads((folder / "config.json").read_text()).get("model_type") == "vit"
        model = AutoModel.from_pretrained(folder, **({"add_pooling_layer": False} if vit else {})).to(device).eval()
        return cls(model, AutoImageProcessor.from_pretrained(folder), device, resolved)

    def vectors(self, pixel_values):
        """The CLS token of the last hidden layer."""
        return self.model(pixel_values=pixel_values).last_hidden_state[:, 0]
