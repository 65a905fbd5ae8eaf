"""What `make demo` shows of a prepared dataset: a before/after contact sheet PNG and a rich table.

One row per member, in ingest order: the original (the main face's box and landmarks drawn in
source-image pixels) | the member's current image (aligned and upscaled, landmarks in its own
pixels) | labels: face detector, identity score, upscale backend, NSFW rating, sharpness, status.
Everything is read back from the store (step results, scores, tags), so the sheet shows what a
curator and the exporter see, not what the demo meant to do.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps
from rich.table import Table
from sqlalchemy import select

from store.datasets import get_dataset
from store.db import Store
from store.models import Artifact, Member, Score, StepResult, Tag
from store.models import Image as ImageRow

CELL = 256  # thumbnail box side
TEXT_WIDTH = 330
HEADER = 28
PAD = 6


@dataclass
class DemoRow:
    name: str
    status: str  # active | excluded (with the reason)
    original: Image.Image
    result: Image.Image | None  # None: no step changed the image
    source_face: dict | None  # main face in the original's pixels
    result_face: dict | None  # the same face in the result's pixels
    faces: int | None
    detector: str | None
    identity: float | None
    upscale: str | None  # backend, or None where the step did not run
    upscale_size: tuple[list[int], list[int]] | None  # (from, to)
    rating: str | None
    sharpness: float | None
    excluded_reason: str | None = None
    backends: dict[str, str] = field(default_factory=dict)  # step → backend


def _open(store: Store, sha: str, ext: str) -> Image.Image:
    with Image.open(io.BytesIO(store.blobs.get(sha, ext))) as image:
        image.seek(0)
        return ImageOps.exif_transpose(image).convert("RGB")


def demo_rows(store: Store, dataset: str) -> list[DemoRow]:
    """The dataset's members with their pipeline outcome, read from the store."""
    rows = []
    with store.session() as session:
        ds = get_dataset(session, dataset)
        for member in session.scalars(select(Member).where(Member.dataset_id == ds.id, Member.status != "duplicate")
                                      .order_by(Member.id)):
            original = session.get(ImageRow, member.image_id)
            results = {step: session.get(StepResult, rid) for step, rid in (member.prepared or {}).items()}
            meta = {step: (r.output or {}).get("meta") or {} for step, r in results.items() if r is not None}
            scores = {s.name: s.value for s in session.scalars(select(Score).where(Score.member_id == member.id))}
            rating = session.scalar(select(Tag.text).where(Tag.member_id == member.id, Tag.category == "rating"))
            artifact = session.get(Artifact, member.current_artifact_id) if member.current_artifact_id else None
            align, upscale = meta.get("align", {}), meta.get("upscale")
            shown = upscale if upscale and upscale.get("size") else align
            rows.append(DemoRow(
                name=member.source_path, status=member.status, excluded_reason=member.excluded_reason,
                original=_open(store, original.sha256, original.ext),
                result=_open(store, artifact.sha256, artifact.ext) if artifact else None,
                source_face=align.get("source_main_face") or align.get("main_face"),
                result_face=shown.get("main_face") if artifact else None,
                faces=int(scores["faces"]) if "faces" in scores else None, detector=align.get("backend"),
                identity=scores.get("identity"), upscale=upscale.get("backend") if upscale and upscale.get("size") else None,
                upscale_size=(upscale["source_size"], upscale["size"]) if upscale and upscale.get("size") else None,
                rating=rating, sharpness=scores.get("sharpness"),
                backends={step: r.backend for step, r in results.items() if r is not None and r.backend}))
    return rows


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the bitmap font, one size
        return ImageFont.load_default()


def _draw_face(draw: ImageDraw.ImageDraw, face: dict | None, scale: float, dx: float, dy: float) -> None:
    """The face's box (green) and landmarks (eyes blue, nose yellow, mouth red), with the eye line."""
    if not face:
        return
    x0, y0, x1, y1 = (v * scale for v in face["box"])
    draw.rectangle([x0 + dx, y0 + dy, x1 + dx, y1 + dy], outline=(0, 200, 0), width=2)
    points = [(x * scale + dx, y * scale + dy) for x, y in face.get("landmarks") or []]
    if len(points) >= 2:
        draw.line([points[0], points[1]], fill=(0, 120, 255), width=1)
    colours = [(0, 120, 255), (0, 120, 255), (255, 220, 0), (255, 40, 40), (255, 40, 40)]
    for (x, y), colour in zip(points, colours):
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour, outline="black")


