"""What kinds of job the registry records and schedules, and the command that runs each.

A job row and a schedule store the arguments of their kind's command: `berth batch run` for a
batch job, `berth backup create` for a backup. This module maps a kind to its command and turns
stored arguments into the fields of a job record, checked as the command checks them. It
imports nothing heavy at module level: `berth jobs` prints with it.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from berth.errors import InvalidInput

BATCH = "batch"
BACKUP = "backup"
KINDS = (BATCH, BACKUP)
COMMANDS: dict[str, tuple[str, ...]] = {
    BATCH: ("berth", "batch", "run"),
    BACKUP: ("berth", "backup", "create"),
}


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InvalidInput(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    return kind


def rerun_command(kind: str, args: Iterable[str]) -> str:
    """The command line that runs the job (again), e.g. `berth backup create --to /backups`."""
    return shlex.join([*COMMANDS.get(kind, COMMANDS[BATCH]), *args])


@dataclass(frozen=True)
class JobFields:
    """What a job record says about a run, from its kind and arguments."""

    kind: str
    job_key: str
    model: str
    """The model reference a batch job scores; empty for a backup."""
    source: str
    sink: str
    """Where results go: a batch job's sink, a backup's destinations (comma-separated)."""


def job_fields(kind: str, args: Sequence[str]) -> JobFields:
    """The record of a job of `kind` run with `args`; InvalidInput when the command would
    refuse them."""
    if check_kind(kind) == BACKUP:
        from berth.backup.arguments import parse_create_args

        backup = parse_create_args(args)
        return JobFields(BACKUP, backup.job_key(), "", "registry", ", ".join(backup.destinations))
    from berth.jobs.run_args import parse_run_args

    spec = parse_run_args(args)
    return JobFields(BATCH, spec.job_key(), spec.model, spec.source, spec.sink)


def set_per_run(kind: str) -> tuple[str, ...]:
    """Options the scheduler gives each run of `kind` itself; a schedule must not store them."""
    if kind == BACKUP:
        from berth.backup.arguments import SET_PER_RUN

        return SET_PER_RUN
    return ("--job",)
