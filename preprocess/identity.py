"""Step "identity": is the main face the dataset's subject?

Each image's main face (from "align" when it ran, else found here with the same detector chain)
is embedded — ArcFace ONNX when `arcface-r50` (or a given .onnx) is present, else dlib's ResNet —
and scored by cosine similarity (score `identity`, 1 = identical) against the subject:
- `reference: a.jpg,b.jpg` (or a list): the mean embedding of the reference photos' main faces,
  scored as each image is processed (and cached: the references' files are part of the key);
- otherwise the medoid of the members' embeddings (the face most like all the others), computed
  after every image is embedded (`dataset_pass`; recomputed each run, it depends on the whole set).
An image without a usable face gets no `identity` score (rules use `faces`: "faces < 1").

Thresholds measured with dlib's ResNet on yuface's faces (tests/fixtures; obama3.jpg and
obama_partial_face2.jpg of the face_recognition 1.3.0 sdist too): the same person in different
photos 0.950–0.972 (obama, obama2, obama3), crops of one photo 0.957–0.983; different people
0.802–0.844 (obama, biden, astronaut, messi5). `SAME_PERSON` = 0.90 sits in that gap; ArcFace scores are on another
scale (same person typically > 0.4): measure yours before you set a rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from preprocess.steps import Item, LoadedStep, StepOutput, register, validate_params

VERSION = 1
SAME_PERSON = 0.90  # dlib ResNet cosine: same person ≥ 0.95, different people ≤ 0.85 on the fixtures


class IdentityParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "arcface-r50"  # registry name or .onnx path; "dlib" (or a .dat path) for dlib's ResNet
    fallback: Literal["dlib", "none"] = "dlib"  # when the registry model is missing
    dlib_model: str | None = None  # dlib_face_recognition_resnet_model_v1.dat (default: the bundled one)
    reference: list[str] = Field(default_factory=list)  # photos of the subject; empty: the dataset's medoid
    detector: str = "retinaface-resnet50"  # only for images that "align" did not run on
    detector_fallback: Literal["auto", "yuface", "dlib-hog", "opencv-cascade", "none"] = "auto"
    min_face: int = Field(24, ge=1)

    @field_validator("reference", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        if isinstance(value, str):  # --set reference=a.jpg,b.jpg
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("reference")
    @classmethod
    def _exist(cls, value: list[str]) -> list[str]:
        for path in value:
            if not Path(path).expanduser().is_file():
                raise ValueError(f"reference photo {path} does not exist")
        return value


def _main_face(item_meta: dict, rgb: np.ndarray, detector, min_face: int) -> dict | None:
    from preprocess.face_detect import main_face

    if "faces" in item_meta:  # align ran: its main face, in this image's pixels
        return item_meta.get("main_face")
    height, width = rgb.shape[:2]
    faces = [f for f in detector.detect(rgb) if min(f["box"][2] - f["box"][0], f["box"][3] - f["box"][1]) >= min_face]
    return main_face(faces, width, height)


def reference_embedding(paths: list[str], embedder, detector, min_face: int) -> np.ndarray:
    """Mean unit embedding of the references' main faces; a reference without a face fails naming it."""
    from preprocess.face_embed import unit
    from preprocess.load import load_image_file

    vectors = []
    for path in paths:
        rgb = np.ascontiguousarray(np.asarray(load_image_file(Path(path).expanduser(), min_side=1).image.convert("RGB")))
        face = _main_face({}, rgb, detector, min_face)
        if face is None:
            raise ValueError(f"reference photo {path}: no face found")
        vectors.append(embedder.embed(rgb, face))
    return unit(np.mean(vectors, axis=0))


def medoid_scores(params: dict[str, Any], metas: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Without references: each member's cosine to the medoid of all members' embeddings."""
    p = validate_params(IdentityParams, params, "identity")
    if p.reference:
        return [{} for _ in metas]  # scored per image against the references already
    vectors = {i: np.asarray(m["identity"]["embedding"]) for i, m in enumerate(metas)
               if (m.get("identity") or {}).get("embedding")}
    if len(vectors) < 2:
        return [{} for _ in metas]
    keys = list(vectors)
    matrix = np.stack([vectors[k] for k in keys])
    sims = matrix @ matrix.T
    medoid = matrix[int(np.argmax(sims.sum(axis=1)))]
    by_index = {k: float(np.clip(vectors[k] @ medoid, -1, 1)) for k in keys}
    return [{"identity": round(by_index[i], 4)} if i in by_index else {} for i in range(len(metas))]


@register("identity", params=IdentityParams, version=VERSION, dataset_pass=medoid_scores)
def load_identity(params: dict, registry) -> LoadedStep:
    """Load the embedder (ArcFace ONNX, else dlib ResNet), a detector for images without faces, and the references."""
    from preprocess.face_detect import load_detector
    from preprocess.face_embed import embedder_hash, load_embedder

    p = validate_params(IdentityParams, params, "identity")
    embedder, model_id, fallback_reason = load_embedder(p.model, registry, p.fallback, p.dlib_model)
    detector = None

    def get_detector():
        nonlocal detector
        if detector is None:
            detector = load_detector(p.detector, registry, p.detector_fallback)[0]
        return detector

    subject = reference_embedding(p.reference, embedder, get_detector(), p.min_face) if p.reference else None

    def run(items: list[Item]) -> list[StepOutput]:
        outputs = []
        for item in items:
            rgb = np.ascontiguousarray(np.asarray(item.image.convert("RGB")))
            face = _main_face(item.meta, rgb, get_detector() if "faces" not in item.meta else None, p.min_face)
            meta: dict[str, Any] = {"backend": embedder.backend,
                                    "subject": "references" if subject is not None else "medoid"}
            if fallback_reason:
                meta["fallback_reason"] = fallback_reason
            if face is None:
                meta["identity"] = {"face": None, "embedding": None}
                outputs.append(StepOutput(meta=meta))
                continue
            vector = embedder.embed(rgb, face)
            meta["identity"] = {"face": face["box"], "embedding": [round(float(v), 5) for v in vector]}
            scores = {}
            if subject is not None:
                scores["identity"] = round(float(np.clip(vector @ subject, -1, 1)), 4)
            outputs.append(StepOutput(meta=meta, scores=scores))
        return outputs

    return LoadedStep("identity", embedder.backend, model_id, embedder_hash(embedder), run, p.model_dump())
