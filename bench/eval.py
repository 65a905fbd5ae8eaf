"""Evaluation throughput: samples per second (trained + base) and metric time per sample.

    .venv/bin/python bench/eval.py [--prompts 4] [--seeds 4] [--steps 4] [--size 64] [--threads N]

Builds the tiny test models (tiny SD 1.x + a LoRA, tiny CLIP, DINO ViT, ArcFace-style ONNX face
embedder, aesthetic head), so the figures measure the evaluation machinery (pipeline calls,
batching, encoders, face detection, caching), not a real network's compute. Runs on CPU, and
again on CUDA when a GPU is present. Reference embeddings are timed cold and cached (second
read from the embeddings table). Prints figures and ratios; asserts nothing.
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

PHOTOS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "photos"
TEMPLATES = ["a photo of {identifier} {class}", "a {identifier} {class} on the beach", "a red {identifier} {class}",
             "a painting of {identifier} {class}", "a {identifier} {class} in the snow", "a cube shaped {identifier} {class}"]


def build(folder: Path) -> dict:
    from tests.evaluation.conftest import make_lora
    from tests.tiny_models.aesthetic_head import build_tiny_aesthetic_head
    from tests.tiny_models.clip import build_tiny_clip
    from tests.tiny_models.dino import build_tiny_dino
    from tests.tiny_models.face_embedder import build_tiny_face_embedder
    from tests.tiny_models.sd import build_tiny_sd

    sd = build_tiny_sd(folder)
    return {"sd": sd, "lora": make_lora(sd, folder / "lora.safetensors", seed=1),
            "clip": build_tiny_clip(folder / "clip"), "dino": build_tiny_dino(folder / "dino"),
            "face": build_tiny_face_embedder(folder / "face.onnx"),
            "aesthetic": build_tiny_aesthetic_head(folder / "head.pth")}


def bench(device: str, models: dict, args, store, entries) -> dict:
    from evaluation.config import load_preset
    from evaluation.metrics import Encoders, score_samples
    from evaluation.references import reference_embeddings
    from evaluation.sampling import sample_run
    from store.registry import load_registry

    preset = load_preset({"prompts": TEMPLATES[: args.prompts], "seeds": list(range(args.seeds)),
                          "num_inference_steps": args.steps, "guidance_scale": 5.0, "height": args.size,
                          "width": args.size, "batch_size": args.seeds, "device": device,
                          "clip_model": str(models["clip"]), "dino_model": str(models["dino"]),
                          "face_model": str(models["face"]), "aesthetic_model": str(models["aesthetic"])})
    outputs = {"lora": models["lora"]}
    sample_run("lora", outputs, str(models["sd"]), None, TEMPLATES[:1], preset.model_copy(update={"seeds": [0]}),
               "sks", "person")  # warm-up: first-call allocations
    start = time.perf_counter()
    samples = sample_run("lora", outputs, str(models["sd"]), None, preset.prompts, preset, "sks", "person")
    sampling = time.perf_counter() - start
    start = time.perf_counter()
    encoders = Encoders.load(preset, load_registry())
    load = time.perf_counter() - start
    start = time.perf_counter()
    refs = reference_embeddings(store, entries, encoders)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    refs = reference_embeddings(store, entries, encoders)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    score_samples(samples, refs, encoders)
    scoring = time.perf_counter() - start
    return {"samples": len(samples), "samples_per_s": len(samples) / sampling, "metric_ms_per_sample":
            1000 * scoring / len(samples), "encoder_load_s": load, "refs_cold_ms": 1000 * cold, "refs_cached_ms": 1000 * warm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="atelier-bench-eval-"))
    os.environ["ATELIER_HOME"] = str(work / "home")
    from flows.ingest import ingest
    from store.db import open_store
    from store.versions import commit_version, entries_of, get_version

    models = build(work / "models")
    store = open_store()
    ingest(store, [PHOTOS], "bench")
    commit_version(store, "bench", "photos")
    with store.session() as session:
        entries = [(e["blob_sha256"], e["blob_ext"]) for e in entries_of(get_version(session, "bench"))]

    print(f"tiny models, {args.prompts} prompts × {args.seeds} seeds × (trained, base), {args.steps} steps, "
          f"{args.size} px, {len(entries)} reference photos, torch threads {torch.get_num_threads()}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = {}
    for device in devices:
        r = results[device] = bench(device, models, args, store, entries)
        print(f"[{device}] sampling: {r['samples_per_s']:.2f} samples/s ({r['samples']} samples)")
        print(f"[{device}] metrics: {r['metric_ms_per_sample']:.1f} ms/sample (CLIP-T, CLIP-I, DINO, aesthetic, face, diversity)")
        print(f"[{device}] encoders load {r['encoder_load_s']:.2f} s; reference embeddings cold {r['refs_cold_ms']:.0f} ms, "
              f"cached {r['refs_cached_ms']:.0f} ms (×{r['refs_cold_ms'] / max(r['refs_cached_ms'], 1e-3):.1f} faster)")
        share = r["metric_ms_per_sample"] / (r["metric_ms_per_sample"] + 1000 / r["samples_per_s"])
        print(f"[{device}] metrics are {100 * share:.0f}% of the evaluation time per sample")
    if "cuda" in results:
        print(f"cuda/cpu: sampling ×{results['cuda']['samples_per_s'] / results['cpu']['samples_per_s']:.1f}, "
              f"metrics ×{results['cpu']['metric_ms_per_sample'] / results['cuda']['metric_ms_per_sample']:.1f}")
    else:
        print("no CUDA device: GPU figures skipped")


if __name__ == "__main__":
    main()
