"""Aesthetic gradients at sampling time (Gallego 2022, the `stable-diffusion-aesthetic-gradients` extension).

For each prompt, a copy of the CLIP text encoder takes `aesthetic_steps` Adam steps (lr
`aesthetic_lr`) that raise the cosine similarity between the prompt's CLIP text embedding and an
aesthetic embedding — the normalised mean CLIP image embedding of a set of images the user likes
(e.g. a dataset's highest-scored images). The prompt is then encoded with the tuned copy and
blended with the untouched encoding: weight `aesthetic_weight` on the tuned one (A1111's default
0.9). The pipeline's own text encoder is never modified, so training and later samples are
unaffected (tests check it bit for bit).

The text embedding is the encoder's pooled output through a CLIP model's `text_projection`
(`aesthetic_clip`: SD 1.x's text encoder is CLIP ViT-L/14's text tower, so clip-vit-l14). The
embedding file is what the extension writes: a (1, D) tensor in a `.pt` (read with
weights_only=True) or a `.safetensors` holding one tensor.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from store.config_files import ConfigError
from training.aesthetic_options import AestheticOptions


def save_embedding(embedding: torch.Tensor, path: Path) -> Path:
    """Write a (1, D) embedding as `.safetensors` ({"embedding": …}) or `.pt` (the extension's format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor = embedding.detach().float().cpu().reshape(1, -1).contiguous()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({"embedding": tensor}, str(path))
    else:
        torch.save(tensor, path)
    return path


def load_embedding(path: Path) -> torch.Tensor:
    """A (1, D) unit-norm embedding from `.pt` (weights_only) or `.safetensors`; ConfigError naming the file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = list(load_file(str(path)).values())
        tensor = tensors[0] if len(tensors) == 1 else None
    else:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(tensor, torch.Tensor) or tensor.dim() not in (1, 2) or (tensor.dim() == 2 and tensor.shape[0] != 1):
        raise ConfigError(f"aesthetic_embedding: {path} does not hold one (1, D) tensor")
    tensor = tensor.float().reshape(1, -1)
    return tensor / tensor.norm(dim=-1, keepdim=True)


def image_embedding(images, clip_folder: Path, batch_size: int = 16) -> torch.Tensor:
    """The aesthetic embedding of `images` (PIL): each CLIP image embedding normalised, averaged, normalised."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(clip_folder), local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(str(clip_folder), local_files_only=True)
    images = list(images)
    if not images:
        raise ValueError("aesthetic embedding: no images")
    parts = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            pixels = processor(images=[im.convert("RGB") for im in images[start:start + batch_size]],
                               return_tensors="pt")["pixel_values"]
            features = model.get_image_features(pixel_values=pixels)
            features = getattr(features, "pooler_output", features)  # transformers 5 may return an output object
            parts.append(features / features.norm(dim=-1, keepdim=True))
    mean = torch.cat(parts).mean(0, keepdim=True)
    return mean / mean.norm(dim=-1, keepdim=True)


def load_projection(clip_folder: Path) -> torch.nn.Linear:
    """The text_projection of a CLIP model folder (pooled text features → the joint embedding space)."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(str(clip_folder), local_files_only=True)
    return model.text_projection.float().eval().requires_grad_(False)


@dataclass
class AestheticGradients:
    embedding: torch.Tensor  # (1, D), unit norm
    projection: torch.nn.Linear
    steps: int
    lr: float
    weight: float

    def prompt_embeds(self, pipe, prompt: str) -> torch.Tensor:
        """(1, 77, hidden) prompt embeddings for `pipe`: the blend of the original and the tuned encoding."""
        if getattr(pipe, "text_encoder_2", None) is not None:
            raise ConfigError("aesthetic_embedding: aesthetic gradients work on SD 1.x/2.x (one CLIP text encoder), "
                              "not SDXL")
        encoder, tokenizer = pipe.text_encoder, pipe.tokenizer
        device = encoder.device
        tokens = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                           return_tensors="pt").input_ids.to(device)
        with torch.no_grad():
            original = encoder(tokens)[0].float()
        if self.steps == 0 or self.lr == 0 or self.weight == 0 or not prompt.strip():
            return original.to(encoder.dtype)
        tuned = copy.deepcopy(encoder).float().train(False).requires_grad_(True)  # the pipeline's own stays as it is
        projection = self.projection.to(device)
        if projection.in_features != tuned.config.hidden_size:
            raise ConfigError(f"aesthetic_clip: its text_projection takes {projection.in_features} features but the "
                              f"model's text encoder gives {tuned.config.hidden_size}: use the CLIP model of this "
                              f"text encoder (SD 1.x: clip-vit-l14)")
        if projection.out_features != self.embedding.shape[1]:
            raise ConfigError(f"aesthetic_embedding: it has {self.embedding.shape[1]} dimensions but aesthetic_clip "
                              f"projects to {projection.out_features}")
        target = self.embedding.to(device)
        optimizer = torch.optim.Adam(tuned.parameters(), lr=self.lr)
        with torch.enable_grad(), torch.autocast(device.type, enabled=False):
            for _ in range(self.steps):
                optimizer.zero_grad(set_to_none=True)
                features = projection(tuned(tokens).pooler_output)
                features = features / features.norm(dim=-1, keepdim=True)
                loss = -(features @ target.T).mean()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                tuned_embeds = tuned(tokens)[0].float()
        del tuned, optimizer
        blended = original * (1 - self.weight) + tuned_embeds * self.weight
        return blended.to(encoder.dtype)


def load_aesthetic(options: AestheticOptions, registry=None) -> AestheticGradients | None:
    """The configured aesthetic gradients, or None when no embedding is named."""
    if not options.aesthetic_embedding:
        return None
    from store.registry import load_registry

    registry = registry or load_registry()
    embedding = load_embedding(registry.resolve(options.aesthetic_embedding).path)
    projection = load_projection(registry.resolve(options.aesthetic_clip).path)
    return AestheticGradients(embedding, projection, options.aesthetic_steps, options.aesthetic_lr,
                              options.aesthetic_weight)
