"""What a prepare run shows in the Prefect UI: a markdown summary and a contact sheet of results."""

from __future__ import annotations

import hashlib
import io

from PIL import Image, ImageDraw, ImageOps
from sqlalchemy import select

from flows.pipeline import PipelineConfig
from store.datasets import get_dataset
from store.db import Store
from store.models import Artifact, Member
from store.models import Image as ImageRow

THUMB = 160


def sheet_rows(store: Store, dataset: str, count: int) -> list[tuple]:
    """(file name, original sha/ext, current artifact sha/ext) of up to `count` active members: what the sheet shows."""
    with store.session() as session:
        ds = get_dataset(session, dataset)
        return [tuple(row) for row in session.execute(
            select(Member.source_path, ImageRow.sha256, ImageRow.ext, Artifact.sha256, Artifact.ext)
            .join(ImageRow, Member.image_id == ImageRow.id)
            .outerjoin(Artifact, Member.current_artifact_id == Artifact.id)
            .where(Member.dataset_id == ds.id, Member.status == "active").order_by(Member.id).limit(count)
        )]


def contact_sheet(store: Store, dataset: str, count: int, rows: list[tuple] | None = None) -> Image.Image | None:
    """A grid of the newest version of up to `count` members, labelled with their file names."""
    rows = sheet_rows(store, dataset, count) if rows is None else rows
    if not rows:
        return None
    columns = min(4, len(rows))
    sheet = Image.new("RGB", (columns * THUMB, ((len(rows) + columns - 1) // columns) * (THUMB + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (path, sha, ext, art_sha, art_ext) in enumerate(rows):
        x, y = (index % columns) * THUMB, (index // columns) * (THUMB + 14)
        try:
            with Image.open(io.BytesIO(store.blobs.get(art_sha or sha, art_ext or ext))) as image:
                image.seek(0)
                thumb = ImageOps.exif_transpose(image).convert("RGB")
                thumb.thumbnail((THUMB, THUMB))
        except (OSError, ValueError):  # a damaged blob: the sheet says so instead of failing the run
            draw.text((x + 4, y + THUMB // 2), "unreadable", fill="red")
            draw.text((x + 2, y + THUMB), path[-26:], fill="black")
            continue
        sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
        draw.text((x + 2, y + THUMB), path[-26:], fill="black")
    return sheet


def summary_markdown(dataset: str, config: PipelineConfig, summary: dict, sheet_path: str | None) -> str:
    lines = [f"# prepare `{dataset}` — pipeline `{config.name}`", "",
             f"{summary['members']} members, {summary['seconds']:.1f} s, "
             f"{summary['applied']['excluded']} excluded by rules, {summary['applied']['failed_members']} with a failed step", "",
             "| step | backend | done | cached | not applicable | failed | excluded | seconds |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in summary["steps"]:
        lines.append(f"| {c['step']} | {c['backend'] or ('skipped' if c.get('skipped') else '–')} | {c['done']} | {c['cached']} | {c['not_applicable']} "
                     f"| {len(c['failed'])} | {c['excluded']} | {c['seconds']:.2f} |")
    if summary.get("skipped"):
        lines += ["", "## Skipped steps (weights missing, no fallback)", "", "| step | reason |", "| --- | --- |"]
        lines += [f"| {s['step']} | {s['reason'].replace('|', '/')} |" for s in summary["skipped"]]
    failures = [(c["step"], f) for c in summary["steps"] for f in c["failed"]]
    if failures:
        lines += ["", "## Failures", "", "| step | image | reason |", "| --- | --- | --- |"]
        lines += [f"| {step} | {f['path']} | {f['reason'].replace('|', '/')[:200]} |" for step, f in failures]
    if sheet_path:
        lines += ["", f"Contact sheet: `{sheet_path}`"]
    return "\n".join(lines)


def publish_report(store: Store, dataset: str, config: PipelineConfig, summary: dict) -> dict:
    """Write the contact sheet under $ATELIER_HOME/reports and the markdown as a Prefect artifact."""
    from prefect.artifacts import create_markdown_artifact

    sheet_path = None
    if config.contact_sheet and (rows := sheet_rows(store, dataset, config.contact_sheet)):
        # named by what it shows: a re-run that changed nothing (a no-op) reuses the sheet instead of
        # decoding every image again, the larger part of a no-op prepare's time
        key = hashlib.sha256(repr(rows).encode()).hexdigest()[:16]
        target = store.settings.home / "reports" / f"prepare-{dataset}-{key}.png"
        if not target.exists() and (sheet := contact_sheet(store, dataset, config.contact_sheet, rows)) is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".part.png")
            sheet.save(partial)
            partial.replace(target)  # never a half-written sheet under the final name
        sheet_path = str(target) if target.exists() else None
    markdown = summary_markdown(dataset, config, summary, sheet_path)
    key = "prepare-" + "".join(c if c.isalnum() else "-" for c in dataset.lower())
    create_markdown_artifact(markdown=markdown, key=key, description=f"prepare {dataset}")
    return {"contact_sheet": sheet_path, "markdown": markdown}
