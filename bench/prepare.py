"""The default prepare pipeline on a few hundred real-photo files: throughput, no-op re-run, overhead.

    .venv/bin/python bench/prepare.py [--files 300] [--pipeline configs/pipeline/default.yaml]

Prints images/s of the first run, the no-op re-run time as a ratio of the first run, and the
orchestration overhead: the same steps as a plain Python loop (no Prefect, no store) vs the flow.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from bench_photos import make_files  # noqa: E402


def plain_loop(src: Path, pipeline) -> float:
    """Every step on every file, one image at a time, straight Python: the floor the flow is measured against."""
    from preprocess.load import load_image_file
    from preprocess.steps import Item, load_step
    from store.registry import load_registry

    steps = [load_step(s.step, s.params, load_registry()) for s in pipeline.steps]
    start = time.perf_counter()
    for path in sorted(src.iterdir()):
        item = Item(image=load_image_file(path).image, name=path.name)
        for step in steps:
            output = step.run([item])[0]
            if output.image is not None:
                item.image = output.image
            item.meta.update(output.meta)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--pipeline", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="atelier-bench-prepare-"))
    src = work / "src"
    src.mkdir()
    make_files(src, args.files)
    os.environ["ATELIER_HOME"] = str(work / "home")

    from flows.ingest import ingest
    from flows.pipeline import load_pipeline
    from flows.prepare import prepare
    from store.db import open_store

    store = open_store()
    report = ingest(store, [src], "bench", near_threshold=0)  # keep every crop: measure the steps
    ingest(store, [sorted(src.iterdir())[0]], "warm-up")
    prepare("warm-up", args.pipeline)  # Prefect's local API starts here, outside the figures
    pipeline = load_pipeline(args.pipeline)
    start = time.perf_counter()
    first = prepare("bench", args.pipeline)
    t_first = time.perf_counter() - start
    start = time.perf_counter()
    prepare("bench", args.pipeline)
    t_again = time.perf_counter() - start
    t_plain = plain_loop(src, pipeline)
    n = report["added"]
    print(f"pipeline: {pipeline.name} ({', '.join(s.id for s in pipeline.steps)}), images: {n}, "
          f"runner: {pipeline.task_runner} × {pipeline.workers}, batch {pipeline.batch_size}, cpus: {os.cpu_count()}")
    for c in first["steps"]:
        print(f"  step {c['step']}: {c['seconds']:.2f} s, backend {c['backend']}")
    print(f"first run (flow): {t_first:.2f} s, {n / t_first:.1f} images/s")
    print(f"no-op re-run: {t_again:.2f} s, ratio to first run: {t_again / t_first:.3f}")
    print(f"plain Python loop, same steps: {t_plain:.2f} s; flow / loop: {t_first / t_plain:.2f} "
          f"(the flow also reads and writes the store, and runs {pipeline.workers} workers)")


if __name__ == "__main__":
    main()
