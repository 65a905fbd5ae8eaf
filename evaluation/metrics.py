"""Sample metrics: CLIP-T, CLIP-I, DINO, aesthetic, face identity, diversity.

- CLIP-T: cosine between the prompt's CLIP text embedding and the sample's image embedding.
- CLIP-I / DINO: mean pairwise cosine between samples and the dataset version's images
  (DreamBooth paper, Table 1: real images score 0.885 / 0.774 against each other).
- aesthetic: the LAION v2 head (the `aesthetic` step) on each sample, 1–10.
- face_identity: cosine of face embeddings, sample face vs each training face, averaged;
  a sample without a face scores 0 (as FastComposer publishes it) and is counted in faces_missing.
- diversity: mean pairwise DINO distance (1 − cosine) among the samples of one prompt.
All embeddings are unit vectors; every metric of a model is the mean over its samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from evaluation.config import EvalPreset
from store.registry import Registry


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of every row of `a` with every row of `b` (rows are unit vectors)."""
    return np.asarray(a, np.float64) @ np.asarray(b, np.float64).T


def mean_pairwise_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(cosine_matrix(a, b).mean())


def mean_pairwise_distance(vectors: np.ndarray) -> float | None:
    """Mean (1 − cosine) over distinct pairs; None for fewer than two vectors."""
    n = len(vectors)
    if n < 2:
        return None
    sims = cosine_matrix(vectors, vectors)[np.triu_indices(n, k=1)]
    return float((1.0 - sims).mean())


@dataclass
class Encoders:
    """Every model the metrics need, loaded once (registry names or local paths from the preset)."""

    clip: Any
    dino: Any
    face: Any | None = None
    aesthetic: Any | None = None  # a preprocess LoadedStep

    @classmethod
    def load(cls, preset: EvalPreset, registry: Registry) -> Encoders:
        from evaluation.encoders import ClipEncoder, DinoEncoder
        from evaluation.faces import load_face_embedder
        from preprocess.steps import load_step

        aesthetic = None
        if preset.aesthetic_model:
            aesthetic = load_step("aesthetic", {"model": preset.aesthetic_model, "clip": preset.clip_model,
                                                "device": preset.device}, registry)
        return cls(
            clip=ClipEncoder.load(preset.clip_model, registry, preset.device),
            dino=DinoEncoder.load(preset.dino_model, registry, preset.device),
            face=load_face_embedder(preset.face_model, registry) if preset.face_model else None,
            aesthetic=aesthetic,
        )

    def model_hashes(self) -> dict[str, str | None]:
        return {"clip": self.clip.model_hash, "dino": self.dino.model_hash,
                "face": self.face.model_hash if self.face else None,
                "aesthetic": self.aesthetic.model_hash if self.aesthetic else None}


@dataclass
class References:
    """Embeddings of the dataset version's images (what samples are compared with)."""

    clip: np.ndarray
    dino: np.ndarray
    faces: np.ndarray | None = None  # one row per training image with a face; None: no face model


@dataclass
class ScoredSample:
    model: str  # trained | base
    prompt: str
    seed: int
    scores: dict[str, Any] = field(default_factory=dict)


def score_images(images: list[Image.Image], prompts: list[str], refs: References, encoders: Encoders) -> list[dict]:
    """Per-image scores against the references; `prompts[i]` is what image i was asked to show."""
    clip_images = encoders.clip.images(images)
    clip_texts = encoders.clip.texts(prompts)
    dino_images = encoders.dino.images(images)
    clip_i = cosine_matrix(clip_images, refs.clip).mean(axis=1)
    dino = cosine_matrix(dino_images, refs.dino).mean(axis=1)
    clip_t = (clip_images.astype(np.float64) * clip_texts).sum(axis=1)
    rows = [{"clip_t": float(clip_t[i]), "clip_i": float(clip_i[i]), "dino": float(dino[i]),
             "_dino": dino_images[i]} for i in range(len(images))]
    if encoders.aesthetic is not None:
        from preprocess.steps import Item

        for row, output in zip(rows, encoders.aesthetic.run([Item(image=im) for im in images])):
            row["aesthetic"] = float(output.scores["aesthetic"])
    if encoders.face is not None and refs.faces is not None and len(refs.faces):
        for row, vector in zip(rows, encoders.face.embed(images)):
            row["has_face"] = vector is not None
            row["face_identity"] = 0.0 if vector is None else float(cosine_matrix(vector[None], refs.faces).mean())
    return rows


def summarise(rows: list[dict]) -> dict[str, Any]:
    """The mean of each metric over `rows`, faces_missing, and diversity over each prompt's samples."""
    out: dict[str, Any] = {"samples": len(rows)}
    for name in ("clip_t", "clip_i", "dino", "aesthetic", "face_identity"):
        values = [r[name] for r in rows if name in r]
        if values:
            out[name] = float(np.mean(values))
    if any("has_face" in r for r in rows):
        out["faces_missing"] = sum(1 for r in rows if not r.get("has_face"))
    by_prompt: dict[str, list[np.ndarray]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt"], []).append(r["_dino"])
    spreads = [d for d in (mean_pairwise_distance(np.stack(v)) for v in by_prompt.values()) if d is not None]
    if spreads:
        out["diversity"] = float(np.mean(spreads))
    return out


def score_samples(samples: list, refs: References, encoders: Encoders) -> tuple[list[ScoredSample], dict, dict]:
    """Score generated samples (objects with .model, .prompt, .seed, .image).

    Returns (per-sample scores, {model: metrics}, {prompt: {model: metrics}}); `lift` = trained − base.
    """
    rows = score_images([s.image for s in samples], [s.prompt for s in samples], refs, encoders)
    for row, sample in zip(rows, samples):
        row["prompt"], row["model"] = sample.prompt, sample.model
    overall = {model: summarise([r for r in rows if r["model"] == model])
               for model in dict.fromkeys(r["model"] for r in rows)}
    if "trained" in overall and "base" in overall:
        overall["lift"] = {k: overall["trained"][k] - overall["base"][k] for k in overall["trained"]
                           if k != "samples" and k in overall["base"]}
    per_prompt: dict[str, dict] = {}
    for prompt in dict.fromkeys(r["prompt"] for r in rows):
        per_prompt[prompt] = {model: summarise([r for r in rows if r["prompt"] == prompt and r["model"] == model])
                              for model in overall if model != "lift"}
    scored = [ScoredSample(s.model, s.prompt, s.seed, {k: v for k, v in r.items() if not k.startswith("_")
                                                       and k not in ("prompt", "model")})
              for s, r in zip(samples, rows)]
    return scored, overall, per_prompt
