"""Face detection with 5 landmarks, best backend first: facexlib's RetinaFace (local weights), yuface
(libfacedetection's CNN, weights inside the wheel), dlib's HOG detector (+ its 5-point predictor), and
OpenCV's Haar cascade.

Faces are plain dicts (JSON-able, what steps put in meta["faces"]):
    {"box": [x0, y0, x1, y1], "landmarks": [[x, y] * 5] | None, "score": 0..1, "estimated_landmarks": bool,
     "backend": str}
Landmark order is facexlib's: left eye, right eye (as seen in the image), nose, left and right mouth corner.
"estimated_landmarks" is True when some of the five points are guessed from face proportions (the
cascade guesses all but the eyes, dlib's 5-point predictor has no mouth).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

Face = dict[str, Any]
# the detectors without weight files, in the order "auto" tries them
FALLBACKS = ("yuface", "dlib-hog", "opencv-cascade")
DETECTOR_THREADS = int(os.environ.get("ATELIER_DETECTOR_THREADS", "1"))  # per worker: 2 threads ran 5–10× slower

# FFHQ-style proportions, in units of the distance between the eyes (from the 512 px template)
_NOSE_DOWN, _MOUTH_DOWN, _MOUTH_HALF = 0.59, 1.04, 0.44


def landmarks_from_eyes(left: tuple[float, float], right: tuple[float, float]) -> list[list[float]]:
    """Five landmarks from two eye centres, with nose and mouth at average face proportions."""
    (lx, ly), (rx, ry) = left, right
    d = math.hypot(rx - lx, ry - ly) or 1.0
    ux, uy = (rx - lx) / d, (ry - ly) / d  # along the eyes
    nx, ny = -uy, ux  # down the face
    mx, my = (lx + rx) / 2, (ly + ry) / 2
    def at(a: float, b: float) -> list[float]:
        return [round(mx + a * d * ux + b * d * nx, 1), round(my + a * d * uy + b * d * ny, 1)]
    return [[lx, ly], [rx, ry], at(0, _NOSE_DOWN), at(-_MOUTH_HALF, _MOUTH_DOWN), at(_MOUTH_HALF, _MOUTH_DOWN)]


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _suppress_overlaps(faces: list[Face], iou: float = 0.3) -> list[Face]:
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: -f["score"]):
        if all(_iou(face["box"], k["box"]) < iou for k in kept):
            kept.append(face)
    return kept


class CascadeDetector:
    """OpenCV's bundled Haar cascades (4.x wheels). A face counts only if an eye is found in its upper half.

    The frontal cascade also fires on shirts, foliage and crowds; an eye inside the box is what
    separates a face from texture (messi5.jpg: the largest box is the shirt, the small one the face).
    """

    backend = "opencv-cascade"

    def __init__(self, require_eyes: bool = True, work_size: int = 1024):
        root = Path(cv2.data.haarcascades)
        self.face = cv2.CascadeClassifier(str(root / "haarcascade_frontalface_default.xml"))
        self.eye = cv2.CascadeClassifier(str(root / "haarcascade_eye.xml"))
        if self.face.empty() or self.eye.empty():
            raise RuntimeError(f"OpenCV cascade files missing under {root} (OpenCV 5 wheels have none: use opencv<5)")
        self.require_eyes = require_eyes
        self.work_size = work_size

    def _eyes(self, gray: np.ndarray, box: tuple[int, int, int, int]) -> list[tuple[float, float, int]]:
        """Eye centres (in `gray` coordinates) and their neighbour counts, found in the box's upper 60%."""
        x, y, w, h = box
        scale = 160.0 / w  # eyes of small faces are below the eye cascade's 20 px window: enlarge
        roi = cv2.equalizeHist(cv2.resize(gray[y:y + h, x:x + w], None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC))
        found, neighbours = self.eye.detectMultiScale2(roi, 1.05, 3, minSize=(16, 16), maxSize=(70, 70))
        eyes = []
        for (ex, ey, ew, eh), n in zip(found, neighbours):
            cx, cy = ex + ew / 2, ey + eh / 2
            if cy < 0.6 * roi.shape[0]:
                eyes.append((x + cx / scale, y + cy / scale, int(n)))
        eyes.sort(key=lambda e: -e[2])
        return eyes

    def detect(self, rgb: np.ndarray) -> list[Face]:
        height, width = rgb.shape[:2]
        scale = min(1.0, self.work_size / max(height, width))
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if scale < 1:
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        boxes, _, weights = self.face.detectMultiScale3(cv2.equalizeHist(gray), 1.1, 3, minSize=(24, 24),
                                                        outputRejectLevels=True)
        faces = []
        for (x, y, w, h), weight in zip(boxes, weights):
            x, y, w, h = int(x), int(y), int(w), int(h)
            eyes = self._eyes(gray, (x, y, w, h))
            if self.require_eyes and not eyes:
                continue
            # two eyes side by side, or one eye mirrored about the box centre, or the box's average eyes
            pair = [e for e in eyes[1:] if abs(e[0] - eyes[0][0]) > 0.25 * w and abs(e[1] - eyes[0][1]) < 0.25 * h][:1]
            if eyes and pair:
                a, b = sorted([eyes[0][:2], pair[0][:2]])
            elif eyes:
                ex, ey = eyes[0][:2]
                a, b = sorted([(ex, ey), (2 * x + w - ex, ey)])
            else:
                a, b = (x + 0.32 * w, y + 0.40 * h), (x + 0.68 * w, y + 0.40 * h)
            detector = 1 / (1 + math.exp(-(float(weight) - 3.0)))  # cascade's last-stage margin → 0..1
            score = (0.6 if eyes else 0.3) + (0.2 if pair else 0.0) + 0.2 * detector
            faces.append({
                "box": [round(float(v) / scale, 1) for v in (x, y, x + w, y + h)],
                "landmarks": [[round(float(px) / scale, 1), round(float(py) / scale, 1)]
                              for px, py in landmarks_from_eyes(a, b)],
                "score": round(score, 3),
                "estimated_landmarks": True,
                "backend": self.backend,
            })
        return _suppress_overlaps(faces)


