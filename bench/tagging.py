"""Tagging, captioning and scoring throughput on CPU: images/s at batch 1 and at the configured batch size.

    .venv/bin/python bench/tagging.py [--images 32] [--steps tag,caption,aesthetic,quality,deepdanbooru]
                                      [--models tiny|registry] [--threads N]

`--models registry` uses the real models from configs/models.yaml (wd14-vit-v2, blip-base,
clip-vit-l14 + laion-aesthetic-v2, deepdanbooru-v3), which must be on disk. `--models tiny`
(the default, since nothing is downloaded) builds the test models: the figures then measure the
step machinery (preprocessing, batching, post-processing), not a real network's compute.
Model load time is reported apart. Prints figures and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PHOTOS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "photos"


def tiny_params(step: str, folder: Path) -> tuple[str, dict]:
    from tests.tiny_models.aesthetic_head import build_tiny_aesthetic_head
    from tests.tiny_models.blip import build_tiny_blip
    from tests.tiny_models.clip import build_tiny_clip
    from tests.tiny_models.deepdanbooru import build_tiny_deepdanbooru
    from tests.tiny_models.onnx_tagger import build_tiny_onnx_tagger

    if step == "tag":
        return "tag", {"model": str(build_tiny_onnx_tagger(folder / "wd14"))}
    if step == "deepdanbooru":
        return "tag", {"model": str(build_tiny_deepdanbooru(folder / "dd"))}
    if step == "caption":
        return "caption", {"model": str(build_tiny_blip(folder / "blip"))}
    if step == "aesthetic":
        return "aesthetic", {"model": str(build_tiny_aesthetic_head(folder / "head.pth")), "clip": str(build_tiny_clip(folder / "clip"))}
    return step, {}


def registry_params(step: str) -> tuple[str, dict]:
    if step == "deepdanbooru":
        return "tag", {"model": "deepdanbooru-v3"}
    return step, {}  # each step's defaults name the registry models


def images_per_second(loaded, items, batch_size: int) -> float:
    loaded.run(items[:batch_size])  # warm-up (first-call allocations, lazy kernels)
    start = time.perf_counter()
    for first in range(0, len(items), batch_size):
        loaded.run(items[first : first + batch_size])
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--steps", default="tag,caption,aesthetic,quality")
    parser.add_argument("--models", choices=["tiny", "registry"], default="tiny")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()

    import torch

    from preprocess.load import load_image_file
    from preprocess.steps import Item, load_step
    from store.registry import load_registry

    if args.threads:
        torch.set_num_threads(args.threads)
    photos = [load_image_file(p).image for p in sorted(PHOTOS.iterdir()) if p.suffix in (".jpg", ".png")]
    items = [Item(photos[i % len(photos)], name=str(i)) for i in range(args.images)]
    registry = load_registry()
    print(f"{args.images} images (the {len(photos)} test photos, 194 px … 2560 px), models: {args.models}, "
          f"torch threads: {torch.get_num_threads()}")
    print(f"{'step':<14}{'backend':<20}{'load s':>8}{'batch':>7}{'img/s b1':>10}{'img/s bN':>10}{'bN/b1':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for step in args.steps.split(","):
            name, params = tiny_params(step, Path(tmp)) if args.models == "tiny" else registry_params(step)
            start = time.perf_counter()
            loaded = load_step(name, params, registry)
            load_seconds = time.perf_counter() - start
            batch = loaded.params.get("batch_size", 1)
            single = images_per_second(loaded, items, 1)
            batched = images_per_second(loaded, items, batch) if batch > 1 else single
            print(f"{step:<14}{loaded.backend:<20}{load_seconds:>8.2f}{batch:>7}{single:>10.1f}{batched:>10.1f}{batched / single:>7.2f}")


if __name__ == "__main__":
    main()
