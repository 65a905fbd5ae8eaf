"""Evaluation commands: eval (sample + score a run), runs (side by side, diff), promote, rollback, nightly,
aesthetic-embedding (the target of aesthetic gradients)."""

from __future__ import annotations

from pathlib import Path

import typer

from flows.cli_common import console, emit, fail, parse_sets, prefect_api

SLOTS_HELP = "slots file (default configs/slots.yaml)"


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_run)
    app.command("runs")(runs)
    app.command("promote")(promote)
    app.command("rollback")(rollback)
    app.command("nightly")(nightly)
    app.command("aesthetic-embedding")(aesthetic_embedding)


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("–" if value is None else str(value))


def eval_run(
    run: int = typer.Argument(..., help="training run id (see `atelier runs NAME`)"),
    preset: Path | None = typer.Option(None, "--preset", "-p", help="evaluation preset (default configs/eval/default.yaml)"),
    sets: list[str] | None = typer.Option(None, "--set", help="override a preset field: key=value (repeatable)"),
    force: bool = typer.Option(False, "--force", help="sample again even if an evaluation with this preset exists"),
    no_flow: bool = typer.Option(False, "--no-flow", help="run without Prefect (plain function)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
) -> None:
    """Sample a training run and its base model with fixed prompts × seeds, score the samples, record them."""
    from evaluation.config import ConfigError, load_preset
    from flows.evaluate import evaluate_flow, evaluation_summary, run_evaluation
    from store.db import open_store
    from store.registry import ModelMissing

    overrides = parse_sets(sets)
    try:
        config = load_preset(preset, overrides)  # a bad preset fails before anything runs
        store = open_store()
        if no_flow:
            evaluation_id = run_evaluation(store, run, config, force=force,
                                           log=lambda line: console.print(line, highlight=False))
        else:
            with prefect_api():
                evaluation_id = evaluate_flow(run, str(preset) if preset else None, overrides, force)
    except (ConfigError, ModelMissing, LookupError, ValueError) as error:
        fail(str(error).splitlines()[0] if str(error) else type(error).__name__)
    summary = evaluation_summary(store, evaluation_id)
    emit(summary, as_json)
    if not as_json:
        metrics = summary["metrics"]
        for model in ("trained", "base", "lift"):
            if model in metrics:
                console.print(f"{model:>8}: " + "  ".join(f"{k} {_fmt(v)}" for k, v in metrics[model].items()))
        console.print(f"evaluation {evaluation_id}: {summary['samples']} samples; grid {summary['grid']}")


def runs(
    name: str | None = typer.Argument(None, help="dataset NAME to list its runs (none: every run), "
                                                 "`diff A B` to compare two runs, `cancel RUN` to cancel one"),
    a: int | None = typer.Argument(None, help="with diff: the first run id"),
    b: int | None = typer.Argument(None, help="with diff: the second run id"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
) -> None:
    """`atelier runs [NAME]`: training runs side by side with their queue state (queued / running /
    finished); `atelier runs diff A B`: what differs; `atelier runs cancel RUN`: cancel a queued or
    running run (its checkpoints stay for `atelier train --resume RUN`)."""
    from evaluation.run_table import KEY_METRICS, diff_runs, list_runs
    from store.db import open_store

    store = open_store()
    if name == "cancel":
        from flows.train_queue import cancel_run

        if a is None or b is not None:
            fail("usage: atelier runs cancel RUN")
        try:
            result = cancel_run(store, a)
        except (LookupError, ValueError) as error:
            fail(str(error))
        emit(result, as_json)
        if not as_json:
            console.print(f"run {a}: {result['was']} → {result['status']}"
                          + (" (its process stops within seconds)" if result["status"] == "cancelling" else ""))
        return
    if name == "diff":
        if a is None or b is None:
            fail("usage: atelier runs diff RUN_A RUN_B")
        try:
            result = diff_runs(store, a, b)
        except LookupError as error:
            fail(str(error))
        emit(result, as_json)
        if not as_json:
            console.print(f"data: {result['data']}")
            for key, (va, vb) in result["config"].items():
                console.print(f"config {key}: {va!r} → {vb!r}", highlight=False)
            for key, m in result["metrics"].items():
                console.print(f"{key}: {_fmt(m['a'])} → {_fmt(m['b'])} (Δ {_fmt(m['delta'])})")
        return
    if a is not None:
        fail(f"unexpected argument {a}: did you mean `atelier runs diff {a} {b or 'B'}`?")
    try:
        rows = list_runs(store, name)
    except LookupError as error:
        fail(str(error))
    emit({"dataset": name, "runs": rows}, as_json)
    if not as_json:
        from rich.table import Table

        table = Table("run", "data", "state", "status", "hyperparameters", *KEY_METRICS, "champion")
        for row in rows:
            hp = " ".join(f"{k}={v}" for k, v in row["hyperparameters"].items())
            table.add_row(str(row["run_id"]), f"{row['dataset']}@{row['version']}", row["state"], row["status"], hp,
                          *[_fmt(row["metrics"].get(k)) for k in KEY_METRICS], ", ".join(row["champion_of"]))
        console.print(table)


def promote(
    run: int = typer.Argument(..., help="training run id to make the champion"),
    slot: str = typer.Option("subject-lora", "--slot", help="model slot (configs/slots.yaml)"),
    slots: Path | None = typer.Option(None, "--slots", help=SLOTS_HELP),
    user: str = typer.Option("cli", "--user", help="recorded as the decider"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
) -> None:
    """Make RUN the champion of a slot by hand (publishes its weights; recorded with the numbers)."""
    from evaluation.config import ConfigError, get_slot
    from evaluation.promotion import champion_of, promote_by_hand
    from store.db import open_store

    try:
        store = open_store()
        decision = promote_by_hand(store, slot, get_slot(slot, slots), run, user)
    except (ConfigError, LookupError, ValueError, OSError) as error:
        fail(str(error))
    result = {"slot": slot, "action": decision.action, "reason": decision.reason, "champion": champion_of(store, slot)}
    emit(result, as_json)
    if not as_json:
        console.print(f"{slot}: run {run} is the champion ({decision.reason}); "
                      f"published {result['champion']['published_path'] or '(no publish_path)'}")


def rollback(
    slot: str = typer.Argument(..., help="model slot whose previous champion to restore"),
    slots: Path | None = typer.Option(None, "--slots", help=SLOTS_HELP),
    user: str = typer.Option("cli", "--user", help="recorded as the decider"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
) -> None:
    """Restore the champion before the current one and re-publish its weights."""
    from evaluation.config import ConfigError, get_slot
    from evaluation.promotion import rollback as do_rollback
    from store.db import open_store

    try:
        result = do_rollback(open_store(), slot, get_slot(slot, slots), user)
    except (ConfigError, LookupError, ValueError, OSError) as error:
        fail(str(error))
    emit(result, as_json)
    if not as_json:
        console.print(result["reason"])


def nightly(
    config: Path = typer.Option(Path("configs/nightly.yaml"), "--config", "-c", help="nightly config"),
    sets: list[str] | None = typer.Option(None, "--set", help="override a config field: key=value (repeatable)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
) -> None:
    """Run the nightly retrain once now: ingest → prepare → commit → train → evaluate → promote or keep."""
    from evaluation.config import ConfigError
    from flows.nightly import load_nightly, nightly_flow

    overrides = parse_sets(sets)
    try:
        load_nightly(config, overrides)  # a bad config fails before the flow starts
    except ConfigError as error:
        fail(str(error))
    with prefect_api():
        summary = nightly_flow(str(config), overrides, return_state=True)
    result = summary.result(raise_on_failure=False)
    if isinstance(result, BaseException):  # NightlyFailed carries the night's summary (stage, reason)
        result = getattr(result, "summary", None) or {"status": "failed", "reason": str(result)}
    emit(result, as_json)
    if not as_json:
        console.print(f"nightly: {result.get('status')} — {result.get('reason', '')}", highlight=False)
    if result.get("status") == "failed":
        fail(f"nightly failed at {result.get('stage', '?')}: {result.get('reason')}")


def aesthetic_embedding(
    out: Path = typer.Argument(..., help="file to write: NAME.safetensors or NAME.pt"),
    images: list[Path] | None = typer.Argument(None, help="image files (or use --dataset)"),
    dataset: str | None = typer.Option(None, "--dataset", help="take a dataset's best-scored members"),
    top: int = typer.Option(20, "--top", min=1, help="with --dataset: how many members"),
    score: str = typer.Option("aesthetic", "--score", help="with --dataset: the score to rank by"),
    clip: str = typer.Option("clip-vit-l14", "--clip", help="CLIP model (registry name or folder)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
) -> None:
    """Write an aesthetic embedding: the normalised mean CLIP image embedding of images you like.

    Sampling uses it with `aesthetic_embedding: FILE` (eval presets, training validation, class images).
    """
    from preprocess.load import RejectedImage, load_image_file
    from store.registry import ModelMissing, load_registry
    from training.aesthetic_gradients import image_embedding, save_embedding

    if bool(images) == bool(dataset):
        fail("give image files or --dataset NAME (one of the two)")
    try:
        pictures = [load_image_file(p).image for p in images] if images else _best_scored(dataset, score, top)
        clip_path = load_registry().resolve(clip).path
        embedding = image_embedding(pictures, clip_path)
    except (RejectedImage, ModelMissing, LookupError, ValueError, OSError) as error:
        fail(str(error).splitlines()[0])
    save_embedding(embedding, out)
    emit({"path": str(out), "images": len(pictures), "dimensions": int(embedding.shape[1]), "clip": clip}, as_json)


def _best_scored(dataset: str, score: str, top: int) -> list:
    """The `top` active members of `dataset` with the highest `score`, as images (current artifact or original)."""
    import io

    from PIL import Image
    from sqlalchemy import select

    from store.blobs import BlobStore
    from store.db import open_store
    from store.models import Artifact, Member, Score
    from store.models import Image as StoredImage
    from store.queries import dataset_id

    store = open_store()
    blobs = BlobStore(store.settings.blobs_url)
    with store.session() as session:
        rows = session.execute(
            select(Member, Score.value).join(Score, Score.member_id == Member.id)
            .where(Member.dataset_id == dataset_id(session, dataset), Member.status == "active", Score.name == score)
            .order_by(Score.value.desc(), Member.id).limit(top)).all()
        if not rows:
            raise LookupError(f"dataset {dataset!r} has no active member with a {score!r} score (run its scoring step)")
        blobs_of = []
        for member, _ in rows:
            art = session.get(Artifact, member.current_artifact_id) if member.current_artifact_id else None
            src = art or session.get(StoredImage, member.image_id)
            blobs_of.append((src.sha256, src.ext))
    return [Image.open(io.BytesIO(blobs.get(sha, ext))).convert("RGB") for sha, ext in blobs_of]
