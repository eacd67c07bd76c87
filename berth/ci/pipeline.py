"""A pipeline file read for the local runner: jobs in the order they run, each with its steps.

`github_plan` and `gitlab_plan` read the providers' files into these objects; `runner` runs
them. Only what the runner can do on this machine is kept: shell scripts, variables, the order
of jobs, the conditions of failure handling, approvals; the rest is a note shown in the log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from berth.errors import InvalidInput

Condition = Literal["success", "failure", "always", "never"]
"""When a step or job runs: all before it succeeded, something failed, either, or not at all."""


@dataclass(frozen=True)
class Step:
    name: str
    script: str | None
    """Bash; None for a step replaced by a stand-in."""
    standin: str | None = None
    """What replaces the step here, shown in the log."""
    env: Mapping[str, str] = field(default_factory=dict)
    condition: Condition = "success"
    timeout_seconds: float | None = None
    working_directory: str | None = None


@dataclass(frozen=True)
class Job:
    id: str
    title: str
    needs: tuple[str, ...]
    steps: tuple[Step, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    condition: Condition = "success"
    approval: str | None = None
    """What a person approves on the provider before the job starts; None: nobody."""
    allow_failure: bool = False
    one_shell: bool = False
    """GitLab: the steps (script lines) run in one shell, sharing its variables."""
    after: tuple[Step, ...] = ()
    """GitLab's after_script: a shell of its own, run whatever the job's outcome."""
    dotenv: tuple[str, ...] = ()
    """GitLab's dotenv reports: variables for the jobs after this one."""
    timeout_seconds: float | None = None
    notes: tuple[str, ...] = ()
    """What the provider does that the runner does not, e.g. the container image."""


@dataclass(frozen=True)
class Pipeline:
    provider: str
    """github or gitlab."""
    path: Path
    jobs: tuple[Job, ...]
    """In the order they run: every job after the jobs it needs."""
    env: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def in_order(jobs: Sequence[Job]) -> tuple[Job, ...]:
    """`jobs` with each after the ones it needs, otherwise in the file's order."""
    known = {job.id: job for job in jobs}
    for job in jobs:
        for need in job.needs:
            if need not in known:
                raise InvalidInput(f"job '{job.id}' needs '{need}', which the file does not define")
    ordered: list[Job] = []
    placed: set[str] = set()
    visiting: set[str] = set()

    def place(job: Job) -> None:
        if job.id in placed:
            return
        if job.id in visiting:
            raise InvalidInput(f"job '{job.id}' needs itself through its needs; break the cycle")
        visiting.add(job.id)
        for need in job.needs:
            place(known[need])
        visiting.discard(job.id)
        placed.add(job.id)
        ordered.append(job)

    for job in jobs:
        place(job)
    return tuple(ordered)


def condition_of(text: object, where: str) -> Condition:
    """A GitHub `if:` the runner understands: success(), failure(), always(), !cancelled()."""
    if text is None:
        return "success"
    expression = str(text).strip()
    if expression.startswith("${{") and expression.endswith("}}"):
        expression = expression[3:-2].strip()
    known: dict[str, Condition] = {
        "success()": "success",
        "failure()": "failure",
        "always()": "always",
        "!cancelled()": "always",
        "cancelled()": "never",
    }
    if expression not in known:
        raise InvalidInput(
            f"{where}: the local runner understands `if:` success(), failure(), always() and "
            f"!cancelled(), not {expression!r}"
        )
    return known[expression]