class RetinaFaceDetector:
    """facexlib's RetinaFace (ResNet-50) built directly from a local `detection_Resnet50_Final.pth`.

    facexlib's own `init_detection_model` downloads when the file is not in its folder; building the
    network ourselves and loading the state dict safely never touches the network.
    """

    backend = "retinaface"

    def __init__(self, weights: Path, conf_threshold: float = 0.8, max_faces: int = 20, work_size: int = 1280):
        import torch
        from facexlib.detection.retinaface import RetinaFace

        from store.registry import load_state_dict

        try:
            state = load_state_dict(Path(weights))
        except (RuntimeError, EOFError, OSError) as error:  # truncated or not a checkpoint at all
            raise ValueError(f"{weights}: not a readable RetinaFace checkpoint ({str(error).splitlines()[0]})") from None
        if not isinstance(state, dict):
            raise ValueError(f"{weights}: not RetinaFace-ResNet50 weights (no state dict inside)")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        self.net = RetinaFace(network_name="resnet50", half=False, device=torch.device("cpu"))
        try:
            self.net.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(f"{weights}: not RetinaFace-ResNet50 weights ({str(error).splitlines()[0]})") from None
        self.net.eval()
        self.conf_threshold = conf_threshold
        self.max_faces = max_faces
        self.work_size = work_size

    def detect(self, rgb: np.ndarray) -> list[Face]:
        import torch

        height, width = rgb.shape[:2]
        scale = min(1.0, self.work_size / max(height, width))
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        if scale < 1:
            bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        with torch.inference_mode():
            rows = self.net.detect_faces(bgr, self.conf_threshold, 0.4, use_origin_size=True)
        faces = []
        for row in np.asarray(rows)[: self.max_faces * 4]:
            x0, y0, x1, y1 = (float(np.clip(v / scale, 0, lim)) for v, lim in zip(row[:4], (width, height, width, height)))
            if x1 - x0 < 2 or y1 - y0 < 2 or not np.isfinite(row[4]):
                continue
            points = [[round(float(row[5 + 2 * i]) / scale, 1), round(float(row[6 + 2 * i]) / scale, 1)] for i in range(5)]
            faces.append({"box": [round(x0, 1), round(y0, 1), round(x1, 1), round(y1, 1)], "landmarks": points,
                          "score": round(float(row[4]), 3), "estimated_landmarks": False,
                          "backend": self.backend})
        return sorted(faces, key=lambda f: -f["score"])[: self.max_faces]


