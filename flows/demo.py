"""`make demo`: the main job end to end on the embedded defaults, as a user would type it.

Runs the same `atelier` commands in one process (so Prefect's local API starts once) and
prints where to look afterwards. Safe to run again: it picks up where the store stands.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "tests" / "fixtures" / "photos"
OUT = ROOT / "out" / "demo"


def main() -> int:
    os.environ.setdefault("ATELIER_HOME", str(ROOT / ".atelier"))
    from prefect.logging.configuration import setup_logging

    from flows.cli import app
    from flows.cli_common import console

    setup_logging()
    runner = CliRunner()

    def atelier(*args: str, allow_fail: bool = False) -> dict:
        console.rule(f"[bold]atelier {' '.join(args)}")
        result = runner.invoke(app, [*args, "--json"])
        if result.exit_code != 0 and not allow_fail:
            console.print(result.output)
            raise SystemExit(f"demo step failed: atelier {' '.join(args)}")
        return json.loads(result.stdout) if result.exit_code == 0 and result.stdout.strip() else {}

    atelier("init")
    report = atelier("ingest", str(PHOTOS), "--dataset", "demo", "--identifier", "atl", "--class", "scene")
    console.print(f"scanned {report['scanned']}, added {report['added']}, unchanged {report['unchanged']}, "
                  f"rejected {len(report['rejected'])}")
    prepared = atelier("prepare", "demo") if _has_command(app, "prepare") else {}
    if prepared:
        console.print(json.dumps(prepared.get("steps", prepared), indent=1)[:2000])
    version = atelier("commit", "demo", "-m", "demo: bundled photos", allow_fail=True)
    if not version:
        console.print("nothing changed since the last version; exporting the newest one")
    kohya = atelier("export", "demo", "--format", "kohya", "--out", str(OUT / "kohya"), "--force")
    folder = atelier("export", "demo", "--format", "imagefolder", "--out", str(OUT / "imagefolder"), "--force")
    versions = atelier("versions", "demo")["versions"]
    console.rule("[bold green]done")
    console.print(f"store:        {os.environ['ATELIER_HOME']} (SQLite + blobs)")
    listed = ", ".join(f"demo@{v['number']} ({v['entries']} images)" for v in versions)
    console.print(f"versions:     {listed}")
    console.print(f"kohya export: {kohya['out']}/{kohya['folder']}  ({kohya['images']} images + .txt captions)")
    console.print(f"imagefolder:  {folder['out']}/metadata.jsonl")
    console.print("next: `.venv/bin/atelier --help`, `.venv/bin/atelier serve` for the curator dashboard")
    return 0


def _has_command(app, name: str) -> bool:
    return any((c.name or c.callback.__name__) == name for c in app.registered_commands)


if __name__ == "__main__":
    sys.exit(main())
