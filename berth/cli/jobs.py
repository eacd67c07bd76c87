"""`berth jobs ...`: the recorded jobs (batch runs and backups): what ran, how far it got, and
stopping one.

Jobs are started by `berth batch run`, `berth backup create`, a schedule or `POST /api/v1/jobs`;
this group only reads and cancels their records. `find_jobs`, `job_detail` and `cancel_job` are shared with the admin
API (`berth/api/jobs.py`), and every command prints from the job's JSON document (in remote
mode the API's answer), so both modes list, show and cancel alike.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import typer
from rich.markup import escape
from rich.table import Column, Table

from berth.cli.context import console, registry, remote, settings
from berth.cli.remote import path as remote_path
from berth.jobs import states as r
from berth.jobs.kinds import BACKUP, BATCH, rerun_command
from berth.jobs.states import LOST, MAX_LIMIT, STATES

app = typer.Typer(
    help="Recorded jobs (batch runs, backups): list them, show one's progress, cancel one.",
    no_args_is_help=True,
)

Job = dict[str, Any]
"""A job's document: `JobInfo.to_dict()` (with `job_detail`'s fields for `show`)."""

# commands ------------------------------------------------------------------------------------


@app.command("list")
def list_jobs(
    status: str | None = typer.Option(
        None, "--status", help=f"Only jobs in this state: {', '.join(STATES)}."
    ),
    limit: int = typer.Option(50, "--limit", min=1, max=MAX_LIMIT, help="At most this many."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List jobs (batch runs and backups), newest first, with their counts and progress.

    A job shown `lost` is marked running but stopped reporting (it was killed); running the
    same `berth batch run` command again resumes its work.

    Example: berth jobs list --status running
    """
    from berth.jobs.sql import shown

    server = remote()
    if server is not None:
        params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
        found: list[Job] = server.get(remote_path("jobs"), params)["jobs"]
    else:
        from berth.jobs.records import JobService, find_jobs

        found = [job.to_dict() for job in find_jobs(JobService(registry().db), status, limit)]
    if as_json:
        typer.echo(json.dumps(found, indent=2))
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
        batch = job.get("kind", BATCH) == BATCH
        table.add_row(
            str(job["id"]),
            job["status"],
            escape(_model(job) if batch else str(job["kind"])),
            escape(f"{shown(job['source'])} → {shown(job['sink'])}"),
            f"{job['rows_scored']:,}/{job['rows_skipped']:,}/{job['rows_rejected']:,}"
            if batch
            else "-",
            f"{job['rows_per_second']:,.0f}" if batch else "-",
            _percent(job["progress"]),
            _time(job["started_at"], "%Y-%m-%d %H:%M"),
            _span(job["duration_seconds"]),
        )
    console.print(table)


