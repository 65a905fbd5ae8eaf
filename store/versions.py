"""Dataset versions: immutable manifests of the working state, their diffs and their exports."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store.datasets import get_dataset, lock_dataset
from store.db import Store
from store.masks import export_masks, masks_of_blob
from store.models import Artifact, Dataset, DatasetVersion, Image, Member, Tag, VersionEntry

EXPORT_FORMATS = ("kohya", "imagefolder")


class NothingToCommit(ValueError):
    pass


class VersionNotFound(LookupError):
    pass


@dataclass
class VersionInfo:
    dataset: str
    number: int
    message: str
    entries: int
    manifest_sha256: str
    created_by: str | None
    created_at: str


_UNESCAPED_PAREN = re.compile(r"(?<!\\)([()])")


def prompt_tag(text: str) -> str:
    """A stored (plain) tag in prompt syntax: parentheses escaped, so weighting syntax leaves them alone."""
    return _UNESCAPED_PAREN.sub(r"\\\1", text)


def training_text(caption: str, tags: list[str], escape: bool = False) -> str:
    """What a trainer reads for an image: the caption, then the tags, comma-separated (in prompt syntax
    with `escape`: kohya captions, which sd-scripts and A1111-style tools read as prompts)."""
    return ", ".join(part for part in [caption.strip(), *(map(prompt_tag, tags) if escape else tags)] if part)


def working_manifest(session: Session, dataset_id: int) -> list[dict]:
    """The entries a commit would record now: active members, newest artifact, caption, accepted tags."""
    members = session.execute(
        select(Member, Image, Artifact)
        .join(Image, Member.image_id == Image.id)
        .outerjoin(Artifact, Member.current_artifact_id == Artifact.id)
        .where(Member.dataset_id == dataset_id, Member.status == "active")
        .order_by(Image.sha256)
    ).all()
    tags: dict[int, list[str]] = {}
    for member_id, text in session.execute(
        select(Tag.member_id, Tag.text).join(Member, Tag.member_id == Member.id)
        .where(Member.dataset_id == dataset_id, Tag.status == "accepted")
        .order_by(Tag.member_id, Tag.position, Tag.text)
    ):
        tags.setdefault(member_id, []).append(text)
    return [
        {
            "image_sha256": image.sha256,
            "blob_sha256": artifact.sha256 if artifact else image.sha256,
            "blob_ext": artifact.ext if artifact else image.ext,
            "source_path": member.source_path,
            "caption": member.caption or "",
            "tags": tags.get(member.id, []),
            "weight": 1.0,
        }
        for member, image, artifact in members
    ]


def manifest_hash(entries: list[dict]) -> str:
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def _info(dataset: Dataset, version: DatasetVersion, count: int) -> VersionInfo:
    return VersionInfo(dataset.name, version.number, version.message, count, version.manifest_sha256,
                       version.created_by, version.created_at.isoformat())


def commit_version(store: Store, dataset: str, message: str, user: str | None = None,
                   allow_unchanged: bool = False) -> VersionInfo:
    """Record the working state of `dataset` as version N+1 (raises NothingToCommit if unchanged)."""
    with store.session() as session:
        ds = get_dataset(session, dataset)
        lock_dataset(session, ds.id)
        entries = working_manifest(session, ds.id)
        digest = manifest_hash(entries)
        latest = session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id)
                                .order_by(DatasetVersion.number.desc()).limit(1))
        if latest is not None and latest.manifest_sha256 == digest and not allow_unchanged:
            raise NothingToCommit(f"nothing changed in {dataset!r} since version {latest.number}")
        version = DatasetVersion(dataset_id=ds.id, number=(latest.number + 1) if latest else 1,
                                 message=message, manifest_sha256=digest, created_by=user)
        session.add(version)
        session.flush()
        session.add_all(VersionEntry(version_id=version.id, position=i, **entry) for i, entry in enumerate(entries))
        return _info(ds, version, len(entries))


def get_version(session: Session, dataset: str, number: int | None = None) -> DatasetVersion:
    """Version `number` of `dataset` (the newest when None)."""
    ds = get_dataset(session, dataset)
    query = select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id)
    query = query.where(DatasetVersion.number == number) if number is not None else query.order_by(DatasetVersion.number.desc()).limit(1)
    version = session.scalar(query)
    if version is None:
        raise VersionNotFound(f"dataset {dataset!r} has no version {number}" if number is not None
                              else f"dataset {dataset!r} has no versions yet: run `atelier commit {dataset} -m MSG`")
    return version


def entries_of(version: DatasetVersion) -> list[dict]:
    return [{"image_sha256": e.image_sha256, "blob_sha256": e.blob_sha256, "blob_ext": e.blob_ext,
             "source_path": e.source_path, "caption": e.caption, "tags": list(e.tags), "weight": e.weight}
            for e in version.entries]


def list_versions(store: Store, dataset: str) -> list[VersionInfo]:
    with store.session() as session:
        ds = get_dataset(session, dataset)
        rows = session.execute(
            select(DatasetVersion, func.count(VersionEntry.id))
            .outerjoin(VersionEntry, VersionEntry.version_id == DatasetVersion.id)
            .where(DatasetVersion.dataset_id == ds.id).group_by(DatasetVersion.id).order_by(DatasetVersion.number)
        ).all()
        return [_info(ds, version, count) for version, count in rows]


def diff_versions(store: Store, dataset: str, a: int, b: int) -> dict:
    """What changed from version a to version b: added, removed, and caption/tag/image changes."""
    with store.session() as session:
        old = {e["image_sha256"]: e for e in entries_of(get_version(session, dataset, a))}
        new = {e["image_sha256"]: e for e in entries_of(get_version(session, dataset, b))}
    changed = []
    for sha in sorted(old.keys() & new.keys()):
        before, after = old[sha], new[sha]
        change = {"image_sha256": sha, "source_path": after["source_path"]}
        if before["caption"] != after["caption"]:
            change["caption"] = [before["caption"], after["caption"]]
        if before["tags"] != after["tags"]:
            change["tags_added"] = [t for t in after["tags"] if t not in before["tags"]]
            change["tags_removed"] = [t for t in before["tags"] if t not in after["tags"]]
        if before["blob_sha256"] != after["blob_sha256"]:
            change["image"] = [before["blob_sha256"], after["blob_sha256"]]
        if len(change) > 2:
            changed.append(change)
    pick = lambda entries, keys: [{"image_sha256": k, "source_path": entries[k]["source_path"]} for k in sorted(keys)]
    return {"dataset": dataset, "from": a, "to": b, "added": pick(new, new.keys() - old.keys()),
            "removed": pick(old, old.keys() - new.keys()), "changed": changed}


def _safe_stem(source_path: str) -> str:
    stem = PurePosixPath(source_path).stem
    # no dots: `NAME.mask.png` beside an image is its mask, so an image's own name never looks like one
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem)[:80] or "image"


def _upright_bytes(store: Store, session: Session, entry: dict) -> tuple[bytes, str]:
    """The blob's bytes, re-encoded as PNG only when the original is not upright 8-bit RGB/L."""
    data = store.blobs.get(entry["blob_sha256"], entry["blob_ext"])
    image = session.scalar(select(Image).where(Image.sha256 == entry["blob_sha256"]))
    if image is None or (image.exif_orientation == 1 and image.mode in ("RGB", "RGBA", "L")
                         and image.format in ("JPEG", "PNG", "WEBP")):
        return data, entry["blob_ext"]
    from PIL import Image as PILImage, ImageOps

    with PILImage.open(io.BytesIO(data)) as pil:
        pil.seek(0)
        upright = ImageOps.exif_transpose(pil)
        if upright.mode not in ("RGB", "RGBA", "L"):
            upright = upright.convert("RGBA" if "A" in upright.getbands() else "RGB")
        buffer = io.BytesIO()
        upright.save(buffer, "PNG")
    return buffer.getvalue(), "png"


