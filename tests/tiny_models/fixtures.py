"""Session fixtures for the tiny models; import the ones a test module needs.

Each model is built once per test session into the session's base temp folder (the builders
skip a folder that is already complete, so modules importing the same fixture share one build).
"""

from __future__ import annotations

from pathlib import Path

import pytest


def _home(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "tiny_models"


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    from tests.tiny_models.clip import build_tiny_clip

    return build_tiny_clip(_home(tmp_path_factory) / "clip")


@pytest.fixture(scope="session")
def tiny_aesthetic_head(tmp_path_factory) -> Path:
    from tests.tiny_models.aesthetic_head import build_tiny_aesthetic_head

    return build_tiny_aesthetic_head(_home(tmp_path_factory) / "aesthetic" / "head.pth")


@pytest.fixture(scope="session")
def tiny_wd14(tmp_path_factory) -> Path:
    from tests.tiny_models.onnx_tagger import build_tiny_onnx_tagger

    return build_tiny_onnx_tagger(_home(tmp_path_factory) / "wd14")


@pytest.fixture(scope="session")
def tiny_deepdanbooru(tmp_path_factory) -> Path:
    from tests.tiny_models.deepdanbooru import build_tiny_deepdanbooru

    return build_tiny_deepdanbooru(_home(tmp_path_factory) / "deepdanbooru")


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory) -> Path:
    from tests.tiny_models.blip import build_tiny_blip

    return build_tiny_blip(_home(tmp_path_factory) / "blip")


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """The real configs/models.yaml with a private ATELIER_HOME (model hash cache, models folder)."""
    from store.registry import load_registry
    from store.settings import load_settings

    home = tmp_path_factory.getbasetemp() / "registry_home"
    return load_registry(settings=load_settings({"ATELIER_HOME": str(home)}))


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """A tiny SD 1.x diffusers folder (4-channel UNet): txt2img/img2img."""
    from tests.tiny_models.sd import build_tiny_sd

    return build_tiny_sd(_home(tmp_path_factory))


@pytest.fixture(scope="session")
def tiny_sd_inpaint(tmp_path_factory) -> Path:
    from tests.tiny_models.sd_inpaint import build_tiny_sd_inpaint

    return build_tiny_sd_inpaint(_home(tmp_path_factory))


@pytest.fixture(scope="session")
def tiny_ip2p(tmp_path_factory) -> Path:
    from tests.tiny_models.sd_ip2p import build_tiny_ip2p

    return build_tiny_ip2p(_home(tmp_path_factory))


@pytest.fixture(scope="session")
def tiny_swinir(tmp_path_factory) -> Path:
    from tests.tiny_models.swinir import build_swinir

    return build_swinir(_home(tmp_path_factory) / "swinir")


@pytest.fixture(scope="session")
def tiny_ldsr(tmp_path_factory) -> Path:
    from tests.tiny_models.ldsr import build_tiny_ldsr

    return build_tiny_ldsr(_home(tmp_path_factory))


@pytest.fixture(scope="session")
def tiny_yolo(tmp_path_factory) -> Path:
    from tests.tiny_models.yolo_onnx import build_tiny_yolo_onnx

    return build_tiny_yolo_onnx(_home(tmp_path_factory) / "yolo")