def _import_with_threads(module: str):
    """Import a detector library whose bundled OpenMP reads OMP_NUM_THREADS once, when it loads."""
    import importlib

    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(DETECTOR_THREADS)
    try:
        return importlib.import_module(module)
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before


class YuFaceDetector:
    """libfacedetection's CNN (the YuNet author's; `yuface` wheel, weights compiled in): boxes + 5 landmarks.

    It works best at most 960 px on the long side, so larger images are shrunk first. Its
    landmarks come in facexlib's order already (checked on obama.jpg: eyes, nose, mouth corners).
    """

    backend = "yuface"

    def __init__(self, conf_threshold: float = 0.5, work_size: int = 960):
        self.lib = _import_with_threads("yuface")
        self.conf_threshold = conf_threshold
        self.work_size = work_size

    def detect(self, rgb: np.ndarray) -> list[Face]:
        height, width = rgb.shape[:2]
        scale = min(1.0, self.work_size / max(height, width))
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        if scale < 1:
            bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        confs, boxes, points = self.lib.detect(np.ascontiguousarray(bgr), conf=self.conf_threshold)
        faces = []
        for conf, (x, y, w, h), row in zip(confs.tolist(), boxes.astype(float).tolist(), points.astype(float).tolist()):
            x0, y0 = max(0.0, x / scale), max(0.0, y / scale)
            x1, y1 = min(float(width), (x + w) / scale), min(float(height), (y + h) / scale)
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            faces.append({"box": [round(x0, 1), round(y0, 1), round(x1, 1), round(y1, 1)],
                          "landmarks": [[round(row[2 * i] / scale, 1), round(row[2 * i + 1] / scale, 1)] for i in range(5)],
                          "score": round(conf / 100.0, 3), "estimated_landmarks": False, "backend": self.backend})
        return _suppress_overlaps(faces)


class DlibHogDetector:
    """dlib's HOG + linear SVM frontal detector, with dlib's 5-point predictor for the eyes.

    The 5-point model has eye corners and the nose base but no mouth: the mouth is placed from the
    eyes and the nose at FFHQ-template proportions (so "estimated_landmarks" is True).
    """

    backend = "dlib-hog"

    def __init__(self, conf_threshold: float = 0.6, work_size: int = 1024, predictor: str | None = None):
        from preprocess.face_landmarks import dlib_models

        self.dlib = _import_with_threads("dlib")
        self.detector = self.dlib.get_frontal_face_detector()
        self.models = dlib_models()
        self.predictor = predictor
        self.conf_threshold = conf_threshold
        self.work_size = work_size

    def boxes(self, rgb: np.ndarray) -> list[tuple[list[float], float]]:
        """dlib's own boxes ([x0, y0, x1, y1] in `rgb` pixels) and raw SVM scores."""
        height, width = rgb.shape[:2]
        scale = min(1.0, self.work_size / max(height, width))
        work = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else rgb
        upsample = 1 if max(work.shape[:2]) <= 700 else 0  # the HOG window is 80 px: small faces need ×2
        rects, scores, _ = self.detector.run(np.ascontiguousarray(work), upsample, 0.0)
        return [([r.left() / scale, r.top() / scale, r.right() / scale, r.bottom() / scale], float(s))
                for r, s in zip(rects, scores)]

    def detect(self, rgb: np.ndarray) -> list[Face]:
        from preprocess.face_landmarks import five_from_dlib5

        height, width = rgb.shape[:2]
        faces = []
        for box, raw in self.boxes(rgb):
            score = 1 / (1 + math.exp(-2 * raw))  # SVM margin → 0..1 (0.5 at the decision boundary)
            if score < self.conf_threshold:
                continue
            points = self.models.shape(rgb, box, 5, self.predictor)
            clipped = [max(0.0, box[0]), max(0.0, box[1]), min(float(width), box[2]), min(float(height), box[3])]
            faces.append({"box": [round(v, 1) for v in clipped], "landmarks": five_from_dlib5(points),
                          "score": round(score, 3), "estimated_landmarks": True, "backend": self.backend})
        return _suppress_overlaps(faces)


