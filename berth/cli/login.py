"""`berth login`, `berth logout` and `berth profile ...`: the servers a remote `berth` talks to.

A key is never taken as a command-line argument (shells keep history, `ps` shows arguments) and
never printed: it comes from --key-file, BERTH_API_KEY, or a prompt that does not echo.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.table import Table

from berth.cli import profiles
from berth.cli.context import console, err_console
from berth.errors import Forbidden, InvalidInput

app = typer.Typer(help="Server profiles for remote mode (see `berth login`).", no_args_is_help=True)


def login(
    url: str = typer.Argument(..., help="The server, e.g. https://berth.example.com."),
    key_file: Path | None = typer.Option(
        None, "--key-file", help="File holding the API key; the profile keeps only its path."
    ),
    name: str | None = typer.Option(None, "--name", help="Profile name; default: the host."),
) -> None:
    """Check a server and a key, and make them the current profile: commands then go to it.

    The key comes from --key-file, else BERTH_API_KEY, else a prompt (it is never echoed).

    Example: berth login https://berth.example.com --key-file ~/.berth-key
    """
    from berth.cli.remote import Remote, path

    url = profiles.check_url(url)
    profile = profiles.Profile(
        profiles.check_profile_name(name or profiles.default_name(url)),
        url,
        key_file=key_file.expanduser().resolve() if key_file is not None else None,
        key=None if key_file is not None else _key_without_file(),
    )
    if profiles.sends_key_in_clear(url):
        err_console.print(
            f"warning: {url} is plain http: the API key crosses the network unencrypted on "
            "every command; use https:// (serve with TLS or behind a TLS proxy)",
            highlight=False,
            markup=False,
        )
    server = Remote(profile)
    server.get("/health")
    try:
        server.get(path("models"))  # an unknown or revoked key fails here, in one line
        note = ""
    except Forbidden:
        note = " (this key may not read models: `berth models` commands will be refused)"
    saved = profiles.save(profiles.add(profiles.load(), profile))
    console.print(
        f"Logged in to {url} as profile '{profile.name}' (key: {profile.key_source}; "
        f"profiles in {saved}){note}. Commands now go to this server; "
        "`berth logout` returns to the local registry.",
        highlight=False,
        markup=False,
    )


def _key_without_file() -> str:
    from_environment = os.environ.get(profiles.KEY_VARIABLE)
    if from_environment:
        return profiles.check_key(from_environment, profiles.KEY_VARIABLE)
    if not sys.stdin.isatty():
        raise InvalidInput(
            f"no API key: give --key-file FILE or set {profiles.KEY_VARIABLE} "
            "(or run in a terminal to be asked for it)"
        )
    return profiles.check_key(typer.prompt("API key", hide_input=True), "the key typed")


def logout() -> None:
    """Forget the current profile and its key: commands use the local registry again.

    Example: berth logout
    """
    stored = profiles.load()
    if stored.current is None:
        console.print("Not logged in: commands use the local registry.", highlight=False)
        return
    profiles.save(profiles.remove(stored, stored.current))
    console.print(f"Logged out of profile '{stored.current}'; commands use the local registry.")


@app.command("list")
def list_profiles() -> None:
    """List profiles: name, server, where the key comes from (never the key); * is current.

    Example: berth profile list
    """
    stored = profiles.load()
    overridden = os.environ.get(profiles.SERVER_VARIABLE)
    if not stored.entries:
        console.print(
            "No profiles; log in with `berth login URL --key-file FILE`.",
            highlight=False,
            markup=False,
        )
    else:
        table = Table("", "profile", "server", "key")
        for profile in stored.entries.values():
            mark = "*" if profile.name == stored.current and not overridden else ""
            table.add_row(mark, profile.name, profile.url, profile.key_source)
        console.print(table)
    if overridden:
        console.print(
            f"{profiles.SERVER_VARIABLE} is set: commands go to {overridden}, not to a profile.",
            highlight=False,
            markup=False,
        )


@app.command("use")
def use(name: str = typer.Argument(..., help="A profile from `berth profile list`.")) -> None:
    """Make a profile current: commands go to its server.

    Example: berth profile use production
    """
    stored = profiles.load()
    profile = profiles.named(stored, name)
    profiles.save(profiles.Profiles(name, stored.entries))
    console.print(f"Commands now go to {profile.url} (profile '{name}').")


@app.command("remove")
def remove(name: str = typer.Argument(..., help="A profile from `berth profile list`.")) -> None:
    """Forget a profile and its key.

    Example: berth profile remove staging
    """
    profiles.save(profiles.remove(profiles.load(), name))
    console.print(f"Removed profile '{name}'.")
