"""The `atelier` command line: one Typer app, commands registered by stage."""

from __future__ import annotations

import importlib

import typer

from flows import cli_common  # noqa: F401  (sets offline defaults before heavy imports)

app = typer.Typer(
    help="Atelier: prepare datasets and train Stable Diffusion fine-tunes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# each module defines register(app); one per stage so the CLI stays a table of contents
COMMAND_MODULES = [
    "flows.cli_dataset",  # init, ingest, commit, versions, diff, export
    "flows.cli_steps",  # models, step
    "flows.cli_prepare",  # prepare, deploy
    "flows.cli_train",  # train, merge
    "flows.cli_eval",  # eval, runs, promote, rollback, nightly
    "flows.cli_server",  # server start|stop|status
    "dashboards.cli",  # serve, users
]

for module in COMMAND_MODULES:
    importlib.import_module(module).register(app)


if __name__ == "__main__":
    app()
