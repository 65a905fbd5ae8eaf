"""Metrics on real photos with tiny real-format encoders: equal to a direct transformers/onnxruntime
computation, 1.0 for identical images, faces counted, dataset embeddings cached by (image, model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.config import load_preset
from evaluation.metrics import (
    Encoders,
    References,
    mean_pairwise_distance,
    score_images,
    score_samples,
    summarise,
)
from evaluation.sampling import GeneratedSample


@pytest.fixture(scope="module")
def images(photos) -> dict[str, Image.Image]:
    return {name: Image.open(photos / name).convert("RGB") for name in
            ["messi5.jpg", "HappyFish.jpg", "leuvenB.jpg", "ellipses.jpg"]}


@pytest.fixture
def encoders(eval_preset, registry) -> Encoders:
    return Encoders.load(load_preset(eval_preset), registry)


def unit(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=-1).detach().numpy()


def test_metrics_equal_a_direct_transformers_computation(encoders, images, tiny_clip, tiny_dino, tiny_face,
                                                         tiny_aesthetic_head):
    import onnxruntime as ort
    from transformers import CLIPModel, CLIPProcessor, ViTModel

    from evaluation.faces import face_detector, largest_face
    from store.registry import load_state_dict

    samples = [images["messi5.jpg"], images["HappyFish.jpg"], images["ellipses.jpg"]]
    refs_images = [images["messi5.jpg"], images["leuvenB.jpg"]]
    prompts = ["a photo of sks person", "a fish", "a photo of sks person"]

    clip, processor = CLIPModel.from_pretrained(tiny_clip).eval(), CLIPProcessor.from_pretrained(tiny_clip)
    with torch.no_grad():
        s_clip = unit(clip.get_image_features(**processor(images=samples, return_tensors="pt")).pooler_output)
        r_clip = unit(clip.get_image_features(**processor(images=refs_images, return_tensors="pt")).pooler_output)
        t_clip = unit(clip.get_text_features(**processor(text=prompts, return_tensors="pt", padding=True)).pooler_output)
        dino = ViTModel.from_pretrained(tiny_dino, add_pooling_layer=False).eval()
        dino_in = lambda ims: processor_dino(images=ims, return_tensors="pt")["pixel_values"]
        from transformers import ViTImageProcessor

        processor_dino = ViTImageProcessor.from_pretrained(tiny_dino)
        s_dino = unit(dino(pixel_values=dino_in(samples)).last_hidden_state[:, 0])
        r_dino = unit(dino(pixel_values=dino_in(refs_images)).last_hidden_state[:, 0])
        from preprocess.aesthetic import build_head

        head = build_head(load_state_dict(tiny_aesthetic_head), "head")
        aesthetic = head(torch.from_numpy(s_clip)).squeeze(-1).clamp(1, 10).numpy()

    session = ort.InferenceSession(str(tiny_face))
    detector = face_detector()

    def face_vector(image):
        box = largest_face(image, detector)
        crop = np.asarray(image.crop(box).resize((32, 32), Image.BILINEAR), np.float32)
        out = session.run(None, {"input.1": ((crop - 127.5) / 127.5).transpose(2, 0, 1)[None]})[0][0]
        return out / np.linalg.norm(out)

    ref_faces = np.stack([face_vector(images["messi5.jpg"])])
    refs = References(clip=r_clip, dino=r_dino, faces=ref_faces)
    rows = score_images(samples, prompts, refs, encoders)

    assert [r["clip_i"] for r in rows] == pytest.approx((s_clip @ r_clip.T).mean(axis=1), abs=1e-5)
    assert [r["dino"] for r in rows] == pytest.approx((s_dino @ r_dino.T).mean(axis=1), abs=1e-5)
    assert [r["clip_t"] for r in rows] == pytest.approx((s_clip * t_clip).sum(axis=1), abs=1e-5)
    assert [r["aesthetic"] for r in rows] == pytest.approx(aesthetic, abs=1e-4)
    # messi5 has a face (identical to the reference: 1.0); the fish and the ellipses have none
    assert [r["has_face"] for r in rows] == [True, False, False]
    assert [r["face_identity"] for r in rows] == pytest.approx([1.0, 0.0, 0.0], abs=1e-5)
    # diversity: mean pairwise (1 − cosine) of the DINO embeddings of one prompt's samples
    for row, prompt in zip(rows, prompts):
        row["prompt"] = prompt
    summary = summarise(rows)
    spread = 1 - float(s_dino[0] @ s_dino[2])
    assert summary["diversity"] == pytest.approx(spread, abs=1e-5)  # "a fish" has one sample: no pairs
    assert summary["faces_missing"] == 2 and summary["samples"] == 3
    assert summary["dino"] == pytest.approx(float((s_dino @ r_dino.T).mean()), abs=1e-5)


def test_identical_images_score_clip_i_and_dino_of_one(encoders, images):
    photo = images["leuvenB.jpg"]
    refs = References(clip=encoders.clip.images([photo]), dino=encoders.dino.images([photo]))
    rows = score_images([photo, photo.copy()], ["x", "x"], refs, encoders)
    for row in rows:
        assert row["clip_i"] == pytest.approx(1.0, abs=1e-5) and row["dino"] == pytest.approx(1.0, abs=1e-5)
    assert summarise([{**r, "prompt": "x"} for r in rows])["diversity"] == pytest.approx(0.0, abs=1e-5)
    other = score_images([images["HappyFish.jpg"]], ["x"], refs, encoders)[0]
    assert other["clip_i"] < 0.999 and other["dino"] < 0.999


def test_score_samples_reports_trained_base_lift_and_per_prompt(encoders, images):
    refs = References(clip=encoders.clip.images([images["messi5.jpg"]]), dino=encoders.dino.images([images["messi5.jpg"]]))
    samples = [GeneratedSample("trained", "t", "p1", 1, images["messi5.jpg"]),
               GeneratedSample("trained", "t", "p1", 2, images["leuvenB.jpg"]),
               GeneratedSample("base", "t", "p1", 1, images["HappyFish.jpg"]),
               GeneratedSample("base", "t", "p1", 2, images["ellipses.jpg"])]
    scored, overall, per_prompt = score_samples(samples, refs, encoders)
    assert overall["trained"]["dino"] > overall["base"]["dino"]  # the trained set holds the reference itself
    assert overall["lift"]["dino"] == pytest.approx(overall["trained"]["dino"] - overall["base"]["dino"])
    assert per_prompt["p1"]["trained"]["samples"] == 2 and "diversity" in per_prompt["p1"]["base"]
    assert scored[0].scores["dino"] == pytest.approx(1.0, abs=1e-5) and "_dino" not in scored[0].scores
    assert "face_identity" not in overall["trained"]  # no reference faces given: no face metric


def test_mean_pairwise_distance_needs_two():
    assert mean_pairwise_distance(np.eye(3, dtype=np.float32)[:1]) is None
    assert mean_pairwise_distance(np.eye(3, dtype=np.float32)) == pytest.approx(1.0)


def test_dataset_embeddings_are_cached_by_image_and_model(store, photos, tmp_path, encoders):
    from sqlalchemy import func, select

    from evaluation.references import reference_embeddings
    from store.models import EmbeddingCache, VersionEntry
    from tests.evaluation.conftest import add_subject

    version_id = add_subject(store, photos, tmp_path)
    with store.session() as session:
        entries = [tuple(e) for e in session.execute(select(VersionEntry.blob_sha256, VersionEntry.blob_ext)
                                                     .where(VersionEntry.version_id == version_id)).all()]
    first = reference_embeddings(store, entries, encoders)
    assert first.clip.shape == (3, 32) and first.dino.shape == (3, 32) and first.faces.shape == (1, 16)  # messi5 only
    with store.session() as session:
        assert session.scalar(select(func.count(EmbeddingCache.id))) == 9  # 3 images × (clip, dino, face)

    def refuse(*_):
        raise AssertionError("a cached embedding was computed again")

    encoders.clip.images = encoders.dino.images = encoders.face.embed = refuse
    second = reference_embeddings(store, entries, encoders)
    assert np.allclose(second.clip, first.clip) and np.allclose(second.dino, first.dino)
    assert np.allclose(second.faces, first.faces)
