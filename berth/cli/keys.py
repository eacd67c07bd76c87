"""`berth keys ...`: create, list, rotate and revoke API keys.

Each command prints from the key's JSON document (`KeyInfo.to_dict()`), which in remote mode is
the admin API's answer, so both modes print the same. A secret is printed once, on the last
line of stdout, and nowhere else.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from berth.cli.context import console, err_console, keys, remote
from berth.cli.remote import path as remote_path
from berth.security.scopes import DEFAULT_SCOPES

if TYPE_CHECKING:
    from berth.cli.remote import Remote

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

    asked = from_flags(
        KeyRequest,
        {"name": "NAME", "scopes": "--scope", "expires": "--expires", "rate": "--rate"},
        {"name": name, "scopes": scope, "expires": expires, "rate": rate},
    )
    server = remote()
    if server is not None:
        document = server.post(remote_path("keys"), asked.model_dump(exclude_none=True))
    else:
        from berth.store.audit import cli_actor

        info, secret = keys().create(
            asked.name,
            tuple(asked.scopes),
            asked.expires_at(datetime.now(UTC)),
            asked.rate,
            actor=cli_actor(),
        )
        document = {"key": info.to_dict(), "secret": secret}
    key = document["key"]
    err_console.print(
        f"Created key [bold]{key['name']}[/] (scopes: {', '.join(key['scopes'])}). Store it now; it is not shown again:"
    )
    typer.echo(document["secret"])


@app.command("list")
def list_keys() -> None:
    """List keys (never their secrets).

    Example: berth keys list
    """
    server = remote()
    if server is not None:
        found: list[dict[str, Any]] = server.get(remote_path("keys"))["keys"]
    else:
        found = [info.to_dict() for info in keys().list()]
    table = Table("name", "key id", "scopes", "rate", "status", "created", "expires", "last used")
    for key in found:
        status = "active" if key["active"] else ("revoked" if key["revoked_at"] else "expired")
        table.add_row(
            key["name"],
            key["key_id"],
            ", ".join(key["scopes"]),
            key["rate"] or "default",
            status,
            _when(key["created_at"], "%Y-%m-%d %H:%M"),
            _when(key["expires_at"], "%Y-%m-%d", "never"),
            _when(key["last_used_at"], "%Y-%m-%d %H:%M"),
        )
    console.print(table)


@app.command("revoke")
def revoke(name: str = typer.Argument(..., help="The key's name.")) -> None:
    """Revoke a key; running servers refuse it within BERTH_REFRESH_SECONDS.

    In remote mode the key the command is made with cannot revoke itself: use another admin key.

    Example: berth keys revoke web
    """
    server = remote()
    if server is not None:
        key = server.delete(remote_path("keys", name))["key"]
    else:
        from berth.store.audit import cli_actor

        key = keys().revoke(name, actor=cli_actor()).to_dict()
    console.print(f"Revoked key {key['name']}")


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

    asked = from_flags(RotateRequest, {"grace": "--grace"}, {"grace": grace})
    server = remote()
    if server is not None:
        document = server.post(remote_path("keys", name, "rotate"), asked.model_dump())
    else:
        from berth.store.audit import cli_actor

        info, secret = keys().rotate(name, asked.grace_period(), actor=cli_actor())
        document = {"key": info.to_dict(), "secret": secret}
    key = document["key"]
    err_console.print(
        f"Rotated key [bold]{key['name']}[/]; the old secret stops working in {grace}. New secret:"
    )
    if server is not None and _is_own_key(server, key["key_id"]):
        err_console.print(
            f"Note: this command's key ({server.profile.key_owner}) is the one rotated; it "
            f"stops working in {grace}: replace it with the new secret, e.g. "
            f"`berth login {server.url} --key-file FILE`.",
            highlight=False,
            markup=False,
        )
    typer.echo(document["secret"])


def _is_own_key(server: Remote, key_id: str) -> bool:
    # A Berth key is berth_<key id>_<secret>; the id is not secret (`keys list` shows it).
    parts = server.profile.secret().split("_", 2)
    return len(parts) == 3 and parts[1] == key_id


def _when(text: str | None, shape: str, missing: str = "-") -> str:
    """An ISO 8601 time of the document as the table shows it."""
    return missing if text is None else f"{datetime.fromisoformat(text):{shape}}"
