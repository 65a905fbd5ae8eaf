"""Step "align": find faces and align the main one FFHQ-style (see preprocess/face_align.py).

Detectors, best first: RetinaFace (when its weights are present), yuface, dlib HOG, OpenCV's
cascade (`fallback: auto`); the backend that found each face is recorded. Landmarks: the
detector's 5 points, or dlib's 68-point predictor run on a dlib-style box (`landmarks: 68`; that
model's training data excludes commercial use).

Modes: `face` (the FFHQ-aligned square crop of the main face at `size` px; with no usable face it
crops like `focal`), `focal` (crop around the most salient region, like AUTOMATIC1111's auto focal
point), `none` (detect only; the image passes through).

meta["faces"] are in the output image's coordinates, meta["main_face"] is one of them or None (what
later steps and the dashboard use); meta["source_faces"] are the same faces in the source image's
pixels; meta["crop"]["matrix"] / ["inverse"] map source ↔ crop; meta["transform"] maps the original
image ↔ the current one (later geometric steps keep it up to date). Faces smaller than `min_face`
px are recorded in meta["small_faces"] and not used.
"""

from __future__ import annotations

import math
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from preprocess.face_align import alignment_for, eye_angle, warp
from preprocess.face_detect import FALLBACKS, Face, load_detector, main_face, move_face
from preprocess.masks import FACE, GENERATED
from preprocess.steps import Item, LoadedStep, StepOutput, register, validate_params

VERSION = 2  # 1: cascade crops with guessed landmarks; 2: detector chain + FFHQ alignment


class AlignParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "retinaface-resnet50"  # registry name or local path of detection_Resnet50_Final.pth
    fallback: Literal["auto", "yuface", "dlib-hog", "opencv-cascade", "none"] = "auto"  # when the model is missing
    mode: Literal["face", "focal", "none"] = "face"
    landmarks: Literal[5, 68] = 5  # 68: dlib's predictor (non-commercial training data)
    landmark_model: str | None = None  # a dlib shape_predictor .dat file (default: the bundled 5 or 68)
    refine_eyes: bool = True  # 5 points: eye centres from dlib's 5-point predictor (see LandmarkRefiner)
    size: int = Field(512, ge=32, le=4096)  # side of the aligned face crop
    context: float = Field(1.0, ge=0.5, le=4)  # 1: FFHQ's framing; 2: a quad twice as wide
    aspect: float = Field(1.0, gt=0.1, le=10)  # focal crops: width / height
    conf_threshold: float | None = Field(None, gt=0, le=1)  # None: the backend's own (RetinaFace 0.8, yuface 0.5)
    min_face: int = Field(24, ge=1)  # faces with a shorter box side (source px) are recorded, not used
    max_faces: int = Field(20, ge=1)


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


def _matrix(m) -> list[list[float]]:
    return [[round(float(v), 6) for v in row] for row in np.asarray(m)]


def _inside(face: Face, width: float, height: float) -> bool:
    x0, y0, x1, y1 = face["box"]
    return 0 <= (x0 + x1) / 2 < width and 0 <= (y0 + y1) / 2 < height


def _touches_border(face: Face, width: int, height: int) -> bool:
    x0, y0, x1, y1 = face["box"]
    return x0 <= 1 or y0 <= 1 or x1 >= width - 1 or y1 >= height - 1


def align_image(rgb: np.ndarray, faces: list[Face], p: AlignParams) -> tuple[np.ndarray | None, dict, np.ndarray | None]:
    """(new image or None, meta with faces in output and source coordinates, mask of mirrored-in pixels or None)."""
    height, width = rgb.shape[:2]
    main = main_face(faces, width, height)
    source_meta = {"source_faces": faces, "source_size": [width, height]}
    identity = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    if p.mode == "none":
        return None, {"faces": faces, "main_face": main, "crop": None, **source_meta,
                      "transform": {"from_source": _matrix(identity), "to_source": _matrix(identity)}}, None
    if p.mode == "face" and main is not None and main.get("landmarks"):
        alignment = alignment_for(main["landmarks"], p.size, p.context)
        crop, outside_share, outside = warp(rgb, alignment)
        moved = [move_face(f, alignment.matrix) for f in faces]
        inside = [f for f in moved if _inside(f, p.size, p.size)]
        new_main = moved[faces.index(main)]
        crop_meta = {"by": "face", **alignment.record(), "outside": round(outside_share, 4),
                     "cut_by_border": _touches_border(main, width, height) or outside_share > 0.01}
        meta = {"faces": inside, "main_face": new_main, "crop": crop_meta, **source_meta,
                "source_main_face": main,
                "transform": {"from_source": crop_meta["matrix"], "to_source": crop_meta["inverse"]}}
        return crop, meta, outside if outside_share > 0 else None
    cx, cy = focal_point(rgb)
    side = math.sqrt(width * height)  # the largest crop of this aspect that fits, around the focal point
    box = fit_crop(cx, cy, side * math.sqrt(p.aspect) * 4, side / math.sqrt(p.aspect) * 4, width, height)
    x0, y0, x1, y1 = box
    matrix = np.array([[1.0, 0, -x0], [0, 1.0, -y0]])
    inverse = np.array([[1.0, 0, x0], [0, 1.0, y0]])
    moved = [move_face(f, matrix) for f in faces]
    inside = [f for f in moved if _inside(f, x1 - x0, y1 - y0)]
    new_main = moved[faces.index(main)] if main is not None else None
    meta = {"faces": inside, "main_face": new_main if new_main in inside else None,
            "crop": {"by": "focal", "box": box, "matrix": _matrix(matrix), "inverse": _matrix(inverse)},
            **source_meta, "transform": {"from_source": _matrix(matrix), "to_source": _matrix(inverse)}}
    if box == [0, 0, width, height]:
        meta["crop"] = None
        meta["transform"] = {"from_source": _matrix(identity), "to_source": _matrix(identity)}
        return None, meta, None
    return np.ascontiguousarray(rgb[y0:y1, x0:x1]), meta, None


