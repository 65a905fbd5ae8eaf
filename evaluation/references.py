"""Embeddings of a dataset version's images, cached in the embeddings table by (image sha256, model hash).

A dataset's images are embedded once per encoder; later evaluations (every night's challenger,
the champion re-scored) read the vectors back. A face vector of zero length records "no face".
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image
from sqlalchemy import select

from evaluation.metrics import Encoders, References
from store.datasets import insert_ignoring_conflicts
from store.db import Store
from store.models import EmbeddingCache


def cached_vectors(store: Store, shas: list[str], model_hash: str,
                   compute: Callable[[list[str]], list[np.ndarray | None]]) -> dict[str, np.ndarray | None]:
    """sha → vector (None: nothing found, e.g. no face); computes and stores only the missing ones."""
    with store.session() as session:
        rows = session.execute(select(EmbeddingCache.image_sha256, EmbeddingCache.vector).where(
            EmbeddingCache.model_hash == model_hash, EmbeddingCache.image_sha256.in_(shas))).all()
    found = {sha: (np.frombuffer(blob, dtype="<f4").copy() if blob else None) for sha, blob in rows}
    missing = [sha for sha in dict.fromkeys(shas) if sha not in found]
    if missing:
        vectors = compute(missing)
        with store.session() as session:
            for sha, vector in zip(missing, vectors):
                data = b"" if vector is None else np.asarray(vector, dtype="<f4").tobytes()
                insert_ignoring_conflicts(session, EmbeddingCache,
                                          {"image_sha256": sha, "model_hash": model_hash, "vector": data},
                                          ["image_sha256", "model_hash"])
                found[sha] = vector
    return found


def reference_embeddings(store: Store, entries: list[tuple[str, str]], encoders: Encoders) -> References:
    """CLIP, DINO (and face) embeddings of the blobs `entries` = [(sha256, ext)], in that order."""
    exts = dict(entries)
    shas = list(exts)

    def load(batch: list[str]) -> list[Image.Image]:
        images = []
        for sha in batch:
            with Image.open(io.BytesIO(store.blobs.get(sha, exts[sha]))) as image:
                image.load()
                images.append(image)
        return images

    clip = cached_vectors(store, shas, encoders.clip.model_hash, lambda b: list(encoders.clip.images(load(b))))
    dino = cached_vectors(store, shas, encoders.dino.model_hash, lambda b: list(encoders.dino.images(load(b))))
    faces = None
    if encoders.face is not None:
        by_sha = cached_vectors(store, shas, encoders.face.model_hash, lambda b: encoders.face.embed(load(b)))
        found = [by_sha[sha] for sha in shas if by_sha[sha] is not None]
        faces = np.stack(found) if found else None
    return References(clip=np.stack([clip[s] for s in shas]), dino=np.stack([dino[s] for s in shas]), faces=faces)
