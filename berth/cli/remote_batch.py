"""`berth batch run` in remote mode: the server runs the job, the command follows it.

The job is submitted with POST /api/v1/jobs (the same `berth batch run` arguments, checked as
the command checks them) and runs as a process on the server's host, so its files are that
host's files: relative paths are refused here rather than read from the server's working
directory. The command then follows the job (GET /api/v1/jobs/{id}) with the same progress bar,
prints the summary the run stored (the lines the local command prints) and exits as it would.
Ctrl-C asks the server to stop the job after its current chunk, as it stops a local run; a
second Ctrl-C leaves at once (the job still stops after its chunk).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import typer

from berth.cli.batch import stop_on_signals
from berth.cli.context import console, err_console
from berth.cli.remote import path as remote_path
from berth.errors import BerthError, Conflict, InvalidInput
from berth.jobs.states import FINISHED, LOST, QUEUED, RUNNING, SUCCEEDED

if TYPE_CHECKING:
    from berth.cli.remote import Remote
    from berth.jobs.progress import RichProgress
    from berth.jobs.spec import BatchSpec

POLL_SECONDS = 0.5
"""How often the job's record is read; its counts change about once a second."""
START_SECONDS = 120.0
"""How long a job may stay queued before the command gives up following it."""


def check_started(server: Remote, job_id: int, state: str, queued_since: float, what: str) -> None:
    """Give up following a job still queued after START_SECONDS: its process never attached."""
    if state == QUEUED and time.monotonic() - queued_since > START_SECONDS:
        raise BerthError(
            f"{what} {job_id} has not started on {server.url} after {START_SECONDS:.0f} s; "
            f"`berth jobs show {job_id}` names its log on the server's host"
        )


def run_remotely(server: Remote, spec: BatchSpec, *, quiet: bool, as_json: bool) -> None:
    """Submit `spec`, follow it to its end, print its summary; exit 1 unless it succeeded."""
    from berth.jobs.run_args import run_args

    _check_locations(server, spec)
    job = server.post(remote_path("jobs"), {"args": run_args(spec)})
    job_id = job["id"]
    err_console.print(
        f"Job {job_id} runs on {server.url}, with the files of its host; Ctrl-C stops it after "
        "its current chunk.",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    detail = _follow(server, job_id, None if quiet or as_json else _progress())
    summary: dict[str, Any] | None = detail["summary"]
    if detail["status"] == LOST:
        raise BerthError(
            f"job {job_id} stopped reporting on {server.url} (killed?); what it committed "
            "stays, and running the same command again resumes it"
        )
    if summary is None:
        raise BerthError(detail["message"] or f"job {job_id} {detail['status']}")
    if as_json:
        console.print_json(json.dumps(summary))
    else:
        from berth.jobs.summary import describe

        console.print(describe(summary), highlight=False, soft_wrap=True)
    if summary["status"] != SUCCEEDED:
        raise typer.Exit(1)


def _follow(server: Remote, job_id: int, progress: RichProgress | None) -> dict[str, Any]:
    """The job's detail once it is over (finished or lost), updating `progress` meanwhile."""
    queued_since = time.monotonic()
    asked_to_stop = started = False
    with stop_on_signals() as stop:
        try:
            while True:
                if stop.is_set() and not asked_to_stop:
                    asked_to_stop = True
                    with contextlib.suppress(
                        Conflict
                    ):  # it has just finished: its summary says how
                        server.post(remote_path("jobs", job_id, "cancel"), {})
                detail: dict[str, Any] = server.get(remote_path("jobs", job_id))
                state = detail["status"]
                # A bar for a run that scored (as the local command shows one): not for a job
                # refused before it read a row.
                ran = state == RUNNING or detail["summary"] is not None
                if progress is not None and ran:
                    if not started:
                        description = f"job {job_id} {detail['version'] or detail['model']}"
                        progress.start(description, detail["rows_total"], _done(detail))
                        started = True
                    progress.update(_done(detail))
                if state in FINISHED or state == LOST:
                    return detail
                check_started(server, job_id, state, queued_since, "job")
                stop.wait(POLL_SECONDS)
        finally:
            if started and progress is not None:
                progress.stop()


def _done(detail: dict[str, Any]) -> int:
    return int(detail["rows_scored"] + detail["rows_skipped"] + detail["rows_rejected"])


def _progress() -> RichProgress:
    from berth.jobs.progress import RichProgress

    return RichProgress(console)


def _check_locations(server: Remote, spec: BatchSpec) -> None:
    """Refuse relative file paths: the server's host would read them from its own working
    directory, which is not what anyone typing them on another machine means."""
    given = (("--source", spec.source), ("--sink", spec.sink), ("--errors", spec.errors))
    for flag, location in given:
        if location and "://" not in location and not PurePosixPath(location).is_absolute():
            raise InvalidInput(
                f"{flag} {location} is a relative path, but in remote mode the job runs on "
                f"the host of {server.url}: give an absolute path on that host, or a URL "
                "(s3://..., postgresql+psycopg://...)"
            )
