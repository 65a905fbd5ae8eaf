"""Is this ingest a no-op? Every file is already a member of the dataset at the same path (same bytes),
nothing is refused while scanning, and no dataset setting is given: the ingest flow would only count
them as unchanged. Found with one query and a hash per file, before Prefect is imported
(`atelier ingest` then records the run with flows/quick_run.py)."""

from __future__ import annotations

from pathlib import Path

from store.db import Store


def unchanged_report(store: Store, sources: list[Path], dataset: str, options: dict,
                     dataset_settings: dict) -> dict | None:
    """The report the ingest flow would return when it would change nothing, else None."""
    from sqlalchemy import select

    from preprocess.sources import DEFAULT_MAX_FILE_BYTES, scan_sources
    from store.blobs import sha256_bytes
    from store.models import Dataset, Image, Member

    if any(value is not None for value in dataset_settings.values()):
        return None
    scan = scan_sources([Path(s) for s in sources], options.get("max_file_bytes", DEFAULT_MAX_FILE_BYTES))
    if scan.rejected or not scan.files:
        return None
    with store.session() as session:
        dataset_id = session.scalar(select(Dataset.id).where(Dataset.name == dataset))
        if dataset_id is None:
            return None
        by_path = {path: sha for sha, path in session.execute(
            select(Image.sha256, Member.source_path).join(Member, Member.image_id == Image.id)
            .where(Member.dataset_id == dataset_id))}
    if any(f.path not in by_path for f in scan.files):  # a new path: no need to hash anything
        return None
    if any(sha256_bytes(f.read()) != by_path[f.path] for f in scan.files):
        return None
    return {"dataset": dataset, "scanned": len(scan.files), "added": 0, "unchanged": len(scan.files),
            "exact_duplicates": 0, "near_duplicates": [], "exact_duplicate_pairs": [], "rejected": [],
            "ignored": scan.ignored}
