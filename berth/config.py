"""Settings: `BERTH_*` environment variables, then an optional TOML file, then defaults.

The TOML file is `BERTH_CONFIG` if set, else `berth.toml` in the working directory when present.
Keys in the file are the field names below (`database_url = "..."`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_PORT = 8321


def _config_file() -> Path | None:
    explicit = os.environ.get("BERTH_CONFIG")
    if explicit:
        return Path(explicit)
    local = Path("berth.toml")
    return local if local.exists() else None


class Settings(BaseSettings):
    """Every knob of a Berth process. Field docstrings are shown by `berth config show`."""

    model_config = SettingsConfigDict(
        env_prefix="BERTH_", extra="ignore", use_attribute_docstrings=True
    )

    home: Path = Field(default=Path(".berth"))
    """Data directory: SQLite registry, local artifacts and the key secret live here."""

    database_url: str | None = None
    """SQLAlchemy URL of the registry; default `sqlite:///<home>/registry.db`."""

    artifact_url: str | None = None
    """fsspec URL of the artifact store; default the folder `<home>/artifacts`."""

    secret_key: SecretStr | None = None
    """Server secret for keyed hashes of API keys; default a random one kept in `<home>/secret.key`."""

    host: str = "127.0.0.1"
    """Address `berth serve` binds to."""

    port: int = DEFAULT_PORT
    """Port `berth serve` listens on."""

    workers: int = 1
    """Server worker processes."""

    dev: bool = False
    """Dev mode: prediction and model routes accept requests without an API key."""

    max_body_bytes: int = 16 * 1024 * 1024
    """Largest request body accepted; larger ones get 413."""

    max_batch_rows: int = 10_000
    """Most rows one prediction request may carry; more get 413."""

    refresh_seconds: float = 2.0
    """How often a server re-reads aliases and keys from the registry."""

    log_level: str = "info"
    """Log level of the server and CLI."""

    served: list[str] = Field(default_factory=list)
    """References the server serves; empty means every model with a `production` alias."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home.resolve() / 'registry.db'}"

    @property
    def resolved_artifact_url(self) -> str:
        return self.artifact_url or str(self.home.resolve() / "artifacts")

    def redacted(self) -> dict[str, Any]:
        """The settings as shown to people: secrets and URL passwords replaced."""
        shown: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "********"
            elif name.endswith("_url") and isinstance(value, str):
                value = _redact_url_password(value)
            shown[name] = value
        shown["database_url"] = _redact_url_password(self.resolved_database_url)
        shown["artifact_url"] = self.resolved_artifact_url
        return shown


def _redact_url_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:********@{host}" if ":" in creds else url


def field_docs() -> dict[str, str]:
    """One line per setting, for `berth config show` and the README table."""
    docs: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        docs[name] = (field.description or "").strip()
    return docs
