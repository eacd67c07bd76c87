"""Settings: `BERTH_*` environment variables, then an optional TOML file, then defaults.

The TOML file is `BERTH_CONFIG` if set, else `berth.toml` in the working directory when present.
Keys in the file are the field names below (`database_url = "..."`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from berth.defaults import DEFAULT_PORT, LONG_POLL_MAX_SECONDS
from berth.errors import InvalidInput


def _config_file() -> Path | None:
    explicit = os.environ.get("BERTH_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():  # a typo must not silently fall back to the defaults
            raise InvalidInput(
                f"BERTH_CONFIG is {explicit}, which is not a file; fix the path or unset it"
            )
        return path
    local = Path("berth.toml")
    return local if local.exists() else None


def _toml_source(settings_cls: type[BaseSettings], path: Path) -> PydanticBaseSettingsSource:
    try:
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    except (OSError, ValueError) as exc:  # ValueError: TOMLDecodeError, or not UTF-8
        raise InvalidInput(f"config file {path} could not be read as TOML: {exc}") from exc


class ModelServing(BaseModel):
    """How one model is served: adaptive batching and the prediction cache."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    max_batch_size: int = Field(default=1, ge=1, le=100_000)
    """Most rows joined into one model call; 1 turns batching off."""

    max_latency_ms: float = Field(default=5.0, ge=0, le=60_000)
    """Longest the first request of a batch waits for others before the batch runs."""

    max_batches_in_flight: int = Field(default=2, ge=1, le=1024)
    """Batches running at once; later requests queue (and join bigger batches) meanwhile."""

    cache: bool = False
    """Cache predictions by version and input (only for deterministic models)."""

    accelerate: bool = True
    """Serve a version's accelerated twin (its ONNX form, checked equivalent at registration)
    when it has one; false serves the version's own artifact."""

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1


