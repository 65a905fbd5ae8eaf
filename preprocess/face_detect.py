"""Face detection with 5 landmarks: facexlib's RetinaFace from local weights, or OpenCV's cascade offline.

Faces are plain dicts (JSON-able, what steps put in meta["faces"]):
    {"box": [x0, y0, x1, y1], "landmarks": [[x, y] * 5] | None, "score": 0..1, "estimated_landmarks": bool}
Landmark order is facexlib's: left eye, right eye (as seen in the image), nose, left and right mouth corner.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

Face = dict[str, Any]

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

        state = load_state_dict(Path(weights))
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
                          "score": round(float(row[4]), 3), "estimated_landmarks": False})
        return sorted(faces, key=lambda f: -f["score"])[: self.max_faces]


def move_face(face: Face, matrix: np.ndarray) -> Face:
    """The face's box and landmarks through a 2×3 affine transform."""
    x0, y0, x1, y1 = face["box"]
    corners = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]]) @ matrix.T
    moved = dict(face)
    moved["box"] = [round(float(v), 1) for v in (*corners.min(0), *corners.max(0))]
    if face.get("landmarks"):
        points = np.array([[x, y, 1] for x, y in face["landmarks"]]) @ matrix.T
        moved["landmarks"] = [[round(float(x), 1), round(float(y), 1)] for x, y in points]
    return moved


def faces_moved(meta: dict[str, Any], scale: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> dict[str, Any]:
    """meta["faces"]/["main_face"] of an earlier step, scaled then shifted into a new image's pixels ({} if none)."""
    if "faces" not in meta:
        return {}
    matrix = np.array([[scale, 0.0, dx], [0.0, scale, dy]])
    main = meta.get("main_face")
    return {"faces": [move_face(f, matrix) for f in meta["faces"] or []],
            "main_face": move_face(main, matrix) if main else None}


def main_face(faces: list[Face], width: int, height: int) -> Face | None:
    """The face the photo is about: detector score × relative size × closeness to the centre."""
    def weight(face: Face) -> float:
        x0, y0, x1, y1 = face["box"]
        size = math.sqrt(max(x1 - x0, 1) * max(y1 - y0, 1) / (width * height))
        off = math.hypot((x0 + x1) / 2 - width / 2, (y0 + y1) / 2 - height / 2) / math.hypot(width / 2, height / 2)
        return face["score"] * size * (1.0 - 0.5 * off)

    return max(faces, key=weight) if faces else None


def load_detector(model: str, registry, fallback: str = "opencv-cascade", conf_threshold: float = 0.8,
                  max_faces: int = 20) -> tuple[Any, str | None, str, str | None]:
    """(detector, model id, weights sha256, why the fallback ran) for a registry name or local path.

    A registry model that is not on disk falls back to the cascade unless fallback="none"; a path
    the user gave that does not exist is always an error (ModelMissing).
    """
    resolved, reason = registry.resolve_or_fallback(model, fallback != "none")
    if resolved is None:
        return CascadeDetector(), None, "", reason
    return RetinaFaceDetector(resolved.path, conf_threshold, max_faces), resolved.name, resolved.sha256, None
