"""Output files as sd-scripts writes them and as other users' services read them.

Hashes are recomputed here from the file bytes, the way A1111, sd-webui-additional-networks and
ModelSpec's reference code compute them, not through training/metadata.py.
"""

import hashlib
import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from typer.testing import CliRunner

from tests.training.conftest import tiny_config


def header_and_data(path) -> tuple[dict, bytes]:
    raw = Path(path).read_bytes()
    length = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def mode(path) -> str:
    return oct(Path(path).stat().st_mode & 0o777)


def test_lora_header_has_sd_scripts_hashes_times_and_run_facts(lora_run):
    path = lora_run["result"]["outputs"]["lora"]["path"]
    header, data = header_and_data(path)
    meta = header["__metadata__"]
    # A1111's metadata panel calls float() on these (an ISO date crashed it)
    started, finished = float(meta["ss_training_started_at"]), float(meta["ss_training_finished_at"])
    assert 1.7e9 < started <= finished
    assert meta["sshs_model_hash"] == hashlib.sha256(data).hexdigest()
    assert meta["modelspec.hash_sha256"] == "0x" + hashlib.sha256(data).hexdigest()
    tensors = load_file(path)
    legacy = save(tensors, {k: v for k, v in meta.items() if k.startswith("ss_")})
    assert meta["sshs_legacy_hash"] == hashlib.sha256(legacy[0x100000:0x110000]).hexdigest()[:8]
    assert meta["ss_optimizer"] == "torch.optim.adamw.AdamW" and meta["ss_mixed_precision"] == "no"
    batches = int(meta["ss_num_batches_per_epoch"])
    assert meta["ss_steps"] == "4" and meta["ss_max_train_steps"] == "4"
    assert meta["ss_num_epochs"] == meta["ss_epoch"] == str(math.ceil(4 / batches))
    buckets = json.loads(meta["ss_bucket_info"])
    assert sum(b["count"] for b in buckets["buckets"].values()) == 9  # 3 images × 3 repeats
    assert all(len(b["resolution"]) == 2 for b in buckets["buckets"].values())
    (dataset,) = json.loads(meta["ss_datasets"])
    (subset,) = dataset["subsets"]
    assert subset["class_tokens"] == "sks dog" and subset["num_repeats"] == 3 and subset["img_count"] == 3
    assert dataset["num_train_images"] == 9 and dataset["tag_frequency"]["3_sks dog"]["sks dog"] == 3
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_v2"] == "False"
    assert meta["modelspec.implementation"] == "diffusers" and meta["modelspec.sai_model_spec"] == "1.0.1"
    assert meta["modelspec.prediction_type"] == "epsilon"
    assert lora_run["result"]["metrics"]["optimizer"] == meta["ss_optimizer"]


def test_published_and_exported_weights_are_readable_by_other_users(lora_run, tmp_path):
    from evaluation.publish import publish_file

    outputs = lora_run["result"]["outputs"]
    assert mode(outputs["lora"]["path"]) == "0o644"
    peft = Path(outputs["lora_peft"]["path"])
    assert mode(peft) == "0o755" and {mode(p) for p in peft.iterdir()} == {"0o644"}
    assert {mode(s["path"]) for s in outputs["samples"]} == {"0o644"}
    target = publish_file(Path(outputs["lora"]["path"]), tmp_path / "loras" / "subject.safetensors")
    assert mode(target) == "0o644"  # tempfile.mkstemp alone gives 0600


