"""The `atelier` command line: one Typer app, commands registered by stage."""

from __future__ import annotations

import importlib

import typer

from flows import cli_common

# what a command cannot work without, failing in one line naming what and where (see their modules)
UNAVAILABLE = {"BlobStoreUnavailable", "PrefectUnavailable", "WorkerStoreMissing"}


class AtelierApp(typer.Typer):
    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except Exception as error:
            if type(error).__name__ not in UNAVAILABLE:
                raise
            cli_common.console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
            raise SystemExit(1) from None


app = AtelierApp(
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
