"""`berth backup` in remote mode: the server's host backs up, lists, verifies and prunes.

Each command sends what it was given to the admin API (berth/api/backups.py) and prints the
document the server answers with the local command's own printing, so both modes print the
same. `create` submits the backup as a job (POST /api/v1/backups), follows it
(GET /api/v1/jobs/{id}) to its end and prints the report its run stored. Destinations and key
files are the server host's: a relative path is refused here, as it would be read from the
server's working directory.
"""

from __future__ import annotations

import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from berth.cli.context import err_console
from berth.cli.remote import LONG_SECONDS
from berth.cli.remote import path as remote_path
from berth.cli.remote_batch import POLL_SECONDS, check_started
from berth.errors import BerthError, InvalidInput
from berth.jobs.states import FINISHED, LOST

if TYPE_CHECKING:
    from berth.cli.remote import Remote

RESTORE_REFUSED = (
    "berth backup restore writes into a database and replaces a registry's state, so it is not "
    "done through a server: run `berth backup restore` on the host whose database it restores "
    "into (unset BERTH_SERVER, or `berth logout`)"
)


def create(server: Remote, to: list[str], key_file: Path | None) -> dict[str, Any]:
    """Back up on the server's host; the report of the run once it ended (its job's summary)."""
    body: dict[str, Any] = {"to": [on_host(server, url, "--to") for url in to]}
    if key_file is not None:
        body["encryption_key_file"] = on_host(server, str(key_file), "--encryption-key-file")
    job = server.post(remote_path("backups"), body)
    job_id = job["id"]
    _say(f"Backup job {job_id} runs on {server.url}, with the destinations of its host.")
    try:
        detail = _follow(server, job_id)
    except KeyboardInterrupt:
        _say(
            f"Stopped following; backup job {job_id} goes on at {server.url} "
            f"(`berth jobs show {job_id}` says how it ended)."
        )
        raise
    if detail["status"] == LOST:
        raise BerthError(
            f"backup job {job_id} stopped reporting on {server.url} (killed?); it wrote no "
            "manifest: run the backup again"
        )
    summary: dict[str, Any] | None = detail["summary"]
    if summary is None:
        raise BerthError(detail["message"] or f"backup job {job_id} {detail['status']}")
    return summary


def listed(server: Remote, url: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = server.get(
        remote_path("backups"), {"destination": on_host(server, url, "the destination")}
    )["backups"]
    return found


def verify(
    server: Remote,
    url: str,
    snapshot: str | None,
    *,
    deep: bool,
    drill: bool,
    key_file: Path | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "destination": on_host(server, url, "the destination"),
        "deep": deep,
        "drill": drill,
    }
    if snapshot is not None:
        body["snapshot"] = snapshot
    if key_file is not None:
        body["encryption_key_file"] = on_host(server, str(key_file), "--encryption-key-file")
    # A deep check or a drill reads every byte while the command waits.
    report: dict[str, Any] = server.post(
        remote_path("backups", "verify"), body, timeout=LONG_SECONDS
    )
    return report


def prune(server: Remote, body: dict[str, Any]) -> dict[str, Any]:
    body = {**body, "destination": on_host(server, body["destination"], "the destination")}
    report: dict[str, Any] = server.post(
        remote_path("backups", "prune"), body, timeout=LONG_SECONDS
    )
    return report


def _follow(server: Remote, job_id: int) -> dict[str, Any]:
    """The job's detail once it is over (finished or lost)."""
    queued_since = time.monotonic()
    while True:
        detail: dict[str, Any] = server.get(remote_path("jobs", job_id))
        state = detail["status"]
        if state in FINISHED or state == LOST:
            return detail
        check_started(server, job_id, state, queued_since, "backup job")
        time.sleep(POLL_SECONDS)


def on_host(server: Remote, location: str, flag: str) -> str:
    """Refuse a relative path: the server's host would read it from its own working
    directory, which is not what anyone typing it on another machine means."""
    if "://" not in location and not PurePosixPath(location).is_absolute():
        raise InvalidInput(
            f"{flag} {location} is a relative path, but in remote mode the backup runs on the "
            f"host of {server.url}: give an absolute path on that host, or a URL "
            "(s3://..., gs://..., az://...)"
        )
    return location


def _say(text: str) -> None:
    err_console.print(text, highlight=False, markup=False, soft_wrap=True)
