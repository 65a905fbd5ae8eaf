"""Masked loss: zero-weight latent cells give exactly zero gradient; masks follow the bucket crop; runs record them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tests.training.conftest import tiny_config
from training import data as D
from training.config import ConfigError, load_config
from training.masks import LossMasks, MaskSizeError, combine, latent_planes


def test_zero_weight_cells_contribute_exactly_zero_gradient(tiny_sd_dir):
    from diffusers import DDPMScheduler

    from training.models import load_base_model
    from training.train import diffusion_loss

    model = load_base_model(str(tiny_sd_dir))
    unet = model.pipeline.unet
    scheduler = DDPMScheduler.from_config(model.pipeline.scheduler.config)
    config = load_config(tiny_config(tiny_sd_dir))
    latents = torch.randn(2, unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    weights = torch.ones(2, 1, 8, 8)
    weights[0, :, :, :3] = 0.0  # e.g. an outpainted left band
    weights[1, :, 5:, :] = 0.0
    captured = {}

    def keep(module, args, output):
        output.retain_grad()
        captured["pred"] = output

    hook = unet.conv_out.register_forward_hook(keep)  # conv_out's output is the noise prediction
    try:
        generators = [torch.Generator().manual_seed(i) for i in range(2)]
        loss = diffusion_loss(model, unet, scheduler, config, latents, ["sks dog"] * 2, [], (64, 64), generators,
                              torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False), weights)
        loss.backward()
    finally:
        hook.remove()
    grad = captured["pred"].grad
    zero = (weights == 0).expand_as(grad)
    assert torch.count_nonzero(grad[zero]) == 0  # exactly zero, not merely small
    assert (grad[~zero] != 0).float().mean() > 0.99
    assert torch.isfinite(loss) and loss.item() > 0


def test_a_generated_pixel_zeroes_its_whole_latent_cell_and_faces_are_area_weighted():
    learn = np.ones((64, 64), dtype=np.float32)
    learn[10, 17] = 0.0  # one generated pixel → latent cell (1, 2)
    face = np.zeros((64, 64), dtype=np.float32)
    face[32:36, 32:40] = 1.0  # half of cell (4, 4)
    planes = latent_planes(learn, face, (64, 64), (8, 8))
    assert planes[0, 1, 2] == 0 and planes[0].sum() == 63
    weight = combine(planes, 3.0)
    assert weight[0, 4, 4] == pytest.approx(2.0) and weight[0, 0, 0] == 1 and weight[0, 1, 2] == 0


def test_masks_are_cropped_with_the_image_for_its_bucket():
    # a 128×64 image in a 64×64 bucket: cover-resized to 128×64 and centre-cropped to columns 32..95
    learn = np.ones((64, 128), dtype=np.float32)
    learn[:, :32] = 0.0  # outside the crop: no effect
    learn[:, 88:] = 0.0  # the crop's last 8 columns → the last latent column
    planes = latent_planes(learn, None, (64, 64), (8, 8))
    assert (planes[0, :, :7] == 1).all() and (planes[0, :, 7] == 0).all()


def _folder(tmp_path, photos, atelier=False):
    sub = tmp_path / "data" / "2_sks dog"
    sub.mkdir(parents=True)
    shutil.copy(photos / "messi5.jpg", sub / "a.jpg")
    Image.open(photos / "HappyFish.jpg").convert("RGB").save(sub / "b.png")
    if atelier:
        (tmp_path / "data" / "atelier.json").write_text("{}")
    return tmp_path / "data", sub


def test_a_mask_of_the_wrong_size_fails_naming_the_file(tmp_path, photos):
    root, sub = _folder(tmp_path, photos)
    Image.new("L", (10, 10), 255).save(sub / "a.mask.png")
    config = load_config(tiny_config("x", masked_loss=True))
    examples = D.scan_kohya_folder(root)
    masks = LossMasks(config, examples, root, tmp_path / "cache", log=lambda line: None)
    with pytest.raises(MaskSizeError, match=r"a\.mask\.png: the learn mask is 10×10 but its image is 548×342"):
        masks.weights([examples[0]], (64, 64), (8, 8))
    with pytest.raises(MaskSizeError, match="do not match the latents"):
        from training.masks import weighted_mse
        weighted_mse(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8), torch.ones(1, 1, 4, 4))


@pytest.mark.parametrize("field,value", [("masked_loss", "maybe"), ("face_loss_weight", -1)])
def test_bad_mask_settings_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"config: {field}:"):
        load_config(tiny_config("x", **{field: value}))


def test_a_run_records_masked_loss_and_its_sources(tiny_sd_dir, photos, tmp_path):
    from safetensors import safe_open

    from training.train import run_training

    root, sub = _folder(tmp_path, photos)
    rgba = Image.open(sub / "b.png").convert("RGBA")
    alpha = np.full((rgba.height, rgba.width), 255, np.uint8)
    alpha[:, : rgba.width // 2] = 0
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(sub / "b.png")
    learn = np.full((342, 548), 255, np.uint8)
    learn[:60] = 0
    Image.fromarray(learn).save(sub / "a.mask.png")
    face = np.zeros((342, 548), np.uint8)
    face[100:200, 200:300] = 255
    Image.fromarray(face).save(sub / "a.face.mask.png")
    config = load_config(tiny_config(tiny_sd_dir, masked_loss=True, face_loss_weight=2.0, max_train_steps=2,
                                     train_batch_size=2))
    lines = []
    result = run_training(config, root, tmp_path / "out", dataset={"name": "m", "version": 1},
                          cache_dir=tmp_path / "cache", log=lines.append)
    record = result["metrics"]["masked_loss"]
    assert record["enabled"] and record["images_with_masks"] == 2
    assert record["sources"] == {"generated": 0, "mask_file": 1, "alpha": 1, "face": 1}
    assert any("masked loss: 2 of 2 images have masks" in line for line in lines)
    assert list((tmp_path / "cache" / "latents" / "masks").rglob("*.safetensors"))  # cached beside the latents
    with safe_open(result["outputs"]["lora"]["path"], "pt") as f:
        meta = f.metadata()
    assert meta["ss_masked_loss"] == "True"
    assert json.loads(meta["atelier_masked_loss"])["sources"]["alpha"] == 1


def test_masks_are_off_when_asked_and_alpha_needs_true(tmp_path, photos):
    root, sub = _folder(tmp_path, photos)
    Image.open(sub / "b.png").convert("RGBA").save(sub / "b.png")
    examples = D.scan_kohya_folder(root)
    auto = LossMasks(load_config(tiny_config("x")), examples, root, tmp_path, log=lambda line: None)
    assert not auto.enabled and auto.weights(examples, (64, 64), (8, 8)) is None  # alpha alone: only when true
    Image.new("L", (548, 342), 255).save(sub / "a.mask.png")
    auto = LossMasks(load_config(tiny_config("x")), examples, root, tmp_path, log=lambda line: None)
    assert auto.enabled and auto.counts["mask_file"] == 1
    off = LossMasks(load_config(tiny_config("x", masked_loss=False)), examples, root, tmp_path, log=lambda line: None)
    assert not off.enabled and off.metadata()["ss_masked_loss"] == "False"


def test_prepare_with_outpaint_then_export_then_train_uses_the_generated_area_mask(atelier_env, photos, prefect_harness,
                                                                                   tiny_sd_dir, tmp_path):
    import yaml

    from flows.ingest import ingest
    from flows.prepare import prepare
    from store.db import open_store
    from store.versions import commit_version, export_version
    from training.train import run_training

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(photos / "messi5.jpg", src)  # 548×342 → outpainted to 548×548: bands above and below generated
    store = open_store()
    ingest(store, [src], "squared")
    pipeline = tmp_path / "pipe.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "square", "steps": [{"step": "outpaint"}]}))
    prepare("squared", str(pipeline))
    commit_version(store, "squared", "outpainted")
    out = export_version(store, "squared", None, "kohya", tmp_path / "export")
    root = tmp_path / "export"
    config = load_config(tiny_config(tiny_sd_dir, max_train_steps=1, enable_bucket=False))  # masked_loss: auto
    lines = []
    result = run_training(config, root, tmp_path / "run", dataset={"name": "squared", "version": 1},
                          cache_dir=tmp_path / "cache", log=lines.append)
    record = result["metrics"]["masked_loss"]
    assert record["enabled"] and record["mode"] == "auto"
    assert record["sources"]["generated"] == 1 and record["sources"]["mask_file"] == 0
    assert any("masked loss: on" in line for line in lines)
    # the weights it trained with: zero over the outpainted bands (latent rows), one over the photo
    examples = D.scan_kohya_folder(root)
    weights = LossMasks(config, examples, root, tmp_path / "cache" / "latents", log=lambda line: None) \
        .weights(examples, (64, 64), (8, 8))[0, 0]
    band = (548 - 342) / 2 / 548 * 8  # ≈ 1.5 latent rows at the top and at the bottom
    assert (weights[: int(band) + 1] == 0).all() and (weights[-(int(band) + 1):] == 0).all()
    assert (weights[int(band) + 1: 8 - int(band) - 1] == 1).all()
    assert out["images"] == 1
