"""`berth jobs ...`: the recorded batch jobs: what ran, how far it got, and stopping one.

Jobs are started by `berth batch run`, a schedule or `POST /api/v1/jobs`; this group only reads
and cancels their records. `find_jobs` and `cancel_job` are shared with the admin API
(`berth/api/jobs.py`), so both edges list and cancel the same way.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Column, Table

from berth.cli.context import console, registry, settings
from berth.jobs import states as r
from berth.jobs.states import LOST, MAX_LIMIT, STATES

# The records and SQL helpers (SQLAlchemy) are imported by the commands that read them.
if TYPE_CHECKING:
    from berth.jobs.records import JobInfo, JobService

app = typer.Typer(
    help="Recorded batch jobs: list them, show one's progress, cancel one.", no_args_is_help=True
)


def rerun_command(args: Iterable[str]) -> str:
    """The `berth batch run` command line that runs (and so resumes) the job."""
    return shlex.join(["berth", "batch", "run", *args])


# commands ------------------------------------------------------------------------------------


def _service() -> JobService:
    from berth.jobs.records import JobService

    return JobService(registry().db)


@app.command("list")
def list_jobs(
    status: str | None = typer.Option(
        None, "--status", help=f"Only jobs in this state: {', '.join(STATES)}."
    ),
    limit: int = typer.Option(50, "--limit", min=1, max=MAX_LIMIT, help="At most this many."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List batch jobs, newest first, with their counts and progress.

    A job shown `lost` is marked running but stopped reporting (it was killed); running the
    same `berth batch run` command again resumes its work.

    Example: berth jobs list --status running
    """
    from berth.jobs.records import find_jobs
    from berth.jobs.sql import shown

    found = find_jobs(_service(), status, limit)
    if as_json:
        typer.echo(json.dumps([job.to_dict() for job in found], indent=2))
        return
    if not found:
        console.print(
            "No jobs recorded" + (f" with status {status}" if status else "")
            + "; start one with `berth batch run REF --source SRC --sink DST`"
        )  # fmt: skip
        return
    table = Table("model → version", "source → sink", "scored/skipped/rejected", "rows/s",
                  "progress", "started", "duration")  # fmt: skip
    # On a narrow terminal, id and status stay whole; the other columns wrap.
    table.columns[:0] = [Column("id", no_wrap=True), Column("status", no_wrap=True)]
    for job in found:
        table.add_row(
            str(job.id),
            job.state,
            escape(_model(job)),
            escape(f"{shown(job.source)} → {shown(job.sink)}"),
            f"{job.counts.scored:,}/{job.counts.skipped:,}/{job.counts.rejected:,}",
            f"{job.counts.rows_per_second:,.0f}",
            _percent(job.progress),
            _started(job),
            _duration(job),
        )
    console.print(table)


