"""Training commands: train (LoRA / DreamBooth / textual inversion / hypernetwork on a dataset version) and merge
(checkpoints, LoRA, VAE)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flows.cli_common import console, emit, fail, parse_sets, prefect_api


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("merge")(merge)


def train(
    ref: Optional[str] = typer.Argument(None, help="dataset version to train on: NAME@N (NAME alone: the newest version)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="preset, e.g. configs/train/lora-sd15.yaml"),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="override a config field: key=value (repeatable)"),
    resume: Optional[int] = typer.Option(None, "--resume", help="continue training run RUN_ID from its last checkpoint"),
    stop_at_step: Optional[int] = typer.Option(None, help="stop after this step's checkpoint (resume later)"),
    processes: Optional[int] = typer.Option(None, "--processes", min=1,
                                            help="data-parallel processes, one per GPU (sets num_processes)"),
    no_flow: bool = typer.Option(False, "--no-flow", help="run without Prefect (plain function)"),
    queue: bool = typer.Option(False, "--queue", help="submit to the gpu pool's queue (deployment train/train) and return"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
) -> None:
    """Train LoRA, DreamBooth, textual inversion or a hypernetwork (the preset's method) on a dataset version."""
    from flows.train import TrainingFailed, create_run, execute_run, train_flow
    from store.datasets import parse_version_ref
    from store.db import open_store
    from store.models import TrainingRun
    from store.registry import ModelMissing
    from training.config import ConfigError, load_config

    if resume is None and (ref is None or config is None):
        fail("give NAME@N and --config PRESET, or --resume RUN_ID")
    if resume is not None and (config is not None or sets or processes):
        fail("--resume continues a run with its recorded config: drop --config/--set/--processes")

    def log(line: str) -> None:
        console.print(line, highlight=False)

    try:
        store = open_store()
        if resume is not None:
            if no_flow or stop_at_step:
                run_id = execute_run(store, resume, log=log, stop_at_step=stop_at_step, resume=True)
            else:
                with prefect_api():
                    run_id = train_flow(None, None, {}, resume_run=resume)
        else:
            dataset, version = parse_version_ref(ref)
            overrides = parse_sets(sets)
            if processes:
                overrides["num_processes"] = processes
            checked = load_config(config, overrides)  # a bad preset fails here, before a flow run starts
            if queue:
                from flows.train_queue import QueueUnavailable, queue_run

                try:
                    with prefect_api():
                        run_id, flow_run_id = queue_run(store, dataset, version, config, overrides)
                except QueueUnavailable as error:
                    fail(str(error))
                emit({"run_id": run_id, "status": "queued", "flow_run_id": flow_run_id}, as_json)
                if not as_json:
                    console.print(f"run {run_id}: queued on the gpu pool (flow run {flow_run_id}); "
                                  "`atelier runs` shows its state", highlight=False)
                return
            if checked.num_processes > 1:
                from training.distributed import check_num_processes

                check_num_processes(checked.num_processes, "--processes" if processes else str(config))
            if no_flow or stop_at_step:
                run_id = create_run(store, dataset, version, config, overrides, log=log)
                run_id = execute_run(store, run_id, log=log, stop_at_step=stop_at_step)
            else:
                with prefect_api():
                    run_id = train_flow(dataset, version, str(config), overrides)
    except TrainingFailed as error:
        emit({"run_id": error.run_id, "status": "failed", "error": error.reason}, as_json)
        fail(str(error))
    except (ConfigError, ModelMissing, LookupError, ValueError, FileExistsError) as error:
        fail(str(error).splitlines()[0] if str(error) else type(error).__name__)
    with store.session() as session:
        row = session.get(TrainingRun, run_id)
        result = {"run_id": row.id, "status": row.status, "method": row.method, "base_model": row.base_model,
                  "base_model_hash": row.base_model_hash, "output_dir": row.output_dir, "metrics": row.metrics,
                  "outputs": row.outputs, "error": row.error}
    emit(result, as_json)
    if not as_json:
        console.print(f"run {run_id}: {result['status']}{' — ' + result['error'] if result['error'] else ''}; "
                      f"outputs in {result['output_dir']}", highlight=False)


def merge(
    model_a: Path = typer.Argument(..., help="first checkpoint (.safetensors or .ckpt); text encoder and VAE come from it"),
    model_b: Optional[Path] = typer.Argument(None, help="second checkpoint (block-weighted merge)"),
    input_blocks: Optional[str] = typer.Option(None, "--input_blocks", "--input-blocks", help='"0:0.5, 1:0.5, ..."'),
    middle_blocks: Optional[str] = typer.Option(None, "--middle_blocks", "--middle-blocks", help='"0:0.5, 1:0.5, 2:0.6"'),
    output_blocks: Optional[str] = typer.Option(None, "--output_blocks", "--output-blocks", help='"0:0.5, ..., 11:0.5"'),
    out: Optional[str] = typer.Option(None, "--out", help='UNet output layers, e.g. "0:0.5, 2:0.3"'),
    time_embed: Optional[str] = typer.Option(None, "--time_embed", "--time-embed", help='"0:0.5, 2:0.3"'),
    base_alpha: float = typer.Option(0.0, "--base_alpha", "--base-alpha", help="weight of model B for UNet keys not named"),
    lora: Optional[Path] = typer.Option(None, "--lora", help="merge this kohya-layout LoRA into the result"),
    strength: float = typer.Option(1.0, "--strength", help="LoRA strength: W += strength · up·down · alpha/rank"),
    vae: Optional[Path] = typer.Option(None, "--vae", help="bake this VAE (diffusers folder or .safetensors/.pt) "
                                                             "into the result's first_stage_model.* keys"),
    dump_path: Path = typer.Option(..., "--dump_path", "--dump-path", help="output file (.safetensors or .ckpt)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout: which keys took which weight"),
) -> None:
    """Block-weighted merge of two SD checkpoints (weight = model B's share), a LoRA merged in, and/or a VAE baked in."""
    from store.registry import UnsafeWeights
    from training.merge import (
        MergeError,
        load_checkpoint_file,
        merge_block_weighted,
        merge_lora,
        parse_block_weights,
        save_checkpoint_file,
    )

    if model_b is None and lora is None and vae is None:
        fail("give a second checkpoint to merge, --lora FILE to merge a LoRA into the first, or --vae FILE to bake a VAE in")
    try:
        state = load_checkpoint_file(model_a)
        summary: dict = {"model_a": str(model_a)}
        if model_b is not None:
            weights = {group: parse_block_weights(text, group) for group, text in
                       (("input_blocks", input_blocks), ("middle_block", middle_blocks), ("output_blocks", output_blocks),
                        ("out", out), ("time_embed", time_embed)) if text}
            state, summary["block_merge"] = merge_block_weighted(state, load_checkpoint_file(model_b), weights, base_alpha)
            summary["model_b"] = str(model_b)
        if lora is not None:
            state, summary["lora_merge"] = merge_lora(state, load_checkpoint_file(lora), strength)
            summary["lora"] = str(lora)
        if vae is not None:
            from training.vae import bake_vae

            if not vae.exists():
                raise MergeError(f"--vae: {vae}: no such file or folder")
            state, summary["vae_bake"] = bake_vae(state, vae)
        if dump_path.suffix == ".safetensors":  # modelspec.* as sd-scripts' merge writes it, hash filled after
            from training.export import share_path
            from training.metadata import fill_hash_sha256, merge_metadata

            inputs = [p for p in (model_a, model_b, lora) if p is not None]
            save_checkpoint_file(state, dump_path, merge_metadata(list(state), dump_path.stem, inputs, summary))
            summary["hash_sha256"] = fill_hash_sha256(dump_path)
            share_path(dump_path)
        else:
            save_checkpoint_file(state, dump_path)
    except (MergeError, UnsafeWeights, OSError, ValueError) as error:
        fail(str(error))
    summary["dump_path"] = str(dump_path)
    emit(summary, as_json)
    if not as_json:
        if "block_merge" in summary:
            for block, entry in summary["block_merge"]["blocks"].items():
                console.print(f"{block}: weight {entry['weight']} on {entry['keys']} keys")
            console.print(f"other UNet keys: weight {base_alpha} ({summary['block_merge']['base_alpha_keys']} keys); "
                          f"{summary['block_merge']['from_first']} keys from the first model")
        console.print(f"wrote {dump_path}")