def export_version(store: Store, dataset: str, number: int | None, fmt: str, out: Path, force: bool = False) -> dict:
    """Write version `number` to `out` as a kohya folder tree or a Hugging Face imagefolder.

    Deterministic: exporting one version twice gives identical bytes. Written to a temporary
    folder first and moved into place, so `out` never holds half an export.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: choose {' or '.join(EXPORT_FORMATS)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} is not empty (use --force to replace it)")
    with store.session() as session:
        version = get_version(session, dataset, number)
        ds = get_dataset(session, dataset)
        entries = entries_of(version)
        subject = " ".join(p for p in (ds.identifier, ds.class_word) if p) or ds.name
        folder = f"{ds.repeats}_{subject}" if fmt == "kohya" else "."
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
        (staging / folder).mkdir(parents=True, exist_ok=True)
        metadata = []
        for index, entry in enumerate(entries):
            data, ext = _upright_bytes(store, session, entry)
            name = f"{index:05d}_{_safe_stem(entry['source_path'])}.{ext}"
            (staging / folder / name).write_bytes(data)
            mask_files = {}
            if masks := masks_of_blob(session, entry["blob_sha256"], entry["image_sha256"]):
                blobs = {n: store.blobs.get(m["sha256"], m["ext"]) for n, m in masks.items()}
                for suffix, png in export_masks(blobs).items():
                    mask_name = Path(name).stem + suffix
                    (staging / folder / mask_name).write_bytes(png)
                    mask_files[suffix.removesuffix(".mask.png").lstrip(".") or "learn"] = mask_name
            text = training_text(entry["caption"], entry["tags"], escape=fmt == "kohya")
            if fmt == "kohya":
                # sd-scripts trains on a .txt's text as it stands: an empty one would train on '' instead of
                # the folder's class tokens, so a member with neither caption nor tags gets those tokens
                text = text or subject
                (staging / folder / name).with_suffix(".txt").write_text(text + "\n")
            else:
                row = {"file_name": name, "text": text, "caption": entry["caption"], "tags": entry["tags"],
                       "image_sha256": entry["image_sha256"]}
                if mask_files:
                    row["masks"] = mask_files
                metadata.append(row)
        if fmt == "imagefolder":
            (staging / "metadata.jsonl").write_text("".join(json.dumps(m, sort_keys=True) + "\n" for m in metadata))
        summary = {"dataset": dataset, "version": version.number, "format": fmt, "images": len(entries),
                   "manifest_sha256": version.manifest_sha256, "folder": folder if fmt == "kohya" else None}
        (staging / "atelier.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    for item in (staging, *staging.rglob("*")):  # mkdtemp makes 0700: trainers may run as another user
        item.chmod(0o755 if item.is_dir() else 0o644)
    if out.exists():
        shutil.rmtree(out)
    staging.replace(out)
    return {**summary, "out": str(out)}