class Settings(BaseSettings):
    """Every knob of a Berth process. Field docstrings are shown by `berth config show`."""

    model_config = SettingsConfigDict(
        env_prefix="BERTH_", extra="ignore", use_attribute_docstrings=True
    )

    home: Path = Field(default=Path(".berth"))
    """Data directory: SQLite registry, local artifacts and the key secret live here."""

    @field_validator("home")
    @classmethod
    def _home_is_a_folder(cls, home: Path) -> Path:
        # Checked once here: a file in the way would fail later in every place that writes there.
        existing = next((p for p in (home, *home.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise ValueError(f"{existing} is a file, not a folder; point it at a folder")
        return home

    database_url: str | None = None
    """SQLAlchemy URL of the registry; default `sqlite:///<home>/registry.db`."""

    artifact_url: str | None = None
    """fsspec URL of the artifact store; default the folder `<home>/artifacts`."""

    secret_key: SecretStr | None = None
    """Server secret for keyed hashes of API keys; default a random one kept in `<home>/secret.key`."""

    host: str = "127.0.0.1"
    """Address `berth serve` binds to."""

    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    """Port `berth serve` listens on."""

    workers: int = Field(default=1, ge=1, le=1024)
    """Server worker processes."""

    grpc_port: int | None = Field(default=None, ge=1, le=65535)
    """Port of the Open Inference Protocol over gRPC, served by every worker beside HTTP (`berth serve --grpc-port`); unset: no gRPC."""

    grpc_max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=4096)
    """Largest gRPC message received or sent; larger ones get RESOURCE_EXHAUSTED."""

    worker_preload: bool = True
    """With several workers, fork them from the supervisor, which has imported the server once (a killed worker is back in about half a second); false starts each from scratch."""

    dev: bool = False
    """Dev mode: prediction and model routes accept requests without an API key."""

    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    """Largest request body accepted (after decompression); larger ones get 413."""

    max_batch_rows: int = Field(default=10_000, ge=1)
    """Most rows one prediction request may carry; more get 413."""

    body_timeout_seconds: float = Field(default=30.0, gt=0)
    """Longest a client may take to send a request body; slower ones get 408 and are disconnected."""

    max_upload_bytes: int = Field(default=2 * 1024**3, ge=1, le=1024**4)
    """Largest model upload (`POST /api/v1/models/NAME/versions`, every part together); larger ones get 413. Uploads are streamed to disk, never held in memory."""

    upload_timeout_seconds: float = Field(default=900.0, gt=0, le=86_400)
    """Longest a client may take to send a model upload; slower ones get 408 and are disconnected."""

    validation_data_dir: Path | None = None
    """Folder of test data on the server that `berth validate --server-data NAME` (the `data_file` of `POST /api/v1/validate`) may read; files outside it never. Unset: validation takes uploaded data only."""

    long_poll_seconds: float = Field(default=25.0, gt=0, le=LONG_POLL_MAX_SECONDS)
    """Longest a long poll (`GET /api/v1/rollouts/ID?wait=SECONDS`, used by a remote `berth rollout wait`) holds a request before it answers with no change; keep it below the read timeout of any proxy in front (the nginx of `make cluster-demo` waits BERTH_REQUEST_TIMEOUT_SECONDS + 5 s)."""

    decode_process_bytes: int = Field(default=1024 * 1024, ge=0)
    """Request bodies of at least this many bytes are decoded in a helper process per worker, so parsing them never stalls other requests; 0 decodes them in threads."""

    compress_min_bytes: int = Field(default=1024, ge=0)
    """Responses of at least this many bytes are gzip-compressed for clients that accept gzip; 0 never compresses."""

    docs: Literal["authenticated", "public", "off"] = "authenticated"
    """API docs at /docs and /openapi.json: `authenticated` (the page is open, the document needs a valid key), `public`, or `off`."""

    console: bool = True
    """The browser console at /console (sign in with an API key or a JWT); false leaves it out of the server."""

    console_read_only: bool = False
    """The console shows everything but offers and accepts no action (`berth serve --console-read-only`)."""

    console_session_seconds: float = Field(default=8 * 3600, gt=0, le=7 * 86_400)
    """How long a console sign-in lasts; the key or token is checked again on every page either way."""

    refresh_seconds: float = Field(default=1.0, gt=0)
    """How often a server re-reads aliases and keys from the registry (revocations apply within it)."""

    log_level: str = "info"
    """Log level of the server and CLI."""

    served: list[str] = Field(default_factory=list)
    """References the server serves; empty means every model with a `production` alias."""

    # rollouts -------------------------------------------------------------------------------

    rollout_controller: bool = True
    """Run the rollout controller in this server (one process acts at a time, by lease)."""
    controller_interval_seconds: float = Field(default=1.0, gt=0)
    """How often the rollout controller looks at running rollouts."""
    lease_seconds: float = Field(default=10.0, gt=0)
    """How long the controller's lease lasts unrenewed (a dead leader's successor waits at most this)."""

    # observability --------------------------------------------------------------------------

    log_format: Literal["json", "console"] | None = None
    """Log line format: `json` (one object per line) or `console` (readable); default json, console in dev mode."""

    access_log: bool = False
    """Log one line per HTTP request (method, path, status, latency, request id, client address)."""

    access_log_sample: float = Field(default=1.0, ge=0.0, le=1.0)
    """Fraction of requests the access log records, from 0 to 1."""

    feature_metrics: list[str] = Field(default_factory=list)
    """Models whose numeric input features are recorded in `berth_feature_value`, JSON such as `["churn"]`."""

    feature_metrics_every: int = Field(default=10, ge=1)
    """Record feature values for one prediction request in this many, per model and worker."""

    # prediction log, live performance and drift ---------------------------------------------

    prediction_log_enabled: bool = True
    """Log every predicted row (id, prediction, score, latency) for feedback and live performance."""

    prediction_log_max_age: str = "30d"
    """Logged predictions and their feedback older than this are deleted, e.g. `30d`."""

    prediction_log_max_rows: int = Field(default=1_000_000, ge=1)
    """Most logged predictions kept; the oldest beyond it are deleted."""

    prediction_log_queue_rows: int = Field(default=100_000, ge=1)
    """Rows a worker buffers for the log; beyond it rows are dropped and counted."""

    prediction_log_batch_rows: int = Field(default=500, ge=1)
    """Write buffered rows as soon as this many wait."""

    prediction_log_flush_seconds: float = Field(default=0.5, gt=0)
    """Write buffered rows at least this often."""

    prediction_log_retention_seconds: float = Field(default=60.0, gt=0)
    """How often retention (max age, max rows) runs."""

    performance_window: str = "24h"
    """Window of feedback behind the `berth_model_accuracy` gauges."""

    performance_refresh_seconds: float = Field(default=10.0, gt=0)
    """How often `berth_model_accuracy` is recomputed for served versions."""

    drift_window_rows: int = Field(default=5000, ge=1)
    """Live input rows per version kept for drift (rolling window, per worker)."""

    drift_refresh_seconds: float = Field(default=10.0, gt=0)
    """How often `berth_feature_drift` (PSI per feature) is recomputed."""

    # limits and load shedding ---------------------------------------------------------------

    request_timeout_seconds: float = Field(default=30.0, gt=0)
    """Longest a prediction may take; slower ones get 504."""

    max_concurrent_requests: int = Field(default=64, ge=1)
    """Prediction requests one worker handles at once; beyond it, 503 with Retry-After."""

    # speed ----------------------------------------------------------------------------------

    models: dict[str, ModelServing] = Field(default_factory=dict)
    """Per-model batching and cache, JSON such as `{"rf": {"max_batch_size": 32, "max_latency_ms": 5}, "iris": {"cache": true}}`; the key `*` applies to every model without its own entry."""

    inline_predict_ms: float = Field(default=0.5, ge=0)
    """Models whose one-row prediction takes less (measured at load) run on the event loop, saving a thread hop; 0 always uses threads."""

    predict_threads: int | None = Field(default=None, ge=1)
    """Threads for predictions per worker; default the number of cores."""

    cache_backend: Literal["memory", "redis"] = "memory"
    """Where cached predictions live: this worker's memory, or Redis (`redis_url`) shared by replicas."""

    cache_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    """Memory bound of the in-process prediction cache, per worker."""

    cache_ttl_seconds: float = Field(default=300.0, gt=0)
    """How long a cached prediction is served before the model is asked again."""

    def serving(self, model: str) -> ModelServing:
        """The batching and cache options of `model`."""
        return self.models.get(model) or self.models.get("*") or ModelServing()

    # rate limits ----------------------------------------------------------------------------

    redis_url: str | None = None
    """Redis URL shared by replicas for rate limits (e.g. redis://127.0.0.1:6379/0); in-process if unset."""

    rate_limit_fail_open: bool = True
    """When Redis is unreachable: allow requests (true, with a warning and a metric) or refuse them with 503."""

    default_key_rate: str | None = None
    """Rate for keys created without --rate, e.g. `100/s`; unlimited if unset."""

    model_rates: dict[str, str] = Field(default_factory=dict)
    """Per-model rates over all callers, JSON such as `{"churn": "200/s"}`."""

    open_route_rate: str | None = "100/s"
    """Per client address on routes that need no credentials (and in dev mode); unset to disable."""

    # JWT bearer tokens ----------------------------------------------------------------------

    jwt_secret: SecretStr | None = None
    """Shared secret for HS256 tokens."""

    jwt_secret_file: Path | None = None
    """File holding the HS256 secret (instead of BERTH_JWT_SECRET)."""

    jwt_public_key_file: Path | None = None
    """PEM public key for RS256/ES256 tokens."""

    jwt_jwks: str | None = None
    """JWKS document for RS256/ES256 tokens: a file path or an http(s) URL (cached, refreshed)."""

    jwt_jwks_refresh_seconds: float = Field(default=300.0, gt=0)
    """How long a fetched JWKS document is reused before it is fetched again."""

    jwt_issuer: str | None = None
    """Required `iss` claim; not checked if unset."""

    jwt_audience: str | None = None
    """Required `aud` claim; not checked if unset."""

    jwt_scope_claim: str = "scope"
    """Claim holding Berth scopes: a space-separated string or a list (`scope` or `scp`)."""

    jwt_leeway_seconds: float = Field(default=30.0, ge=0)
    """Clock skew allowed when checking `exp` and `nbf`."""

    # transport ------------------------------------------------------------------------------

    tls_cert_file: Path | None = None
    """PEM certificate chain; with tls_key_file, `berth serve` speaks HTTPS."""

    tls_key_file: Path | None = None
    """PEM private key for tls_cert_file."""

    trusted_proxies: list[str] = Field(default_factory=list)
    """Proxy addresses whose X-Forwarded-For/-Proto are believed, JSON such as `["127.0.0.1"]`."""

    # Ray Serve engine (`berth serve --engine ray`) ------------------------------------------

    ray_address: str | None = None
    """Ray cluster `--engine ray` deploys to (`127.0.0.1:6379`, `ray://head:10001`, `auto`); unset starts a local Ray instance."""

    ray_min_replicas: int = Field(default=1, ge=1)
    """Fewest Ray Serve replicas of the server."""

    ray_max_replicas: int = Field(default=4, ge=1)
    """Most Ray Serve replicas the autoscaler may start."""

    ray_target_ongoing_requests: float = Field(default=8.0, gt=0)
    """Requests in flight per replica the Ray Serve autoscaler aims at (more add replicas, fewer remove them)."""

    ray_replica_cpus: float = Field(default=1.0, gt=0)
    """CPUs Ray reserves for each replica."""

    # artifacts ------------------------------------------------------------------------------

    trusted_types: list[str] = Field(default_factory=list)
    """Extra types skops files may contain, JSON such as `["mypackage.MyTransformer"]`."""

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
            sources.append(_toml_source(settings_cls, path))
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
        shown["artifact_url"] = _redact_url_password(self.resolved_artifact_url)
        return shown


_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|passwd|pwd|secret|token)=)[^&#]*")


def _redact_url_password(url: str) -> str:
    url = _QUERY_SECRET.sub(r"\1********", url)  # libpq takes ?password=... too
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


def load_settings() -> Settings:
    """Settings from the environment and config file; a bad value is one clear `InvalidInput`."""
    try:
        return Settings()
    except (ValidationError, SettingsError) as exc:
        raise InvalidInput(f"configuration is not valid: {_first_problem(exc)}") from exc


def _first_problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError) and exc.errors():
        error = exc.errors()[0]
        name = ".".join(str(p) for p in error["loc"])
        return f"BERTH_{name.upper()}: {error['msg']} (got {error.get('input')!r}); fix the variable or config file"
    return (
        f"{exc}; check the BERTH_* variables (lists such as BERTH_SERVED are JSON: '[\"churn\"]')"
    )
