"""A backup as `berth backup create` arguments: how a backup schedule stores one.

A schedule stores the command's arguments (as a batch schedule stores `berth batch run`'s) and
the scheduler runs them as `berth backup create ARGS --job ID`. `parse_create_args` checks them
when the schedule is saved, as the command would read them, so a stored schedule always
describes a backup the command accepts. The command's flags are declared in `OPTIONS`; the CLI
declares the same flags with their help, and a test keeps the two equal: a new option of
`berth backup create` must be added here too, or schedules refuse it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import fsspec

from berth.errors import InvalidInput

OPTIONS: dict[str, bool] = {"--to": True, "--encryption-key-file": True}
"""Flags of `berth backup create` that describe the backup: True for those taking a value."""
REPEATED = {"--to"}
RUN_ONLY: dict[str, bool] = {"--job": True, "--schedule": True, "--json": False}
"""Flags of how one run reports or is recorded, not of the backup: accepted and left out."""
SET_PER_RUN = ("--job", "--schedule")
"""Flags the scheduler (or a CronJob) gives each run itself; a schedule must not store them."""


@dataclass(frozen=True)
class BackupArgs:
    destinations: tuple[str, ...]
    encryption_key_file: str | None = None
    """Read on the host that runs the backup, when it runs (or BERTH_BACKUP_KEY there)."""

    def job_key(self) -> str:
        """Fingerprint of where the backup goes: runs with one key are runs of one backup."""
        encoded = json.dumps({"backup": list(self.destinations)}).encode()
        return hashlib.sha256(encoded).hexdigest()[:32]


def parse_create_args(args: Sequence[str]) -> BackupArgs:
    """Check stored `berth backup create` arguments as the command would read them."""
    destinations: list[str] = []
    key_file: str | None = None
    pending = list(args)
    while pending:
        arg = pending.pop(0)
        flag, has_value, text = arg.partition("=")
        if flag in RUN_ONLY:
            if RUN_ONLY[flag] and not has_value and pending:
                pending.pop(0)
            continue
        if flag not in OPTIONS:
            problem = (
                f"No such option: {flag}"
                if arg.startswith("-")
                else f"Got unexpected extra argument ({arg})"
            )
            raise _invalid(problem)
        if not has_value:
            if not pending:
                raise _invalid(f"Option '{flag}' requires an argument.")
            text = pending.pop(0)
        if flag == "--to":
            destinations.append(check_destination(text))
        elif not text.strip():
            raise _invalid(f"{flag} is empty; give the path of the backup key file")
        else:
            key_file = text
    if not destinations:
        raise _invalid("Missing option '--to'.")
    return BackupArgs(tuple(destinations), key_file)


def check_destination(url: str) -> str:
    """A destination that names a folder or a protocol fsspec knows (its package may still be
    missing here: the scheduler's host is what runs it, and says so then)."""
    if not url.strip():
        raise _invalid("--to is empty; give a folder or an fsspec URL, e.g. s3://bucket/berth")
    if "://" in url:
        protocol = url.split("://", 1)[0]
        if protocol not in fsspec.available_protocols():
            raise _invalid(
                f"--to {url}: '{protocol}://' is not a protocol fsspec knows; use a local "
                "folder, s3://, gs:// or az://"
            )
    return url


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(f"invalid backup arguments: {message}")
