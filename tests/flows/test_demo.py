"""`make demo` as a user runs it, in a fresh ATELIER_HOME: its outputs are checked, then it is run again."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from flows.demo import DEMO_PHOTOS, ROOT, SLOT
from flows.demo_sheet import CELL, HEADER, PAD

FACES = {"obama.jpg", "biden.jpg", "astronaut.png", "messi5.jpg"}


def run_demo(home: Path, out: Path) -> dict:
    env = {**os.environ, "ATELIER_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200"}
    for name in ("ATELIER_DATABASE_URL", "ATELIER_BLOBS", "ATELIER_MODELS", "PREFECT_API_URL"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "flows.demo", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    said = done.stdout + done.stderr
    assert "stand-in base model" in said and "(atelier models pull sd15) to train for real" in said
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_demo_runs_the_real_models_and_the_whole_chain_twice(tmp_path, atelier_env):
    out = tmp_path / "out"
    summary = run_demo(atelier_env, out)

    # the contact sheet: one row per photo
    with Image.open(summary["contact_sheet"]) as sheet:
        assert sheet.height == HEADER + len(DEMO_PHOTOS) * (CELL + PAD) + PAD
    rows = {r["name"]: r for r in summary["rows"]}
    assert set(rows) == set(DEMO_PHOTOS)
    for name, row in rows.items():
        assert row["rating"] == "rating:safe" and row["status"] == "active", row
        assert row["detector"] == "yuface"
        if name in FACES:
            assert row["faces"] >= 1 and row["identity"] is not None and row["upscale"] == "realesrgan-ncnn", row
            (lx, ly), (rx, ry) = row["landmarks"][:2]
            assert abs(math.degrees(math.atan2(ry - ly, rx - lx))) < 1  # eyes level in the aligned crop
        else:
            assert row["faces"] == 0 and row["identity"] is None and row["upscale"] is None, row
    assert rows["obama.jpg"]["identity"] >= 0.9  # the reference is obama2.jpg
    assert all(rows[n]["identity"] < 0.9 for n in FACES - {"obama.jpg"})
    skipped = {s["step"] for s in summary["skipped"]}
    assert {"tag", "aesthetic"} <= skipped  # no weights in any package: said, not failed

    # export: every image has a non-empty caption
    captions = summary["export"]["captions"]
    assert len(captions) == len(DEMO_PHOTOS) and all(text.strip() for text in captions.values())

    # training on the stand-in: a kohya LoRA that diffusers loads
    from diffusers import StableDiffusionPipeline

    assert summary["run"]["status"] == "succeeded"
    pipe = StableDiffusionPipeline.from_pretrained(summary["stand_in"], local_files_only=True)
    pipe.load_lora_weights(summary["run"]["outputs"]["lora"]["path"])

    # evaluation and promotion are recorded in the store
    from sqlalchemy import select

    from store.db import open_store
    from store.models import Evaluation, PromotionDecision

    assert summary["evaluation"]["status"] == "succeeded" and summary["evaluation"]["samples"] > 0
    assert summary["promotion"]["action"] == "promoted"
    assert Path(summary["promotion"]["champion"]["published_path"]).is_file()
    store = open_store()
    with store.session() as session:
        assert session.get(Evaluation, summary["evaluation"]["evaluation_id"]).status == "succeeded"
        decision = session.scalars(select(PromotionDecision).where(PromotionDecision.slot == SLOT)).one()
        assert decision.action == "promoted" and decision.challenger_run_id == summary["run"]["run_id"]
    store.dispose()

    # a second run finds everything cached and reuses the version, the run and its evaluation
    again = run_demo(atelier_env, out)
    assert all(step["done"] == 0 for step in again["steps"]), again["steps"]
    assert again["version"] == summary["version"] and again["run"]["run_id"] == summary["run"]["run_id"]
    assert again["evaluation"]["evaluation_id"] == summary["evaluation"]["evaluation_id"]
    assert again["promotion"]["action"] == "kept"
    print(f"demo wall seconds: first {summary['seconds']['total']}, second {again['seconds']['total']}")
