"""What the SQL source, sink and errors table share: engines, quoting, readable failures."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from berth.errors import InvalidInput


def is_sql_url(location: str) -> bool:
    if "://" not in location:
        return False
    try:
        make_url(location)
    except ArgumentError:
        return False
    return True


def sql_engine(url: str, what: str) -> Engine:
    try:
        return create_engine(url, pool_pre_ping=True)
    except (ArgumentError, ImportError) as exc:
        raise InvalidInput(
            f"{what} {safe_url(url)} is not a usable SQLAlchemy URL ({exc}); use e.g. "
            "postgresql+psycopg://user@host/db or sqlite:///path.db"
        ) from exc


def quote_relation(engine: Engine, name: str) -> str:
    """`schema.table` with each part quoted for the engine's dialect."""
    quote = engine.dialect.identifier_preparer.quote
    return ".".join(quote(part) for part in name.split("."))


def split_relation(name: str) -> tuple[str | None, str]:
    schema, _, table = name.rpartition(".")
    return (schema or None), table


def reason(exc: Exception) -> str:
    """The database's own first line about what went wrong."""
    if not isinstance(exc, SQLAlchemyError) and isinstance(exc.__cause__, SQLAlchemyError):
        exc = exc.__cause__  # pandas wraps the driver's error
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).strip().splitlines()[0]


def safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def shown(location: str) -> str:
    """A source or sink for display: a SQL URL's password hidden."""
    return safe_url(location) if is_sql_url(location) else location
