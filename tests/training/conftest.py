"""Training fixtures: the tiny SD built once per session, and a kohya-layout folder of real photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    from tests.tiny_models.sd import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_sd_file(tiny_sd_dir) -> Path:
    from tests.tiny_models.sd import build_tiny_sd_single_file

    return build_tiny_sd_single_file(tiny_sd_dir.parent)


@pytest.fixture(scope="session")
def kohya_folder(tmp_path_factory, photos) -> Path:
    """`3_sks dog/` with three real photos of different aspect ratios and tag captions."""
    root = tmp_path_factory.mktemp("kohya")
    sub = root / "3_sks dog"
    sub.mkdir()
    captions = {
        "messi5.jpg": "sks dog, 1boy, football, grass",
        "MilkyWay_1080x1920.png": "sks dog, night sky, stars",
        "HappyFish.jpg": "sks dog, fish, water",
    }
    for name, caption in captions.items():
        shutil.copy(photos / name, sub / name)
        (sub / name).with_suffix(".txt").write_text(caption)
    return root
