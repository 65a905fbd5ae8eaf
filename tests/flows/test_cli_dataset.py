"""The dataset commands as a user types them: ingest (a Prefect flow), commit, versions, diff, export."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_ingest_commit_export_round_trip(atelier_env, prefect_harness, photos, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(photos, src)
    images = len([f for f in src.iterdir() if f.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"}])
    assert images >= 7, "the fixture photos are missing"
    (src / "broken.png").write_text("not a png")
    result = run("ingest", src, "--dataset", "wallpapers", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dataset"] == "wallpapers"
    assert report["scanned"] == images + 1 and report["added"] == images
    assert report["rejected"] == [{"path": "broken.png", "reason": "not an image Pillow can read (unknown or corrupt format)"}]
    assert run("ingest", src, "--dataset", "wallpapers", "--json").stdout.count("\n") == 1

    committed = json.loads(run("commit", "wallpapers", "-m", "first", "--json").stdout)
    assert committed["number"] == 1 and committed["entries"] == images
    again = run("commit", "wallpapers", "-m", "same")
    assert again.exit_code == 1 and "nothing changed" in again.output

    listing = json.loads(run("versions", "wallpapers", "--json").stdout)
    assert [v["number"] for v in listing["versions"]] == [1]
    out = tmp_path / "export"
    exported = json.loads(run("export", "wallpapers@1", "--format", "imagefolder", "--out", out, "--json").stdout)
    assert exported["images"] == images and (out / "metadata.jsonl").exists()
    diff = json.loads(run("diff", "wallpapers", "1", "1", "--json").stdout)
    assert diff["added"] == diff["removed"] == diff["changed"] == []


def test_failures_exit_non_zero_with_one_line(atelier_env, tmp_path):
    missing = run("ingest", tmp_path / "nope", "--dataset", "x")
    assert missing.exit_code == 1 and "source not found" in missing.output
    bad = run("ingest", tmp_path, "--dataset", "x", "--animated", "loop")
    assert bad.exit_code == 1 and "animated" in bad.output
    assert "no dataset named 'ghost'" in run("versions", "ghost").output
    assert run("export", "ghost@x", "--out", tmp_path / "o").exit_code == 1
