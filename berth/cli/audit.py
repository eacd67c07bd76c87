"""`berth audit list`: recent admin actions and authentication failures.

The listing is printed from the events' JSON documents (`AuditEvent.to_dict()`), which in remote
mode are the admin API's answer, so both modes print the same.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import typer
from rich.table import Table

from berth.cli.context import console, registry, remote
from berth.cli.remote import path as remote_path
from berth.durations import parse_duration

app = typer.Typer(help="Read the audit log.", no_args_is_help=True)


@app.command("list")
def list_events(
    since: str | None = typer.Option(None, help="Only events newer than this, e.g. 1h or 7d."),
    actor: str | None = typer.Option(
        None, help="Only events by this actor, e.g. cli:alice or web."
    ),
    limit: int = typer.Option(100, help="At most this many events (1 to 1000), newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List audit events, newest first.

    Example: berth audit list --since 24h --actor cli:alice
    """
    from berth.store.audit import check_listing

    start = datetime.now(UTC) - parse_duration(since) if since else None
    check_listing(actor, limit)
    server = remote()
    if server is not None:
        query = {"since": since, "actor": actor, "limit": limit}
        params = {key: value for key, value in query.items() if value is not None}
        events: list[dict[str, Any]] = server.get(remote_path("audit"), params)["events"]
    else:
        from berth.store.audit import AuditLog

        found = AuditLog(registry().db).list(since=start, actor=actor, limit=limit)
        events = [event.to_dict() for event in found]
    if as_json:
        typer.echo(json.dumps(events, indent=2, default=str))
        return
    table = Table("when", "actor", "action", "target", "outcome", "address")
    for event in events:
        table.add_row(
            f"{datetime.fromisoformat(event['at']):%Y-%m-%d %H:%M:%S}",
            event["actor"],
            event["action"],
            event["target"],
            event["outcome"],
            event["address"] or "-",
        )
    console.print(table)
