"""Steps "img2img" and "loopback" with tiny real-format SD pipelines on a real photo."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from preprocess.load import load_image_file
from preprocess.steps import Item, check_params, load_step
from store.registry import ModelMissing, load_registry
from tests.tiny_models.fixtures import tiny_sd, tiny_sd_inpaint  # noqa: F401

FAST = {"resolution": 64, "steps": 4}


@pytest.fixture(scope="module")
def messi(photos):
    return load_image_file(photos / "messi5.jpg").image.resize((137, 86))


@pytest.fixture(scope="module")
def item(messi):
    return Item(image=messi, name="messi5.jpg", caption="a football player", tags=["1boy", "grass"])


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_img2img_keeps_the_size_records_lineage_and_a_seed_reproduces(atelier_env, tiny_sd, item):
    params = {"model": str(tiny_sd), "strength": 0.6, "sampler": "Euler a", "negative_prompt": "blurry",
              "prompt": "photo, {caption}, {tags}", "seed": 7, **FAST}
    step = load_step("img2img", params, load_registry())
    first, again = step.run([item])[0], step.run([item])[0]
    assert step.backend == "sd-img2img" and first.image.size == item.image.size
    assert np.array_equal(pixels(first.image), pixels(again.image))  # same seed, same pixels
    assert not np.array_equal(pixels(first.image), pixels(item.image))
    other = load_step("img2img", {**params, "seed": 8}, load_registry()).run([item])[0]
    assert not np.array_equal(pixels(first.image), pixels(other.image))
    meta = first.meta
    assert meta["prompt"] == "photo, a football player, 1boy, grass"
    assert {k: meta[k] for k in ("model", "seed", "strength", "steps", "sampler", "negative_prompt", "resolution")} == {
        "model": str(tiny_sd), "seed": 7, "strength": 0.6, "steps": 4, "sampler": "Euler a",
        "negative_prompt": "blurry", "resolution": 64}
    assert meta["weights"] and meta["loras"] == [] and meta["vae"] is None and meta["steps_run"] == 2


def test_prompt_template_drops_missing_parts(atelier_env, tiny_sd, messi):
    step = load_step("img2img", {"model": str(tiny_sd), "strength": 0.3, **FAST}, load_registry())
    assert step.run([Item(image=messi, tags=["grass"])])[0].meta["prompt"] == "grass"


def test_lora_and_vae_are_loaded_and_recorded(atelier_env, tiny_sd, item, tmp_path):
    """A kohya-layout LoRA made from a peft adapter, and a VAE folder, change the result and are in its lineage."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    from diffusers import AutoencoderKL

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True)
    torch.manual_seed(1)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,  # random A and B: not a no-op
                                     target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    state = {"unet." + k: v.detach() for k, v in get_peft_model_state_dict(pipe.unet).items()}
    lora = tmp_path / "style.safetensors"
    save_file(convert_state_dict_to_kohya(state), str(lora))
    torch.manual_seed(5)
    AutoencoderKL.from_config(pipe.vae.config).save_pretrained(tmp_path / "vae")  # another VAE of the same shape
    params = {"model": str(tiny_sd), "strength": 0.8, **FAST}
    plain = load_step("img2img", params, load_registry()).run([item])[0]
    with_lora = load_step("img2img", {**params, "loras": [{"path": str(lora), "weight": 0.8}]}, load_registry())
    with_vae = load_step("img2img", {**params, "vae": str(tmp_path / "vae")}, load_registry()).run([item])[0]
    styled = with_lora.run([item])[0]
    assert not np.array_equal(pixels(plain.image), pixels(styled.image))
    assert not np.array_equal(pixels(plain.image), pixels(with_vae.image))
    assert with_vae.meta["vae"] == str(tmp_path / "vae") and len(with_vae.meta["vae_sha256"]) == 12
    assert styled.meta["loras"][0]["path"] == str(lora) and styled.meta["loras"][0]["weight"] == 0.8
    assert len(styled.meta["loras"][0]["sha256"]) == 12


@pytest.mark.parametrize("bad, message", [
    ({"strength": 1.5}, "strength: Input should be less than or equal to 1"),
    ({"strength": -0.1}, "strength: Input should be greater than or equal to 0"),
    ({"sampler": "Fancy Sampler"}, "sampler"),
    ({"prompt": "{caption} {colour}"}, "prompt"),
])
def test_bad_parameters_name_the_field(bad, message):
    with pytest.raises(ValueError, match=message):
        check_params("img2img", bad)


def test_missing_model_names_the_file(atelier_env):
    with pytest.raises(ModelMissing, match="sd15.*put it at .*stable-diffusion-v1-5"):
        load_step("img2img", {}, load_registry())


def test_loopback_three_loops_differ_from_one_and_keep_each_loop(atelier_env, tiny_sd, item):
    params = {"model": str(tiny_sd), "strength": 0.5, "strength_change": 0.8, **FAST}
    three = load_step("loopback", {**params, "loops": 3}, load_registry()).run([item])[0]
    one = load_step("loopback", {**params, "loops": 1}, load_registry()).run([item])[0]
    assert three.image.size == one.image.size == item.image.size
    assert list(three.intermediates) == ["loop-1", "loop-2"] and one.intermediates == {}
    loop_images = [*three.intermediates.values(), three.image]
    assert len({pixels(im).tobytes() for im in loop_images}) == 3  # every loop changed the image
    assert np.array_equal(pixels(three.intermediates["loop-1"]), pixels(one.image))  # loop 1 is the 1-loop result
    assert not np.array_equal(pixels(three.image), pixels(one.image))
    assert three.meta["loops"] == [{"loop": 1, "strength": 0.5, "seed": 0}, {"loop": 2, "strength": 0.4, "seed": 1},
                                   {"loop": 3, "strength": 0.32, "seed": 2}]


def test_masked_loopback_leaves_everything_outside_the_mask_unchanged(atelier_env, tiny_sd_inpaint, item, tmp_path):
    mask = np.zeros((86, 137), np.uint8)
    mask[20:60, 40:100] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    step = load_step("loopback", {"model": str(tiny_sd_inpaint), "loops": 2, "strength": 0.9,
                                  "mask": str(tmp_path / "mask.png"), "mask_feather": 4, **FAST}, load_registry())
    out = step.run([item])[0]
    assert step.backend == "sd-inpaint"
    before, after = pixels(item.image), pixels(out.image)
    assert np.array_equal(before[mask == 0], after[mask == 0])
    assert np.abs(before[25:55, 45:95] - after[25:55, 45:95]).mean() > 5  # inside, the model reworked it
    generated = np.asarray(out.masks["generated"])
    assert generated.shape == mask.shape and ((generated > 0) <= (mask > 0)).all() and generated[40, 70] == 255


def test_mask_of_another_size_fails_that_image_only(atelier_env, tiny_sd, item, tmp_path):
    Image.new("L", (64, 64), 255).save(tmp_path / "small.png")
    step = load_step("loopback", {"model": str(tiny_sd), "loops": 1, "mask": str(tmp_path / "small.png"), **FAST},
                     load_registry())
    with pytest.raises(ValueError, match="is 64×64 but the image messi5.jpg is 137×86"):
        step.run([item])
    face_step = load_step("loopback", {"model": str(tiny_sd), "loops": 1, "mask": "faces", **FAST}, load_registry())
    out = face_step.run([Item(image=item.image, meta={"faces": []})])[0]  # no face: nothing to do, recorded
    assert out.image is None and out.meta["skipped"].startswith("nothing to do")
