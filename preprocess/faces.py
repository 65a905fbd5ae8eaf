"""Step "align": find faces (5 landmarks) and crop around the main face, eyes levelled.

Modes: `face` (crop centred on the main face, `margin` face-sizes around it; with no face it
crops like `focal`), `focal` (crop around the most salient region, like AUTOMATIC1111's auto
focal point), `none` (detect only; the image passes through).
meta["faces"] are in the output image's coordinates, meta["main_face"] is one of them or None,
so later steps ("restore only when a face is found") and the dashboard can use them.
"""

from __future__ import annotations

import math
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from preprocess.face_detect import Face, load_detector, main_face, move_face
from preprocess.steps import Item, LoadedStep, StepOutput, register, validate_params


class AlignParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "retinaface-resnet50"  # registry name or local path of detection_Resnet50_Final.pth
    fallback: Literal["opencv-cascade", "none"] = "opencv-cascade"  # when the registry model is missing
    mode: Literal["face", "focal", "none"] = "face"
    margin: float = Field(1.0, ge=0, le=10)  # face-box sizes of context on each side of the face
    aspect: float = Field(1.0, gt=0.1, le=10)  # crop width / height
    level_eyes: bool = True
    max_angle: float = Field(30.0, ge=0, le=90)  # larger eye tilts are left alone (likely a bad landmark)
    conf_threshold: float = Field(0.8, gt=0, le=1)  # RetinaFace score threshold
    max_faces: int = Field(20, ge=1)


def eye_angle(face: Face) -> float:
    """Tilt of the line through the eyes, degrees (positive: right eye lower)."""
    (lx, ly), (rx, ry) = face["landmarks"][0], face["landmarks"][1]
    return math.degrees(math.atan2(ry - ly, rx - lx))


def fit_crop(cx: float, cy: float, crop_w: float, crop_h: float, width: int, height: int) -> list[int]:
    """A crop of the given size (shrunk, keeping its aspect, if larger than the image) centred near (cx, cy)."""
    shrink = min(1.0, width / crop_w, height / crop_h)
    crop_w, crop_h = crop_w * shrink, crop_h * shrink
    x0 = min(max(cx - crop_w / 2, 0), width - crop_w)
    y0 = min(max(cy - crop_h / 2, 0), height - crop_h)
    return [round(x0), round(y0), round(x0 + crop_w), round(y0 + crop_h)]


def focal_point(rgb: np.ndarray) -> tuple[float, float]:
    """Centre of the most salient region (spectral-residual saliency, brightest 10% of the map)."""
    height, width = rgb.shape[:2]
    scale = 256 / max(height, width)
    small = cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    ok, saliency = cv2.saliency.StaticSaliencySpectralResidual_create().computeSaliency(small)
    if not ok or not np.isfinite(saliency).all() or saliency.max() <= 0:
        return width / 2, height / 2
    saliency = cv2.GaussianBlur(saliency.astype(np.float32), (0, 0), 3)
    weights = np.where(saliency >= np.quantile(saliency, 0.9), saliency, 0)
    ys, xs = np.indices(weights.shape)
    total = weights.sum()
    return float((xs * weights).sum() / total / scale), float((ys * weights).sum() / total / scale)


def align_image(rgb: np.ndarray, faces: list[Face], p: AlignParams) -> tuple[np.ndarray | None, dict]:
    """Crop (and level) per the mode; returns (new image or None, meta with faces in output coordinates)."""
    height, width = rgb.shape[:2]
    main = main_face(faces, width, height)
    if p.mode == "none":
        return None, {"faces": faces, "main_face": main, "crop": None}
    matrix = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    angle = 0.0
    if p.mode == "face" and main is not None:
        x0, y0, x1, y1 = main["box"]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        if p.level_eyes and main.get("landmarks") and 0.5 < abs(eye_angle(main)) <= p.max_angle:
            angle = eye_angle(main)
            matrix = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
            rgb = cv2.warpAffine(rgb, matrix, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101)
        side = max(x1 - x0, y1 - y0) * (1 + 2 * p.margin)
        box, by = fit_crop(cx, cy, side * math.sqrt(p.aspect), side / math.sqrt(p.aspect), width, height), "face"
    else:
        cx, cy = focal_point(rgb)
        side = math.sqrt(width * height)  # the largest crop of this aspect that fits, around the focal point
        box, by = fit_crop(cx, cy, side * math.sqrt(p.aspect) * 4, side / math.sqrt(p.aspect) * 4, width, height), "focal"
    x0, y0, x1, y1 = box
    matrix = matrix.copy()
    matrix[:, 2] -= (x0, y0)
    moved = [move_face(f, matrix) for f in faces]
    def in_crop(face: Face) -> bool:
        bx0, by0, bx1, by1 = face["box"]
        return 0 <= (bx0 + bx1) / 2 < x1 - x0 and 0 <= (by0 + by1) / 2 < y1 - y0

    inside = [f for f in moved if in_crop(f)]
    new_main = moved[faces.index(main)] if main is not None else None
    meta = {"faces": inside, "main_face": new_main if new_main in inside else None,
            "crop": {"by": by, "box": box, "angle": round(angle, 2), "source_size": [width, height]}}
    if box == [0, 0, width, height] and angle == 0.0:
        return None, meta
    return np.ascontiguousarray(rgb[y0:y1, x0:x1]), meta


@register("align", params=AlignParams)
def load_align(params: dict, registry) -> LoadedStep:
    """Load the face detector (RetinaFace from local weights, or the OpenCV cascade fallback)."""
    p = validate_params(AlignParams, params, "align")
    detector, model_id, model_hash, fallback_reason = load_detector(p.model, registry, p.fallback, p.conf_threshold, p.max_faces)

    def run(items: list[Item]) -> list[StepOutput]:
        from PIL import Image

        outputs = []
        for item in items:
            rgb = np.asarray(item.image.convert("RGB"))
            faces = detector.detect(rgb)
            image, meta = align_image(rgb, faces, p)
            meta.update(backend=detector.backend, face_count=len(meta["faces"]))
            if fallback_reason:
                meta["fallback_reason"] = fallback_reason
            outputs.append(StepOutput(image=None if image is None else Image.fromarray(image), meta=meta))
        return outputs

    return LoadedStep("align", detector.backend, model_id, model_hash, run, p.model_dump())
