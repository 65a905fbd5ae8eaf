"""How long the CLI takes around the work: commands against the shared local Prefect server.

    .venv/bin/python bench/cli.py [--small 50] [--files 1000] [--repeat 3] [--skip-train]

Prints, in one run, each figure beside its baseline and goal:
  1. a no-op `atelier ingest` and `atelier prepare` of SMALL images (wall time of the command, as a
     user types it; the server already runs), beside `python -c pass` and `python -c "import prefect"`
     (the floor any command that runs a flow pays);  goal ≤ 1.5 s
  2. the prepare flow at FILES images beside a plain loop over the same step functions (run_batch on
     the same thread count and batches, the same store writes, no Prefect);      goal ≤ 1.05×
  3. the no-op re-run at FILES images as a share of the first run: the flow called again in the same
     process, and `atelier prepare` as a user types it (which finds every step cached and answers
     without the flow engine);                                                          goal ≤ 3 %
  4. `atelier train` of the tiny SD (64 px, 4 steps) minus the steps' own time;     goal ≤ 10 s
The Prefect server's own start (once per home, in the background) is printed too. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_photos import make_files


def wall(command: list[str], env: dict, repeat: int = 1) -> tuple[float, subprocess.CompletedProcess]:
    """Median wall seconds of `command` over `repeat` runs."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return statistics.median(times), result


