"""What every command needs: settings, the registry or a remote server, and consoles."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from berth.cli.remote import Remote
    from berth.config import Settings
    from berth.registry.service import Registry
    from berth.security.keys import KeyService

# Settings, the registry and keys are imported when first asked for: every command module
# imports this one, and `berth --help` must not pay for pydantic-settings and SQLAlchemy.
console = Console()
err_console = Console(stderr=True)


@cache
def settings() -> Settings:
    from berth.config import load_settings

    return load_settings()


@cache
def registry() -> Registry:
    from berth.registry.service import Registry

    return Registry.from_settings(settings())


def keys() -> KeyService:
    from berth.security.config import KeyConfig
    from berth.security.keys import KeyService, server_secret

    return KeyService(registry().db, server_secret(KeyConfig.from_settings(settings())))


def remote() -> Remote | None:
    """The server commands go to (BERTH_SERVER, else the current profile); None: local mode,
    where commands open the registry themselves."""
    from berth.cli.profiles import active
    from berth.cli.remote import Remote

    profile = active()
    return Remote(profile) if profile is not None else None
