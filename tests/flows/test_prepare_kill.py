"""kill -9 the prepare flow at several points, re-run: the store ends as after one uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image
from sqlalchemy import create_engine, func, select, text

from flows.ingest import ingest
from flows.prepare import prepare
from store.blobs import sha256_file
from store.db import Store
from store.models import Artifact, Image as ImageRow, Member, Score, StepResult, Tag
from store.settings import load_settings
from tests.tiny_models.fixtures import tiny_wd14  # noqa: F401

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _make_photos(folder: Path, photos: Path) -> None:
    """24 different real-photo crops (8 windows of each of three wallpapers)."""
    folder.mkdir()
    for name in ("Elarun_2560x1600.png", "FlyingKonqui_2560x1600.png", "MilkyWay_1080x1920.png"):
        image = Image.open(photos / name).convert("RGB")
        w, h = image.size
        for i in range(8):
            x, y = (i % 4) * (w // 4), (i // 4) * (h // 2)
            image.crop((x, y, x + w // 4, y + h // 2)).save(folder / f"{Path(name).stem}-{i}.png")


def _store_for(home: Path) -> Store:
    return Store(load_settings({"ATELIER_HOME": str(home)}))


def _snapshot(store: Store) -> dict:
    """The outcome tables, by content (ids and timestamps differ between stores)."""
    with store.session() as session:
        results = sorted(session.execute(
            select(StepResult.input_sha256, StepResult.step, StepResult.params_hash, StepResult.model_hash,
                   StepResult.status, Artifact.sha256).outerjoin(Artifact, StepResult.output_artifact_id == Artifact.id)).all())
        scores = sorted((p, n, round(v, 6)) for p, n, v in session.execute(
            select(Member.source_path, Score.name, Score.value).join(Member, Score.member_id == Member.id)))
        tags = sorted((p, t, s, round(c or 0, 6)) for p, t, s, c in session.execute(
            select(Member.source_path, Tag.text, Tag.status, Tag.confidence).join(Member, Tag.member_id == Member.id)))
        members = sorted(session.execute(
            select(Member.source_path, Member.status, Artifact.sha256)
            .outerjoin(Artifact, Member.current_artifact_id == Artifact.id)).all())
    return {"results": results, "scores": scores, "tags": tags, "members": members}


def _check_integrity(store: Store) -> None:
    with store.session() as session:
        for sha, ext in session.execute(select(Artifact.sha256, Artifact.ext)):
            path = store.blobs.local_path(sha, ext)
            assert path.exists() and sha256_file(path) == sha, f"artifact {sha} points at a missing or partial blob"
        for sha, ext in session.execute(select(ImageRow.sha256, ImageRow.ext)):
            assert sha256_file(store.blobs.local_path(sha, ext)) == sha
        dangling = session.scalar(select(func.count()).select_from(StepResult).where(
            StepResult.output_artifact_id.is_not(None),
            ~StepResult.output_artifact_id.in_(select(Artifact.id))))
        assert dangling == 0


def test_kill_minus_nine_then_rerun_gives_the_uninterrupted_state(tmp_path, photos, prefect_harness, tiny_wd14):
    from prefect.settings import PREFECT_API_URL

    src = tmp_path / "src"
    _make_photos(src, photos)
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "kill", "batch_size": 2, "workers": 1, "steps": [
        {"step": "upscale", "params": {"target": 512, "fallback": "lanczos"}, "when": "short_side < 512"},  # the 270 px MilkyWay crops
        {"step": "quality"},
        {"step": "tag", "model": str(tiny_wd14), "params": {"general_threshold": 0.4}},
    ]}))

    reference = _store_for(tmp_path / "reference")
    ingest(reference, [src], "crops")
    os.environ["ATELIER_HOME"] = str(tmp_path / "reference")
    try:
        prepare("crops", str(pipeline))
    finally:
        os.environ.pop("ATELIER_HOME")
    expected = _snapshot(reference)
    assert len(expected["results"]) == 8 + 24 + 24

    killed_home = tmp_path / "killed"
    killed = _store_for(killed_home)
    ingest(killed, [src], "crops")
    env = {**os.environ, "ATELIER_HOME": str(killed_home), "PREFECT_API_URL": PREFECT_API_URL.value()}
    engine = create_engine(f"sqlite:///{killed_home / 'atelier.db'}")
    kills = 0
    for threshold in (2, 16, 36):
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "prepare", "crops", "--pipeline", str(pipeline)],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            with engine.connect() as connection:
                if connection.execute(text("SELECT count(*) FROM step_results")).scalar() >= threshold:
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
                    break
            time.sleep(0.02)
        proc.wait(timeout=30)
    assert kills >= 2, "the flow finished before it could be killed; make the workload larger"
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM step_results")).scalar() < 56 or kills < 3
    _check_integrity(killed)

    final = subprocess.run([sys.executable, "-m", "flows.cli", "prepare", "crops", "--pipeline", str(pipeline), "--json"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    assert _snapshot(killed) == expected
    _check_integrity(killed)
    engine.dispose()
