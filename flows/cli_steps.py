"""`atelier models` (flows/cli_models.py) and `atelier step`: the model registry and one step tried by hand."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer

from flows.cli_common import console, fail, parse_sets, progress


def register(app: typer.Typer) -> None:
    from flows.cli_models import models_app

    app.add_typer(models_app, name="models")
    app.command("step")(step)


def step(
    name: str = typer.Argument(..., help="align, identity, rating, restore, upscale, outpaint, img2img, loopback, detailer, edit, tag, caption, aesthetic, quality"),
    images: list[Path] = typer.Argument(..., help="image files"),
    out: Path = typer.Option(..., "--out", help="folder for the results"),
    sets: list[str] | None = typer.Option(None, "--set", help="parameter override, key=value"),
    as_json: bool = typer.Option(False, "--json", help="a JSON line per image on stdout"),
) -> None:
    """Run one step on files and write the results: the way to check a setting before a whole flow."""
    from preprocess.load import RejectedImage, load_image_file
    from preprocess.steps import Item, load_step
    from store.registry import ModelMissing, UnsafeWeights, load_registry

    try:
        loaded = load_step(name, parse_sets(sets), load_registry())
    except (ValueError, ModelMissing, UnsafeWeights) as error:
        fail(str(error))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.jsonl").write_text("")  # this run's lines only
    failures = 0
    with progress() as bar:
        task = bar.add_task(name, total=len(images))
        for path in images:
            record: dict = {"input": str(path), "step": name, "backend": loaded.backend, "model": loaded.model_id}
            try:
                loaded_image = load_image_file(path)
                result = loaded.run([Item(image=loaded_image.image, name=path.name)])[0]
            except (RejectedImage, OSError, ValueError, RuntimeError) as error:
                failures += 1
                record["error"] = str(error)
            else:
                if result.image is not None:
                    target = out / f"{path.stem}.{name}.png"
                    result.image.save(target)
                    record["output"] = str(target)
                    record["size"] = list(result.image.size)
                for kind, images in (("intermediates", result.intermediates), ("masks", result.masks)):
                    for label, extra in images.items():
                        suffix = f"{label}.mask.png" if kind == "masks" else f"{label}.png"
                        extra.save(out / f"{path.stem}.{name}.{suffix}")
                        record.setdefault(kind, {})[label] = str(out / f"{path.stem}.{name}.{suffix}")
                record["meta"] = result.meta
                if result.tags is not None:
                    record["tags"] = [dataclasses.asdict(t) for t in result.tags]
                if result.caption is not None:
                    record["caption"] = result.caption
                if result.scores:
                    record["scores"] = result.scores
            line = json.dumps(record, default=str)
            with open(out / "results.jsonl", "a") as handle:
                handle.write(line + "\n")
            if as_json:
                print(line, flush=True)
            else:
                console.print(f"{path.name}: " + (record.get("error") or record.get("output") or json.dumps({k: record[k] for k in ("tags", "caption", "scores") if k in record}, default=str)[:200]))
            bar.advance(task)
    if failures:
        fail(f"{failures} of {len(images)} images failed (see {out / 'results.jsonl'})")
