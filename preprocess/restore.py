"""Step "restore": GFPGAN or CodeFormer on each detected face, pasted back with a feathered mask.

Faces come from the align step (item.meta["faces"]) or, when it did not run, from the same
detector chain as align (RetinaFace when its weights are present, else yuface → dlib HOG → cascade). Each face is warped by its 5 landmarks onto the 512 px FFHQ template (what GFPGAN and
CodeFormer were trained on), restored, and warped back. An image without faces passes through
untouched (StepOutput.image is None). There is no fallback: a missing model is an error naming
the path to put it at.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from preprocess.face_detect import Face, landmarks_from_eyes, load_detector
from preprocess.image_models import load_image_model
from preprocess.steps import Item, LoadedStep, StepOutput, register, validate_params

FACE_SIZE = 512
# facexlib's FaceRestoreHelper template for 512 px faces: eyes, nose, mouth corners
FFHQ_TEMPLATE = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                          [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float32)


class RestoreParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "gfpgan-v1.4"  # or "codeformer", or a local .pth/.safetensors path
    fidelity: float = Field(0.7, ge=0, le=1)  # CodeFormer's w: 0 = most restored, 1 = closest to the input
    blend: float = Field(1.0, ge=0, le=1)  # share of the restored face in the pasted result
    detector: str = "retinaface-resnet50"  # used only when the item carries no faces from "align"
    detector_fallback: Literal["auto", "yuface", "dlib-hog", "opencv-cascade", "none"] = "auto"  # align's chain
    max_faces: int = Field(8, ge=1)
    min_face_px: int = Field(12, ge=1)  # smaller faces are left alone


def face_landmarks(face: Face) -> np.ndarray:
    """The face's 5 landmarks, or ones estimated from its box when the detector gave none."""
    if face.get("landmarks"):
        return np.asarray(face["landmarks"], dtype=np.float32)
    x0, y0, x1, y1 = face["box"]
    w, h = x1 - x0, y1 - y0
    return np.asarray(landmarks_from_eyes((x0 + 0.32 * w, y0 + 0.4 * h), (x0 + 0.68 * w, y0 + 0.4 * h)), dtype=np.float32)


def _to_tensor(rgb: np.ndarray):
    import torch

    return torch.from_numpy(rgb).permute(2, 0, 1).float().div(255).unsqueeze(0)


def _to_rgb(tensor) -> np.ndarray:
    return (tensor.squeeze(0).clamp(0, 1).permute(1, 2, 0).mul(255).round().byte().numpy())


def restore_faces(rgb: np.ndarray, faces: list[Face], restore_face, blend: float) -> tuple[np.ndarray, int]:
    """Restore each face (a 512×512 RGB → RGB function) and paste it back; returns (image, faces done)."""
    height, width = rgb.shape[:2]
    result = rgb.astype(np.float32)
    done = 0
    for face in faces:
        matrix, _ = cv2.estimateAffinePartial2D(face_landmarks(face), FFHQ_TEMPLATE, method=cv2.LMEDS)
        if matrix is None:
            continue
        crop = cv2.warpAffine(rgb, matrix, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        restored = restore_face(crop)
        inverse = cv2.invertAffineTransform(matrix)
        back = cv2.warpAffine(restored, inverse, (width, height), flags=cv2.INTER_LINEAR)
        # feathered mask: the template square shrunk by 5% with a blurred edge, warped back with the face
        mask = np.zeros((FACE_SIZE, FACE_SIZE), np.float32)
        inset = FACE_SIZE // 20
        mask[inset:-inset, inset:-inset] = 1.0
        mask = cv2.GaussianBlur(mask, (0, 0), FACE_SIZE / 40)
        mask = cv2.warpAffine(mask, inverse, (width, height), flags=cv2.INTER_LINEAR)[..., None] * blend
        result = result * (1 - mask) + back.astype(np.float32) * mask
        done += 1
    return np.clip(result + 0.5, 0, 255).astype(np.uint8), done


@register("restore", params=RestoreParams, version=2)  # 2: yuface/dlib before the cascade
def load_restore(params: dict, registry) -> LoadedStep:
    """Load GFPGAN or CodeFormer (spandrel, safe weights) and, for items without faces, a detector."""
    import torch

    p = validate_params(RestoreParams, params, "restore")
    resolved = registry.resolve(p.model)
    if resolved.path.is_dir():
        raise ValueError(f"step 'restore': model: {resolved.path} is a folder; expected a GFPGAN or CodeFormer .pth file")
    descriptor = load_image_model(resolved.path, expect={"GFPGAN", "CodeFormer"})
    backend = descriptor.architecture.id.lower()
    network = descriptor.model
    device = next(network.parameters()).device
    detector = None

    def restore_face(crop: np.ndarray) -> np.ndarray:
        x = (_to_tensor(crop) * 2 - 1).to(device)  # both networks work in [-1, 1]
        with torch.inference_mode():
            if backend == "codeformer":
                y = network(x, weight=p.fidelity)[0]
            else:  # fixed noise: the same face gives the same result (steps are cached by input)
                y = network(x, return_rgb=False, randomize_noise=False)[0]
        return _to_rgb(((y + 1) / 2).cpu())

    def run(items: list[Item]) -> list[StepOutput]:
        nonlocal detector
        from PIL import Image

        outputs = []
        for item in items:
            rgb = np.asarray(item.image.convert("RGB"))
            faces = item.meta.get("faces")
            source = "align"
            if faces is None:  # "align" did not run: detect here
                if detector is None:
                    detector = load_detector(p.detector, registry, p.detector_fallback)[0]
                faces, source = detector.detect(rgb), detector.backend
            faces = [f for f in faces if min(f["box"][2] - f["box"][0], f["box"][3] - f["box"][1]) >= p.min_face_px]
            faces = sorted(faces, key=lambda f: -f["score"])[: p.max_faces]
            meta = {"backend": backend, "weights": resolved.short_hash, "faces_from": source, "faces_restored": 0}
            if not faces:
                outputs.append(StepOutput(image=None, meta=meta))
                continue
            restored, done = restore_faces(rgb, faces, restore_face, p.blend)
            meta.update(faces_restored=done, boxes=[f["box"] for f in faces])
            alpha = item.image.getchannel("A") if item.image.mode == "RGBA" else None
            image = Image.fromarray(restored)
            if alpha is not None:
                image.putalpha(alpha)
            outputs.append(StepOutput(image=image if done else None, meta=meta))
        return outputs

    return LoadedStep("restore", backend, resolved.name, resolved.sha256, run, p.model_dump())
