"""FFHQ-style face alignment: the oriented square from the eyes and mouth, warped to a square crop.

The quad is the one the FFHQ dataset script (`recreate_aligned_images`) builds from 68 landmarks:
centred a tenth of the way from the eyes to the mouth, with a side of max(4 × eye distance,
3.6 × eye-to-mouth distance); with the five points of any detector (eye centres, mouth corners)
it is the same quad. One change: FFHQ orients it along the eye line averaged with the normal of
the eye–mouth line, which leaves the eyes up to a few degrees off level on a turned head (biden.jpg:
1.6°); here it follows the eye line, so the eyes are level in every crop. `context` > 1 widens the
quad (more of the head and shoulders; the eyes then take a 1/context share of the FFHQ spacing).

The crop is a similarity transform of the source (rotation, uniform scale, shift), recorded as a
2×3 matrix both ways so boxes and landmarks map between the source image and the crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# the FFHQ script's quad: eye distance × 2 (half side), eye-to-mouth × 1.8, centre 0.1 towards the mouth
_EYE_FACTOR, _MOUTH_FACTOR, _CENTRE_SHIFT = 2.0, 1.8, 0.1


@dataclass
class Alignment:
    matrix: np.ndarray  # 2×3, source pixels → crop pixels
    size: int
    angle: float  # degrees the source was rotated by (positive: the face was tilted clockwise in the image)
    scale: float  # crop pixels per source pixel
    quad: np.ndarray  # 4×2 corners in the source: top-left, bottom-left, bottom-right, top-right

    @property
    def inverse(self) -> np.ndarray:
        return cv2.invertAffineTransform(self.matrix)

    def record(self) -> dict:
        """JSON-able: what meta["crop"] keeps of the alignment."""
        return {"matrix": _rounded(self.matrix), "inverse": _rounded(self.inverse), "size": self.size,
                "angle": round(self.angle, 2), "scale": round(self.scale, 4), "quad": _rounded(self.quad)}


def _rounded(array: np.ndarray) -> list:
    return [[round(float(v), 6) for v in row] for row in np.asarray(array)]


def ffhq_quad(landmarks: list[list[float]], context: float = 1.0) -> np.ndarray:
    """The oriented square (4×2: top-left, bottom-left, bottom-right, top-right) from 5 landmarks."""
    p = np.asarray(landmarks, dtype=np.float64)
    eye_left, eye_right, mouth_left, mouth_right = p[0], p[1], p[3], p[4]
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (mouth_left + mouth_right) / 2 - eye_avg
    x = eye_to_eye / (np.hypot(*eye_to_eye) or 1.0)  # FFHQ: eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x *= max(np.hypot(*eye_to_eye) * _EYE_FACTOR, np.hypot(*eye_to_mouth) * _MOUTH_FACTOR) * context
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * _CENTRE_SHIFT
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def alignment_for(landmarks: list[list[float]], size: int, context: float = 1.0) -> Alignment:
    quad = ffhq_quad(landmarks, context)
    src = np.float32([quad[0], quad[3], quad[1]])  # top-left, top-right, bottom-left
    dst = np.float32([[0, 0], [size, 0], [0, size]])
    matrix = cv2.getAffineTransform(src, dst).astype(np.float64)
    side = float(np.hypot(*(quad[3] - quad[0])))
    angle = math.degrees(math.atan2(quad[3][1] - quad[0][1], quad[3][0] - quad[0][0]))
    return Alignment(matrix, size, angle, size / max(side, 1e-6), quad)


def warp(rgb: np.ndarray, alignment: Alignment) -> tuple[np.ndarray, float, np.ndarray]:
    """(the crop, its share of pixels that lie outside the source, a uint8 mask: 255 there).

    Pixels beyond the border are mirrored in (as the FFHQ script pads), and the mask says where.
    A source much larger than the crop is shrunk first (area filter), so the crop does not alias.
    """
    matrix = alignment.matrix.copy()
    source = rgb
    shrink = int(math.floor(1 / alignment.scale)) if alignment.scale < 0.5 else 1
    if shrink > 1:
        height, width = rgb.shape[:2]
        source = cv2.resize(rgb, (max(1, round(width / shrink)), max(1, round(height / shrink))),
                            interpolation=cv2.INTER_AREA)
        matrix[:, :2] *= np.array([[width / source.shape[1], height / source.shape[0]]])
    size = alignment.size
    crop = cv2.warpAffine(source, matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101)
    inside = cv2.warpAffine(np.full(source.shape[:2], 255, np.uint8), matrix, (size, size), flags=cv2.INTER_NEAREST,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    outside = 255 - inside
    return crop, float((outside > 0).mean()), outside


def eye_angle(landmarks: list[list[float]]) -> float:
    """Tilt of the line through the eyes, degrees (positive: the right eye lower)."""
    (lx, ly), (rx, ry) = landmarks[0], landmarks[1]
    return math.degrees(math.atan2(ry - ly, rx - lx))


def template_eye_share() -> float:
    """Inter-ocular distance / crop side of the FFHQ 512 px template GFPGAN and CodeFormer use (≈ 0.246)."""
    from preprocess.restore import FFHQ_TEMPLATE

    return float(np.hypot(*(FFHQ_TEMPLATE[1] - FFHQ_TEMPLATE[0])) / 512)
