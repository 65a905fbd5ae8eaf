"""Open untrusted image bytes safely and bring them upright into RGB/RGBA.

Every failure is a RejectedImage whose message is the reason a user reads in the ingest report.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 80_000_000  # ~ 10000 × 8000; larger is treated as a decompression bomb
DEFAULT_MIN_SIDE = 64
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif", "MPO": "jpg"}


class RejectedImage(ValueError):
    """The file cannot be used; str(error) is the reason."""


@dataclass
class LoadedImage:
    image: Image.Image  # upright, RGB or RGBA, 8 bits per channel
    format: str  # as Pillow names it: JPEG, PNG, WEBP, ...
    ext: str  # blob extension for the original bytes
    mode: str  # mode of the original file
    width: int  # after EXIF orientation
    height: int
    orientation: int  # EXIF orientation tag of the original (1 = upright)
    frames: int  # >1: animated, first frame taken
    phash: str  # 64-bit perceptual hash, hex


def _to_8bit(image: Image.Image) -> Image.Image:
    """CMYK, 16/32-bit, palette, LA, ... → RGB or RGBA, keeping transparency where there is some."""
    if image.mode in ("RGB", "RGBA"):
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, "L").convert("RGB")
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "PA", "La"):
        return image.convert("RGBA")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def check_jpeg_scan(data: bytes) -> None:
    """Reject a JPEG whose header is fine but whose scan data is garbage or cut short.

    Pillow hides libjpeg's warnings ("Corrupt JPEG data: N extraneous bytes before marker",
    "premature end of data segment") and returns a mostly grey image; libjpeg-turbo through
    simplejpeg in strict mode reports them. Decoding at 1/8 scale still reads every entropy-coded
    byte, so the check costs a small share of a full decode. Files simplejpeg cannot read at all
    (12-bit JPEGs, ...) but Pillow did are left to Pillow.
    """
    import simplejpeg

    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", min_factor=8, strict=True)
    except ValueError as error:
        message = str(error)
        if "Corrupt JPEG data" in message or "Premature end" in message or "premature end" in message:
            raise RejectedImage(f"corrupt JPEG scan data: {message}") from None


def perceptual_hash(image: Image.Image) -> str:
    """64-bit DCT hash (imagehash.phash) of the image over a white background."""
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        image = background
    return str(imagehash.phash(image))


def open_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    animated: str = "first-frame",
) -> LoadedImage:
    """Decode untrusted bytes. Rejects empty, non-image, truncated, oversized and too small files.

    animated: "first-frame" takes frame 0 of a GIF/WebP/APNG; "reject" refuses animated files.
    """
    if not data:
        raise RejectedImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data))
            width, height = probe.size
            if width * height > max_pixels:
                raise RejectedImage(
                    f"decompression bomb: {width}×{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,}"
                )
            probe.verify()  # checksums and structure, without decoding all pixels
            image = Image.open(io.BytesIO(data))
            frames = getattr(image, "n_frames", 1)
            if frames > 1 and animated == "reject":
                raise RejectedImage(f"animated image with {frames} frames (animated=reject)")
            image.seek(0)
            image.load()  # decodes everything: truncated data fails here
    except RejectedImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise RejectedImage(f"decompression bomb: {error}") from None
    except UnidentifiedImageError:
        raise RejectedImage("not an image Pillow can read (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise RejectedImage(f"corrupt or truncated image: {error}") from None
    source_format = image.format or "PNG"
    if source_format in ("JPEG", "MPO"):
        check_jpeg_scan(data)
    source_mode = image.mode
    orientation = int(image.getexif().get(0x0112, 1) or 1)
    upright = ImageOps.exif_transpose(image) if orientation != 1 else image
    upright = _to_8bit(upright)
    if min(upright.size) < min_side:
        raise RejectedImage(f"too small: {upright.width}×{upright.height}, the shorter side must be at least {min_side} px")
    return LoadedImage(
        image=upright,
        format=source_format,
        ext=FORMAT_EXT.get(source_format, "png"),
        mode=source_mode,
        width=upright.width,
        height=upright.height,
        orientation=orientation,
        frames=frames,
        phash=perceptual_hash(upright),
    )


def load_image_file(path: Path, **options) -> LoadedImage:
    """open_image on a file's bytes."""
    return open_image(Path(path).read_bytes(), **options)
