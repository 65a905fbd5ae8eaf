"""Near-duplicate detection on 64-bit perceptual hashes.

Default threshold: Hamming distance ≤ 12 of 64 bits. Measured on the seven test photos
(tests/store/test_ingest.py): half-size and JPEG q=60 copies are 0–2 bits from their
original, crops of 2–3% per side 2–10 bits, crops of 5% per side 6–14 bits; the closest
pair of different photos is 26 bits apart. 12 catches resized, re-encoded and lightly
cropped copies with a wide margin below unrelated images; raise it (≤ 16) to catch heavier
crops at the risk of merging near-identical shots of one scene.
"""

from __future__ import annotations

import numpy as np

DEFAULT_NEAR_THRESHOLD = 12


def phash_to_int(phash: str) -> int:
    return int(phash, 16)


def hamming(a: str, b: str) -> int:
    return (phash_to_int(a) ^ phash_to_int(b)).bit_count()


def near_matches(phash: str, candidates: np.ndarray, threshold: int = DEFAULT_NEAR_THRESHOLD) -> np.ndarray:
    """Indices of `candidates` (uint64 array of hashes) within `threshold` bits of `phash`."""
    if candidates.size == 0:
        return np.empty(0, dtype=np.int64)
    distances = np.bitwise_count(candidates ^ np.uint64(phash_to_int(phash)))
    return np.flatnonzero(distances <= threshold)
