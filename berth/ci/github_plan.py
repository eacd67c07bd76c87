"""A GitHub Actions workflow read for the local runner.

Understood: workflow, job and step `env`; `needs`; `if:` with success(), failure(), always(),
!cancelled(); `defaults.run` (shell bash, working-directory); `timeout-minutes`; `environment`
(its required reviewers are the approval the runner stands in for); `run:` steps and `uses:`
steps (replaced by stand-ins, see `standins`). Expressions: `${{ secrets.NAME }}` and
`${{ vars.NAME }}` read the variable NAME of this environment, `${{ env.NAME }}` the workflow's
and job's env, `${{ github.KEY }}` the run's context (sha, ref, repository, run_id, ...). Any
other expression is refused with the place it is in, rather than run wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from berth.ci.pipeline import Job, Pipeline, Step, condition_of, in_order
from berth.ci.standins import uses_standin
from berth.errors import InvalidInput

_EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
_UNDERSTOOD_JOB = {
    "name", "needs", "runs-on", "steps", "env", "if", "environment", "timeout-minutes",
    "defaults", "permissions", "concurrency",
}  # fmt: skip


class Expressions:
    """`${{ ... }}` as the runner can evaluate it."""

    def __init__(self, github: Mapping[str, str], environ: Mapping[str, str]) -> None:
        self.github = github
        self.environ = environ
        self.missing: set[str] = set()

    def substitute(self, text: str, env: Mapping[str, str], where: str) -> str:
        return _EXPRESSION.sub(lambda m: self._value(m[1], env, where), text)

    def _value(self, expression: str, env: Mapping[str, str], where: str) -> str:
        kind, _, name = expression.partition(".")
        if kind in ("secrets", "vars") and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            if name not in self.environ:
                self.missing.add(name)  # empty, as GitHub makes a secret nobody set
            return self.environ.get(name, "")
        if kind == "env" and name:
            return env.get(name, "")
        if kind == "github" and name in self.github:
            return self.github[name]
        raise InvalidInput(
            f"{where}: the local runner cannot evaluate ${{{{ {expression} }}}}; it knows "
            f"secrets.*, vars.*, env.* and github.{{{', '.join(sorted(self.github))}}}"
        )


def read(
    path: Path, document: Any, github: Mapping[str, str], environ: Mapping[str, str]
) -> Pipeline:
    """The workflow `document` (parsed YAML) of the file at `path`."""
    if not isinstance(document, dict) or not isinstance(document.get("jobs"), dict):
        raise InvalidInput(f"{path} is not a GitHub workflow: it has no `jobs:` mapping")
    expressions = Expressions(github, environ)
    env = _env(document.get("env"), {}, expressions, "env")
    defaults = _run_defaults(document.get("defaults"), "defaults")
    jobs = [
        _job(str(job_id), body, env, defaults, expressions)
        for job_id, body in document["jobs"].items()
    ]
    notes = tuple(
        f"secret or variable {name} is not set in this environment: empty, as on GitHub"
        for name in sorted(expressions.missing)
    )
    return Pipeline("github", path, in_order(jobs), env, notes)


def _job(
    job_id: str,
    body: Any,
    workflow_env: Mapping[str, str],
    defaults: dict[str, str],
    expressions: Expressions,
) -> Job:
    where = f"job '{job_id}'"
    if not isinstance(body, dict) or not isinstance(body.get("steps"), list):
        raise InvalidInput(f"{where} has no `steps:` list (reusable workflows are not run here)")
    env = _env(body.get("env"), workflow_env, expressions, where)
    job_defaults = {**defaults, **_run_defaults(body.get("defaults"), where)}
    steps = tuple(
        _step(step, index, {**workflow_env, **env}, job_defaults, expressions, where)
        for index, step in enumerate(body["steps"], 1)
    )
    needs = body.get("needs") or []
    environment = body.get("environment")
    if isinstance(environment, dict):
        environment = environment.get("name")
    notes = [f"ignored here: {key}" for key in sorted(set(body) - _UNDERSTOOD_JOB)]
    if body.get("runs-on"):
        notes.append(f"runs-on {body['runs-on']}: runs on this machine instead")
    return Job(
        id=job_id,
        title=str(body.get("name") or job_id),
        needs=tuple(str(n) for n in ([needs] if isinstance(needs, str) else needs)),
        steps=steps,
        env=env,
        condition=condition_of(body.get("if"), where),
        approval=(
            f"GitHub environment '{environment}' (its required reviewers approve)"
            if environment
            else None
        ),
        timeout_seconds=_minutes(body.get("timeout-minutes"), where),
        notes=tuple(notes),
    )


def _step(
    body: Any,
    index: int,
    env: Mapping[str, str],
    defaults: Mapping[str, str],
    expressions: Expressions,
    job: str,
) -> Step:
    if not isinstance(body, dict):
        raise InvalidInput(f"{job}, step {index} is not a mapping")
    name = str(body.get("name") or body.get("uses") or body.get("run", "").split("\n")[0])
    where = f"{job}, step {index} ({name})"
    step_env = _env(body.get("env"), env, expressions, where)
    condition = condition_of(body.get("if"), where)
    timeout = _minutes(body.get("timeout-minutes"), where)
    if "uses" in body:
        return Step(name, None, uses_standin(str(body["uses"])), step_env, condition, timeout)
    if "run" not in body:
        raise InvalidInput(f"{where} has neither `run:` nor `uses:`")
    shell = str(body.get("shell") or defaults.get("shell") or "bash")
    if shell != "bash":
        raise InvalidInput(f"{where}: the local runner runs bash steps only, not {shell}")
    script = expressions.substitute(str(body["run"]), {**env, **step_env}, where)
    directory = body.get("working-directory") or defaults.get("working-directory")
    return Step(
        name,
        script,
        env=step_env,
        condition=condition,
        timeout_seconds=timeout,
        working_directory=str(directory) if directory else None,
    )


def _env(
    values: Any, outer: Mapping[str, str], expressions: Expressions, where: str
) -> dict[str, str]:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InvalidInput(f"{where}: `env:` must be a mapping of names to values")
    return {
        str(k): expressions.substitute(_text(v), outer, f"{where}, env {k}")
        for k, v in values.items()
    }


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _run_defaults(values: Any, where: str) -> dict[str, str]:
    if not isinstance(values, dict):
        return {}
    run = values.get("run")
    if not isinstance(run, dict):
        return {}
    return {str(k): str(v) for k, v in run.items()}


def _minutes(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidInput(f"{where}: timeout-minutes must be a positive number, not {value!r}")
    return float(value) * 60
