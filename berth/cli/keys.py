"""`berth keys ...`: create, list and revoke API keys."""

from __future__ import annotations

from datetime import UTC, datetime

import typer
from rich.table import Table

from berth.cli.context import console, err_console, keys
from berth.security.scopes import DEFAULT_SCOPES

app = typer.Typer(help="Manage API keys.", no_args_is_help=True)


@app.command("create")
def create(
    name: str = typer.Argument(..., help="A name for the key, e.g. web-frontend."),
    scope: list[str] = typer.Option(
        list(DEFAULT_SCOPES), help="predict, predict:MODEL, read or admin (repeatable)."
    ),
    expires: str | None = typer.Option(
        None, help="Lifetime such as 90d or 12h; never expires if omitted."
    ),
    rate: str | None = typer.Option(
        None, help="Rate limit such as 50/s or 1000/m; server default if omitted."
    ),
) -> None:
    """Create an API key. The secret is printed once, on the last line of stdout.

    Example: berth keys create web --scope predict:churn --expires 90d
    """
    from berth.cli.flags import from_flags
    from berth.security.requests import KeyRequest
    from berth.store.audit import cli_actor

    asked = from_flags(
        KeyRequest,
        {"name": "NAME", "scopes": "--scope", "expires": "--expires", "rate": "--rate"},
        {"name": name, "scopes": scope, "expires": expires, "rate": rate},
    )
    info, secret = keys().create(
        asked.name,
        tuple(asked.scopes),
        asked.expires_at(datetime.now(UTC)),
        asked.rate,
        actor=cli_actor(),
    )
    err_console.print(
        f"Created key [bold]{info.name}[/] (scopes: {', '.join(info.scopes)}). Store it now; it is not shown again:"
    )
    typer.echo(secret)


@app.command("list")
def list_keys() -> None:
    """List keys (never their secrets).

    Example: berth keys list
    """
    table = Table("name", "key id", "scopes", "rate", "status", "created", "expires", "last used")
    for info in keys().list():
        status = "active" if info.active else ("revoked" if info.revoked_at else "expired")
        table.add_row(
            info.name,
            info.key_id,
            ", ".join(info.scopes),
            info.rate or "default",
            status,
            f"{info.created_at:%Y-%m-%d %H:%M}",
            f"{info.expires_at:%Y-%m-%d}" if info.expires_at else "never",
            f"{info.last_used_at:%Y-%m-%d %H:%M}" if info.last_used_at else "-",
        )
    console.print(table)


@app.command("revoke")
def revoke(name: str = typer.Argument(..., help="The key's name.")) -> None:
    """Revoke a key; running servers refuse it within BERTH_REFRESH_SECONDS.

    Example: berth keys revoke web
    """
    from berth.store.audit import cli_actor

    info = keys().revoke(name, actor=cli_actor())
    console.print(f"Revoked key {info.name}")


@app.command("rotate")
def rotate(
    name: str = typer.Argument(..., help="The key's name."),
    grace: str = typer.Option(
        "1h", help="How long the old secret keeps working, e.g. 10m, 24h, 0s."
    ),
) -> None:
    """Give a key a new secret (printed once, last line); the old one works during the grace period.

    Example: berth keys rotate web --grace 24h
    """
    from berth.cli.flags import from_flags
    from berth.security.requests import RotateRequest
    from berth.store.audit import cli_actor

    asked = from_flags(RotateRequest, {"grace": "--grace"}, {"grace": grace})
    info, secret = keys().rotate(name, asked.grace_period(), actor=cli_actor())
    err_console.print(
        f"Rotated key [bold]{info.name}[/]; the old secret stops working in {grace}. New secret:"
    )
    typer.echo(secret)
