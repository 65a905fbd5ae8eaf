"""Evaluation's face identity without ArcFace/FaceNet on disk: the identity step's dlib embedder."""

from __future__ import annotations

import numpy as np
from PIL import Image

from evaluation.faces import DlibFaceEmbedder, load_face_embedder
from evaluation.metrics import cosine_matrix
from store.registry import load_registry


def test_missing_arcface_falls_back_to_dlib_and_tells_people_apart(atelier_env, photos):
    embedder = load_face_embedder("arcface-r50", load_registry())  # the preset's default, not on disk
    assert isinstance(embedder, DlibFaceEmbedder) and len(embedder.model_hash) == 64
    faces = photos.parent / "faces"
    obama, obama2, biden, fish = embedder.embed([Image.open(photos / "obama.jpg"), Image.open(faces / "obama2.jpg"),
                                                 Image.open(photos / "biden.jpg"), Image.open(photos / "HappyFish.jpg")])
    assert fish is None
    sims = cosine_matrix(np.stack([obama]), np.stack([obama2, biden]))[0]
    assert sims[0] > 0.9 > sims[1]
