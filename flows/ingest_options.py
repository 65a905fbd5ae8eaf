"""What an ingest may be told (limits, duplicate threshold, batches): checked by the CLI before any
flow starts, so it lives apart from the flow and imports nothing heavy."""

from __future__ import annotations

import os
from dataclasses import dataclass

from preprocess.load import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from preprocess.sources import DEFAULT_MAX_FILE_BYTES
from store.dedup import DEFAULT_NEAR_THRESHOLD


@dataclass(frozen=True)
class IngestOptions:
    max_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb limit
    min_side: int = DEFAULT_MIN_SIDE  # px; smaller images are rejected
    animated: str = "first-frame"  # or "reject"
    near_threshold: int = DEFAULT_NEAR_THRESHOLD  # perceptual-hash bits, see store/dedup.py
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    batch_size: int = 64
    workers: int = min(4, os.cpu_count() or 1)

    def __post_init__(self):
        if self.animated not in ("first-frame", "reject"):
            raise ValueError(f"animated: expected 'first-frame' or 'reject', got {self.animated!r}")
        if self.batch_size < 1 or self.workers < 1 or self.min_side < 1 or self.max_pixels < 1:
            raise ValueError("batch_size, workers, min_side and max_pixels must be positive")
