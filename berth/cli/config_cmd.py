"""`berth config show`: the settings in effect, secrets redacted."""

from __future__ import annotations

import typer
from rich.table import Table

from berth.cli.context import console, settings

app = typer.Typer(help="Show configuration.", no_args_is_help=True)


@app.command("show")
def show() -> None:
    """Print every setting in effect (secrets redacted) with its environment variable.

    Example: BERTH_PORT=9000 berth config show
    """
    from berth.config import field_docs

    table = Table("setting", "env", "value", "meaning")
    docs = field_docs()
    for name, value in settings().redacted().items():
        table.add_row(name, f"BERTH_{name.upper()}", str(value), docs.get(name, ""))
    console.print(table)