def test_single_file_base_gets_a1111_legacy_hash(tiny_sd_file, tiny_sd_dir, kohya_folder, tmp_path):
    from training.config import load_config
    from training.train import run_training

    config = load_config(tiny_config(tiny_sd_file, max_train_steps=2, base_model_config=str(tiny_sd_dir),
                                     mixed_precision="bf16"))
    result = run_training(config, kohya_folder, tmp_path / "out", dataset={"name": "dogs", "version": 3, "run_id": 17},
                          cache_dir=tmp_path / "cache", log=lambda s: None)
    path = Path(result["outputs"]["lora"]["path"])
    meta = header_and_data(path)[0]["__metadata__"]
    raw = Path(tiny_sd_file).read_bytes()
    assert len(raw) > 0x110000
    assert meta["ss_sd_model_hash"] == hashlib.sha256(raw[0x100000:0x110000]).hexdigest()[:8]
    assert meta["ss_new_sd_model_hash"] == hashlib.sha256(raw).hexdigest()
    assert meta["ss_sd_model_name"] == Path(tiny_sd_file).name
    # the run id makes the file name and A1111's alias unique per run
    assert path.name == "dogs-v3-run17.safetensors" and meta["ss_output_name"] == "dogs-v3-run17"
    # bf16 asked for: what ran is recorded (fp32 on a CPU)
    assert meta["ss_mixed_precision"] == ("bf16" if torch.cuda.is_available() else "no")


def test_sdxl_lora_names_the_sgm_implementation():
    from training.metadata import modelspec_architecture, modelspec_implementation

    assert modelspec_implementation("sdxl", "lora") == "https://github.com/Stability-AI/generative-models"
    assert modelspec_implementation("sd1", "lora") == "diffusers"
    assert modelspec_architecture("sd2", True) == "stable-diffusion-v2-768-v"
    assert modelspec_architecture("sd2", False) == "stable-diffusion-v2-512"


def test_legacy_hash_reads_the_window_past_one_mebibyte(tmp_path):
    """On a file past 1 MiB the legacy hash is not the empty-window one: checked against the written file."""
    from safetensors.torch import save_file

    from training.metadata import lora_hashes

    tensors = {"a.lora_down.weight": torch.randn(600, 600), "a.lora_up.weight": torch.randn(600, 4)}
    meta = {"ss_output_name": "x", "modelspec.title": "x"}
    hashes = lora_hashes(tensors, meta)
    save_file(tensors, str(tmp_path / "ss.safetensors"), metadata={"ss_output_name": "x"})
    raw = (tmp_path / "ss.safetensors").read_bytes()
    assert hashes["sshs_legacy_hash"] == hashlib.sha256(raw[0x100000:0x110000]).hexdigest()[:8] != \
        hashlib.sha256(b"").hexdigest()[:8]
    assert hashes["sshs_model_hash"] == hashlib.sha256(header_and_data(tmp_path / "ss.safetensors")[1]).hexdigest()


def test_atelier_merge_writes_modelspec_metadata_with_the_tensor_hash(tiny_sd_file, lora_run, tmp_path):
    from flows.cli import app

    out = tmp_path / "merged.safetensors"
    lora = lora_run["result"]["outputs"]["lora"]["path"]
    result = CliRunner().invoke(app, ["merge", str(tiny_sd_file), "--lora", lora, "--strength", "0.5",
                                      "--dump_path", str(out), "--json"])
    assert result.exit_code == 0, result.output
    header, data = header_and_data(out)
    meta = header["__metadata__"]
    assert meta["modelspec.hash_sha256"] == "0x" + hashlib.sha256(data).hexdigest()
    assert meta["modelspec.architecture"] == "stable-diffusion-v1"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["modelspec.title"] == "merged"
    lora_title = json.loads(json.dumps(header_and_data(lora)[0]["__metadata__"]))["modelspec.title"]
    assert meta["modelspec.merged_from"] == f"{Path(tiny_sd_file).stem}, {lora_title}"
    assert json.loads(meta["atelier_merge"])["lora_merge"]["strength"] == 0.5
    assert float(meta["modelspec.date"][:4]) >= 2024 and mode(out) == "0o644"
    with safe_open(str(out), "pt") as handle:  # the patched header still parses and the tensors load
        assert set(handle.keys()) == set(load_file(tiny_sd_file))
