"""A prepare run with every step cached answers without importing Prefect or running its engine: the
same counts as the flow, the rules applied, `--commit` honoured, and a Completed `prepare` run in the
Prefect UI saying why nothing ran. Anything to compute (a new image, a changed parameter) goes
through the flow as before, and nothing is written by the look that found it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from sqlalchemy import func, select

from tests.flows.cli_runs import command_json, latest_run

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = {"name": "small", "steps": [
    {"step": "upscale", "params": {"target": 256, "fallback": "lanczos"}, "when": "short_side < 256"},
    {"step": "quality"}]}


def _prepare(*args: str) -> dict:
    return command_json("prepare", *args)


def _latest_prepare_run():
    return latest_run("prepare")


def _counts(summary: dict) -> list[tuple]:
    return [(c["step"], c["done"], c["cached"], c["not_applicable"], len(c["failed"]), c["excluded"])
            for c in summary["steps"]]


def _tables(store) -> tuple:
    from store.models import Member, Score, StepResult

    with store.session() as session:
        return (session.scalar(select(func.count(StepResult.id))),
                sorted(session.execute(select(Member.source_path, Member.status, Member.excluded_reason)).all()),
                sorted(session.execute(select(Score.member_id, Score.name, Score.value)).all()))


def test_a_cached_prepare_records_a_completed_run_with_the_flows_counts(atelier_env, prefect_harness, photos, tmp_path):
    from flows.ingest import ingest
    from flows.prepare import prepare
    from store.db import open_store

    src = tmp_path / "src"
    src.mkdir()
    for name in ("messi5.jpg", "HappyFish.jpg", "leuvenB.jpg", "obama.jpg"):
        shutil.copy(photos / name, src / name)
    store = open_store()
    ingest(store, [src], "d")
    pipeline = tmp_path / "small.yaml"
    pipeline.write_text(yaml.safe_dump(PIPELINE))

    first = _prepare("d", "--pipeline", str(pipeline))
    assert [c["done"] for c in first["steps"]] == [1, 4] and "no-op" not in _latest_prepare_run().tags
    tables = _tables(store)

    again = _prepare("d", "--pipeline", str(pipeline))
    run = _latest_prepare_run()
    assert run.state.is_completed() and run.tags == ["no-op"] and run.parameters["dataset"] == "d"
    assert run.state.message == "nothing to do: 4 members, every step cached (upscale, quality)"
    flow_again = prepare("d", str(pipeline))  # what the flow itself says of the same re-run
    assert _counts(again) == _counts(flow_again) == [("upscale", 0, 1, 3, 0, 0), ("quality", 0, 4, 0, 0, 0)]
    assert _tables(store) == tables

    # --commit on a cached run commits
    committed = _prepare("d", "--pipeline", str(pipeline), "--commit", "-m", "first")
    assert committed["version"]["number"] == 1 and _latest_prepare_run().tags == ["no-op"]

    # a rule changed, no cache key: still no work, and the rule is applied
    ruled = _prepare("d", "--pipeline", str(pipeline), "--set", "quality.exclude_when=sharpness > 0")
    assert _latest_prepare_run().tags == ["no-op"] and ruled["applied"]["excluded"] == 4
    assert {status for _, status, _ in _tables(store)[1]} == {"excluded"}

    # a changed parameter: the flow runs, and the look before it wrote nothing
    shutil.copy(photos / "biden.jpg", src / "biden.jpg")
    ingest(store, [src], "d")
    before = _tables(store)[0]
    changed = _prepare("d", "--pipeline", str(pipeline))
    assert "no-op" not in _latest_prepare_run().tags
    assert [c["done"] for c in changed["steps"]] == [0, 1] and _tables(store)[0] == before + 1
    store.dispose()


def test_a_cached_prepare_does_not_import_prefect(atelier_env, prefect_harness, photos, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from flows.ingest import ingest
    from flows.prepare import prepare
    from store.db import open_store

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(photos / "leuvenB.jpg", src / "leuvenB.jpg")
    store = open_store()
    ingest(store, [src], "d")
    pipeline = tmp_path / "small.yaml"
    pipeline.write_text(yaml.safe_dump(PIPELINE))
    prepare("d", str(pipeline))
    store.dispose()
    probe = ("import sys\nfrom flows.cli import app\ntry:\n    app(['prepare', 'd', '--pipeline', sys.argv[1]])\n"
             "except SystemExit as e:\n    assert not e.code, e.code\n"
             "print('prefect imported' if 'prefect' in sys.modules else 'no prefect')")
    done = subprocess.run([sys.executable, "-c", probe, str(pipeline)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "no prefect", done.stdout
    assert "nothing to do: 1 members, every step cached" in done.stderr
