"""What every command needs: settings, the registry, consoles, and one way to fail."""

from __future__ import annotations

from functools import cache

from rich.console import Console

from berth.config import Settings, load_settings
from berth.registry.service import Registry
from berth.security.keys import KeyService, server_secret

console = Console()
err_console = Console(stderr=True)


@cache
def settings() -> Settings:
    return load_settings()


@cache
def registry() -> Registry:
    return Registry.from_settings(settings())


def keys() -> KeyService:
    return KeyService(registry().db, server_secret(settings()))
