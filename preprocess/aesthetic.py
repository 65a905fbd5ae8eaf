"""The `aesthetic` step: LAION aesthetic predictor v2 on a CLIP image embedding, 1 (worst) … 10 (best).

The head is `sac+logos+ava1-l14-linearMSE.pth` (keys layers.{0,2,4,6,7}.{weight,bias}: five
Linear layers with dropout between the first four, no activations) applied to the L2-normalised
image embedding of CLIP ViT-L/14 (768 values). Both come from the registry or local paths:
`--set model=<head file>` and `--set clip=<CLIP folder>`. The head's input width must match the
CLIP model's embedding width. SD 1.x was trained on images scoring above 5.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from preprocess.steps import Item, LoadedStep, StepOutput, register, validate_params
from preprocess.tagging import batches, pick_device, rgb_on_white
from store.registry import load_state_dict

HEAD_LINEAR_LAYERS = (0, 2, 4, 6, 7)  # index in the original nn.Sequential; dropouts sit at 1, 3, 5


class AestheticParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "laion-aesthetic-v2"  # the MLP head (.pth or .safetensors)
    clip: str = "clip-vit-l14"  # CLIP transformers folder whose image embedding the head was trained on
    batch_size: int = Field(16, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"


def build_head(state: dict, where: str):
    """The predictor's nn.Sequential, sized from the checkpoint's own tensors."""
    from torch import nn

    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    wanted = [f"layers.{i}.{part}" for i in HEAD_LINEAR_LAYERS for part in ("weight", "bias")]
    missing = [key for key in wanted if key not in state]
    if missing:
        raise ValueError(f"{where}: not a LAION aesthetic head: missing {', '.join(missing)} (keys: {', '.join(list(state)[:8])})")
    modules: list[nn.Module] = []
    for index in range(HEAD_LINEAR_LAYERS[-1] + 1):
        if index in HEAD_LINEAR_LAYERS:
            out_features, in_features = state[f"layers.{index}.weight"].shape
            modules.append(nn.Linear(in_features, out_features))
        else:
            modules.append(nn.Dropout(0.2))
    head = nn.Sequential(*modules)
    head.load_state_dict({k.removeprefix("layers."): state[k].float() for k in wanted})
    return head.eval()


@register("aesthetic", params=AestheticParams)
def load_aesthetic(params: dict, registry) -> LoadedStep:
    """Aesthetic score 1–10 per image (the head's raw output, clamped; raw value in meta)."""
    parsed: AestheticParams = validate_params(AestheticParams, params, "aesthetic")
    head_model = registry.resolve(parsed.model, kind="aesthetic-head")
    clip_model = registry.resolve(parsed.clip, kind="clip")
    import torch
    from transformers import CLIPImageProcessor, CLIPModel

    if head_model.path.is_dir():
        raise ValueError(f"step 'aesthetic': model: {head_model.path} is a folder; the head is one .pth/.safetensors file")
    head = build_head(load_state_dict(head_model.path), str(head_model.path))
    if not (clip_model.path / "config.json").exists():
        raise ValueError(f"step 'aesthetic': clip: {clip_model.path} is not a transformers CLIP folder (no config.json)")
    device = pick_device(parsed.device)
    clip = CLIPModel.from_pretrained(clip_model.path).to(device).eval()
    processor = CLIPImageProcessor.from_pretrained(clip_model.path)
    width = clip.config.projection_dim
    if head[0].in_features != width:
        raise ValueError(
            f"step 'aesthetic': the head {head_model.path.name} takes {head[0].in_features}-wide embeddings but "
            f"CLIP {clip_model.path.name} gives {width} (the LAION v2 head needs CLIP ViT-L/14)"
        )
    head = head.to(device)

    def run(items: list[Item]) -> list[StepOutput]:
        outputs = []
        for batch in batches(items, parsed.batch_size):
            pixels = processor(images=[rgb_on_white(item.image) for item in batch], return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                pooled = clip.vision_model(pixel_values=pixels.to(device)).pooler_output
                embedding = torch.nn.functional.normalize(clip.visual_projection(pooled), dim=-1)
                raw = head(embedding).squeeze(-1).float().cpu().tolist()
            for value in raw:
                outputs.append(StepOutput(scores={"aesthetic": min(10.0, max(1.0, value))}, meta={"aesthetic_raw": value}))
        return outputs

    combined = hashlib.sha256(f"{head_model.sha256}:{clip_model.sha256}".encode()).hexdigest()
    return LoadedStep("aesthetic", "laion-aesthetic-v2", head_model.name, combined, run, parsed.model_dump(mode="json"))
