"""`berth batch schedule ...` and `berth scheduler`: batch jobs on a cron schedule.

`register(batch.app)` adds schedule, schedules, unschedule, runs, enable and disable to
`berth batch`; `scheduler` is the top-level `berth scheduler`. The commands call ScheduleService and Scheduler
(berth.jobs), as the admin API does (berth/api/schedules.py), and print from the schedule's JSON
document: in remote mode, the API's answer. `berth scheduler` is a daemon of its own and always
runs locally, beside the registry.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import typer
from rich.table import Table
from rich.text import Text

from berth.cli.context import console, registry, remote, settings
from berth.cli.remote import path as remote_path
from berth.durations import parse_duration
from berth.errors import InvalidInput

# The schedules, the scheduler and its lease (SQLAlchemy) are imported by the commands.
if TYPE_CHECKING:
    from berth.jobs.scheduler import Pass
    from berth.jobs.schedules import ScheduleService
    from berth.store.lease import Lease

Document = dict[str, Any]
"""A schedule or a run as the API gives it (`ScheduleInfo.to_dict`, `RunInfo.to_dict`)."""
_LISTED = 5
"""Missed ticks `berth scheduler --once` names; `berth batch runs` has them all."""

# `berth batch schedule` passes everything it does not know itself to `berth batch run`.
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def register(batch_app: typer.Typer) -> None:
    """Add the schedule commands to `berth batch` (a second call adds nothing)."""
    present = {command.name for command in batch_app.registered_commands}
    commands: list[tuple[str, Callable[..., None], dict[str, Any] | None]] = [
        ("schedule", schedule, _PASS_THROUGH),
        ("schedules", list_schedules, None),
        ("unschedule", unschedule, None),
        ("runs", runs, None),
        ("enable", enable, None),
        ("disable", disable, None),
    ]
    for name, function, context_settings in commands:
        if name not in present:
            batch_app.command(name, context_settings=context_settings)(function)


def _service() -> ScheduleService:
    from berth.jobs.schedules import ScheduleService

    return ScheduleService(registry().db)


def _now() -> datetime:
    return datetime.now(UTC)


# berth batch ... -----------------------------------------------------------------------------


def schedule(
    context: typer.Context,
    name: str = typer.Argument(..., help="The schedule's name, e.g. nightly-churn."),
    cron: str = typer.Option(
        ..., "--cron", help="When: five cron fields or @daily etc., e.g. '0 2 * * *'."
    ),
    timezone: str = typer.Option(
        "UTC", "--timezone", help="IANA time zone the cron fields are read in, e.g. Europe/Berlin."
    ),
    disabled: bool = typer.Option(False, "--disabled", help="Store it paused."),
) -> None:
    """Run `berth batch run ARGS` on a cron schedule: create NAME, or replace it.

    The other arguments are the `berth batch run` command line, checked now as it would be.
    In remote mode, files and SQL URLs in them are opened on the scheduler's host.

    Example: berth batch schedule nightly --cron "0 2 * * *" iris --source in.csv --sink out.parquet

    `berth scheduler` runs the ticks.
    """
    from berth.cli.flags import from_flags
    from berth.jobs.requests import ScheduleRequest

    asked = from_flags(
        ScheduleRequest,
        {"cron": "--cron", "timezone": "--timezone", "args": "ARGS", "enabled": "--disabled"},
        {"cron": cron, "timezone": timezone, "args": list(context.args), "enabled": not disabled},
    )
    server = remote()
    if server is not None:
        document = server.put(remote_path("schedules", name), asked.model_dump())
    else:
        from berth.jobs.schedules import set_document
        from berth.store.audit import cli_actor

        info, outcome = _service().put(
            name,
            cron=asked.cron,
            timezone=asked.timezone,
            args=asked.args,
            enabled=asked.enabled,
            actor=cli_actor(),
        )
        document = set_document(info, outcome, _now())
    print_stored(document)


def print_stored(document: Document) -> None:
    """What storing a schedule answered (`set_document`): the schedule, its command, its next
    runs."""
    from berth.jobs.kinds import rerun_command

    stored, outcome = document["schedule"], document["outcome"]
    zone = ZoneInfo(stored["timezone"])
    console.print(
        f"{outcome.capitalize()} schedule [bold]{stored['name']}[/]: {stored['cron']} "
        f"({stored['timezone']})",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"  runs: {rerun_command(stored.get('kind', 'batch'), stored['args'])}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    label = "next" if stored["enabled"] else "disabled; would run"
    upcoming = ", ".join(_when(moment, zone) for moment in document["upcoming"])
    console.print(f"  {label}: {upcoming}", highlight=False, soft_wrap=True)
    if not stored["enabled"]:
        console.print(
            f"  `berth batch enable {stored['name']}` starts it.", highlight=False, soft_wrap=True
        )


def list_schedules(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """The schedules (batch runs and backups): when each runs next, its last tick and how that
    went.

    Example: berth batch schedules --json
    """
    show_schedules(None, as_json)


def show_schedules(kind: str | None, as_json: bool) -> None:
    """The schedules of `kind` (every kind when None), as a table or JSON."""
    server = remote()
    if server is not None:
        found: list[Document] = server.get(remote_path("schedules"))["schedules"]
    else:
        now = _now()
        found = [info.to_dict(now) for info in _service().list()]
    if kind is not None:
        found = [info for info in found if info.get("kind", "batch") == kind]
    if as_json:
        console.print_json(json.dumps(found))
        return
    if not found:
        command = (
            "backup schedule NAME --cron ... --to URL"
            if kind == "backup"
            else ("batch schedule NAME --cron ... ARGS")
        )
        console.print(f"No schedules. Add one with `berth {command}`.")
        return
    table = Table("name", "kind", "cron", "timezone", "next run", "last tick", "last status")
    for info in found:
        zone = ZoneInfo(info["timezone"])
        table.add_row(
            info["name"],
            info.get("kind", "batch"),
            info["cron"],
            info["timezone"],
            _when(info["next_run"], zone) if info["next_run"] else "disabled",
            _when(info["last_tick"], zone) if info["last_tick"] else "-",
            Text(_outcome(info["last_run"]) if info["last_run"] else "-"),
        )
    console.print(table)


def unschedule(name: str = typer.Argument(..., help="The schedule to remove.")) -> None:
    """Remove a schedule and its run history; the jobs it started stay in `berth jobs list`.

    Example: berth batch unschedule nightly
    """
    server = remote()
    if server is not None:
        server.delete(remote_path("schedules", name))
    else:
        from berth.store.audit import cli_actor

        _service().delete(name, actor=cli_actor())
    console.print(f"Removed schedule [bold]{name}[/].", highlight=False, soft_wrap=True)


def runs(
    name: str = typer.Argument(..., help="The schedule."),
    limit: int = typer.Option(20, "--limit", help="How many ticks (1 to 1000), newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """A schedule's ticks, newest first: the job each started, or why it was missed.

    Example: berth batch runs nightly
    """
    server = remote()
    if server is not None:
        document = server.get(remote_path("schedules", name, "runs"), {"limit": limit})
        info: Document = document["schedule"]
        found: list[Document] = document["runs"]
    else:
        service = _service()
        now = _now()
        info = service.get(name).to_dict(now)
        found = [run.to_dict() for run in service.runs(name, limit=limit)]
    if as_json:
        console.print_json(json.dumps(found))
        return
    if not found:
        console.print(f"Schedule {name} has not had a tick yet.", highlight=False, soft_wrap=True)
        return
    zone = ZoneInfo(info["timezone"])
    table = Table("tick", "status", "job", "job status", "message")
    for run in found:
        table.add_row(
            _when(run["tick"], zone),
            run["status"],
            str(run["job_id"]) if run["job_id"] is not None else "-",
            run["job_status"] or "-",
            Text(run["message"] or ""),
        )
    console.print(table)


def enable(name: str = typer.Argument(..., help="The schedule to resume.")) -> None:
    """Resume a schedule; ticks from while it was disabled are not caught up."""
    info = _switch(name, True)
    console.print(
        f"Enabled schedule [bold]{name}[/]; next run "
        f"{_when(info['next_run'], ZoneInfo(info['timezone']))}.",
        highlight=False,
        soft_wrap=True,
    )


def disable(name: str = typer.Argument(..., help="The schedule to pause.")) -> None:
    """Pause a schedule: no runs until `berth batch enable NAME`; a running job goes on."""
    _switch(name, False)
    console.print(f"Disabled schedule [bold]{name}[/].", highlight=False, soft_wrap=True)


def _switch(name: str, enabled: bool) -> Document:
    """Enable or disable the schedule; its document after the change."""
    server = remote()
    if server is not None:
        action = "enable" if enabled else "disable"
        found: Document = server.post(remote_path("schedules", name, action), {})
        return found
    from berth.store.audit import cli_actor

    return _service().set_enabled(name, enabled, actor=cli_actor()).to_dict(_now())


def _outcome(run: Document) -> str:
    from berth.jobs.schedules import MISSED

    if run["status"] == MISSED:
        return f"missed: {run['message']}"
    if run["job_id"] is None:
        return str(run["status"])
    return f"job {run['job_id']} {run['job_status']}"


def _when(text: str, zone: ZoneInfo) -> str:
    """A time of a schedule's document (ISO 8601) as people read it, in the schedule's zone:
    `2030-01-02 02:00 CET`."""
    return f"{datetime.fromisoformat(text).astimezone(zone):%Y-%m-%d %H:%M %Z}"


# berth scheduler -----------------------------------------------------------------------------


def scheduler(
    once: bool = typer.Option(
        False, "--once", help="One pass, then exit (e.g. from cron or a Kubernetes CronJob)."
    ),
    interval: str = typer.Option("30s", "--interval", help="Time between passes, e.g. 30s, 1m."),
    grace: str = typer.Option(
        "1h", "--grace", help="Still run a tick found this late (after downtime); older: missed."
    ),
) -> None:
    """Start the batch jobs of due schedules, until SIGTERM or Ctrl-C.

    Run one or more: only the holder of the `batch-scheduler` database lease acts, and no tick
    ever starts two jobs. Jobs run as their own processes and outlive the scheduler.

    Example: berth scheduler --interval 30s --grace 1h
    """
    from berth.jobs.config import JobsConfig
    from berth.jobs.scheduler import LEASE_NAME, Scheduler, lease_ttl, process_launcher
    from berth.observability.logging import configure_logging
    from berth.store.lease import Lease, process_holder

    every, late = parse_duration(interval), parse_duration(grace)
    if every < timedelta(seconds=1):
        raise InvalidInput("--interval must be at least 1s, e.g. 30s")
    if not once and late < every:
        # A tick is found up to one interval after it falls due; a shorter grace misses it.
        raise InvalidInput(f"--grace ({grace}) must be at least --interval ({interval})")
    config = settings()
    log_format = config.log_format or ("console" if config.dev else "json")
    configure_logging(config.log_level, json=log_format == "json")
    db = registry().db
    lease = Lease(db, LEASE_NAME, process_holder(), ttl_seconds=lease_ttl(every))
    launcher = process_launcher(JobsConfig.from_settings(config))
    worker = Scheduler(db, launcher, lease=lease, grace=late)
    if once:
        try:
            result = worker.tick()
        finally:
            worker.close()
        _report(result, lease)
        return
    stop = threading.Event()
    with _stopped_by_signals(stop):
        worker.run(every, stop)


def _report(result: Pass, lease: Lease) -> None:
    from berth.jobs.scheduler import LEASE_NAME

    if not result.acted:
        holder = lease.current()
        who = holder.holder if holder else "another process"
        console.print(f"Another scheduler ({who}) holds the {LEASE_NAME} lease; did nothing.")
        return
    for started in result.started:
        console.print(
            f"Started job {started.job_id} for {started.schedule} "
            f"(tick {started.tick.isoformat()}).",
            highlight=False,
            soft_wrap=True,
        )
    if len(result.missed) > _LISTED:
        console.print(f"Recorded {len(result.missed)} missed ticks; `berth batch runs NAME`.")
    for missed in result.missed[-_LISTED:]:
        console.print(
            f"Missed {missed.schedule} (tick {missed.tick.isoformat()}): {missed.reason}.",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if not result.started and not result.missed:
        console.print("Nothing was due.")


@contextmanager
def _stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT end the loop after the current pass (the lease is released)."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
