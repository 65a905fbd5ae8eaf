"""`atelier models pull` against a model server on 127.0.0.1 that the test starts: a URL entry
resumed after a dropped connection and after a killed run, wrong hashes refused, a hub entry
through huggingface_hub (HF_ENDPOINT and the HF cache), and an unreachable host failing at once."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from preprocess.steps import load_step
from store.registry import load_registry
from tests.store.model_server import ModelServer


@pytest.fixture
def server():
    with ModelServer() as running:
        yield running


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    from huggingface_hub import constants

    # huggingface_hub reads HF_HOME when imported: point its cache at this test's folder
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path / "hf"


@pytest.fixture(scope="module")
def esrgan_bytes(tmp_path_factory) -> bytes:
    """A real-format RealESRGAN_x4plus-style .pth (tiny RRDBNet)."""
    from tests.tiny_models.esrgan import build_esrgan

    return build_esrgan(tmp_path_factory.mktemp("esrgan-src"), scale=4).read_bytes()


def _registry(tmp_path, monkeypatch, entries: dict) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": entries}))
    monkeypatch.setenv("ATELIER_REGISTRY", str(path))


def _pull(*args: str):
    result = CliRunner().invoke(app, ["models", "pull", *args, "--json"])
    return result, (json.loads(result.stdout) if result.stdout.strip() else None)


def test_a_dropped_connection_resumes_with_a_range_request(atelier_env, tmp_path, monkeypatch, server, esrgan_bytes):
    server.files["/releases/tiny_x4.pth"] = esrgan_bytes
    server.drop_after["/releases/tiny_x4.pth"] = len(esrgan_bytes) // 3
    _registry(tmp_path, monkeypatch, {"tiny-x4": {
        "kind": "upscaler", "path": "realesrgan/tiny_x4.pth", "sha256": hashlib.sha256(esrgan_bytes).hexdigest(),
        "url": f"{server.url}/releases/tiny_x4.pth"}})
    result, report = _pull("tiny-x4")
    assert result.exit_code == 0, result.output
    gets = [r for r in server.requests if r[0] == "GET"]
    assert gets == [("GET", "/releases/tiny_x4.pth", None),
                    ("GET", "/releases/tiny_x4.pth", f"bytes={len(esrgan_bytes) // 3}-")]
    target = atelier_env / "models" / "realesrgan" / "tiny_x4.pth"
    assert target.read_bytes() == esrgan_bytes and not target.with_name("tiny_x4.pth.part").exists()
    assert report["pulled"][0]["status"] == "downloaded" and report["errors"] == []
    # the registry now finds it, and the upscale step loads the real network from it
    assert load_step("upscale", {"model": "tiny-x4"}, load_registry()).backend == "realesrgan"

    again, report = _pull("tiny-x4")  # present and verified: nothing fetched
    assert again.exit_code == 0 and report["pulled"][0]["status"] == "present"
    assert len([r for r in server.requests if r[0] == "GET"]) == 2


def test_a_partial_file_from_a_killed_run_is_resumed(atelier_env, tmp_path, monkeypatch, server, esrgan_bytes):
    server.files["/tiny_x4.pth"] = esrgan_bytes
    _registry(tmp_path, monkeypatch, {"tiny-x4": {
        "kind": "upscaler", "path": "tiny_x4.pth", "sha256": hashlib.sha256(esrgan_bytes).hexdigest(),
        "url": f"{server.url}/tiny_x4.pth"}})
    part = atelier_env / "models" / "tiny_x4.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(esrgan_bytes[:1000])
    result, report = _pull("tiny-x4")
    assert result.exit_code == 0, result.output
    assert server.requests == [("GET", "/tiny_x4.pth", "bytes=1000-")]
    assert report["pulled"][0]["resumed_from"] == 1000
    assert (atelier_env / "models" / "tiny_x4.pth").read_bytes() == esrgan_bytes


def test_a_wrong_hash_is_refused_naming_both_and_the_file_removed(atelier_env, server, esrgan_bytes):
    """The real registry entry, from a mirror (--source) that serves some other file under its path."""
    server.files["/realesrgan/RealESRGAN_x4plus.pth"] = esrgan_bytes
    expected = load_registry().entries["realesrgan-x4plus"].sha256
    result, report = _pull("realesrgan-x4plus", "--source", server.url)
    assert result.exit_code == 1
    actual = hashlib.sha256(esrgan_bytes).hexdigest()
    assert expected in report["errors"][0]["error"] and actual in report["errors"][0]["error"]
    assert f"expected {expected}, got {actual}" in result.stderr
    folder = atelier_env / "models" / "realesrgan"
    assert list(folder.iterdir()) == []  # neither the file nor a .part


def test_a_hub_entry_comes_through_huggingface_hub_into_the_hf_cache(atelier_env, hf_home, monkeypatch, server,
                                                                    tmp_path):
    """The real wd14-vit-v2 entry from a hub-layout endpoint given as HF_ENDPOINT; only its listed files."""
    from tests.tiny_models.onnx_tagger import build_tiny_onnx_tagger

    tagger = build_tiny_onnx_tagger(tmp_path / "tagger")
    server.repos["SmilingWolf/wd-v1-4-vit-tagger-v2"] = {
        "model.onnx": (tagger / "model.onnx").read_bytes(),
        "selected_tags.csv": (tagger / "selected_tags.csv").read_bytes(),
        "variables/variables.data-00000-of-00001": b"keras weights the registry does not ask for"}
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    result, report = _pull("wd14-vit-v2")
    assert result.exit_code == 0, result.output
    snapshot = next((hf_home / "hub").glob("models--SmilingWolf--wd-v1-4-vit-tagger-v2/snapshots/*"))
    assert sorted(p.name for p in snapshot.iterdir()) == ["model.onnx", "selected_tags.csv"]
    linked = atelier_env / "models" / "wd14-vit-v2"
    assert linked.resolve() == snapshot.resolve() and report["pulled"][0]["path"] == str(linked)
    assert not any("variables" in path for _, path, _ in server.requests)
    assert load_step("tag", {"model": "wd14-vit-v2"}, load_registry()).backend == "wd14-onnx"


def test_a_hub_file_with_the_wrong_hash_is_removed_from_the_cache(atelier_env, hf_home, tmp_path, monkeypatch, server):
    server.repos["acme/tagger"] = {"model.onnx": b"not the published model", "selected_tags.csv": b"tag_id,name\n"}
    published = "f" * 64
    _registry(tmp_path, monkeypatch, {"acme-tagger": {
        "kind": "tagger", "path": "acme-tagger", "hf_repo": "acme/tagger", "files": ["model.onnx", "selected_tags.csv"],
        "file_sha256": {"model.onnx": published}}})
    result, report = _pull("acme-tagger", "--source", server.url)
    assert result.exit_code == 1
    actual = hashlib.sha256(b"not the published model").hexdigest()
    assert f"expected {published}, got {actual}" in report["errors"][0]["error"]
    assert not list((hf_home / "hub").rglob("model.onnx")) and not (atelier_env / "models" / "acme-tagger").exists()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("kind", ["url", "hub"])
def test_offline_fails_at_once_with_one_line_naming_the_entry_and_url(atelier_env, hf_home, tmp_path, monkeypatch, kind):
    url = f"http://127.0.0.1:{_closed_port()}"
    entry = ({"kind": "upscaler", "path": "x.pth", "url": f"{url}/x.pth"} if kind == "url"
             else {"kind": "tagger", "path": "t", "hf_repo": "acme/tagger"})
    _registry(tmp_path, monkeypatch, {"far-away": entry})
    monkeypatch.setenv("HF_ENDPOINT", url)
    start = time.perf_counter()
    result, _ = _pull("far-away")
    assert time.perf_counter() - start < 5
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    where = f"{url}/x.pth" if kind == "url" else f"{url}/acme/tagger"
    assert len(lines) == 1 and "far-away" in lines[0] and where in lines[0] and "cannot reach" in lines[0]
    assert not (atelier_env / "models" / "x.pth.part").exists()


def test_names_or_all_and_entries_without_a_download(atelier_env):
    result = CliRunner().invoke(app, ["models", "pull"])
    assert result.exit_code == 1 and "name the entries to pull, or give --all" in result.stderr
    result = CliRunner().invoke(app, ["models", "pull", "deepdanbooru-v3"])
    assert result.exit_code == 1 and "no download URL" in result.stderr and "deepdanbooru-v3" in result.stderr
    listed = CliRunner().invoke(app, ["models", "--json"])
    assert listed.exit_code == 0 and any(m["name"] == "realesrgan-x4plus" for m in json.loads(listed.stdout)["models"])
