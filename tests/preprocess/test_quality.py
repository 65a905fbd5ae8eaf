"""Technical quality of real photos and the exclusion rules a pipeline config writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter
from typer.testing import CliRunner

from preprocess.load import load_image_file
from preprocess.quality import BRISQUE_DIR
from preprocess.rules import Rule, parse_rules, rule_excludes
from preprocess.steps import Item, load_step
from tests.tiny_models.fixtures import registry  # noqa: F401

PHOTOS = ["messi5.jpg", "HappyFish.jpg", "leuvenB.jpg", "ellipses.jpg", "MilkyWay_1080x1920.png", "FlyingKonqui_2560x1600.png"]


@pytest.fixture(scope="module")
def originals(photos):
    return {name: load_image_file(photos / name).image for name in PHOTOS}


@pytest.fixture(scope="module")
def quality(registry):  # noqa: F811
    return load_step("quality", {}, registry)


def scores(step, images):
    return [o.scores for o in step.run([Item(image) for image in images])]


def test_a_blurred_copy_scores_lower_sharpness_and_worse_brisque(quality, originals):
    for name, image in originals.items():
        sharp, blurred = scores(quality, [image, image.filter(ImageFilter.GaussianBlur(3))])
        assert blurred["sharpness"] < sharp["sharpness"] / 3, name
        if name.endswith(".jpg"):  # photos; the rendered wallpapers score badly either way
            assert blurred["brisque"] > sharp["brisque"] + 20, name


def test_an_over_exposed_copy_shows_clipping(quality, originals):
    for name in ["messi5.jpg", "leuvenB.jpg", "MilkyWay_1080x1920.png"]:
        image = originals[name].convert("RGB")
        normal, bright = scores(quality, [image, ImageEnhance.Brightness(image).enhance(3.0)])
        assert bright["clipping"] > normal["clipping"] + 0.05, name
        assert bright["exposure"] > normal["exposure"] + 0.1, name


def test_added_noise_raises_the_noise_estimate(quality, originals):
    rng = np.random.default_rng(0)
    image = originals["leuvenB.jpg"]
    pixels = np.asarray(image, dtype=np.float64)
    grain = rng.normal(0, 10, pixels.shape[:2])[:, :, None]  # the same in every channel: σ 10 grey levels
    noisy = Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8))
    clean, dirty = scores(quality, [image, noisy])
    assert dirty["noise"] == pytest.approx(np.hypot(clean["noise"], 10), abs=1.0)  # independent noises add in quadrature


def test_resolution_is_the_short_side_and_analysis_is_scaled(quality, originals):
    outputs = quality.run([Item(originals["MilkyWay_1080x1920.png"]), Item(originals["messi5.jpg"])])
    assert [o.scores["resolution"] for o in outputs] == [1080.0, 342.0]
    assert outputs[0].meta["analysed_size"] == [576, 1024]
    assert outputs[1].meta["analysed_size"] == [548, 342]


def test_brisque_reads_opencv_data_and_is_skipped_without_it(quality, originals, registry, tmp_path):  # noqa: F811
    assert (BRISQUE_DIR / "brisque_model_live.yml").exists(), "install Debian's opencv-data (make test does)"
    messi = scores(quality, [originals["messi5.jpg"]])[0]
    assert messi["brisque"] == pytest.approx(17.4, abs=1.0)  # the value PITFALLS.md measured
    without = load_step("quality", {"brisque_dir": str(tmp_path)}, registry)
    output = without.run([Item(originals["messi5.jpg"])])[0]
    assert "brisque" not in output.scores and "skipped" in output.meta["brisque"]
    assert without.backend == "opencv" and quality.backend == "opencv+brisque"


def test_transparent_pixels_do_not_count_as_clipped(quality):
    image = Image.new("RGBA", (200, 200), (0, 0, 0, 0))  # transparent background (flattened on white)
    image.paste((128, 128, 128, 255), (50, 50, 150, 150))
    output = quality.run([Item(image)])[0]
    assert output.scores["clipping"] == 0.0
    assert output.scores["exposure"] == pytest.approx(128 / 255, abs=0.01)


def test_rules_exclude_with_a_reason(quality, originals):
    rules = parse_rules([{"score": "sharpness", "min": 60}, "aesthetic < 4.5", "clipping > 0.3"])
    sharp, blurred = scores(quality, [originals["messi5.jpg"], originals["messi5.jpg"].filter(ImageFilter.GaussianBlur(3))])
    assert rule_excludes(sharp, rules) is None  # no aesthetic score: that rule does not apply
    assert rule_excludes(blurred, rules).startswith("sharpness 3.")
    assert rule_excludes({"aesthetic": 4.2}, rules) == "aesthetic 4.2 < 4.5"
    assert rule_excludes({"clipping": 0.5}, ["clipping > 0.3"]) == "clipping 0.5 > 0.3"
    assert rule_excludes({"aesthetic": 4.5}, [Rule(score="aesthetic", min=4.5, max=9)]) is None


def test_bad_rules_name_the_entry_and_field():
    with pytest.raises(ValueError, match=r"exclude_when\[1\]: rule on 'aesthetic' needs min or max"):
        parse_rules(["sharpness < 60", {"score": "aesthetic"}])
    with pytest.raises(ValueError, match=r"exclude_when\[0\]: 'aesthetic is low'"):
        parse_rules(["aesthetic is low"])
    with pytest.raises(ValueError, match=r"rules\[0\]\.maximum: Extra inputs"):
        parse_rules([{"score": "noise", "maximum": 3}], where="rules")


def test_bad_parameters_name_the_step_and_field(registry):  # noqa: F811
    with pytest.raises(ValueError, match=r"step 'quality': analysis_max_side: .*greater than or equal to 64"):
        load_step("quality", {"analysis_max_side": 10}, registry)


def test_cli_step_quality_json(atelier_env, photos, tmp_path):
    from flows.cli import app

    result = CliRunner().invoke(app, ["step", "quality", str(photos / "messi5.jpg"), str(photos / "HappyFish.jpg"),
                                      "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert {"sharpness", "exposure", "clipping", "noise", "resolution", "brisque"} <= set(records[0]["scores"])
    assert records[1]["scores"]["resolution"] == 194.0