@app.command("show")
def show(
    job_id: int = typer.Argument(..., metavar="ID", help="The job's id (see `berth jobs list`)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show one job: its counts, progress and ETA, log, and the command that runs it again.

    Running that command again resumes the job where it stopped if it was interrupted. In
    remote mode the log is a file on the server's host.

    Example: berth jobs show 12
    """
    from berth.jobs.sql import shown

    server = remote()
    if server is not None:
        job: Job = server.get(remote_path("jobs", job_id))
    else:
        from berth.jobs.config import JobsConfig
        from berth.jobs.launch import job_detail
        from berth.jobs.records import JobService

        found = JobService(registry().db).get(job_id)
        job = job_detail(JobsConfig.from_settings(settings()), found)
    if as_json:
        typer.echo(json.dumps(job, indent=2))
        return
    kind = job.get("kind", BATCH)
    console.print(f"[bold]job {job['id']}[/]  {job['status']}", highlight=False)
    lines = _fields(job) if kind == BATCH else _backup_fields(job)
    if job["message"]:
        lines.append(("message", job["message"]))
    if job["log"] is not None:
        lines.append(("log", job["log"]))
    for label, value in lines:
        _say(f"  {label:<15} {value}")
    _say(_advice(job))
    masked = [shown(arg) for arg in job["args"]]
    _say(f"  {rerun_command(kind, masked)}")
    if masked != job["args"]:
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
    from berth.jobs.sql import shown

    server = remote()
    if server is not None:
        job: Job = server.post(remote_path("jobs", job_id, "cancel"), {})
    else:
        from berth.jobs.records import cancel_job

        job = cancel_job(registry().db, job_id).to_dict()
    if as_json:
        typer.echo(json.dumps(job, indent=2))
        return
    if job["status"] == r.CANCELLED:
        said = f"Cancelled job {job['id']}; it had not started."
    elif job["status"] == LOST:
        said = (
            f"Job {job['id']} stopped reporting at {_time(job['heartbeat_at'])} (killed?): no "
            "process is running it to stop."
        )
    else:
        said = (
            f"Asked job {job['id']} to stop after its current chunk; `berth jobs show "
            f"{job['id']}` says when it has."
        )
    _say(said)
    kind = job.get("kind", BATCH)
    again = "starts it" if job["status"] == r.CANCELLED or kind != BATCH else "resumes it"
    command = rerun_command(kind, map(shown, job["args"]))
    _say(f"Running the same command again {again}: " + command)


# formatting ----------------------------------------------------------------------------------


def _say(text: str) -> None:
    """One line of recorded text: paths, queries and messages are printed as they are, never
    read as rich markup, and long ones wrap rather than being cut."""
    console.print(text, highlight=False, soft_wrap=True, markup=False)


def _fields(job: Job) -> list[tuple[str, str]]:
    from berth.jobs.sql import shown

    rows_total = "unknown" if job["rows_total"] is None else f"{job['rows_total']:,}"
    eta = job["eta_seconds"]
    eta_text = "-" if eta is None or job["status"] == LOST else _span(eta)
    resumed = job["resumed_at_row"]
    return [
        ("model", _model(job)),
        ("source", shown(job["source"])),
        ("sink", shown(job["sink"])),
        ("origin", job["origin"]),
        ("rows", f"{rows_total} in the source"),
        ("scored", f"{job['rows_scored']:,}"),
        ("skipped", f"{job['rows_skipped']:,} (already scored)"),
        ("rejected", f"{job['rows_rejected']:,} (to the errors sink)"),
        ("speed", f"{job['rows_per_second']:,.1f} rows/s"),
        ("progress", f"{_percent(job['progress'])}, ETA {eta_text}"),
        ("resumed at row", "-" if resumed is None else f"{resumed:,}"),
        ("cancel asked", "yes" if job["cancel_requested"] else "no"),
        *_lifecycle(job),
        ("job key", job["job_key"]),
    ]


def _lifecycle(job: Job) -> list[tuple[str, str]]:
    """Where the job's process ran and when it went through its states, whatever its kind."""
    pid = job["pid"]
    return [
        ("process", f"{job['host'] or '-'} pid {pid if pid is not None else '-'}"),
        ("created", _time(job["created_at"])),
        ("started", _time(job["started_at"])),
        ("heartbeat", _time(job["heartbeat_at"])),
        ("finished", _time(job["finished_at"])),
        ("duration", _span(job["duration_seconds"])),
    ]


def _backup_fields(job: Job) -> list[tuple[str, str]]:
    """A backup's lines: where it went and how each destination fared (from its report)."""
    from berth.jobs.sql import shown

    summary = job.get("summary") or {}
    lines = [("kind", "backup"), ("origin", job["origin"])]
    if summary:
        lines.append(
            ("snapshot", f"{summary['snapshot']} (schema {summary['schema_revision']}), "
             f"{summary['artifacts']} artifacts ({summary['artifact_bytes']:,} bytes)")
        )  # fmt: skip
        for destination in summary["destinations"]:
            state = (
                f"complete, {destination['bytes_copied']:,} bytes copied"
                if destination["complete"]
                else f"failed: {destination['error']}"
            )
            lines.append(("destination", f"{shown(destination['url'])}: {state}"))
    else:
        lines.append(("destinations", shown(job["sink"])))
    return [*lines, *_lifecycle(job)]


def _advice(job: Job) -> str:
    state = job["status"]
    if job.get("kind", BATCH) == BACKUP:
        if state in (r.QUEUED, r.RUNNING) or state == LOST:
            return "A killed backup writes no manifest; earlier backups stay intact. Run by:"
        return "Running it again takes a new snapshot, copying only what changed:"
    if state == LOST:
        return (
            f"It stopped reporting at {_time(job['heartbeat_at'])} (killed?). What it committed "
            "stays; this command resumes its work:"
        )
    if state in (r.QUEUED, r.RUNNING):
        return "Stop it with `berth jobs cancel ID`; it is started, or resumed, by:"
    if state == r.SUCCEEDED:
        return "Running it again writes no duplicate of what it scored:"
    return "Running it again resumes where it stopped:"


def _model(job: Job) -> str:
    return f"{job['model']} → {job['version']}" if job["version"] else str(job["model"])


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}"


def _time(when: str | None, shape: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A time of the document (ISO 8601) as the listing shows it."""
    return "-" if when is None else f"{datetime.fromisoformat(when):{shape}}"


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
