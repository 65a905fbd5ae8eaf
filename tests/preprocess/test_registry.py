"""The model registry as a user meets it: `atelier models`, `atelier step`, missing and unsafe files."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from preprocess.steps import load_step
from store.registry import UnsafeWeights, load_registry, load_state_dict


class Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "RealESRGAN_x4plus.pth"
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(1)}, "extra": Payload(marker)}, path)
    return path, marker


def test_a_pickle_that_runs_code_is_refused(evil_checkpoint):
    path, marker = evil_checkpoint
    with pytest.raises(UnsafeWeights, match="refused"):
        load_state_dict(path)
    assert not marker.exists()


def test_a_step_refuses_the_unsafe_file_through_the_cli(atelier_env, evil_checkpoint, photos, tmp_path):
    path, marker = evil_checkpoint
    result = CliRunner().invoke(app, ["step", "upscale", str(photos / "HappyFish.jpg"), "--out", str(tmp_path / "o"),
                                      "--set", f"model={path}", "--json"])
    assert result.exit_code == 1
    assert "refused" in result.output and str(path) in result.output.replace("\n", "")
    assert not marker.exists()


def test_models_lists_present_missing_and_wrong_hash(atelier_env, tmp_path):
    from tests.tiny_models.esrgan import build_esrgan

    tiny = build_esrgan(tmp_path, scale=2)
    models = atelier_env / "models" / "realesrgan"
    models.mkdir(parents=True)
    shutil.copy(tiny, models / "RealESRGAN_x2plus.pth")  # no sha256 in the registry: present
    shutil.copy(tiny, models / "RealESRGAN_x4plus.pth")  # registry knows the real file's sha256: wrong hash
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)["models"]}
    assert rows["realesrgan-x2plus"]["status"] == "present"
    assert rows["realesrgan-x4plus"]["status"] == "wrong-hash"
    missing = rows["gfpgan-v1.4"]
    assert missing["status"] == "missing" and missing["path"] == str(atelier_env / "models" / "gfpgan" / "GFPGANv1.4.pth")
    assert "GFPGANv1.4.pth" in missing["detail"]
    # the registry name now resolves for the step, which records its weights' hash
    step = load_step("upscale", {"model": "realesrgan-x2plus"}, load_registry())
    assert step.backend == "realesrgan" and step.model_id == "realesrgan-x2plus" and len(step.model_hash) == 64


def test_step_align_by_hand_writes_results_and_json(atelier_env, photos, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["step", "align", str(photos / "messi5.jpg"), str(photos / "HappyFish.jpg"),
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["backend"] for line in lines] == ["yuface", "yuface"]  # the first installed fallback
    messi, fish = lines
    assert messi["meta"]["main_face"] is not None and fish["meta"]["main_face"] is None
    assert (out / "messi5.align.png").exists() and len((out / "results.jsonl").read_text().splitlines()) == 2


def test_step_with_a_bad_setting_fails_with_one_line(atelier_env, photos, tmp_path):
    result = CliRunner().invoke(app, ["step", "outpaint", str(photos / "messi5.jpg"), "--out", str(tmp_path),
                                      "--set", "resolution=100"])
    assert result.exit_code == 1
    assert "step 'outpaint': resolution" in result.output


def test_outpaint_by_hand_makes_a_square(atelier_env, photos, tmp_path):
    result = CliRunner().invoke(app, ["step", "outpaint", str(photos / "ellipses.jpg"), "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout)
    assert line["size"] == [533, 533] and line["meta"]["mask"]["keep_box"] == [66, 0, 466, 533]
