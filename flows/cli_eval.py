"""Commands of this stage (to be filled)."""

import typer


def register(app: typer.Typer) -> None:
    pass
