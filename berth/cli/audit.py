"""`berth audit list`: recent admin actions and authentication failures."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import typer
from rich.table import Table

from berth.cli.context import console, registry
from berth.durations import parse_duration

app = typer.Typer(help="Read the audit log.", no_args_is_help=True)


@app.command("list")
def list_events(
    since: str | None = typer.Option(None, help="Only events newer than this, e.g. 1h or 7d."),
    actor: str | None = typer.Option(
        None, help="Only events by this actor, e.g. cli:alice or web."
    ),
    limit: int = typer.Option(100, help="At most this many events, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List audit events, newest first.

    Example: berth audit list --since 24h --actor cli:alice
    """
    from berth.store.audit import AuditLog

    start = datetime.now(UTC) - parse_duration(since) if since else None
    events = AuditLog(registry().db).list(since=start, actor=actor, limit=limit)
    if as_json:
        typer.echo(json.dumps([e.to_dict() for e in events], indent=2, default=str))
        return
    table = Table("when", "actor", "action", "target", "outcome", "address")
    for event in events:
        table.add_row(
            f"{event.at:%Y-%m-%d %H:%M:%S}",
            event.actor,
            event.action,
            event.target,
            event.outcome,
            event.address or "-",
        )
    console.print(table)
