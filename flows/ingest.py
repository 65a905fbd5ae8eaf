"""The ingest flow: sources → safe decode (batches, threads) → blobs → images and members in the store."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.ingest_options import IngestOptions
from preprocess.load import RejectedImage, open_image
from preprocess.sources import SourceFile, scan_sources
from store.blobs import BlobStore, sha256_bytes
from store.datasets import get_or_create_dataset
from store.db import Store, open_store
from store.members import IngestedFile, dataset_image_hashes, record_batch


def decode_file(item: SourceFile, sidecar: str | None, blobs: BlobStore, options: IngestOptions,
                known: frozenset[str] = frozenset()) -> IngestedFile:
    """Read, verify and hash one file; its original bytes go to the blob store unchanged.

    Bytes already in the dataset (`known` hashes) are not decoded again: a re-ingest only hashes.
    """
    try:
        data = item.read()
        if (sha := sha256_bytes(data)) in known:
            return IngestedFile(path=item.path, sha256=sha, known=True)
        loaded = open_image(data, max_pixels=options.max_pixels, min_side=options.min_side, animated=options.animated)
    except RejectedImage as error:
        return IngestedFile(path=item.path, rejected=str(error))
    except OSError as error:
        return IngestedFile(path=item.path, rejected=f"unreadable file: {error}")
    blobs.put(data, loaded.ext)
    return IngestedFile(path=item.path, sha256=sha, phash=loaded.phash, width=loaded.width, height=loaded.height,
                        format=loaded.format, ext=loaded.ext, byte_size=len(data), mode=loaded.mode,
                        orientation=loaded.orientation, sidecar=sidecar)


def decode_files(batch: list[tuple[SourceFile, str | None]], blobs: BlobStore, options: IngestOptions,
                 known: frozenset[str] = frozenset()) -> list[IngestedFile]:
    with ThreadPoolExecutor(options.workers) as pool:
        return list(pool.map(lambda pair: decode_file(pair[0], pair[1], blobs, options, known), batch))


decode_batch = task(decode_files, name="decode-batch", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)


def run_ingest(
    store: Store,
    sources: list[Path],
    dataset: str,
    options: IngestOptions = IngestOptions(),
    decode: Callable = decode_files,
    on_progress: Callable[[int, int], None] | None = None,
    dataset_settings: dict | None = None,
) -> dict:
    """Ingest `sources` into `dataset`; returns the report that `atelier ingest --json` prints."""
    scan = scan_sources([Path(s) for s in sources], options.max_file_bytes)
    with store.session() as session:
        dataset_id = get_or_create_dataset(session, dataset, **(dataset_settings or {})).id
        known = dataset_image_hashes(session, dataset_id)
    report = {"dataset": dataset, "scanned": len(scan.files), "added": 0, "unchanged": 0, "exact_duplicates": 0,
              "near_duplicates": [], "exact_duplicate_pairs": [], "rejected": [],
              "ignored": scan.ignored}
    if scan.rejected:  # refused while scanning (symlinks out, zip-slip, oversized): recorded like the rest
        with store.session() as session:
            outcome = record_batch(session, dataset_id, [IngestedFile(path=r["path"], rejected=r["reason"])
                                                         for r in scan.rejected], options.near_threshold)
        report["rejected"] += outcome.rejected
    for start in range(0, len(scan.files), options.batch_size):
        chunk = scan.files[start:start + options.batch_size]
        decoded = decode([(f, scan.sidecar_for(f)) for f in chunk], store.blobs, options, known)
        with store.session() as session:
            outcome = record_batch(session, dataset_id, decoded, options.near_threshold)
        report["added"] += len(outcome.added)
        report["unchanged"] += len(outcome.unchanged)
        report["exact_duplicates"] += len(outcome.exact_duplicates)
        report["exact_duplicate_pairs"] += outcome.exact_duplicates
        report["near_duplicates"] += outcome.near_duplicates
        report["rejected"] += outcome.rejected
        if on_progress:
            on_progress(start + len(chunk), len(scan.files))
    return report


def ingest(store: Store, sources: list[Path], dataset: str, **options) -> dict:
    """Plain-Python ingest (no Prefect): for scripts, tests of later stages and benchmarks."""
    return run_ingest(store, sources, dataset, IngestOptions(**options))


@flow(name="ingest", log_prints=True)
def ingest_flow(sources: list[str], dataset: str, options: dict | None = None,
                dataset_settings: dict | None = None, on_progress: Callable | None = None) -> dict:
    """Prefect flow: decode in batches (one task per batch, retried on transient errors), record per batch."""
    store = open_store()
    report = run_ingest(store, [Path(s) for s in sources], dataset, IngestOptions(**(options or {})),
                        decode=decode_batch, on_progress=on_progress, dataset_settings=dataset_settings)
    print(f"ingest {dataset}: scanned {report['scanned']}, added {report['added']}, "
          f"near duplicates {len(report['near_duplicates'])}, rejected {len(report['rejected'])}")
    return report


