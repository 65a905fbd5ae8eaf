"""The `quality` step: technical quality without model weights.

Scores (all from the image as given, measured on a copy scaled to `analysis_max_side` so
figures compare across resolutions):
- sharpness: variance of the Laplacian of the grey image (higher is sharper; < ~60 looks blurred)
- exposure: mean luminance, 0 (black) … 1 (white)
- clipping: fraction of pixels blown out (any channel ≥ clip_high) or crushed (every channel ≤ clip_low)
- noise: estimated standard deviation of the noise in grey levels (Immerkær 1996)
- resolution: the short side of the original in pixels (what SD training buckets care about)
- brisque: BRISQUE, 0 (best) … ~100, when OpenCV's model files are present (Debian: opencv-data)
Transparent pixels are left out of exposure and clipping.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from preprocess.rules import Rule, parse_rules, rule_excludes  # noqa: F401  (rule_excludes is used from here too)
from preprocess.steps import Item, LoadedStep, StepOutput, register, validate_params

BRISQUE_DIR = Path("/usr/share/opencv4/quality")


class QualityParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    analysis_max_side: int = Field(1024, ge=64)
    clip_low: int = Field(2, ge=0, le=254)
    clip_high: int = Field(253, ge=1, le=255)
    brisque: bool = True  # computed only where the model files exist; see brisque_dir
    brisque_dir: Path = BRISQUE_DIR


def brisque_files(folder: Path) -> tuple[Path, Path] | None:
    model, ranges = folder / "brisque_model_live.yml", folder / "brisque_range_live.yml"
    return (model, ranges) if model.is_file() and ranges.is_file() else None


def _analysis_copy(image: Image.Image, max_side: int) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB uint8 array (transparency flattened on white) scaled to fit max_side, and the alpha mask."""
    alpha = None
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        alpha = rgba.getchannel("A")
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(rgba, mask=alpha)
        image = flat
    else:
        image = image.convert("RGB")
    scale = max_side / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
        alpha = alpha.resize(size, Image.Resampling.BILINEAR) if alpha is not None else None
    return np.asarray(image), (np.asarray(alpha) > 127 if alpha is not None else None)


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian."""
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def noise_sigma(gray: np.ndarray) -> float:
    """Immerkær's fast noise estimate: σ = √(π/2) / (6 (W-2)(H-2)) · Σ |I * M|."""
    height, width = gray.shape
    if height < 3 or width < 3:
        return 0.0
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    response = cv2.filter2D(gray.astype(np.float64), -1, kernel, borderType=cv2.BORDER_REFLECT)[1:-1, 1:-1]
    return float(np.abs(response).sum() * math.sqrt(math.pi / 2) / (6 * (width - 2) * (height - 2)))


def measure(image: Image.Image, params: QualityParams) -> tuple[dict[str, float], dict]:
    """Scores and details for one image."""
    rgb, opaque = _analysis_copy(image, params.analysis_max_side)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    keep = opaque if opaque is not None and opaque.any() else np.ones(gray.shape, dtype=bool)
    visible, brightest = gray[keep], rgb.max(axis=2)[keep]
    # a highlight is blown when any channel saturates; a shadow is crushed when all channels are black
    shadows = float((brightest <= params.clip_low).mean())
    highlights = float((brightest >= params.clip_high).mean())
    scores = {
        "sharpness": sharpness(gray),
        "exposure": float(visible.mean() / 255.0),
        "clipping": shadows + highlights,
        "noise": noise_sigma(gray),
        "resolution": float(min(image.size)),
    }
    meta = {
        "shadows_clipped": shadows,
        "highlights_clipped": highlights,
        "width": image.width,
        "height": image.height,
        "megapixels": image.width * image.height / 1e6,
        "analysed_size": [int(rgb.shape[1]), int(rgb.shape[0])],
    }
    files = brisque_files(params.brisque_dir) if params.brisque else None
    if files:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        scores["brisque"] = float(cv2.quality.QualityBRISQUE_compute(bgr, str(files[0]), str(files[1]))[0])
    elif params.brisque:
        meta["brisque"] = f"skipped: no brisque_model_live.yml/brisque_range_live.yml in {params.brisque_dir}"
    return scores, meta


@register("quality", params=QualityParams)
def load_quality(params: dict, registry) -> LoadedStep:
    """Weight-free technical quality scores (see the module docstring)."""
    parsed: QualityParams = validate_params(QualityParams, params, "quality")

    def run(items: list[Item]) -> list[StepOutput]:
        outputs = []
        for item in items:
            scores, meta = measure(item.image, parsed)
            outputs.append(StepOutput(scores=scores, meta=meta))
        return outputs

    backend = "opencv+brisque" if parsed.brisque and brisque_files(parsed.brisque_dir) else "opencv"
    return LoadedStep("quality", backend, None, "", run, parsed.model_dump(mode="json"))
