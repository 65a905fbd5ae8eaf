"""Presets validate; bad fields are named; buckets, captions and data order behave as users expect."""

import random
from pathlib import Path

import pytest

from training import data as D
from training.config import ConfigError, TrainConfig, load_config

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "train"


@pytest.mark.parametrize("name", ["lora-sd15", "lora-sdxl", "dreambooth-sd15"])
def test_presets_validate(name):
    config = load_config(PRESETS / f"{name}.yaml")
    assert config.max_train_steps > 0 and config.mixed_precision == "bf16"


def test_a_misspelt_field_is_named_with_the_file(tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_text("base_model: sd15\nlearnig_rate: 0.1\nrank: 0\n")
    with pytest.raises(ConfigError) as error:
        load_config(preset)
    message = str(error.value)
    assert f"{preset}: learnig_rate: unknown field" in message and f"{preset}: rank:" in message


def test_set_overrides_reach_nested_fields():
    config = load_config(PRESETS / "lora-sd15.yaml", {"caption": {"keep_tokens": 3}, "rank": 8})
    assert config.caption.keep_tokens == 3 and config.rank == 8 and config.caption.shuffle_tags is True


def test_buckets_keep_the_area_and_the_tall_photo_gets_a_tall_bucket(kohya_folder):
    buckets = D.make_buckets(512, 64, 256, 1024)
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in buckets)
    examples = {e.path.name: e for e in D.scan_kohya_folder(kohya_folder)}
    tall = D.assign_bucket(examples["MilkyWay_1080x1920.png"].size, buckets)
    assert tall[1] > tall[0] and abs(tall[0] / tall[1] - 1080 / 1920) < 0.1
    assert examples["messi5.jpg"].repeats == 3 and examples["messi5.jpg"].folder == "3_sks dog"


def test_empty_folder_explains_the_kohya_layout(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(D.NoImagesFound, match="N_identifier class"):
        D.scan_kohya_folder(tmp_path)


def test_caption_shuffle_keeps_leading_tags_and_dropout_empties():
    config = TrainConfig(base_model="x", identifier="sks", class_word="dog",
                         caption={"shuffle_tags": True, "keep_tokens": 2, "caption_dropout_rate": 0.0})
    rng = random.Random(0)
    prompts = {D.build_caption("red collar, grass, ball, sunny", config, rng) for _ in range(20)}
    assert len(prompts) > 1  # shuffled
    for prompt in prompts:
        tags = prompt.split(", ")
        assert tags[:2] == ["sks dog", "red collar"] and sorted(tags[2:]) == ["ball", "grass", "sunny"]
    config.caption.caption_dropout_rate = 1.0
    assert D.build_caption("grass", config, rng) == ""


def test_data_order_is_a_pure_function_of_seed_and_epoch(kohya_folder):
    examples = D.scan_kohya_folder(kohya_folder)
    buckets = {i: D.assign_bucket(e.size, D.make_buckets(64, 32, 32, 128)) for i, e in enumerate(examples)}
    first = D.epoch_batches(examples, buckets, 2, seed=5, epoch=0)
    assert first == D.epoch_batches(examples, buckets, 2, seed=5, epoch=0)
    assert first != D.epoch_batches(examples, buckets, 2, seed=5, epoch=1)
    assert sorted(i for batch in first for i in batch) == sorted(i for i in range(3) for _ in range(3))  # repeats
    assert all(len({buckets[i] for i in batch}) == 1 for batch in first)  # one bucket per batch


def test_latent_cache_reuses_and_notices_an_edited_image(tiny_sd_dir, tmp_path, photos):
    import shutil

    import torch
    from diffusers import AutoencoderKL
    from PIL import Image

    vae = AutoencoderKL.from_pretrained(tiny_sd_dir / "vae")
    folder = tmp_path / "1_x"
    folder.mkdir()
    shutil.copy(photos / "HappyFish.jpg", folder / "fish.jpg")
    example = D.scan_kohya_folder(tmp_path)[0]
    cache = D.LatentCache(tmp_path / "cache", vae, "vae-hash", torch.device("cpu"), torch.float32)
    first = cache.get(example, (64, 64))
    assert first.shape == (8, 32, 32) and cache.misses == 1
    again = D.LatentCache(tmp_path / "cache", vae, "vae-hash", torch.device("cpu"), torch.float32)
    assert torch.equal(again.get(example, (64, 64)), first) and again.hits == 1 and again.misses == 0
    again.get(example, (96, 32))  # another bucket is another entry
    Image.open(photos / "HappyFish.jpg").rotate(90).save(folder / "fish.jpg")  # the image is edited
    edited = D.scan_kohya_folder(tmp_path)[0]
    assert not torch.equal(again.get(edited, (64, 64)), first) and again.misses == 2


def test_a_bare_yaml_no_for_mixed_precision_means_no(tmp_path):
    from training.config import load_config

    preset = tmp_path / "p.yaml"
    preset.write_text("base_model: x\nmixed_precision: no\n")  # YAML 1.1 parses a bare no as false
    assert load_config(preset).mixed_precision == "no"
