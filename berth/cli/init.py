"""`berth init`: create the data directory, the registry schema and the server secret."""

from __future__ import annotations

from berth.cli.context import console, registry, settings


def init() -> None:
    """Create the data directory, registry database and server secret.

    Example: berth init   (uses BERTH_HOME, default ./.berth)
    """
    from berth.security.config import KeyConfig
    from berth.security.keys import server_secret

    current = settings()
    registry()
    server_secret(KeyConfig.from_settings(current))
    console.print(f"Initialised Berth in [bold]{current.home.resolve()}[/]")
    console.print("Next: berth models register NAME PATH --sample FILE --alias production")
