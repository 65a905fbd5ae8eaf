"""Subprocess entry point: `python -m training.run JOB.json` (N of them through `accelerate launch`).

JOB.json: {"config": {...validated TrainConfig...}, "data_dir", "output_dir", "dataset", "cache_dir",
"stop_at_step"}. Progress goes to stdout one line at a time; the result is written to
OUTPUT_DIR/result.json; a failure exits non-zero with a one-line reason as the last stderr line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from training.determinism import pin_environment, pin_torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pin_environment()  # before torch loads MKL (training/determinism.py)
    if len(argv) != 1:
        print("usage: python -m training.run JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    pin_torch()
    from training.config import validate_config
    from training.train import run_training

    def log(line: str) -> None:
        print(line, flush=True)

    try:
        config = validate_config(job["config"], argv[0])
        base = None
        if job.get("base_model_path"):  # resolved by the flow: the worker needs no registry of its own
            from store.registry import ResolvedModel

            base = ResolvedModel(config.base_model, "sd-base", Path(job["base_model_path"]), job["base_model_hash"])
        result = run_training(config, Path(job["data_dir"]), Path(job["output_dir"]), dataset=job.get("dataset"),
                              cache_dir=Path(job["cache_dir"]) if job.get("cache_dir") else None,
                              stop_at_step=job.get("stop_at_step"), base_model=base, log=log)
    except Exception as error:  # the flow records this line as the run's error
        import traceback

        traceback.print_exc()
        print(f"training failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
              file=sys.stderr, flush=True)
        return 1
    from training.distributed import leave_process_group

    leave_process_group()  # data-parallel: every rank waits here for rank 0's exports
    if os.environ.get("RANK", "0") == "0":  # one line per run, not one per process
        log(f"training {result['status']}")
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # every output is written and closed by now (result.json, weights, the TensorBoard log): skip the
    # interpreter's teardown of torch, diffusers and their threads, 1.5 s of a short run spent after
    # "training succeeded" on this machine
    os._exit(code)
