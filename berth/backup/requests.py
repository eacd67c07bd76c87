"""What people ask of backups through the admin API: the bodies of `POST /api/v1/backups`,
`.../verify` and `.../prune`, declared once for the API, its document and the remote CLI.

Destinations and key files are on the server's host, which runs the backup: a local path must
be absolute (a relative one would be read from the server's working directory, which is not
what anyone typing it elsewhere means). A backup key is never sent: the server reads its own
BERTH_BACKUP_KEY, or the key file named here.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Any, ClassVar

from pydantic import Field

from berth.backup.arguments import check_destination, parse_create_args
from berth.backup.crypto import parse_key
from berth.backup.manifest import SNAPSHOT_ID
from berth.backup.prune import KeepRules
from berth.errors import InvalidInput
from berth.request_model import CheckedBy, RequestModel, Text

MAX_DESTINATIONS = 16
"""Far more places than one backup is copied to; a bound on what one request starts."""
MAX_KEEP = 100_000


def on_host(location: str, what: str, urls: bool = True) -> str:
    """`location` (a destination, or a key file: `urls` False) if the server's host can open
    it as meant: an absolute path, or a URL."""
    if urls and "://" in location:
        return location
    if not PurePosixPath(location).is_absolute():
        instead = "or a URL (s3://..., gs://..., az://...)" if urls else "where the key is kept"
        raise InvalidInput(
            f"{what} {location} is a relative path, but the server's host opens it: give an "
            f"absolute path on that host, {instead}"
        )
    return location


def _destination(url: str) -> str:
    return on_host(check_destination(url), "the backup destination")


def _key_file(path: str) -> str:
    if not path.strip():
        raise InvalidInput("encryption_key_file is empty; give the path of the backup key file")
    try:
        parse_key(path, "encryption_key_file")
    except InvalidInput:
        return on_host(path, "the backup key file", urls=False)
    # Not echoed back: a key sent here must not travel further, in a message or a log.
    raise InvalidInput(
        "encryption_key_file holds a backup key itself: never send the key, send the path of "
        "a file holding it on the server's host (or set BERTH_BACKUP_KEY there)"
    )


def _snapshot(snapshot: str) -> str:
    if not SNAPSHOT_ID.match(snapshot):
        raise InvalidInput(
            f"{snapshot!r} is not a backup id (e.g. 20250101T020000123Z-a1b2c3); list them with "
            "GET /api/v1/backups?destination=URL"
        )
    return snapshot


Destination = Annotated[
    Text,
    CheckedBy(
        _destination,
        {
            "minLength": 1,
            "description": "An absolute folder path on the server's host, or an fsspec URL.",
        },
    ),
]
KeyFile = Annotated[
    Text,
    CheckedBy(
        _key_file,
        {
            "description": "The backup key file, an absolute path on the server's host. "
            "Without it the server's BERTH_BACKUP_KEY is used, if set."
        },
    ),
]
Snapshot = Annotated[
    Text,
    CheckedBy(_snapshot, {"pattern": SNAPSHOT_ID.pattern, "description": "A backup's id."}),
]


class BackupRequest(RequestModel):
    """Back up the registry to every destination: `berth backup create --to URL ...` as a job
    on the server's host."""

    EXAMPLE: ClassVar[dict[str, Any]] = {"to": ["/srv/backups", "s3://backups/berth"]}

    to: list[Destination] = Field(
        min_length=1, max_length=MAX_DESTINATIONS, description="Where to: one or more."
    )
    encryption_key_file: KeyFile | None = None

    def args(self) -> list[str]:
        """The `berth backup create` arguments, checked as the command reads them."""
        args = [arg for url in self.to for arg in ("--to", url)]
        if self.encryption_key_file is not None:
            args += ["--encryption-key-file", self.encryption_key_file]
        parse_create_args(args)
        return args


class VerifyRequest(RequestModel):
    """Check a backup: `berth backup verify`, on the server's host."""

    EXAMPLE: ClassVar[dict[str, Any]] = {"destination": "/srv/backups", "deep": True}

    destination: Destination
    snapshot: Snapshot | None = Field(
        None, description="The backup to check (default: the latest)."
    )
    deep: bool = Field(
        False, description="Re-hash every byte, not only sizes (encrypted: needs the key)."
    )
    drill: bool = Field(
        False,
        description="Also restore it into a temporary registry on the server's host and "
        "predict with every aliased or routed version.",
    )
    encryption_key_file: KeyFile | None = None


class PruneRequest(RequestModel):
    """Remove old backups by keep rules, then the objects none needs: `berth backup prune`."""

    EXAMPLE: ClassVar[dict[str, Any]] = {
        "destination": "/srv/backups",
        "keep_last": 3,
        "keep_daily": 7,
        "keep_weekly": 4,
    }

    destination: Destination
    keep_last: int = Field(0, ge=0, le=MAX_KEEP, description="Keep the newest N backups.")
    keep_daily: int = Field(
        0, ge=0, le=MAX_KEEP, description="Keep the newest of each of the N latest days (UTC)."
    )
    keep_weekly: int = Field(
        0, ge=0, le=MAX_KEEP, description="Keep the newest of each of the N latest ISO weeks."
    )
    dry_run: bool = Field(False, description="Say what would go; remove nothing.")

    def rules(self) -> KeepRules:
        rules = KeepRules(self.keep_last, self.keep_daily, self.keep_weekly)
        rules.check()
        return rules