def move_face(face: Face, matrix: np.ndarray) -> Face:
    """The face's box and landmarks through a 2×3 affine transform."""
    x0, y0, x1, y1 = face["box"]
    corners = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]]) @ matrix.T
    moved = dict(face)
    moved["box"] = [round(float(v), 1) for v in (*corners.min(0), *corners.max(0))]
    for key in ("landmarks", "landmarks68"):
        if face.get(key):
            points = np.array([[x, y, 1] for x, y in face[key]]) @ matrix.T
            moved[key] = [[round(float(x), 1), round(float(y), 1)] for x, y in points]
    return moved


def _compose(outer: np.ndarray, inner) -> list[list[float]]:
    """2×3 affine `outer` after `inner` (a nested list), as a nested list."""
    full = np.vstack([np.asarray(inner, dtype=np.float64), [0, 0, 1]])
    return [[round(float(v), 6) for v in row] for row in (outer @ full)[:2]]


def faces_moved(meta: dict[str, Any], scale: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> dict[str, Any]:
    """meta["faces"]/["main_face"] of an earlier step, scaled then shifted into a new image's pixels ({} if none)."""
    if "faces" not in meta:
        return {}
    matrix = np.array([[scale, 0.0, dx], [0.0, scale, dy]])
    main = meta.get("main_face")
    moved = {"faces": [move_face(f, matrix) for f in meta["faces"] or []],
             "main_face": move_face(main, matrix) if main else None}
    if transform := meta.get("transform"):  # original image ↔ this one, kept both ways
        inverse = np.array([[1 / scale, 0.0, -dx / scale], [0.0, 1 / scale, -dy / scale]])
        moved["transform"] = {"from_source": _compose(np.vstack([matrix, [0, 0, 1]]), transform["from_source"]),
                              "to_source": _compose(np.vstack([np.asarray(transform["to_source"]), [0, 0, 1]]),
                                                    inverse)}
    return moved


def main_face(faces: list[Face], width: int, height: int) -> Face | None:
    """The face the photo is about: detector score × relative size × closeness to the centre."""
    def weight(face: Face) -> float:
        x0, y0, x1, y1 = face["box"]
        size = math.sqrt(max(x1 - x0, 1) * max(y1 - y0, 1) / (width * height))
        off = math.hypot((x0 + x1) / 2 - width / 2, (y0 + y1) / 2 - height / 2) / math.hypot(width / 2, height / 2)
        return face["score"] * size * (1.0 - 0.5 * off)

    return max(faces, key=weight) if faces else None


def build_fallback(name: str, conf_threshold: float | None = None):
    """One weight-free detector by name (ImportError when its package is not installed)."""
    if name == "yuface":
        return YuFaceDetector(conf_threshold if conf_threshold is not None else 0.5)
    if name == "dlib-hog":
        return DlibHogDetector(conf_threshold if conf_threshold is not None else 0.6)
    if name == "opencv-cascade":
        return CascadeDetector()
    raise ValueError(f"unknown face detector {name!r}; detectors: retinaface, {', '.join(FALLBACKS)}")


def load_detector(model: str, registry, fallback: str = "auto", conf_threshold: float | None = None,
                  max_faces: int = 20) -> tuple[Any, str | None, str, str | None]:
    """(detector, model id, weights sha256, why the fallback ran) for a registry name or local path.

    A registry model that is not on disk falls back: "auto" takes the first of yuface → dlib HOG →
    cascade whose package is installed; a detector's name takes that one; "none" raises ModelMissing.
    A path the user gave that does not exist is always an error (ModelMissing).
    """
    resolved, reason = registry.resolve_or_fallback(model, fallback != "none")
    if resolved is not None:
        detector = RetinaFaceDetector(resolved.path, conf_threshold if conf_threshold is not None else 0.8, max_faces)
        return detector, resolved.name, resolved.sha256, None
    names = FALLBACKS if fallback == "auto" else (fallback,)
    unavailable = []
    for name in names:
        try:
            return build_fallback(name, conf_threshold), None, "", reason
        except ImportError as error:
            unavailable.append(f"{name} ({error})")
    raise RuntimeError(f"no face detector available: {reason}; fallbacks not installed: {'; '.join(unavailable)}")
