"""Block-weighted merge gives exactly the per-block interpolation; a LoRA merges as diffusers fuses it."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from flows.cli import app
from training.merge import MergeError, merge_block_weighted, merge_lora

UNET = "model.diffusion_model."


@pytest.fixture(scope="module")
def two_checkpoints(tiny_sd_file, tmp_path_factory):
    """A: the tiny SD single file; B: the same architecture with other weights, as a .ckpt."""
    folder = tmp_path_factory.mktemp("merge")
    a = load_file(tiny_sd_file)
    generator = torch.Generator().manual_seed(7)
    b = {k: v + 0.1 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v for k, v in a.items()}
    torch.save({"state_dict": b}, folder / "b.ckpt")
    return tiny_sd_file, folder / "b.ckpt", a, b


def expected_weight(key: str, weights: dict[str, dict[int, float]], base_alpha: float) -> float | None:
    """None: key outside the UNet (taken from A). Otherwise the weight of the block whose path segment matches."""
    if not key.startswith(UNET):
        return None
    for group, blocks in weights.items():
        for number, weight in blocks.items():
            if key.startswith(f"{UNET}{group}.{number}."):
                return weight
    return base_alpha


def test_cli_block_merge_is_exactly_the_per_block_interpolation(two_checkpoints, tmp_path):
    path_a, path_b, a, b = two_checkpoints
    out = tmp_path / "merged.safetensors"
    result = CliRunner().invoke(app, [
        "merge", str(path_a), str(path_b), "--input_blocks", "1:0.3, 3:0.8", "--middle_blocks", "1:0.5",
        "--output_blocks", "0:1.0", "--out", "0:0.25", "--time_embed", "2:0.6", "--base_alpha", "0.1",
        "--dump_path", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    weights = {"input_blocks": {1: 0.3, 3: 0.8}, "middle_block": {1: 0.5}, "output_blocks": {0: 1.0},
               "out": {0: 0.25}, "time_embed": {2: 0.6}}
    assert summary["block_merge"]["blocks"]["out.0"] == {"weight": 0.25, "keys": 2}
    merged = load_file(out)
    assert set(merged) == set(a)
    for key, value in merged.items():
        w = expected_weight(key, weights, 0.1)
        if w is None:
            assert torch.equal(value, a[key]), key
        else:
            assert torch.allclose(value, a[key] * (1 - w) + b[key] * w, atol=1e-6), key
    # an attention output projection inside input block 3 takes block 3's weight, not `--out 0`'s
    to_out = f"{UNET}input_blocks.3.1.transformer_blocks.0.attn1.to_out.0.weight"
    assert torch.allclose(merged[to_out], a[to_out] * 0.2 + b[to_out] * 0.8, atol=1e-6)


def test_a_number_names_exactly_one_block():
    keys = ["input_blocks.1.0.weight", "input_blocks.10.0.weight", "input_blocks.11.0.weight", "out.0.weight",
            "input_blocks.4.1.transformer_blocks.0.attn1.to_out.0.weight", "middle_block.1.proj_in.weight"]
    a = {UNET + k: torch.zeros(2) for k in keys} | {"first_stage_model.decoder.conv_in.weight": torch.zeros(2)}
    b = {UNET + k: torch.ones(2) for k in keys} | {"cond_stage_model.only_in_b": torch.ones(1)}
    merged, summary = merge_block_weighted(a, b, {"input_blocks": {1: 1.0}, "out": {0: 1.0}}, base_alpha=0.0)
    changed = sorted(k.removeprefix(UNET) for k, v in merged.items() if v.sum() > 0)
    assert changed == ["input_blocks.1.0.weight", "out.0.weight"]
    assert summary["dropped_from_second"] == 1 and "cond_stage_model.only_in_b" not in merged


def test_mismatched_unets_and_bad_options_fail_clearly(two_checkpoints, tmp_path):
    path_a, _, a, _ = two_checkpoints
    other = {k: (torch.zeros(3, *v.shape[1:]) if re.search(r"output_blocks\.0\.0\.in_layers\.2\.weight", k) else v)
             for k, v in a.items()}
    save_file(other, tmp_path / "other.safetensors")
    runner = CliRunner()
    result = runner.invoke(app, ["merge", str(path_a), str(tmp_path / "other.safetensors"), "--dump_path", str(tmp_path / "x.ckpt")])
    assert result.exit_code == 1 and "UNets do not match" in result.output and "output_blocks.0.0.in_layers.2" in result.output
    result = runner.invoke(app, ["merge", str(path_a), str(path_a), "--input_blocks", "12:0.5", "--dump_path", str(tmp_path / "x.ckpt")])
    assert result.exit_code == 1 and "block 12 does not exist" in result.output
    result = runner.invoke(app, ["merge", str(path_a), str(path_a), "--out", "zero:1", "--dump_path", str(tmp_path / "x.ckpt")])
    assert result.exit_code == 1 and "--out" in result.output and "BLOCK:WEIGHT" in result.output
    with pytest.raises(MergeError, match="not a kohya-layout LoRA"):
        merge_lora(a, {"unet.foo.lora_A.weight": torch.zeros(1)})


def test_ckpt_out_loads_with_weights_only(two_checkpoints, tmp_path):
    path_a, path_b, a, b = two_checkpoints
    result = CliRunner().invoke(app, ["merge", str(path_b), str(path_a), "--base_alpha", "1", "--dump_path", str(tmp_path / "m.ckpt")])
    assert result.exit_code == 0, result.output
    merged = torch.load(tmp_path / "m.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(merged[k], a[k]) for k in a if k.startswith(UNET))  # base_alpha 1: all of the second's UNet
    assert all(torch.equal(merged[k], b[k]) for k in b if not k.startswith(UNET))  # the rest from the first


def test_lora_merged_into_a_checkpoint_matches_diffusers_fuse_lora(lora_run, tiny_sd_dir, tiny_sd_file, tmp_path):
    from diffusers import StableDiffusionPipeline

    lora_path = lora_run["result"]["outputs"]["lora"]["path"]
    out = tmp_path / "with-lora.safetensors"
    result = CliRunner().invoke(app, ["merge", str(tiny_sd_file), "--lora", lora_path, "--strength", "0.7",
                                      "--dump_path", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["lora_merge"]["modules"] > 0
    merged = StableDiffusionPipeline.from_single_file(str(out), config=str(tiny_sd_dir), local_files_only=True)
    fused = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, local_files_only=True)
    fused.load_lora_weights(lora_path)
    fused.fuse_lora(lora_scale=0.7)
    fused.unload_lora_weights()
    for name in ("unet", "text_encoder"):
        want, got = getattr(fused, name).state_dict(), getattr(merged, name).state_dict()
        base = getattr(StableDiffusionPipeline.from_pretrained(tiny_sd_dir, local_files_only=True), name).state_dict()
        assert any(not torch.equal(want[k], base[k]) for k in want), name  # the LoRA did change this part
        assert all(torch.allclose(got[k], want[k], atol=1e-5) for k in want), name
