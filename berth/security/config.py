"""What the security features read from the settings: API keys, JWT bearer tokens, rate limits.

Each object is built from `Settings` by its `from_settings` alone, so a knob's default lives in
`berth.config` and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from pydantic import SecretStr

from berth.config import Settings


@dataclass(frozen=True)
class KeyConfig:
    """API keys: the server secret they are hashed under, and how long a checked key is trusted."""

    secret: SecretStr | None
    """The server secret given by the operator (BERTH_SECRET_KEY); None uses `secret_file`."""

    secret_file: Path
    """Where the server secret is kept (and created on first use) when none is given."""

    refresh_seconds: float
    """How long a server trusts a key's row before reading it again (revocations apply within it)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyConfig:
        return cls(
            secret=settings.secret_key,
            secret_file=settings.home / "secret.key",
            refresh_seconds=settings.refresh_seconds,
        )


@dataclass(frozen=True)
class JwtConfig:
    """Where the keys of bearer tokens come from, and the claims a token must carry."""

    secret: SecretStr | None
    """Shared secret for HS256 tokens (BERTH_JWT_SECRET)."""

    secret_file: Path | None
    """File holding the HS256 secret (BERTH_JWT_SECRET_FILE), instead of `secret`."""

    public_key_file: Path | None
    """PEM public key for RS256/ES256 tokens."""

    jwks: str | None
    """JWKS document for RS256/ES256 tokens: a file path or an http(s) URL."""

    jwks_refresh_seconds: float
    """How long a fetched JWKS document is reused before it is fetched again."""

    issuer: str | None
    """Required `iss` claim; not checked if None."""

    audience: str | None
    """Required `aud` claim; not checked if None."""

    scope_claim: str
    """Claim holding Berth scopes: a space-separated string or a list."""

    leeway_seconds: float
    """Clock skew allowed when checking `exp` and `nbf`."""

    @property
    def configured(self) -> bool:
        """Some source of verification keys is set (otherwise bearer tokens are not accepted)."""
        sources = (self.secret, self.secret_file, self.public_key_file, self.jwks)
        return any(source is not None for source in sources)

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtConfig:
        return cls(
            secret=settings.jwt_secret,
            secret_file=settings.jwt_secret_file,
            public_key_file=settings.jwt_public_key_file,
            jwks=settings.jwt_jwks,
            jwks_refresh_seconds=settings.jwt_jwks_refresh_seconds,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            scope_claim=settings.jwt_scope_claim,
            leeway_seconds=settings.jwt_leeway_seconds,
        )


@dataclass(frozen=True)
class RateLimitConfig:
    """Where buckets live, and the rates (`count/period`, e.g. `100/s`) of each kind of limit."""

    redis_url: str | None
    """Redis shared by replicas for the buckets; None keeps them in this process."""

    fail_open: bool
    """When Redis is unreachable: allow requests (true) or refuse them with 503."""

    default_key_rate: str | None
    """Rate of a key created without its own; None leaves such keys unlimited."""

    model_rates: Mapping[str, str]
    """Rate per model over all callers."""

    open_route_rate: str | None
    """Rate per client address on routes that need no credentials (and in dev mode)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimitConfig:
        return cls(
            redis_url=settings.redis_url,
            fail_open=settings.rate_limit_fail_open,
            default_key_rate=settings.default_key_rate,
            model_rates=MappingProxyType(dict(settings.model_rates)),
            open_route_rate=settings.open_route_rate,
        )
