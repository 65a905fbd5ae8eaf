"""portrait-dreambooth.yaml on the embedded default: real faces, the subject kept, the others excluded with
their reasons, steps without weights skipped and said so; step versions in the cache key."""

from __future__ import annotations

import shutil

import pytest
from sqlalchemy import select

from flows.ingest import ingest
from flows.pipeline import PIPELINES, PipelineConfig
from flows.prepare import prepare, run_pipeline
from preprocess import steps as step_registry
from preprocess.steps import cache_params_hash, params_hash
from store.db import open_store
from store.models import Member, Score, StepResult, Tag
from store.queries import dataset_id, grid_filter_from_params, matching_member_ids

SUBJECT = {"obama.jpg", "obama2.jpg", "obama_partial_face.jpg"}
# Real-ESRGAN through ncnn takes minutes per 512 px image on this CPU: this test is about faces
FAST_UPSCALE = {"upscale": {"fallback": "lanczos"}}


@pytest.fixture
def portraits(atelier_env, photos, prefect_harness, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(photos.parent / "faces", src)  # obama2.jpg, obama_partial_face.jpg
    for name in ("obama.jpg", "biden.jpg", "astronaut.png", "HappyFish.jpg"):
        shutil.copy(photos / name, src)
    store = open_store()
    ingest(store, [src], "portraits")
    return store


def _names(session, ids):
    return {session.get(Member, i).source_path for i in ids}


@pytest.mark.slow
def test_portrait_pipeline_keeps_the_subject_and_says_what_it_skipped(portraits, capfd):
    store = portraits
    summary = prepare("portraits", str(PIPELINES / "portrait-dreambooth.yaml"), overrides=FAST_UPSCALE)
    said = capfd.readouterr().err
    skipped = {s["step"]: s["reason"] for s in summary["skipped"]}
    assert set(skipped) == {"restore", "tag", "caption", "aesthetic"}  # no weights, no fallback
    assert "gfpgan/GFPGANv1.4.pth" in skipped["restore"] and "wd14-vit-v2" in skipped["tag"]
    assert "skipping step 'restore': model 'gfpgan-v1.4'" in said  # said before the run
    assert "## Skipped steps" in summary["report"]["markdown"]
    steps = {c["step"]: c for c in summary["steps"]}
    assert steps["align"]["backend"] == "yuface" and steps["identity"]["backend"] == "dlib-resnet"
    assert steps["rating"]["backend"] == "nudenet" and all(c["failed"] == [] for c in steps.values())
    with store.session() as session:
        members = {m.source_path: m for m in session.scalars(select(Member))}
        assert {n for n, m in members.items() if m.status == "active"} == SUBJECT
        assert members["HappyFish.jpg"].excluded_reason.startswith("rule: no face found (faces 0 < 1)")
        for other in ("biden.jpg", "astronaut.png"):
            assert members[other].excluded_reason.startswith("rule: not the subject (identity 0.8"), other
        ratings = set(session.scalars(select(Tag.text).where(Tag.text.like("rating:%"))))
        assert ratings == {"rating:safe"}
        faces_source = set(session.scalars(select(Score.source).where(Score.name == "faces")))
        assert faces_source == {"model:yuface"}

        # the dashboard's generic filters cover the new scores and tags
        ds = dataset_id(session, "portraits")
        def grid(**params):
            return _names(session, matching_member_ids(session, ds, grid_filter_from_params({"status": "all", **params})))
        assert grid(min_identity="0.9") == SUBJECT
        assert grid(max_identity="0.9") == {"biden.jpg", "astronaut.png"}
        assert len(grid(tags_all="rating:safe")) == 6 and grid(tags_all="rating:explicit") == set()

    # rules exclude on the rating: count faces as "questionable" and the subject's photos leave
    again = prepare("portraits", str(PIPELINES / "portrait-dreambooth.yaml"),
                    overrides={**FAST_UPSCALE, "rating": {"questionable_classes": ["FACE_MALE", "FACE_FEMALE"]}})
    steps = {c["step"]: c for c in again["steps"]}
    assert steps["align"]["done"] == 0 and steps["identity"]["done"] == 0  # cached
    assert steps["rating"]["done"] == 6
    with store.session() as session:
        members = {m.source_path: m for m in session.scalars(select(Member))}
        flagged = {n for n, m in members.items() if (m.excluded_reason or "").startswith("rule: NSFW rating")}
        assert flagged and flagged <= SUBJECT
        ds = dataset_id(session, "portraits")
        questionable = matching_member_ids(session, ds, grid_filter_from_params(
            {"status": "all", "tags_all": "rating:questionable"}))
        assert flagged <= _names(session, questionable)


def test_a_steps_version_enters_its_cache_key(atelier_env, photos, monkeypatch, tmp_path):
    assert cache_params_hash("quality", {}) == params_hash({})  # version 1: keys made before versions still hold
    assert cache_params_hash("align", {}) != params_hash({})  # align is at version 2: old cascade crops recompute
    src = tmp_path / "src"
    src.mkdir()
    for name in ("messi5.jpg", "HappyFish.jpg"):
        shutil.copy(photos / name, src)
    store = open_store()
    ingest(store, [src], "versions")
    config = PipelineConfig(steps=[{"step": "quality"}])
    assert [c["done"] for c in run_pipeline(store, "versions", config)["steps"]] == [2]
    assert [c["cached"] for c in run_pipeline(store, "versions", config)["steps"]] == [2]
    monkeypatch.setitem(step_registry._VERSIONS, "quality", 2)  # the step's code changed
    assert [c["done"] for c in run_pipeline(store, "versions", config)["steps"]] == [2]
    with store.session() as session:
        assert sorted(r.output["step_version"] for r in session.scalars(select(StepResult))) == [1, 1, 2, 2]
