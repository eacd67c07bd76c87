"""What every command needs: settings, the registry, consoles, and one way to fail."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
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
