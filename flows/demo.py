"""`make demo`: the main job end to end, with the real models that ship inside packages.

Photos (a few of tests/fixtures/photos, faces and not) → ingest → prepare with
configs/pipeline/demo.yaml (yuface + FFHQ alignment, dlib identity against a reference photo,
Real-ESRGAN through ncnn, NudeNet rating, quality; tag/aesthetic when their weights are present)
→ a before/after contact sheet and a table → commit → kohya export → a short LoRA run →
evaluation → promotion. No package ships Stable Diffusion, CLIP or DINO: the training half runs on
stand-ins built here (flows/demo_models.py) and says so. Commands run as a user types them, in
one process (Prefect's local API starts once). Safe to run again: cached steps are not recomputed,
the version and the trained run are reused. Writes out/demo/ (or --out DIR); summary.json there
holds what the demo test checks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "tests" / "fixtures" / "photos"
# four with faces (one large, one full figure, one square portrait, one small face) and two without
DEMO_PHOTOS = ["obama.jpg", "biden.jpg", "astronaut.png", "messi5.jpg", "HappyFish.jpg", "ellipses.jpg"]
REFERENCE = ROOT / "tests" / "fixtures" / "faces" / "obama2.jpg"  # the subject, in another photo
PIPELINE = ROOT / "configs" / "pipeline" / "demo.yaml"
OUT = ROOT / "out" / "demo"
DATASET, SLOT = "demo", "demo-lora"
STAND_IN = ("stand-in base model: a tiny random-weight Stable Diffusion built here from diffusers classes — "
            "its samples and metrics mean nothing. Put SD 1.5 at {sd15} (atelier models pull sd15) to train for real")
# the tiny SD's 64 px, a few steps: the chain runs, nothing is learnt
TRAIN = {"method": "lora", "resolution": 64, "bucket_reso_steps": 32, "min_bucket_reso": 32, "max_bucket_reso": 128,
         "max_train_steps": 6, "train_batch_size": 2, "learning_rate": 1e-3, "rank": 4, "lora_alpha": 4,
         "checkpointing_steps": 1000, "report_to": "none", "seed": 42}


def eval_preset(models: Path) -> dict:
    return {"prompts": ["a photo of {identifier} {class}", "a {identifier} {class} on the beach"], "seeds": [1, 2],
            "num_inference_steps": 2, "guidance_scale": 3.0, "height": 64, "width": 64, "batch_size": 2,
            "device": "cpu", "clip_model": str(models / "stand-in-clip"), "dino_model": str(models / "stand-in-dino"),
            "face_model": "arcface-r50",  # absent: dlib's ResNet, the identity step's embedder
            "aesthetic_model": None}


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--out", type=Path, default=OUT, help="where the sheet, exports and summary.json go")
    out = args.parse_args(argv).out.resolve()
    os.environ.setdefault("ATELIER_HOME", str(ROOT / ".atelier"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the CPU detectors and ncnn: 5–10× slower fighting over two
    started = time.monotonic()
    from prefect.logging.configuration import setup_logging
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.cli_common import console

    setup_logging()
    runner = CliRunner()

    def atelier(*args: str, allow_fail: bool = False) -> dict:
        console.rule(f"[bold]atelier {' '.join(args)}")
        result = runner.invoke(app, [*args, "--json"])
        if result.stderr.strip():
            console.print(result.stderr.rstrip(), highlight=False, markup=False)
        if result.exit_code != 0 and not allow_fail:
            console.print(result.output)
            raise SystemExit(f"demo step failed: atelier {' '.join(args)}")
        return json.loads(result.stdout) if result.exit_code == 0 and result.stdout.strip() else {}

    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.monotonic() - since, 1)
        return time.monotonic()

    t = time.monotonic()
    atelier("init")
    report = atelier("ingest", *(str(PHOTOS / n) for n in DEMO_PHOTOS), "--dataset", DATASET,
                     "--identifier", "atl", "--class", "person")
    console.print(f"scanned {report['scanned']}, added {report['added']}, unchanged {report['unchanged']}, "
                  f"rejected {len(report['rejected'])}")
    t = lap("ingest", t)
    prepared = atelier("prepare", DATASET, "--pipeline", str(PIPELINE), "--set", f"identity.reference={REFERENCE}")
    for c in prepared["steps"]:
        console.print(f"{c['step']:>10}: done {c['done']}, cached {c['cached']}, not applicable {c['not_applicable']}, "
                      f"failed {len(c['failed'])} ({c['seconds']:.1f} s, {c['backend'] or '-'})"
                      + (" — skipped: no weights (said above)" if c.get("skipped") else ""), highlight=False)
    t = lap("prepare", t)

    from flows.demo_sheet import demo_rows, rows_table, write_contact_sheet
    from store.db import open_store

    store = open_store()
    rows = demo_rows(store, DATASET)
    sheet = write_contact_sheet(rows, out / "contact_sheet.png")
    console.print(rows_table(rows), width=max(console.width, 110))
    console.print(f"contact sheet: {sheet}")
    t = lap("sheet", t)

    version = atelier("commit", DATASET, "-m", "demo: bundled photos", allow_fail=True)
    if not version:
        console.print("nothing changed since the last version; using the newest one")
    number = atelier("versions", DATASET)["versions"][-1]["number"]
    kohya = atelier("export", f"{DATASET}@{number}", "--format", "kohya", "--out", str(out / "kohya"), "--force")
    captions = {p.name: p.read_text() for p in sorted((out / "kohya").rglob("*.txt"))}
    for name, text in captions.items():
        console.print(f"  {name}: {text!r}", highlight=False)
    t = lap("commit+export", t)

    training = train_evaluate_promote(store, atelier, console, number, out)
    lap("train+eval+promote", t)
    timings["total"] = round(time.monotonic() - started, 1)
    summary = {"dataset": DATASET, "version": number, "contact_sheet": str(sheet),
               "rows": [{"name": r.name, "status": r.status, "excluded_reason": r.excluded_reason, "faces": r.faces,
                         "detector": r.detector, "identity": r.identity, "upscale": r.upscale, "rating": r.rating,
                         "landmarks": (r.result_face or {}).get("landmarks")} for r in rows],
               "steps": prepared["steps"], "skipped": prepared.get("skipped", []),
               "export": {**kohya, "captions": captions}, **training, "seconds": timings}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    console.rule("[bold green]done")
    console.print(f"store:         {os.environ['ATELIER_HOME']} (SQLite + blobs)")
    console.print(f"contact sheet: {sheet}")
    console.print(f"kohya export:  {kohya['out']}/{kohya['folder']}  ({kohya['images']} images + .txt captions)")
    console.print(f"LoRA:          {training['run']['outputs']['lora']['path']} (stand-in base)")
    console.print(f"seconds:       {timings}")
    console.print("next: `.venv/bin/atelier --help`, `.venv/bin/atelier serve` for the curator dashboard")
    return 0


def train_evaluate_promote(store, atelier, console, number: int, out: Path) -> dict:
    """A few LoRA steps on the stand-in base, its evaluation and the promotion decision (reused when done)."""
    from sqlalchemy import select

    from evaluation.config import Slot
    from evaluation.promotion import challenge, champion_of
    from flows.demo_models import build_stand_in_clip, build_stand_in_dino, build_stand_in_sd
    from store.models import TrainingRun
    from store.registry import load_registry
    from store.versions import get_version

    models = store.settings.home / "demo-models"
    base = build_stand_in_sd(models / "stand-in-sd")
    build_stand_in_clip(models / "stand-in-clip")
    build_stand_in_dino(models / "stand-in-dino")
    console.print(f"[bold yellow]{STAND_IN.format(sd15=load_registry().expected_path('sd15'))}", highlight=False)
    config = out / "train-stand-in.yaml"
    config.write_text(yaml.safe_dump({**TRAIN, "base_model": str(base)}))
    preset = out / "eval-stand-in.yaml"
    preset.write_text(yaml.safe_dump(eval_preset(models)))

    with store.session() as session:
        version_id = get_version(session, DATASET, number).id
        done = session.scalar(select(TrainingRun.id).where(TrainingRun.version_id == version_id,
                                                           TrainingRun.status == "succeeded",
                                                           TrainingRun.base_model == str(base))
                              .order_by(TrainingRun.id.desc()).limit(1))
    if done is None:
        run = atelier("train", f"{DATASET}@{number}", "--config", str(config))
    else:
        console.print(f"run {done} already trained {DATASET}@{number} on the stand-in: reusing it")
        with store.session() as session:
            row = session.get(TrainingRun, done)
            run = {"run_id": row.id, "status": row.status, "outputs": row.outputs, "metrics": row.metrics,
                   "output_dir": row.output_dir}
    metrics = run.get("metrics") or {}
    console.print(f"run {run['run_id']}: {run['status']}, {metrics.get('steps')} steps, final loss "
                  f"{(metrics.get('loss_history') or [float('nan')])[-1]:.4f}; LoRA {run['outputs']['lora']['path']}",
                  highlight=False)
    evaluation = atelier("eval", str(run["run_id"]), "--preset", str(preset))
    console.print("evaluation (stand-in CLIP/DINO, numbers mean nothing): " + ", ".join(
        f"{k} {v:.3f}" for k, v in evaluation["metrics"].get("trained", {}).items() if isinstance(v, float)),
        highlight=False)
    slot = Slot(primary_metric="clip_t", publish_path=str(out / "published" / f"{SLOT}.safetensors"))
    champion = champion_of(store, SLOT)
    if champion and champion["run_id"] == run["run_id"]:
        promotion = {"action": "kept", "reason": f"run {run['run_id']} is already the champion of {SLOT}",
                     "champion": champion}
    else:
        decision = challenge(store, SLOT, slot, evaluation["evaluation_id"], decided_by="demo")
        promotion = {"action": decision.action, "reason": decision.reason, "champion": champion_of(store, SLOT)}
    console.print(f"promotion ({SLOT}): {promotion['action']} — {promotion['reason']}", highlight=False)
    return {"run": {k: run.get(k) for k in ("run_id", "status", "outputs", "metrics", "output_dir")},
            "evaluation": evaluation, "promotion": promotion, "stand_in": str(base)}


if __name__ == "__main__":
    sys.exit(main())
