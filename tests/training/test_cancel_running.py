"""`atelier runs cancel RUN` on a running run: its training process stops within seconds, the run is
marked cancelled with its checkpoints kept, and `atelier train --resume RUN` continues from the
last of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tests.training.conftest import tiny_config
from tests.training.test_queue import committed  # noqa: F401  (dogs@1 with the tiny SD as sd15)

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _training_processes(job_file: Path) -> list[int]:
    """Pids whose command line names this run's job file (the training process and its ranks)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(job_file).encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_cancelling_a_running_run_stops_it_and_keeps_its_checkpoints_for_resume(committed, tmp_path):  # noqa: F811
    from store.models import TrainingRun
    from training.checkpoint import list_checkpoints

    store = committed
    preset = tmp_path / "long.yaml"  # far more steps than the test waits for: it can only end by the cancel
    preset.write_text(yaml.safe_dump(tiny_config("sd15", max_train_steps=100_000, checkpointing_steps=2, rank=2)))
    training = subprocess.Popen([sys.executable, "-m", "flows.cli", "train", "dogs@1", "--config", str(preset),
                                 "--no-flow", "--json"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert training.poll() is None, training.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint in 5 minutes"
            with store.session() as session:
                row = session.query(TrainingRun).one_or_none()
                run_id, status, output_dir = (row.id, row.status, row.output_dir) if row else (None, None, None)
            if status == "running" and output_dir and list_checkpoints(Path(output_dir) / "checkpoints"):
                break
            time.sleep(0.5)
        job_file = Path(output_dir) / "job.json"
        assert _training_processes(job_file)

        cancelled = runner.invoke(app, ["runs", "cancel", str(run_id), "--json"])
        assert cancelled.exit_code == 0, cancelled.output
        assert json.loads(cancelled.stdout) == {"run_id": run_id, "was": "running", "status": "cancelling"}
        out, err = training.communicate(timeout=60)  # stopped within seconds, not after 100,000 steps
    finally:
        if training.poll() is None:
            training.kill()
    assert training.returncode == 0, err[-3000:]
    assert json.loads(out)["status"] == "cancelled" and f"--resume {run_id}" in json.loads(out)["error"]
    assert not _training_processes(job_file)  # no rank left behind
    runs = json.loads(runner.invoke(app, ["runs", "dogs", "--json"]).stdout)["runs"]
    assert [(r["run_id"], r["state"], r["status"]) for r in runs] == [(run_id, "finished", "cancelled")]
    kept = list_checkpoints(Path(output_dir) / "checkpoints")
    assert kept, "the cancel removed the checkpoints"
    last = int(kept[-1].name.rsplit("-", 1)[1])
    assert not (Path(output_dir) / "result.json").exists()

    resumed = runner.invoke(app, ["train", "--resume", str(run_id), "--stop-at-step", str(last + 2), "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert f"resumed from {kept[-1].name} at step {last}" in resumed.output
    after = [int(p.name.rsplit("-", 1)[1]) for p in list_checkpoints(Path(output_dir) / "checkpoints")]
    assert after[-1] == last + 2  # went on from where the cancel left it
