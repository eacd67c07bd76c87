"""`berth backup schedule`, `schedules` and `unschedule`: backups on a cron schedule.

A backup schedule is a schedule of kind `backup` among the batch ones (berth.jobs.schedules):
the same `berth scheduler` and lease run it, as `berth backup create ARGS --job ID`, with the
same missed-tick and overlap rules; `berth batch schedules`, `runs`, `enable` and `disable` show
and switch it too. Remote mode goes through the same admin API routes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from berth.cli.context import console, registry, remote
from berth.cli.remote import path as remote_path
from berth.cli.schedules import Document, print_stored, show_schedules
from berth.errors import InvalidInput

if TYPE_CHECKING:
    from berth.cli.remote import Remote

# `berth backup schedule` passes options it does not declare to `berth backup create`.
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def register(backup_app: typer.Typer) -> None:
    """Add the schedule commands to `berth backup` (a second call adds nothing)."""
    present = {command.name for command in backup_app.registered_commands}
    commands: list[tuple[str, Callable[..., None], dict[str, Any] | None]] = [
        ("schedule", schedule, _PASS_THROUGH),
        ("schedules", list_schedules, None),
        ("unschedule", unschedule, None),
    ]
    for name, function, context_settings in commands:
        if name not in present:
            backup_app.command(name, context_settings=context_settings)(function)


def schedule(
    context: typer.Context,
    name: str = typer.Argument(..., help="The schedule's name, e.g. nightly-backup."),
    cron: str = typer.Option(
        ..., "--cron", help="When: five cron fields or @daily etc., e.g. '0 3 * * *'."
    ),
    to: list[str] = typer.Option(
        ..., "--to", help="A destination: a folder or fsspec URL (repeat for several)."
    ),
    timezone: str = typer.Option(
        "UTC", "--timezone", help="IANA time zone the cron fields are read in, e.g. Europe/Paris."
    ),
    disabled: bool = typer.Option(False, "--disabled", help="Store it paused."),
) -> None:
    """Run `berth backup create --to URL ...` on a cron schedule: create NAME, or replace it.

    Other options are passed to `berth backup create`, checked now as it would check them.
    `berth scheduler` runs the ticks (or `berth build` turns the schedule into a Kubernetes
    CronJob). In remote mode, the destinations are opened on the scheduler's host.

    Example: berth backup schedule nightly --cron "0 3 * * *" --timezone Europe/Paris --to /mnt/backups
    """
    from berth.cli.flags import from_flags
    from berth.jobs.requests import ScheduleRequest

    server = remote()
    args = _with_paths_fixed([*(arg for url in to for arg in ("--to", url)), *context.args], server)
    asked = from_flags(
        ScheduleRequest,
        {"cron": "--cron", "timezone": "--timezone", "args": "--to", "enabled": "--disabled"},
        {"cron": cron, "timezone": timezone, "args": args, "enabled": not disabled,
         "kind": "backup"},
    )  # fmt: skip
    if server is not None:
        document = server.put(remote_path("schedules", name), asked.model_dump())
    else:
        from berth.jobs.schedules import ScheduleService, set_document
        from berth.store.audit import cli_actor

        info, outcome = ScheduleService(registry().db).put(
            name,
            cron=asked.cron,
            timezone=asked.timezone,
            args=asked.args,
            enabled=asked.enabled,
            kind=asked.kind,
            actor=cli_actor(),
        )
        document = set_document(info, outcome, _now())
    print_stored(document)


_PATH_FLAGS = ("--to", "--encryption-key-file")


def _with_paths_fixed(args: list[str], server: Remote | None) -> list[str]:
    """The scheduler runs the backup from its own working directory: a relative folder or key
    file is stored as the absolute path it names here, and refused in remote mode (where it
    would name a path on the server's host that nobody meant)."""

    def fixed(flag: str, location: str) -> str:
        if "://" in location:
            return location
        if server is not None:
            from berth.cli.remote_backup import on_host

            return on_host(server, location, flag)
        return str(Path(location).expanduser().resolve())

    out: list[str] = []
    pending = list(args)
    while pending:
        arg = pending.pop(0)
        flag, has_value, value = arg.partition("=")
        if flag in _PATH_FLAGS and has_value:
            out.append(f"{flag}={fixed(flag, value)}")
        elif arg in _PATH_FLAGS and pending:
            out += [arg, fixed(arg, pending.pop(0))]
        else:
            out.append(arg)
    return out


def list_schedules(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """The backup schedules: when each runs next, its last tick and how that went.

    Example: berth backup schedules
    """
    show_schedules("backup", as_json)


def unschedule(name: str = typer.Argument(..., help="The backup schedule to remove.")) -> None:
    """Remove a backup schedule and its run history; its backups and jobs stay.

    Example: berth backup unschedule nightly
    """
    server = remote()
    if server is not None:
        found: Document = server.get(remote_path("schedules", name))
        _check_backup(found)
        server.delete(remote_path("schedules", name))
    else:
        from berth.jobs.schedules import ScheduleService
        from berth.store.audit import cli_actor

        service = ScheduleService(registry().db)
        _check_backup({"name": name, "kind": service.get(name).kind})
        service.delete(name, actor=cli_actor())
    console.print(f"Removed backup schedule [bold]{name}[/].", highlight=False, soft_wrap=True)


def _check_backup(found: Document) -> None:
    kind = found.get("kind", "batch")
    if kind != "backup":
        raise InvalidInput(
            f"schedule '{found['name']}' runs a {kind} job, not a backup; remove it with "
            f"`berth batch unschedule {found['name']}`"
        )


def _now() -> datetime:
    return datetime.now(UTC)