@app.command("show")
def show(
    job_id: int = typer.Argument(..., metavar="ID", help="The job's id (see `berth jobs list`)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show one job: its counts, progress and ETA, log, and the command that runs it again.

    Running that command again resumes the job where it stopped if it was interrupted.

    Example: berth jobs show 12
    """
    from berth.jobs.config import JobsConfig
    from berth.jobs.launch import job_log
    from berth.jobs.sql import shown

    job = _service().get(job_id)
    log = job_log(JobsConfig.from_settings(settings()), job.id)
    if as_json:
        document = {
            **job.to_dict(),
            "job_key": job.job_key,
            "log": str(log) if log.exists() else None,
            "command": rerun_command(job.args),
        }
        typer.echo(json.dumps(document, indent=2))
        return
    console.print(f"[bold]job {job.id}[/]  {job.state}", highlight=False)
    lines = _fields(job)
    if job.message:
        lines.append(("message", job.message))
    if log.exists():
        lines.append(("log", str(log)))
    for label, value in lines:
        _say(f"  {label:<15} {value}")
    _say(_advice(job))
    masked = [shown(arg) for arg in job.args]
    _say(f"  {rerun_command(masked)}")
    if masked != job.args:
        console.print("  (password hidden; `berth jobs show ID --json` has the full command)")


@app.command("cancel")
def cancel(
    job_id: int = typer.Argument(..., metavar="ID", help="The job's id (see `berth jobs list`)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Stop a job: a running one after its current chunk, a queued one at once.

    What the job committed stays committed; running the same `berth batch run` command again
    resumes where it stopped (`berth jobs show ID` prints it).

    Example: berth jobs cancel 12
    """
    from berth.jobs.records import cancel_job
    from berth.jobs.sql import shown

    job = cancel_job(registry().db, job_id)
    if as_json:
        typer.echo(json.dumps(job.to_dict(), indent=2))
        return
    if job.status == r.CANCELLED:
        said = f"Cancelled job {job.id}; it had not started."
    elif job.lost:
        said = (
            f"Job {job.id} stopped reporting at {_time(job.heartbeat_at)} (killed?): no process "
            "is running it to stop."
        )
    else:
        said = (
            f"Asked job {job.id} to stop after its current chunk; `berth jobs show {job.id}` "
            "says when it has."
        )
    _say(said)
    again = "starts it" if job.status == r.CANCELLED else "resumes it"
    _say(f"Running the same command again {again}: " + rerun_command(map(shown, job.args)))


# formatting ----------------------------------------------------------------------------------


def _say(text: str) -> None:
    """One line of recorded text: paths, queries and messages are printed as they are, never
    read as rich markup, and long ones wrap rather than being cut."""
    console.print(text, highlight=False, soft_wrap=True, markup=False)


def _fields(job: JobInfo) -> list[tuple[str, str]]:
    from berth.jobs.sql import shown

    counts = job.counts
    rows_total = "unknown" if job.rows_total is None else f"{job.rows_total:,}"
    eta = "-" if job.eta_seconds is None or job.lost else _span(job.eta_seconds)
    return [
        ("model", _model(job)),
        ("source", shown(job.source)),
        ("sink", shown(job.sink)),
        ("origin", job.origin),
        ("rows", f"{rows_total} in the source"),
        ("scored", f"{counts.scored:,}"),
        ("skipped", f"{counts.skipped:,} (already scored)"),
        ("rejected", f"{counts.rejected:,} (to the errors sink)"),
        ("speed", f"{counts.rows_per_second:,.1f} rows/s"),
        ("progress", f"{_percent(job.progress)}, ETA {eta}"),
        ("resumed at row", "-" if job.resumed_at_row is None else f"{job.resumed_at_row:,}"),
        ("cancel asked", "yes" if job.cancel_requested else "no"),
        ("process", f"{job.host or '-'} pid {job.pid if job.pid is not None else '-'}"),
        ("created", _time(job.created_at)),
        ("started", _time(job.started_at)),
        ("heartbeat", _time(job.heartbeat_at)),
        ("finished", _time(job.finished_at)),
        ("duration", _duration(job)),
        ("job key", job.job_key),
    ]


def _advice(job: JobInfo) -> str:
    if job.state == LOST:
        return (
            f"It stopped reporting at {_time(job.heartbeat_at)} (killed?). What it committed "
            "stays; this command resumes its work:"
        )
    if job.state in (r.QUEUED, r.RUNNING):
        return "Stop it with `berth jobs cancel ID`; it is started, or resumed, by:"
    if job.state == r.SUCCEEDED:
        return "Running it again writes no duplicate of what it scored:"
    return "Running it again resumes where it stopped:"


def _model(job: JobInfo) -> str:
    return f"{job.model} → {job.version}" if job.version else job.model


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}"


def _time(when: datetime | None) -> str:
    return "-" if when is None else f"{when:%Y-%m-%d %H:%M:%S}"


def _started(job: JobInfo) -> str:
    return "-" if job.started_at is None else f"{job.started_at:%Y-%m-%d %H:%M}"


def _duration(job: JobInfo) -> str:
    if job.started_at is None:
        return "-"
    end = job.finished_at or (job.heartbeat_at if job.lost else None) or job.now
    return _span((end - job.started_at).total_seconds())


def _span(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
