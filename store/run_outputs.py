"""A training run's weight files in the blob store, so that evaluation and publishing work on any
machine that shares the database and the blobs — not only on the GPU worker that trained it.

`outputs` is the run's recorded dict (`{"lora": {"path", "sha256", ...}, ...}`); each file entry
gains `"blob": {"sha256", "ext"}` once uploaded. Reading back, a path that does not exist here is
fetched from the blob store into `$ATELIER_HOME/cache/weights/` (content-addressed, atomic).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from store.db import Store


def _file_entries(outputs: dict[str, Any]):
    for key, entry in outputs.items():
        if isinstance(entry, dict) and entry.get("path") and entry.get("sha256") and Path(entry["path"]).is_file():
            yield key, entry


def upload_outputs(store: Store, outputs: dict[str, Any]) -> dict[str, Any]:
    """Put every weights file of `outputs` in the blob store; returns outputs with their "blob" keys."""
    result = dict(outputs)
    for key, entry in _file_entries(outputs):
        ext = Path(entry["path"]).suffix.lstrip(".").lower() or "bin"
        if not ext.isalnum():
            continue
        store.blobs.put_file(entry["path"], ext, entry["sha256"])
        result[key] = {**entry, "blob": {"sha256": entry["sha256"], "ext": ext}}
    return result


def local_outputs(store: Store, outputs: dict[str, Any]) -> dict[str, Any]:
    """`outputs` with every file entry's path readable on this machine (fetched from blobs when missing)."""
    result = dict(outputs)
    for key, entry in outputs.items():
        if not isinstance(entry, dict) or not entry.get("blob") or not entry.get("path"):
            continue
        if Path(entry["path"]).is_file():
            continue
        blob = entry["blob"]
        name = Path(entry["path"]).name
        target = store.settings.cache_dir / "weights" / blob["sha256"][:16] / name
        result[key] = {**entry, "path": str(store.blobs.get_file(blob["sha256"], blob["ext"], target))}
    return result
