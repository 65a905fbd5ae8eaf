"""Blobs in S3 (ATELIER_BLOBS=s3://bucket/prefix, moto's server on 127.0.0.1): ingest, prepare and
export go through it with nothing under the local blob folder; an unreachable endpoint or refused
credentials fail the command at once in one line, and nothing is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from flows.cli import app
from tests.s3_server import TEST_CREDENTIALS, list_keys, moto_s3

ROOT = Path(__file__).resolve().parents[2]


def _bucket(url: str) -> tuple[str, str]:
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    return bucket, prefix


def test_ingest_prepare_export_through_s3(atelier_env, s3_blobs, s3_endpoint, prefect_harness, photos, tmp_path):
    from store.db import open_store
    from store.models import Artifact, Image

    runner = CliRunner()
    ingested = runner.invoke(app, ["ingest", str(photos), "--dataset", "s3", "--json"])
    assert ingested.exit_code == 0, ingested.output
    added = json.loads(ingested.stdout)["added"]
    prepared = runner.invoke(app, ["prepare", "s3", "--json"])
    assert prepared.exit_code == 0, prepared.output
    assert all(not c["failed"] for c in json.loads(prepared.stdout)["steps"])
    assert runner.invoke(app, ["commit", "s3", "-m", "on s3"]).exit_code == 0
    out = tmp_path / "kohya"
    exported = runner.invoke(app, ["export", "s3@1", "--format", "kohya", "--out", str(out), "--json"])
    assert exported.exit_code == 0, exported.output

    bucket, prefix = _bucket(s3_blobs)
    keys = set(list_keys(s3_endpoint, bucket, prefix + "/"))
    store = open_store()
    with store.session() as session:
        originals = session.query(Image.sha256, Image.ext).all()
        artifacts = session.query(Artifact.sha256, Artifact.ext).all()
    assert len(originals) == added and artifacts  # upscaled images are artifacts
    for sha, ext in [*originals, *artifacts]:  # every row has its blob in the bucket
        assert f"{prefix}/{sha[:2]}/{sha[2:4]}/{sha}.{ext}" in keys
    assert len(keys) == len(set(originals) | set(artifacts))  # and every blob its row
    assert not (atelier_env / "blobs").exists()
    images = [p for p in out.rglob("*") if p.suffix in (".jpg", ".png") and not p.name.endswith(".mask.png")]
    assert len(images) == added
    sha, ext = originals[0]
    assert store.blobs.url_of(sha, ext) == f"s3://{bucket}/{prefix}/{sha[:2]}/{sha[2:4]}/{sha}.{ext}"


def _atelier(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def _one_line_failure(result: subprocess.CompletedProcess, *needles: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr[-2000:]
    text = " ".join(result.stderr.split())
    for needle in needles:
        assert needle in text, text
    assert TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in result.stderr + result.stdout


def test_unreachable_endpoint_and_refused_credentials_fail_at_once(tmp_path, photos, s3_endpoint):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATELIER_", "AWS_"))}
    env.update(TEST_CREDENTIALS, ATELIER_HOME=str(home), ATELIER_BLOBS="s3://photos/blobs",
               PREFECT_API_URL="http://127.0.0.1:9/api")  # never reached: the store fails first

    started = time.monotonic()
    dead = _atelier({**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "ingest", str(photos), "--dataset", "d")
    _one_line_failure(dead, "s3://photos/blobs", "http://127.0.0.1:9", "unreachable")
    assert time.monotonic() - started < 60
    assert not (home / "atelier.db").exists()  # nothing written: no row without its blob

    with moto_s3(auth=True) as strict:  # a server that checks keys: ours are not among its users
        refused = _atelier({**env, "AWS_ENDPOINT_URL": strict}, "ingest", str(photos), "--dataset", "d")
    _one_line_failure(refused, "s3://photos/blobs", "refused the credentials")
    assert not (home / "atelier.db").exists()
