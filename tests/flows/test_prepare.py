"""The prepare flow on real photos: incremental, failure-tolerant, configurable, curator-safe."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from flows.ingest import ingest
from flows.pipeline import load_pipeline
from flows.prepare import prepare
from store.db import open_store
from store.models import Member, Score, StepResult, Tag
from tests.tiny_models.fixtures import tiny_wd14  # noqa: F401  (session fixture)


@pytest.fixture
def photos_dataset(atelier_env, photos, prefect_harness):
    store = open_store()
    ingest(store, [photos], "photos")
    return store


def _step(summary: dict, step_id: str) -> dict:
    return next(c for c in summary["steps"] if c["step"] == step_id)


def _write(tmp_path: Path, name: str, config: dict) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_default_pipeline_end_to_end_then_a_rerun_does_nothing(photos_dataset):
    store = photos_dataset
    first = prepare("photos")
    assert [c["step"] for c in first["steps"]] == ["align", "upscale", "quality"]
    assert _step(first, "align")["done"] == 10 and _step(first, "align")["backend"] == "yuface"
    # messi5 (342 px), HappyFish (194) and ellipses (400) are below 512 on the short side
    upscale = _step(first, "upscale")
    assert upscale["done"] == 3 and upscale["not_applicable"] == 7 and upscale["backend"] == "lanczos"
    assert _step(first, "quality")["done"] == 10 and _step(first, "quality")["failed"] == []
    with store.session() as session:
        from store.models import Artifact

        sharpness = session.scalars(select(Score.value).where(Score.name == "sharpness")).all()
        assert len(sharpness) == 10 and all(v > 0 for v in sharpness)
        faces = dict(session.execute(select(Member.source_path, Score.value).join(Score, Score.member_id == Member.id)
                                     .where(Score.name == "faces")).all())
        assert faces["messi5.jpg"] == 1.0 and faces["leuvenB.jpg"] == 0.0
        # credited to the step that found them, not to upscale's Lanczos that carried the boxes on
        sources = set(session.scalars(select(Score.source).where(Score.name == "faces")))
        assert sources == {"model:yuface"}
        upscaled = dict(session.execute(select(Member.source_path, Artifact).join(
            Artifact, Member.current_artifact_id == Artifact.id)).all())
        assert set(upscaled) == {"messi5.jpg", "HappyFish.jpg", "ellipses.jpg"}
        assert min(upscaled["messi5.jpg"].width, upscaled["messi5.jpg"].height) == 512
        assert upscaled["messi5.jpg"].step == "upscale" and upscaled["messi5.jpg"].backend == "lanczos"
    report = first["report"]
    assert "| upscale | lanczos | 3 | 0 | 7 |" in report["markdown"] and Path(report["contact_sheet"]).exists()

    again = prepare("photos", commit_message="prepared")
    assert all(c["done"] == 0 for c in again["steps"])  # zero step executions
    assert [c["cached"] for c in again["steps"]] == [10, 3, 10]
    assert again["version"]["number"] == 1 and again["version"]["entries"] == 10


def test_a_changed_parameter_reruns_that_step_and_the_ones_after(photos_dataset):
    prepare("photos")
    changed = prepare("photos", overrides={"upscale": {"target": 640, "when": "short_side < 640"}})
    align, upscale, quality = changed["steps"]
    assert align["done"] == 0 and align["cached"] == 10
    assert upscale["done"] == 5 and upscale["cached"] == 0  # leuvenB (563 px) and astronaut (512) now qualify too
    assert quality["done"] == 5 and quality["cached"] == 5  # new images after upscale; the rest unchanged
    back = prepare("photos")  # the old parameters: everything is still cached
    assert [c["done"] for c in back["steps"]] == [0, 0, 0]


def test_model_steps_rules_and_a_changed_parameter(photos_dataset, tiny_wd14, tmp_path):
    store = photos_dataset
    tagger = tmp_path / "wd14"
    shutil.copytree(tiny_wd14, tagger)
    tiny_wd14 = tagger
    config = {"name": "tagging", "batch_size": 3, "steps": [
        {"step": "quality"},
        {"step": "tag", "model": str(tiny_wd14), "params": {"general_threshold": 0.5, "character_threshold": 0.85},
         "accept_above": 0.91},
    ]}
    path = _write(tmp_path, "tagging.yaml", config)
    first = prepare("photos", path)
    assert _step(first, "tag")["done"] == 10 and _step(first, "tag")["backend"] == "wd14-onnx"
    with store.session() as session:
        messi = session.scalar(select(Member).where(Member.source_path == "messi5.jpg"))
        tags = {t.text: t for t in session.scalars(select(Tag).where(Tag.member_id == messi.id))}
        assert "1girl" in tags and tags["1girl"].source.startswith("model:") and tags["1girl"].status == "suggested"
        assert "kaname madoka" in tags and "hatsune miku" not in tags  # character threshold 0.85
        assert "long hair" not in tags  # 0.45 < 0.5
        # accept_above: only the confident suggestions are accepted without review
        assert tags["kaname madoka"].status == "accepted" and tags["kaname madoka"].updated_by == "auto:tag"
        assert tags["star (symbol)"].status == "suggested"
        # a curator accepts one suggestion and rejects another
        tags["1girl"].status, tags["1girl"].updated_by = "accepted", "ana"
        tags["solo"].status = "rejected"
        messi_id = messi.id

    # lower the general threshold: only the tag step runs again, quality stays cached
    second = prepare("photos", path, overrides={"tag": {"general_threshold": 0.3}})
    assert _step(second, "quality") | {"seconds": 0} == _step(first, "quality") | {"done": 0, "cached": 10, "seconds": 0, "backend": None}
    assert _step(second, "tag")["done"] == 10
    with store.session() as session:
        tags = {t.text: t for t in session.scalars(select(Tag).where(Tag.member_id == messi_id))}
        assert "long hair" in tags  # 0.45 ≥ 0.3 now
        assert tags["1girl"].status == "accepted" and tags["solo"].status == "rejected"  # curator work survives
        assert session.scalar(select(func.count()).select_from(StepResult).where(StepResult.step == "tag")) == 20

    # the same parameters, changed weights (the model folder's content): only the tag step runs again
    (tagger / "selected_tags.csv").write_text((tagger / "selected_tags.csv").read_text() + "\n")
    third = prepare("photos", path, overrides={"tag": {"general_threshold": 0.3}})
    assert _step(third, "quality")["done"] == 0 and _step(third, "tag")["done"] == 10


def test_rules_exclude_and_restore_members_without_deleting(photos_dataset, tmp_path):
    store = photos_dataset
    strict = _write(tmp_path, "strict.yaml", {"steps": [{"step": "quality", "exclude_when": ["resolution < 1000"]}]})
    summary = prepare("photos", strict)
    # messi5 548×342, HappyFish 259×194, leuvenB 751×563, ellipses 400×533, astronaut 512×512,
    # obama 910×1137 and biden 970×2204 are below 1000 px on the short side
    assert summary["applied"]["excluded"] == 7 and _step(summary, "quality")["excluded"] == 7
    with store.session() as session:
        reasons = dict(session.execute(select(Member.source_path, Member.excluded_reason)
                                       .where(Member.status == "excluded")).all())
        assert set(reasons) == {"messi5.jpg", "HappyFish.jpg", "leuvenB.jpg", "ellipses.jpg", "astronaut.png",
                                "obama.jpg", "biden.jpg"}
        assert reasons["messi5.jpg"].startswith("rule: resolution")
        # a curator excludes an image by hand: rules never bring it back
        elarun = session.scalar(select(Member).where(Member.source_path == "Elarun_2560x1600.png"))
        elarun.status, elarun.excluded_reason = "excluded", "off-topic"
    relaxed = prepare("photos")  # the default pipeline's rules keep all four
    assert relaxed["applied"]["excluded"] == 0
    with store.session() as session:
        statuses = dict(session.execute(select(Member.source_path, Member.status)).all())
    assert statuses["messi5.jpg"] == "active" and statuses["Elarun_2560x1600.png"] == "excluded"


def test_a_failing_image_fails_alone(photos_dataset):
    store = photos_dataset
    with store.session() as session:
        member = session.scalar(select(Member).where(Member.source_path == "leuvenB.jpg"))
        blob = store.blobs.local_path(member.image.sha256, member.image.ext)
    saved = blob.read_bytes()
    blob.chmod(0o644)
    blob.write_bytes(b"\xff\xd8 no longer a jpeg")
    try:
        summary = prepare("photos")
    finally:
        blob.write_bytes(saved)
    align = _step(summary, "align")
    assert align["done"] == 9
    assert [f["path"] for f in align["failed"]] == ["leuvenB.jpg"]
    assert "cannot read input" in align["failed"][0]["reason"]
    assert _step(summary, "quality")["done"] == 9  # the failed image goes no further; the rest do
    assert summary["applied"]["failed_members"] == 1
    # the failure is recorded, and the next run tries that image again (and only it)
    again = prepare("photos")
    assert _step(again, "align")["done"] == 1 and _step(again, "align")["cached"] == 9
    assert _step(again, "quality")["done"] == 1 and _step(again, "quality")["cached"] == 9


@pytest.mark.parametrize("config, message", [
    ({"steps": [{"step": "sharpen"}]}, "step 1 (sharpen): step: unknown step 'sharpen'"),
    ({"steps": [{"step": "quality", "exclude_when": ["sharpness <<< 3"]}]}, "step 1 (quality): exclude_when"),
    ({"steps": [{"step": "quality", "when": "faces ~ 1"}]}, "step 1 (quality): when"),
    ({"steps": [{"step": "quality", "colour": 1}]}, "step 1 (quality): colour: Extra inputs are not permitted"),
    ({"batch_size": 0, "steps": []}, "batch_size: Input should be greater than or equal to 1"),
])
def test_bad_pipeline_configs_name_the_file_step_and_field(tmp_path, config, message):
    path = _write(tmp_path, "bad.yaml", config)
    with pytest.raises(ValueError) as error:
        load_pipeline(path)
    assert str(error.value).startswith(path) and message in str(error.value)


def test_unknown_step_parameters_fail_before_any_work(photos_dataset, tmp_path):
    path = _write(tmp_path, "p.yaml", {"steps": [{"step": "quality", "params": {"sharpnes": 1}}]})
    with pytest.raises(ValueError, match="step 'quality'.*sharpnes: Extra inputs are not permitted"):
        prepare("photos", path)
    with pytest.raises(ValueError, match="--set upscal: no step or field of that name"):
        load_pipeline(None, {"upscal": {"scale": 2}})


def test_shipped_pipelines_are_valid():
    for path in sorted(Path("configs/pipeline").glob("*.yaml")):
        config = load_pipeline(path)
        assert config.steps, path


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["processes", "dask"])
def test_process_and_dask_runners_give_the_threads_results(runner, photos, prefect_harness, tmp_path, monkeypatch):
    outcomes = {}
    for name in ("threads", runner):
        monkeypatch.setenv("ATELIER_HOME", str(tmp_path / name))
        store = open_store()
        ingest(store, [photos], "photos")
        summary = prepare("photos", overrides={"task_runner": name, "workers": 2, "batch_size": 4})
        assert _step(summary, "quality")["done"] == 10
        with store.session() as session:
            outcomes[name] = sorted((p, n, round(v, 6)) for p, n, v in session.execute(
                select(Member.source_path, Score.name, Score.value).join(Member, Score.member_id == Member.id)))
    assert outcomes[runner] == outcomes["threads"] and len(outcomes["threads"]) == 10 * 7  # 6 quality scores + faces
