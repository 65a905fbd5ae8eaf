"""The full portrait chain through the prepare flow with tiny real-format models for every model step."""

from __future__ import annotations

import shutil

import pytest
import yaml
from sqlalchemy import select

from flows.ingest import ingest
from flows.prepare import prepare
from store.db import open_store
from store.models import Artifact, Member, Score, Tag
from store.versions import commit_version, export_version
from tests.tiny_models.fixtures import tiny_aesthetic_head, tiny_blip, tiny_clip, tiny_wd14  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_image_models(tmp_path_factory):
    from tests.tiny_models.esrgan import build_esrgan
    from tests.tiny_models.face_restorers import build_gfpgan
    from tests.tiny_models.sd_inpaint import build_tiny_sd_inpaint

    base = tmp_path_factory.mktemp("image-models")
    return {"esrgan": build_esrgan(base / "esrgan", scale=4), "gfpgan": build_gfpgan(base / "gfpgan"),
            "inpaint": build_tiny_sd_inpaint(base / "inpaint")}


def test_portrait_chain_with_tiny_models(atelier_env, prefect_harness, photos, tmp_path, tiny_image_models,
                                         tiny_wd14, tiny_blip, tiny_clip, tiny_aesthetic_head):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("messi5.jpg", "HappyFish.jpg", "ellipses.jpg"):
        shutil.copy(photos / name, src / name)
    store = open_store()
    ingest(store, [src], "portraits")
    pipeline = tmp_path / "portrait.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "portrait-tiny", "batch_size": 2, "steps": [
        {"step": "align", "params": {"mode": "none"}},
        {"step": "restore", "model": str(tiny_image_models["gfpgan"]), "when": "faces > 0"},
        {"step": "upscale", "model": str(tiny_image_models["esrgan"]), "params": {"target": 400, "tile": 128},
         "when": "short_side < 400"},
        {"step": "outpaint", "model": str(tiny_image_models["inpaint"]), "params": {"resolution": 64, "steps": 2},
         "when": "aspect_ratio > 1.25"},
        {"step": "tag", "model": str(tiny_wd14), "accept_above": 0.9},
        {"step": "caption", "model": str(tiny_blip), "params": {"max_new_tokens": 8, "num_beams": 1}},
        {"step": "aesthetic", "model": str(tiny_aesthetic_head), "params": {"clip": str(tiny_clip)}},
    ]}))
    summary = prepare("portraits", str(pipeline))
    steps = {c["step"]: c for c in summary["steps"]}
    assert all(c["failed"] == [] for c in steps.values()), steps
    assert steps["restore"]["done"] == 1 and steps["restore"]["not_applicable"] == 2  # only messi5 has a face
    assert steps["upscale"]["done"] == 2  # messi5 (342 px) and HappyFish (194 px); ellipses is 400
    assert steps["outpaint"]["done"] == 3  # 548×342, 259×194 and 400×533 are all beyond 1.25:1
    assert {name: c["backend"] for name, c in steps.items()} == {
        "align": "yuface", "restore": "gfpgan", "upscale": "realesrgan", "outpaint": "sd-inpaint",
        "tag": "wd14-onnx", "caption": "blip", "aesthetic": "laion-aesthetic-v2"}
    for name in ("tag", "caption", "aesthetic"):
        assert steps[name]["done"] == 3
    with store.session() as session:
        finals = dict(session.execute(select(Member.source_path, Artifact).join(
            Artifact, Member.current_artifact_id == Artifact.id)).all())
        aesthetic = session.scalars(select(Score.value).where(Score.name == "aesthetic")).all()
        accepted = session.scalars(select(Tag.text).where(Tag.status == "accepted")).all()
        captions = session.scalars(select(Member.caption)).all()
    assert {a.step for a in finals.values()} == {"outpaint"} and all(a.width == a.height for a in finals.values())
    assert len(aesthetic) == 3 and all(1 <= v <= 10 for v in aesthetic)
    assert "kaname madoka" in accepted
    assert all(captions)
    version = commit_version(store, "portraits", "tiny chain")
    exported = export_version(store, "portraits", version.number, "kohya", tmp_path / "kohya")
    assert exported["images"] == 3
    again = prepare("portraits", str(pipeline))
    assert all(c["done"] == 0 for c in again["steps"])