def face_mask(size: tuple[int, int], faces: list[Face]):
    """An "L" mask, 255 on an ellipse in each face's box (the face region for face_loss_weight)."""
    from PIL import Image, ImageDraw

    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for face in faces:
        draw.ellipse([round(v) for v in face["box"]], fill=255)
    return mask


class LandmarkRefiner:
    """dlib's predictors on a dlib-style box around each face.

    68 points: the five are derived from them (eye centres, nose tip, mouth corners). 5 points: the
    eye centres from dlib's 5-point model (eye corners), nose and mouth kept from the detector —
    yuface's and the cascade's eye points are a few pixels off (biden.jpg: 9° of false tilt), and
    level eyes need eye centres good to a pixel. RetinaFace's own points are kept as they are.
    """

    def __init__(self, points: int, landmark_model: str | None):
        import dlib

        from preprocess.face_landmarks import dlib_models

        self.points = points
        self.models = dlib_models()
        self.models.predictor(points, landmark_model)  # load now: a bad file fails at load, naming it
        self.path = landmark_model
        self.hog = dlib.get_frontal_face_detector()

    def refine(self, rgb: np.ndarray, face: Face) -> Face:
        from preprocess.face_landmarks import dlib_box, five_from_68, five_from_dlib5

        if self.points == 5 and face.get("backend") in ("retinaface", "dlib-hog"):
            return face
        box, how = dlib_box(rgb, face, self.hog)
        points = self.models.shape(rgb, box, self.points, self.path)
        if self.points == 68:
            return {**face, "landmarks": five_from_68(points), "estimated_landmarks": False,
                    "landmarks68": [[round(x, 1), round(y, 1)] for x, y in points],
                    "landmarks_from": f"dlib-68 ({how} box)"}
        eyes = five_from_dlib5(points)[:2]
        rest = face["landmarks"][2:] if face.get("landmarks") else five_from_dlib5(points)[2:]
        return {**face, "landmarks": eyes + rest, "landmarks_from": f"eyes: dlib-5 ({how} box)"}


def detect_faces(detector, rgb: np.ndarray, p: AlignParams, refiner: LandmarkRefiner | None) -> tuple[list[Face], list[Face]]:
    """(usable faces, faces below min_face), strongest first, at most max_faces usable ones."""
    found = detector.detect(rgb)
    usable = [f for f in found if min(f["box"][2] - f["box"][0], f["box"][3] - f["box"][1]) >= p.min_face]
    small = [f for f in found if f not in usable]
    usable = usable[: p.max_faces]
    if refiner is not None:
        usable = [refiner.refine(rgb, f) for f in usable]
    return usable, small


@register("align", params=AlignParams, version=VERSION)
def load_align(params: dict, registry) -> LoadedStep:
    """Load the face detector chain (and the 68-point predictor when asked for)."""
    p = validate_params(AlignParams, params, "align")
    detector, model_id, model_hash, fallback_reason = load_detector(p.model, registry, p.fallback, p.conf_threshold,
                                                                    p.max_faces)
    refiner = None
    if p.landmarks == 68 or p.refine_eyes:
        try:
            refiner = LandmarkRefiner(p.landmarks, p.landmark_model)
        except ImportError:  # dlib-bin not installed: the detector's own points
            if p.landmarks == 68:
                raise

    def run(items: list[Item]) -> list[StepOutput]:
        from PIL import Image

        outputs = []
        for item in items:
            rgb = np.ascontiguousarray(np.asarray(item.image.convert("RGB")))
            faces, small = detect_faces(detector, rgb, p, refiner)
            image, meta, outside = align_image(rgb, faces, p)
            meta.update(backend=detector.backend, face_count=len(meta["faces"]), landmarks=p.landmarks)
            if small:
                meta["small_faces"] = small
            if meta["main_face"] is not None:
                meta["main_face_angle"] = round(eye_angle(meta["main_face"]["landmarks"]), 2)
            if fallback_reason:
                meta["fallback_reason"] = fallback_reason
            out_image = item.image if image is None else Image.fromarray(image)
            masks = {FACE: face_mask(out_image.size, meta["faces"])} if meta["faces"] else {}
            if outside is not None:
                masks[GENERATED] = Image.fromarray(outside, "L")  # mirrored in from beyond the photo's border
            outputs.append(StepOutput(image=None if image is None else out_image, meta=meta, masks=masks,
                                      scores={"faces": float(len(faces))}))
        return outputs

    return LoadedStep("align", detector.backend, model_id, model_hash, run, p.model_dump())


__all__ = ["AlignParams", "FALLBACKS", "align_image", "eye_angle", "load_align"]