def atelier(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def plain_pipeline(home: Path, src: Path, pipeline: str | None) -> float:
    """The prepare pipeline's functions with no Prefect: same batches, threads and store writes."""
    from flows.ingest import ingest
    from flows.pipeline import load_pipeline
    from flows.prepare import run_batch, run_pipeline
    from store.db import Store
    from store.settings import load_settings

    store = Store(load_settings({"ATELIER_HOME": str(home)}))
    ingest(store, [src], "bench", near_threshold=0)
    config = load_pipeline(pipeline)
    with ThreadPoolExecutor(config.workers) as pool:
        start = time.perf_counter()
        run_pipeline(store, "bench", config, submit=lambda *args: pool.submit(run_batch, *args))
        seconds = time.perf_counter() - start
    store.dispose()
    return seconds


def flow_pipeline(home: Path, src: Path, pipeline: str | None) -> tuple[float, float, dict]:
    """(first run, no-op re-run, summary) of the prepare flow, in this process (imports excluded)."""
    os.environ["ATELIER_HOME"] = str(home)
    from flows.ingest import ingest
    from flows.prepare import prepare
    from store.db import open_store

    ingest(open_store(), [src], "bench", near_threshold=0)
    start = time.perf_counter()
    first = prepare("bench", pipeline)
    t_first = time.perf_counter() - start
    start = time.perf_counter()
    again = prepare("bench", pipeline)
    t_again = time.perf_counter() - start
    assert all(c["done"] == 0 for c in again["steps"]), "the re-run computed something"
    return t_first, t_again, first


def cli_noop(home: Path, env: dict, pipeline: list[str], repeat: int) -> float:
    """`atelier prepare bench` as a user re-runs it (a new process; every step cached: no flow engine)."""
    env = {**env, "ATELIER_HOME": str(home), "PREFECT_API_URL": os.environ["PREFECT_API_URL"]}
    seconds, result = wall(atelier("prepare", "bench", *pipeline), env, repeat)
    assert "nothing to do" in result.stderr, result.stderr[-2000:]
    return seconds


def train_overhead(work: Path, env: dict) -> tuple[float, dict]:
    """Wall time of `atelier train` on a tiny SD and the run's own step time (from its metrics)."""
    import yaml

    from tests.tiny_models.sd import build_tiny_sd

    models = work / "models"
    shutil.copytree(build_tiny_sd(work), models / "stable-diffusion-v1-5", dirs_exist_ok=True)
    env = {**env, "ATELIER_MODELS": str(models), "OMP_NUM_THREADS": "1"}
    src = work / "train-src"
    src.mkdir()
    for name in ("messi5.jpg", "HappyFish.jpg", "MilkyWay_1080x1920.png"):
        shutil.copy(ROOT / "tests" / "fixtures" / "photos" / name, src / name)
    wall(atelier("ingest", str(src), "--dataset", "dogs", "--identifier", "sks", "--class", "dog"), env)
    wall(atelier("commit", "dogs", "-m", "bench"), env)
    preset = work / "tiny.yaml"
    preset.write_text(yaml.safe_dump({"base_model": "sd15", "resolution": 64, "bucket_reso_steps": 32,
                                      "min_bucket_reso": 32, "max_bucket_reso": 128, "max_train_steps": 4,
                                      "learning_rate": 1e-3, "report_to": "none", "checkpointing_steps": 1000}))
    seconds, result = wall(atelier("train", "dogs@1", "--config", str(preset), "--json"), env)
    return seconds, json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=50, help="images for the no-op command figures")
    parser.add_argument("--files", type=int, default=1000, help="images for the flow-vs-loop figures")
    parser.add_argument("--repeat", type=int, default=3, help="runs per command figure (median)")
    parser.add_argument("--pipeline", default=None)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="atelier-bench-cli-"))
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "ATELIER_DATABASE_URL", "ATELIER_BLOBS")}
    env.update(ATELIER_HOME=str(work / "home"), ATELIER_PREFECT_PORT="4390")
    pipeline = ["--pipeline", args.pipeline] if args.pipeline else []
    rows: list[tuple[str, str, str]] = []
    try:
        small = work / "small"
        small.mkdir()
        make_files(small, args.small)
        t_server, _ = wall(atelier("server", "start"), env)
        rows.append(("server start (once per home, background)", f"{t_server:.1f} s", ""))
        t_pass, _ = wall([sys.executable, "-c", "pass"], env, args.repeat)
        t_prefect, _ = wall([sys.executable, "-c", "import prefect"], env, args.repeat)
        rows.append(("python -c pass", f"{t_pass:.2f} s", "baseline"))
        rows.append(('python -c "import prefect"', f"{t_prefect:.2f} s", "floor of a flow command"))
        t_ingest_first, _ = wall(atelier("ingest", str(small), "--dataset", "small"), env)
        t_ingest, _ = wall(atelier("ingest", str(small), "--dataset", "small"), env, args.repeat)
        rows.append((f"atelier ingest, {args.small} images, first", f"{t_ingest_first:.2f} s", ""))
        rows.append((f"atelier ingest, {args.small} images, no-op", f"{t_ingest:.2f} s",
                     f"goal ≤ 1.5 s: {'met' if t_ingest <= 1.5 else 'NOT met'}"))
        t_prep_first, _ = wall(atelier("prepare", "small", *pipeline), env)
        t_prep, _ = wall(atelier("prepare", "small", *pipeline), env, args.repeat)
        rows.append((f"atelier prepare, {args.small} images, first", f"{t_prep_first:.2f} s", ""))
        rows.append((f"atelier prepare, {args.small} images, no-op", f"{t_prep:.2f} s",
                     f"goal ≤ 1.5 s: {'met' if t_prep <= 1.5 else 'NOT met'}"))

        big = work / "big"
        big.mkdir()
        make_files(big, args.files, seed=1)
        # before this process imports Prefect: its flows use the server started above
        os.environ["PREFECT_API_URL"] = json.loads((work / "home" / "prefect-server.json").read_text())["url"]
        t_plain = plain_pipeline(work / "home-plain", big, args.pipeline)
        t_first, t_again, _ = flow_pipeline(work / "home-flow", big, args.pipeline)
        rows.append((f"prepare, {args.files} images: plain loop (same functions, no Prefect)", f"{t_plain:.1f} s", ""))
        rows.append((f"prepare, {args.files} images: flow, first run", f"{t_first:.1f} s",
                     f"flow / loop {t_first / t_plain:.3f} (goal ≤ 1.05)"))
        t_cli = cli_noop(work / "home-flow", env, pipeline, args.repeat)
        rows.append((f"prepare, {args.files} images: flow, no-op re-run (in process)", f"{t_again:.2f} s",
                     f"{100 * t_again / t_first:.1f} % of the first run (goal ≤ 3 %)"))
        rows.append((f"atelier prepare, {args.files} images, no-op (new process)", f"{t_cli:.2f} s",
                     f"{100 * t_cli / t_first:.1f} % of the first run (goal ≤ 3 %)"))
        if not args.skip_train:
            t_train, result = train_overhead(work, env)
            steps = result["metrics"]["steps"] * result["metrics"]["seconds_per_step"]
            rows.append(("atelier train, tiny SD, 4 steps: wall", f"{t_train:.1f} s", f"steps {steps:.1f} s"))
            rows.append(("atelier train overhead (wall − steps)", f"{t_train - steps:.1f} s",
                         f"goal ≤ 10 s: {'met' if t_train - steps <= 10 else 'NOT met'}"))
    finally:
        subprocess.run(atelier("server", "stop"), env=env, cwd=ROOT, capture_output=True)
    print(f"cpus: {os.cpu_count()}, load average at the end: {os.getloadavg()[0]:.1f}")
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>9}  {note}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
