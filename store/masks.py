"""Mask artifacts: the prepare flow's per-image masks ("generated", "face", ...) as content-addressed PNGs.

Each mask is an Artifact row with step "mask", linked (parent_id) to the artifact it describes, or
(parent_id NULL) to the original image; params record the mask's name and the step that made it.
Exports write them beside the image: NAME.mask.png (255 = learn, 0 = ignore: the inverse of the
"generated" mask) and NAME.<name>.mask.png for every other mask (255 = inside the region).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import Artifact, Image

MASK_STEP = "mask"


def record_masks(session: Session, masks: dict[str, dict], *, image_id: int, parent_id: int | None, step: str,
                 params_hash: str, backend: str, model_id: str | None, model_hash: str) -> list[int]:
    """One mask artifact per {name: {sha256, ext}} entry, linked to `parent_id` (None: the original image)."""
    ids = []
    for name, mask in sorted(masks.items()):
        row = Artifact(sha256=mask["sha256"], ext=mask.get("ext", "png"), width=mask.get("width", 0),
                       height=mask.get("height", 0), image_id=image_id, parent_id=parent_id, step=MASK_STEP,
                       params={"name": name, "step": step}, params_hash=params_hash, backend=backend,
                       model_id=model_id, model_hash=model_hash, meta={"mask": name, "made_by": step})
        session.add(row)
        session.flush()
        ids.append(row.id)
    return ids


def masks_of_blob(session: Session, blob_sha256: str, image_sha256: str) -> dict[str, dict]:
    """{name: {sha256, ext, artifact_id}} of the masks recorded for the image with this content (newest wins).

    `blob_sha256 == image_sha256` means the original image (masks with no parent artifact).
    """
    if blob_sha256 == image_sha256:
        image_id = session.scalar(select(Image.id).where(Image.sha256 == image_sha256))
        query = select(Artifact).where(Artifact.step == MASK_STEP, Artifact.parent_id.is_(None),
                                       Artifact.image_id == image_id)
    else:
        parents = select(Artifact.id).where(Artifact.sha256 == blob_sha256, Artifact.step != MASK_STEP)
        query = select(Artifact).where(Artifact.step == MASK_STEP, Artifact.parent_id.in_(parents))
    found: dict[str, dict] = {}
    for row in session.scalars(query.order_by(Artifact.id)):
        found[row.params["name"]] = {"sha256": row.sha256, "ext": row.ext, "artifact_id": row.id}
    return found


def export_masks(masks: dict[str, bytes]) -> dict[str, bytes]:
    """PNG bytes of each mask → {file suffix: PNG bytes}: ".mask.png" (learn mask) and ".<name>.mask.png"."""
    import io

    from PIL import Image as PILImage

    files = {}
    for name, data in sorted(masks.items()):
        if name == "generated":
            generated = PILImage.open(io.BytesIO(data)).convert("L")
            if generated.getextrema()[1] == 0:
                continue  # nothing generated: everything is learned, no file needed
            buffer = io.BytesIO()
            generated.point(lambda v: 255 - v).save(buffer, "PNG")
            files[".mask.png"] = buffer.getvalue()
        else:
            files[f".{name}.mask.png"] = data
    return files
