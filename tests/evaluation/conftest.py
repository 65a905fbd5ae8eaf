"""Evaluation fixtures: tiny SD, CLIP, DINO, face embedder and aesthetic head (built once per session),
LoRAs made with peft on the tiny UNet, and a store holding a dataset version of real photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.tiny_models.fixtures import registry, tiny_aesthetic_head, tiny_clip  # noqa: F401

SUBJECT_PHOTOS = ["messi5.jpg", "HappyFish.jpg", "leuvenB.jpg"]


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine run ~10× faster on one thread than fighting for two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    from tests.tiny_models.sd import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.getbasetemp() / "tiny_models")


@pytest.fixture(scope="session")
def tiny_dino(tmp_path_factory) -> Path:
    from tests.tiny_models.dino import build_tiny_dino

    return build_tiny_dino(tmp_path_factory.getbasetemp() / "tiny_models" / "dino")


@pytest.fixture(scope="session")
def tiny_face(tmp_path_factory) -> Path:
    from tests.tiny_models.face_embedder import build_tiny_face_embedder

    return build_tiny_face_embedder(tmp_path_factory.getbasetemp() / "tiny_models" / "face" / "tiny_arcface.onnx")


def make_lora(tiny_sd_dir: Path, path: Path, seed: int, rank: int = 4) -> dict:
    """A kohya-layout LoRA of random (seeded, non-zero) weights on the tiny UNet's attention layers."""
    if path.exists():
        from training.export import sha256_file

        return {"path": str(path), "sha256": sha256_file(path)}
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from training.export import lora_layers, save_lora_kohya

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir / "unet")
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_k", "to_q", "to_v", "to_out.0"],
                                init_lora_weights=False))
    return save_lora_kohya(path, lora_layers(unet, []), float(rank), "sd1", {"ss_network_dim": str(rank)})


@pytest.fixture(scope="session")
def tiny_loras(tiny_sd_dir, tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.getbasetemp() / "tiny_models" / "loras"
    return [make_lora(tiny_sd_dir, folder / f"lora-{seed}.safetensors", seed) for seed in (1, 2, 3)]


@pytest.fixture
def eval_preset(tiny_clip, tiny_dino, tiny_face, tiny_aesthetic_head) -> dict:  # noqa: F811
    """The default preset's shape, sized for the tiny models on a CPU."""
    return {"prompts": ["a photo of {identifier} {class}", "a {identifier} {class} on the beach"],
            "seeds": [1, 2], "num_inference_steps": 2, "guidance_scale": 3.0, "height": 64, "width": 64,
            "negative_prompt": "blurry", "scheduler": "DPMSolverMultistepScheduler", "batch_size": 2,
            "clip_model": str(tiny_clip), "dino_model": str(tiny_dino), "face_model": str(tiny_face),
            "aesthetic_model": str(tiny_aesthetic_head), "device": "cpu"}


def add_subject(store, photos: Path, tmp_path: Path, names=SUBJECT_PHOTOS, dataset: str = "subject") -> int:
    """Ingest real photos into DATASET (identifier sks, class person) and commit a version; returns its id."""
    from sqlalchemy import select

    from flows.ingest import ingest
    from store.models import Dataset
    from store.versions import commit_version, get_version

    source = tmp_path / f"src-{dataset}"
    source.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(photos / name, source / name)
    ingest(store, [source], dataset)
    with store.session() as session:
        row = session.scalar(select(Dataset).where(Dataset.name == dataset))
        row.identifier, row.class_word = "sks", "person"
    info = commit_version(store, dataset, "photos")
    with store.session() as session:
        return get_version(session, dataset, info.number).id


def add_run(store, version_id: int, base: Path, lora: dict | None, status: str = "succeeded") -> int:
    """A TrainingRun row as the train flow records it (LoRA method, kohya file in outputs)."""
    from store.models import DatasetVersion, TrainingRun

    with store.session() as session:
        version = session.get(DatasetVersion, version_id)
        run = TrainingRun(dataset_id=version.dataset_id, version_id=version_id, method="lora", base_model=str(base),
                          base_model_hash="0" * 64, status=status,
                          config={"base_model": str(base), "identifier": "sks", "class_word": "person", "seed": 0,
                                  "rank": 4, "learning_rate": 1e-4, "max_train_steps": 4},
                          outputs={"lora": lora} if lora else {})
        session.add(run)
        session.flush()
        return run.id
