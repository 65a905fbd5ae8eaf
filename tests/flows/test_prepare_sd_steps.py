"""The SD image steps through the prepare flow: align → detailer → loopback on messi5.jpg with tiny models.

Checks what the flow keeps: every loop's image as an artifact, the detailer's masks as mask
artifacts, and each parameter in the lineage of the artifacts; a re-run computes nothing.
"""

from __future__ import annotations

import shutil

import pytest
import yaml
from sqlalchemy import select

from flows.ingest import ingest
from flows.prepare import prepare
from store.db import open_store
from store.models import Artifact, Member
from tests.tiny_models.fixtures import tiny_sd, tiny_sd_inpaint  # noqa: F401

pytestmark = pytest.mark.slow


def test_detailer_then_loopback_keep_loops_masks_and_lineage(atelier_env, photos, prefect_harness, tmp_path,
                                                             tiny_sd, tiny_sd_inpaint):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(photos / "messi5.jpg", src)
    shutil.copy(photos / "HappyFish.jpg", src)  # no face: the detailer records "nothing to do" for it
    store = open_store()
    ingest(store, [src], "sd")
    pipeline = tmp_path / "sd.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "sd-steps", "batch_size": 2, "steps": [
        {"step": "align", "params": {"mode": "none"}},
        {"step": "detailer", "model": str(tiny_sd_inpaint),
         "params": {"resolution": 64, "steps": 3, "strength": 0.7, "seed": 5, "prompt": "detailed face, {caption}"}},
        {"step": "loopback", "model": str(tiny_sd),
         "params": {"resolution": 64, "steps": 3, "loops": 3, "strength": 0.4, "strength_change": 0.5,
                    "sampler": "DPM++ 2M", "seed": 11}},
    ]}))
    summary = prepare("sd", str(pipeline))
    steps = {c["step"]: c for c in summary["steps"]}
    assert all(not c["failed"] for c in steps.values()), steps
    assert steps["detailer"]["done"] == 2 and steps["loopback"]["done"] == 2
    with store.session() as session:
        by_step: dict[str, list[Artifact]] = {}
        for artifact in session.scalars(select(Artifact).order_by(Artifact.id)):
            by_step.setdefault(artifact.step, []).append(artifact)
        detailed = by_step["detailer"]
        assert len(detailed) == 1  # the fish has no face: no artifact, recorded as nothing to do
        assert detailed[0].params["strength"] == 0.7 and detailed[0].params["seed"] == 5
        assert detailed[0].meta["prompt"] == "detailed face" and detailed[0].meta["regions"][0]["label"] == "face"
        assert detailed[0].model_hash and detailed[0].backend == "sd-inpaint"
        masks = {(m.params["name"], m.params["step"]) for m in by_step["mask"]}
        assert {("detail", "detailer"), ("generated", "detailer")} <= masks
        loops = by_step["loopback"]
        assert len(loops) == 6  # 3 per image: loop-1, loop-2 and the result
        assert sorted(a.meta.get("intermediate", "result") for a in loops) == ["loop-1"] * 2 + ["loop-2"] * 2 + ["result"] * 2
        results = [a for a in loops if "intermediate" not in a.meta]
        for result in results:
            assert result.params["loops"] == 3 and result.params["sampler"] == "DPM++ 2M"
            assert [loop["strength"] for loop in result.meta["loops"]] == [0.4, 0.2, 0.1]
            assert [loop["seed"] for loop in result.meta["loops"]] == [11, 12, 13]
        finals = {a.id for a in results}
        members = session.scalars(select(Member)).all()
        assert {m.current_artifact_id for m in members} == finals
    again = prepare("sd", str(pipeline))
    assert all(c["done"] == 0 for c in again["steps"])
    with store.session() as session:
        assert len(session.scalars(select(Artifact).where(Artifact.step == "loopback")).all()) == 6
