"""Database access: one engine per process, schema kept current by Alembic on open."""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from berth.errors import DatabaseUnavailable, InvalidInput

if TYPE_CHECKING:
    from sqlalchemy.engine import URL
    from sqlalchemy.exc import DatabaseError

MIGRATIONS = Path(__file__).parent / "migrations"
logging.getLogger("alembic").setLevel(logging.WARNING)
# Any constant works: it only has to be the same for every Berth process sharing a database.
_MIGRATION_LOCK_ID = 0x6265727468
_REVISION_LINE = re.compile(r"^(revision|down_revision) = (?:\"([^\"]+)\"|None)$", re.MULTILINE)


class Database:
    """The registry's SQL database (SQLite file by default, PostgreSQL by URL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _create_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        """A session whose work commits on success and rolls back on any error.

        `write=True` is for read-then-write work (next version number, alias checks): on SQLite
        it takes the write lock up front (`BEGIN IMMEDIATE`), so concurrent writers queue on the
        busy timeout instead of reading stale rows and colliding. PostgreSQL callers lock rows
        with `SELECT ... FOR UPDATE` instead.

        A database that cannot be used now raises `DatabaseUnavailable` (see `outages_mapped`),
        whether it fails at connect, in the middle of the work or at commit.
        """
        with outages_mapped(self.engine.dialect.name), self._sessions.begin() as session:
            if write and self.engine.dialect.name == "sqlite":
                session.execute(text("BEGIN IMMEDIATE"))
            yield session

    def migrate(self) -> None:
        """Bring the schema to the newest revision; safe when several processes start at once.

        A schema already at the newest revision is told by one query, without Alembic: every
        command opens the registry, and importing Alembic alone takes longer than most of them.
        """
        from sqlalchemy.exc import DatabaseError

        try:
            with self.engine.begin() as connection:
                if _at_head(connection):
                    return
                if connection.dialect.name == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID}
                    )
                _upgrade(connection, self.url)
        except OperationalError as exc:
            if self.engine.dialect.name == "sqlite":
                raise DatabaseUnavailable(
                    f"cannot use the registry database {self.engine.url.database}: {exc.orig}; "
                    "check that it and its folder are writable and no other program holds it "
                    "locked (BERTH_HOME or BERTH_DATABASE_URL chooses where it is)"
                ) from exc
            raise DatabaseUnavailable(
                f"cannot reach the registry database at {_safe(self.url)}: {exc.orig}; "
                "check BERTH_DATABASE_URL and that the server is running"
            ) from exc
        except DatabaseError as exc:
            raise InvalidInput(_unusable(self.engine.url, exc)) from exc

    def dispose(self) -> None:
        self.engine.dispose()


# SQLite's primary result codes that waiting or the operator can clear: the write lock held
# past the busy timeout, and a file that cannot be opened, read or written. Its other
# OperationalErrors ("no such table", a syntax error) are bugs.
_SQLITE_OUTAGES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
    }
)


@contextmanager
def outages_mapped(backend: str) -> Iterator[None]:
    """Errors of a `backend` database (SQLAlchemy's name) that mean "cannot be used now" raise
    `DatabaseUnavailable` instead.

    Waiting may clear those, so every edge answers them as it answers NotReady: 503 with
    Retry-After, one CLI line. Only outages are mapped: a refused, dropped or timed-out
    connection, an exhausted pool, SQLite's lock and file failures; a constraint violation, a
    bad statement or a missing table pass through unchanged. The message names no host (API
    clients read it); the driver's error stays chained as its cause.
    """
    try:
        yield
    except PoolTimeoutError as exc:
        raise DatabaseUnavailable(
            "every connection to the registry database is in use; retry in a few seconds"
        ) from exc
    except DBAPIError as exc:
        if not is_outage(backend, exc):
            raise
        what = "is locked or its file cannot be used" if backend == "sqlite" else "is unreachable"
        raise DatabaseUnavailable(
            f"the registry database {what}; retry in a few seconds (if it lasts, check the "
            "database and BERTH_DATABASE_URL)"
        ) from exc


def is_outage(backend: str, exc: DBAPIError) -> bool:
    """Whether `exc`, raised by a `backend` database, means it cannot be used now."""
    if exc.connection_invalidated:  # the dialect recognised a lost connection
        return True
    if backend == "sqlite":
        # sqlite3's InterfaceError is API misuse (a parameter of an unsupported type).
        code = getattr(exc.orig, "sqlite_errorcode", None)
        return (
            isinstance(exc, OperationalError)
            and code is not None
            and code & 0xFF in _SQLITE_OUTAGES
        )
    # Server databases' drivers raise these for connection failures and for conditions the
    # server reports as transient (shutdown, cancelled statement, lock or serialization failure).
    return isinstance(exc, OperationalError | InterfaceError)


def _upgrade(connection: Connection, url: str) -> None:
    from alembic import command
    from alembic.config import Config
    from alembic.util.exc import CommandError

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    try:
        command.upgrade(config, "head")
    except CommandError as exc:
        # Typically a database migrated by a newer Berth: its revision is unknown here.
        raise InvalidInput(
            f"the registry database at {_safe(url)} has a schema this Berth version "
            f"does not know ({exc}); upgrade Berth, or point BERTH_DATABASE_URL at another "
            "database"
        ) from exc


def _at_head(connection: Connection) -> bool:
    """Whether the schema is at the newest revision (False when unsure: Alembic then decides)."""
    head = head_revision()
    if head is None or not inspect(connection).has_table("alembic_version"):
        return False
    current = connection.scalars(text("SELECT version_num FROM alembic_version")).all()
    return current == [head]


@functools.cache
def head_revision() -> str | None:
    """The newest migration's revision, read from the migration files without Alembic.

    None when the files are not one plain chain of `revision = "..."` lines (then Alembic runs
    and reads them itself).
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        if path.name == "__init__.py":
            continue
        found = dict(_REVISION_LINE.findall(path.read_text("utf-8")))
        if "revision" not in found or "down_revision" not in found:
            return None
        revisions.add(found["revision"])
        if found["down_revision"]:
            parents.add(found["down_revision"])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


_URL_FORMS = "use sqlite:///path.db or postgresql+psycopg://user@host/db"


def _create_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InvalidInput(
            f"BERTH_DATABASE_URL '{url}' is not a database URL; {_URL_FORMS}"
        ) from exc
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _make_folder(Path(parsed.database).parent)
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    from sqlalchemy.exc import NoSuchModuleError

    try:
        engine = create_engine(url, **kwargs)
    except NoSuchModuleError as exc:
        raise InvalidInput(
            f"BERTH_DATABASE_URL '{_safe(url)}' names a database SQLAlchemy does not know "
            f"('{parsed.drivername}'); {_URL_FORMS}"
        ) from exc
    except ImportError as exc:
        raise InvalidInput(
            f"BERTH_DATABASE_URL '{_safe(url)}' needs the Python package '{exc.name}', which is "
            f"not installed; install it, or {_URL_FORMS}"
        ) from exc
    except ArgumentError as exc:
        raise InvalidInput(f"BERTH_DATABASE_URL '{_safe(url)}' is not usable: {exc}") from exc
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way (BERTH_HOME pointing at a file), no permission
        raise InvalidInput(
            f"cannot create the folder {folder} for the registry database ({exc.strerror}); "
            "point BERTH_HOME (or BERTH_DATABASE_URL) at a folder you can write"
        ) from exc


def _unusable(url: URL, exc: DatabaseError) -> str:
    """The one line for a database that answers, but not as a registry database can."""
    if url.get_backend_name() == "sqlite":
        return (
            f"the registry database {url.database} is damaged or not a SQLite database "
            f"({exc.orig}); restore it from a backup, or move it aside to start an empty registry "
            "(BERTH_HOME or BERTH_DATABASE_URL chooses where it is)"
        )
    return (
        f"the registry database at {url.render_as_string(hide_password=True)} refused the "
        f"schema update ({exc.orig}); check that its user may create tables, or point "
        "BERTH_DATABASE_URL at another database"
    )


def _safe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
