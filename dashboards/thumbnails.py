"""Images and thumbnails served by content hash only: made once, cached on disk, never from a request path.

A request names a sha256; the extension comes from the database (images or artifacts), the bytes
from the blob store, and the thumbnail file name from the hash — so no part of a URL ever
becomes part of a file path.
"""

from __future__ import annotations

import io
import os
import re
import uuid
from pathlib import Path

from PIL import Image, ImageOps
from sqlalchemy import select
from sqlalchemy.orm import Session

from store.db import Store
from store.models import Artifact, Image as ImageRow

SHA256 = re.compile(r"[0-9a-f]{64}")
THUMB_SIDE = 320
VIEW_SIDE = 2048  # the image view's screen-size copy (browsers cannot show TIFF or every PNG depth)
SIDES = (THUMB_SIDE, VIEW_SIDE)
MEDIA_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp",
               "gif": "image/gif", "bmp": "image/bmp", "tif": "image/tiff", "tiff": "image/tiff"}
CACHE_HEADERS = {"Cache-Control": "private, max-age=31536000, immutable"}


def valid_sha(value: str) -> bool:
    return bool(SHA256.fullmatch(value))


def blob_ext(session: Session, sha256: str) -> str | None:
    """The stored extension of a known image or artifact blob, or None when the hash is unknown."""
    ext = session.scalar(select(ImageRow.ext).where(ImageRow.sha256 == sha256))
    return ext or session.scalar(select(Artifact.ext).where(Artifact.sha256 == sha256).limit(1))


def thumbnail_path(store: Store, sha256: str, side: int = THUMB_SIDE) -> Path:
    return store.settings.cache_dir / "thumbs" / sha256[:2] / f"{sha256}-{side}.jpg"


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float images as 8-bit greyscale: Pillow's convert("RGB") clips them (a blank white thumbnail)."""
    if image.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return image
    import numpy as np

    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":  # no fixed range: stretch what is there
        low, high = float(values.min()), float(values.max())
        values = (values - low) / ((high - low) or 1.0) * 255.0
    else:
        values = values / 257.0  # 0…65535 → 0…255
    return Image.fromarray(values.clip(0, 255).round().astype(np.uint8), "L")


def make_thumbnail(data: bytes, side: int = THUMB_SIDE) -> bytes:
    """A JPEG no larger than side×side, upright (EXIF), RGB on white for transparent images, 16-bit scaled."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (side, side))  # JPEG: decode at reduced size, much faster
        image = to_8bit(ImageOps.exif_transpose(image))
        image.thumbnail((side, side))
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            canvas = Image.new("RGB", image.size, "white")
            canvas.paste(image, mask=image.getchannel("A"))
            image = canvas
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=85 if side <= THUMB_SIDE else 90)
        return out.getvalue()


def thumbnail(store: Store, sha256: str, ext: str, side: int = THUMB_SIDE) -> Path:
    """The cached thumbnail file of a blob, made (atomically) on first request."""
    path = thumbnail_path(store, sha256, side)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".tmp-{uuid.uuid4().hex}")
        temp.write_bytes(make_thumbnail(store.blobs.get(sha256, ext), side))
        os.replace(temp, path)
    return path