def _paste(sheet: Image.Image, image: Image.Image, face: dict | None, x: int, y: int) -> None:
    scale = min(CELL / image.width, CELL / image.height)
    thumb = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
    dx, dy = x + (CELL - thumb.width) // 2, y + (CELL - thumb.height) // 2
    sheet.paste(thumb, (dx, dy))
    _draw_face(ImageDraw.Draw(sheet), face, scale, dx, dy)


def labels(row: DemoRow) -> list[str]:
    """The text beside a row: what each model found (ASCII: Pillow's default font has no arrows or dashes)."""
    faces = "no face" if not row.faces else f"{row.faces} face{'s' * (row.faces > 1)}"
    lines = [row.name, f"{faces} ({row.detector or 'align did not run'})"]
    lines.append("identity -" if row.identity is None else f"identity {row.identity:.3f} "
                 f"({'same person' if row.identity >= 0.9 else 'someone else'})")
    if row.upscale:
        (w0, h0), (w1, h1) = row.upscale_size
        lines.append(f"upscale {row.upscale} {w0}x{h0} -> {w1}x{h1}")
    else:
        lines.append("upscale - (no face: a plain crop)")
    lines.append(f"{row.rating or 'rating -'} (nudenet)")
    if row.sharpness is not None:
        lines.append(f"sharpness {row.sharpness:.0f}")
    lines.append(row.status if row.status == "active" else f"excluded: {row.excluded_reason}")
    return lines


def contact_sheet(rows: list[DemoRow]) -> Image.Image:
    """original | aligned/upscaled | labels, one row per member, with a header line."""
    width = 2 * CELL + TEXT_WIDTH + 4 * PAD
    sheet = Image.new("RGB", (width, HEADER + len(rows) * (CELL + PAD) + PAD), "white")
    draw = ImageDraw.Draw(sheet)
    font, small = _font(16), _font(14)
    for x, title in ((PAD, "original (detected face)"), (2 * PAD + CELL, "aligned + upscaled"),
                     (3 * PAD + 2 * CELL, "what the models found")):
        draw.text((x, 6), title, fill="black", font=font)
    for index, row in enumerate(rows):
        y = HEADER + index * (CELL + PAD)
        draw.rectangle([0, y - 1, width, y + CELL], fill=(242, 242, 242) if index % 2 else "white")
        _paste(sheet, row.original, row.source_face, PAD, y)
        if row.result is not None:
            _paste(sheet, row.result, row.result_face, 2 * PAD + CELL, y)
        else:
            draw.text((2 * PAD + CELL + 8, y + CELL // 2 - 8), "unchanged (no face)", fill=(110, 110, 110), font=small)
        for line_no, line in enumerate(labels(row)):
            draw.text((3 * PAD + 2 * CELL, y + 6 + line_no * 20), line, fill="black" if line_no else (0, 0, 160),
                      font=font if line_no == 0 else small)
    return sheet


def write_contact_sheet(rows: list[DemoRow], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(rows).save(path)
    return path


def rows_table(rows: list[DemoRow]) -> Table:
    table = Table(title="demo: what the real models found")
    for column in ("image", "faces", "detector", "identity", "upscale", "rating", "sharpness", "status"):
        table.add_column(column, justify="right" if column in {"faces", "identity", "sharpness"} else "left")
    for row in rows:
        table.add_row(row.name, "–" if row.faces is None else str(row.faces), row.detector or "–",
                      "–" if row.identity is None else f"{row.identity:.3f}", row.upscale or "–", row.rating or "–",
                      "–" if row.sharpness is None else f"{row.sharpness:.0f}",
                      row.status if row.status == "active" else f"excluded: {row.excluded_reason}")
    return table
