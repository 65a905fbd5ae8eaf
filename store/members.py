"""Recording ingested files as images and dataset members: exact and near duplicates, sidecars, rejections."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from store.datasets import insert_ignoring_conflicts, lock_dataset
from store.dedup import near_matches
from store.models import Image, Member, RejectedInput, Tag, utcnow

SIDECAR_SOURCE = "human:sidecar"


@dataclass
class IngestedFile:
    """A decoded source file whose original bytes are already in the blob store (or its rejection)."""

    path: str  # relative to its source
    sha256: str | None = None
    phash: str | None = None
    width: int = 0
    height: int = 0
    format: str = ""
    ext: str = ""
    byte_size: int = 0
    mode: str = ""
    orientation: int = 1
    sidecar: str | None = None
    rejected: str | None = None
    known: bool = False  # bytes already in this dataset: not decoded again, only sha256 is set


def dataset_image_hashes(session: Session, dataset_id: int) -> frozenset[str]:
    """sha256 of every original already in the dataset (any status)."""
    return frozenset(session.scalars(select(Image.sha256).join(Member, Member.image_id == Image.id)
                                     .where(Member.dataset_id == dataset_id)))


@dataclass
class BatchOutcome:
    added: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # same path and bytes as before: re-ingest
    exact_duplicates: list[list[str]] = field(default_factory=list)  # [existing path, duplicate path]
    near_duplicates: list[list[str]] = field(default_factory=list)  # [kept path, duplicate path]
    rejected: list[dict[str, str]] = field(default_factory=list)


def sidecar_to_tags(text: str) -> tuple[str | None, list[str]]:
    """A kohya-style "tag, tag, tag" file becomes tags; prose becomes a caption."""
    parts = [p.strip() for p in text.replace("\n", ",").split(",") if p.strip()]
    if len(parts) > 1 and all(len(p.split()) <= 4 for p in parts):
        return None, parts
    return (text.strip() or None), []


class _ActiveHashes:
    """The dataset's active members as a uint64 array, for near-duplicate lookups."""

    def __init__(self, session: Session, dataset_id: int):
        rows = session.execute(
            select(Member.id, Image.phash, Image.width, Image.height, Member.source_path)
            .join(Image, Member.image_id == Image.id)
            .where(Member.dataset_id == dataset_id, Member.status == "active")
        ).all()
        self.ids = [r[0] for r in rows]
        self.pixels = [r[2] * r[3] for r in rows]
        self.paths = [r[4] for r in rows]
        self.hashes = np.array([int(r[1], 16) for r in rows], dtype=np.uint64)

    def add(self, member_id: int, phash: str, pixels: int, path: str) -> None:
        self.ids.append(member_id)
        self.pixels.append(pixels)
        self.paths.append(path)
        self.hashes = np.append(self.hashes, np.uint64(int(phash, 16)))

    def remove(self, index: int) -> None:
        del self.ids[index], self.pixels[index], self.paths[index]
        self.hashes = np.delete(self.hashes, index)


def _add_sidecar(session: Session, member: Member, text: str) -> None:
    caption, tags = sidecar_to_tags(text)
    if caption:
        member.caption, member.caption_source = caption, "sidecar"
    for position, tag in enumerate(tags):
        session.add(Tag(member_id=member.id, text=tag, source=SIDECAR_SOURCE, status="accepted",
                        confidence=1.0, position=position, updated_by="sidecar"))


def record_batch(session: Session, dataset_id: int, files: list[IngestedFile], near_threshold: int) -> BatchOutcome:
    """Add a batch of ingested files to a dataset (inside the caller's transaction).

    Same bytes already in the dataset → exact duplicate (nothing added). Within `near_threshold`
    bits of an active member's perceptual hash → the larger image stays active and the smaller
    is recorded as a duplicate of it.
    """
    outcome = BatchOutcome()
    lock_dataset(session, dataset_id)
    active = _ActiveHashes(session, dataset_id)
    for item in files:
        if item.rejected:
            outcome.rejected.append({"path": item.path, "reason": item.rejected})
            insert_ignoring_conflicts(session, RejectedInput,
                                      {"dataset_id": dataset_id, "source_path": item.path, "reason": item.rejected,
                                       "created_at": utcnow()}, ["dataset_id", "source_path"])
            continue
        if not item.known:
            insert_ignoring_conflicts(session, Image, {
                "sha256": item.sha256, "phash": item.phash, "width": item.width, "height": item.height,
                "format": item.format, "ext": item.ext, "byte_size": item.byte_size, "mode": item.mode,
                "exif_orientation": item.orientation, "created_at": utcnow()}, ["sha256"])
        image_id = session.scalar(select(Image.id).where(Image.sha256 == item.sha256))
        existing = session.scalar(select(Member).where(Member.dataset_id == dataset_id, Member.image_id == image_id))
        if existing is not None:
            if existing.source_path == item.path:
                outcome.unchanged.append(item.path)
            else:
                outcome.exact_duplicates.append([existing.source_path, item.path])
            continue
        member = Member(dataset_id=dataset_id, image_id=image_id, source_path=item.path, status="active")
        session.add(member)
        session.flush()
        if item.sidecar:
            _add_sidecar(session, member, item.sidecar)
        pixels = item.width * item.height
        matches = near_matches(item.phash, active.hashes, near_threshold)
        if matches.size:
            biggest = max(matches, key=lambda i: active.pixels[i])
            if active.pixels[biggest] >= pixels:
                member.status, member.duplicate_of_id = "duplicate", active.ids[biggest]
                outcome.near_duplicates.append([active.paths[biggest], item.path])
                outcome.added.append(item.path)
                continue
            # the new image is the largest of its group: it stays, the others become its duplicates
            for index in sorted(matches, reverse=True):
                old_id = active.ids[index]
                session.execute(update(Member).where(Member.duplicate_of_id == old_id).values(duplicate_of_id=member.id))
                session.execute(update(Member).where(Member.id == old_id)
                                .values(status="duplicate", duplicate_of_id=member.id, revision=Member.revision + 1))
                outcome.near_duplicates.append([item.path, active.paths[index]])
                active.remove(index)
        active.add(member.id, item.phash, pixels, item.path)
        outcome.added.append(item.path)
    return outcome
