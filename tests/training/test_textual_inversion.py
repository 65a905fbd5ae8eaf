"""Textual inversion on the tiny SD and SDXL: a new pseudo-word learned on real photos, saved as the
community's embedding files and loaded back with diffusers' own `load_textual_inversion`."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.training.conftest import tiny_config

TI = {"placeholder_token": "<sks>", "num_vectors": 2, "initializer_token": "a"}  # "a" is one token in the tiny vocab


@pytest.fixture(scope="module")
def ti_run(tiny_sd_dir, kohya_folder, tmp_path_factory):
    from training.config import load_config
    from training.train import run_training

    out = tmp_path_factory.mktemp("ti-run")
    config = load_config(tiny_config(tiny_sd_dir, method="textual_inversion", textual_inversion=TI, max_train_steps=3,
                                     learning_rate=5e-2, checkpointing_steps=3, train_batch_size=2,
                                     validation_prompts=["a photo of <sks> dog"], validation_inference_steps=2))
    result = run_training(config, kohya_folder, out, dataset={"name": "dogs", "version": 1}, cache_dir=out / "cache",
                          log=lambda line: None)
    return {"config": config, "result": result, "out": out}


def _pipe(folder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(pipe, prompt):
    return pipe(prompt, num_inference_steps=2, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(0)).images[0]


def test_the_embedding_file_has_emb_params_and_loads_with_diffusers(ti_run, tiny_sd_dir):
    embedding = ti_run["result"]["outputs"]["embedding"]
    assert embedding["token"] == "<sks>" and embedding["path"].endswith("sks.safetensors")  # A1111: file name = word
    with safe_open(embedding["path"], "pt") as handle:
        assert list(handle.keys()) == ["emb_params"]
        meta = handle.metadata()
        vectors = handle.get_tensor("emb_params")
    assert vectors.shape == (2, 32) and vectors.dtype == torch.float32
    assert meta["placeholder_token"] == "<sks>" and meta["num_vectors"] == "2" and meta["step"] == "3"

    pipe = _pipe(tiny_sd_dir)
    initial = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids("a</w>")].detach()
    assert not torch.allclose(vectors[0], initial) and not torch.allclose(vectors[1], initial)  # trained away from "a"
    before = _image(pipe, "<sks> dog")  # unknown to the base: the tokenizer spells it out
    pipe.load_textual_inversion(embedding["path"], token="<sks>")
    assert pipe.tokenizer.convert_tokens_to_ids(["<sks>", "<sks>_1"]) == [514, 515]
    rows = pipe.text_encoder.get_input_embeddings().weight[514:516].detach()
    assert torch.equal(rows, vectors)
    assert pipe.maybe_convert_prompt("a photo of <sks> dog", pipe.tokenizer) == "a photo of <sks> <sks>_1 dog"
    assert abs(_image(pipe, "<sks> dog") - before).max() > 1e-3
    assert ti_run["result"]["outputs"]["samples"][0]["prompt"] == "a photo of <sks> dog"


def test_only_the_new_rows_change_the_rest_of_the_vocabulary_is_restored(ti_run, tiny_sd_dir):
    from transformers import CLIPTextModel

    checkpoint = ti_run["out"] / "checkpoints" / "checkpoint-000003" / "trainable.safetensors"
    weights = load_file(checkpoint)
    assert len(weights) == 1  # nothing but the token embedding is trained
    (name, trained), = weights.items()
    assert name.startswith("text_encoder.") and name.endswith("token_embedding.weight")
    original = CLIPTextModel.from_pretrained(tiny_sd_dir / "text_encoder").get_input_embeddings().weight.detach()
    assert trained.shape == (original.shape[0] + 2, original.shape[1])
    assert torch.equal(trained[: original.shape[0]], original)  # weight decay and Adam moved nothing else
    assert not torch.equal(trained[-2], trained[-1])  # the two vectors learn apart


def test_captions_get_the_token_in_place_of_the_identifier():
    from training.textual_inversion import insert_token

    assert insert_token("sks dog, 1boy, football", "<sks>", "sks") == "<sks> dog, 1boy, football"
    assert insert_token("a dog on grass", "<sks>", "sks") == "<sks>, a dog on grass"
    assert insert_token("tasks and sks", "<sks>", "sks") == "tasks and <sks>"  # whole words only
    assert insert_token("", "<sks>", "sks") == ""  # caption dropout stays empty
    assert insert_token("<sks> dog", "<sks>", "sks") == "<sks> dog"


def test_sdxl_both_text_encoders_get_vectors_saved_as_clip_l_and_clip_g(tiny_sd_dir, kohya_folder, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from tests.tiny_models.sd import build_tiny_sdxl
    from training.config import load_config
    from training.textual_inversion import load_into_pipeline
    from training.train import run_training

    sdxl = build_tiny_sdxl(tiny_sd_dir.parent)
    config = load_config(tiny_config(sdxl, method="textual_inversion", max_train_steps=2, enable_bucket=False,
                                     textual_inversion={**TI, "num_vectors": 1}))
    result = run_training(config, kohya_folder, tmp_path / "out", cache_dir=tmp_path / "cache", log=lambda s: None)
    path = result["outputs"]["embedding"]["path"]
    state = load_file(path)
    assert set(state) == {"clip_l", "clip_g"} and state["clip_l"].shape == state["clip_g"].shape == (1, 32)
    assert not torch.equal(state["clip_l"], state["clip_g"])  # each encoder learned its own vector

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    args = dict(num_inference_steps=2, height=64, width=64, output_type="np")
    before = pipe("<sks> dog", generator=torch.Generator().manual_seed(0), **args).images[0]
    load_into_pipeline(pipe, path, "<sks>")
    for tokenizer, encoder, key in ((pipe.tokenizer, pipe.text_encoder, "clip_l"),
                                    (pipe.tokenizer_2, pipe.text_encoder_2, "clip_g")):
        row = encoder.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("<sks>")]
        assert torch.equal(row.detach(), state[key][0])
    after = pipe("<sks> dog", generator=torch.Generator().manual_seed(0), **args).images[0]
    assert abs(after - before).max() > 1e-4


@pytest.mark.parametrize("options, message", [
    ({"placeholder_token": "a"}, "textual_inversion.placeholder_token: 'a' is already in the tokenizer"),
    ({"placeholder_token": "<|endoftext|>"}, "textual_inversion.placeholder_token"),
    ({"initializer_token": "dog"}, "textual_inversion.initializer_token: 'dog' is 3 tokens"),
])
def test_bad_tokens_fail_before_training_naming_the_field(tiny_sd_dir, kohya_folder, tmp_path, options, message):
    from store.config_files import ConfigError
    from training.config import load_config
    from training.preflight import check_before_training
    from training.train import run_training

    config = load_config(tiny_config(tiny_sd_dir, method="textual_inversion", textual_inversion={**TI, **options}))
    with pytest.raises(ConfigError, match=message.replace("|", r"\|")):
        check_before_training(config, tiny_sd_dir)  # what the flow runs before recording a run
    with pytest.raises(ConfigError, match=message.replace("|", r"\|")):
        run_training(config, kohya_folder, tmp_path / "out", cache_dir=tmp_path / "cache", log=lambda s: None)
    assert not (tmp_path / "out" / "checkpoints").exists() and not (tmp_path / "cache").exists()


def test_the_shipped_presets_validate():
    from pathlib import Path

    from training.config import load_config

    methods = {p.name: load_config(p).method for p in sorted(Path("configs/train").glob("*.yaml"))}
    assert methods["textual-inversion-sd15.yaml"] == methods["textual-inversion-sdxl.yaml"] == "textual_inversion"
    assert methods["hypernetwork-sd15.yaml"] == "hypernetwork"


def test_pivotal_tuning_writes_the_embedding_and_a_lora_that_load_together(tiny_sd_dir, kohya_folder, tmp_path):
    from training.config import load_config
    from training.train import run_training

    config = load_config(tiny_config(tiny_sd_dir, method="textual_inversion", max_train_steps=2, rank=2,
                                     learning_rate=5e-2, textual_inversion={**TI, "with_lora": True}))
    outputs = run_training(config, kohya_folder, tmp_path / "out", cache_dir=tmp_path / "cache",
                           log=lambda s: None)["outputs"]
    assert {"embedding", "lora", "lora_peft"} <= outputs.keys()
    with safe_open(outputs["lora"]["path"], "pt") as handle:
        assert handle.metadata()["modelspec.trigger_phrase"] == "<sks>"
        assert all(k.startswith("lora_unet_") for k in handle.keys())  # the text encoder learns only the tokens

    pipe = _pipe(tiny_sd_dir)
    pipe.load_textual_inversion(outputs["embedding"]["path"], token="<sks>")
    embedding_only = _image(pipe, "<sks> dog")
    pipe.load_lora_weights(outputs["lora"]["path"])
    assert abs(_image(pipe, "<sks> dog") - embedding_only).max() > 1e-3
