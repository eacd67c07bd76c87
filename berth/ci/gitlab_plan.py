"""A .gitlab-ci.yml read for the local runner.

Understood: `stages`, global and job `variables` (with `$NAME` expanded as GitLab does),
`default` and job `before_script`/`script`/`after_script` (nested lists flattened, YAML anchors
resolved), `needs` (else every job of the earlier stages), `when` (on_success, on_failure,
always, never, manual: the approval the runner stands in for), `allow_failure`, `timeout`,
`artifacts:reports:dotenv` (its variables reach the later jobs). `image` and `services` are
notes: the jobs run on this machine. `workflow:rules` is not evaluated: the pipeline runs as
one on the default branch; `include` and `extends` are refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from berth.ci.pipeline import Condition, Job, Pipeline, Step, in_order
from berth.errors import InvalidInput

_GLOBAL_KEYS = {
    "default", "include", "stages", "variables", "workflow", "image", "services", "cache",
    "before_script", "after_script", "types",
}  # fmt: skip
_UNDERSTOOD_JOB = {
    "stage", "script", "before_script", "after_script", "variables", "needs", "when",
    "allow_failure", "timeout", "artifacts", "environment", "image", "services",
    "resource_group",
}  # fmt: skip
_DEFAULT_STAGES = [".pre", "build", "test", "deploy", ".post"]
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_WHEN: dict[str, Condition] = {
    "on_success": "success",
    "manual": "success",
    "delayed": "success",
    "on_failure": "failure",
    "always": "always",
    "never": "never",
}


def read(path: Path, document: Any, environ: Mapping[str, str]) -> Pipeline:
    """The pipeline `document` (parsed YAML) of the file at `path`; `environ` expands the
    variables' `$NAME`."""
    if not isinstance(document, dict):
        raise InvalidInput(f"{path} is not a GitLab CI file: it is not a mapping")
    for refused in ("include", "extends"):
        if refused in document:
            raise InvalidInput(f"{path}: `{refused}:` is not run locally; inline what it brings")
    stages = [str(s) for s in document.get("stages") or _DEFAULT_STAGES]
    stages = [".pre", *[s for s in stages if s not in (".pre", ".post")], ".post"]
    variables = expand(_variables(document.get("variables"), "variables"), environ)
    default = document.get("default") or {}
    if not isinstance(default, dict):
        raise InvalidInput(f"{path}: `default:` must be a mapping")
    defaults = {
        "before_script": default.get("before_script", document.get("before_script")),
        "after_script": default.get("after_script", document.get("after_script")),
    }
    bodies = {
        str(k): v
        for k, v in document.items()
        if k not in _GLOBAL_KEYS and not str(k).startswith(".")
    }
    if not bodies:
        raise InvalidInput(f"{path} defines no job")
    staged = sorted(bodies.items(), key=lambda item: _stage_index(item, stages))
    jobs = [
        _job(job_id, body, stages, staged, defaults, {**environ, **variables})
        for job_id, body in staged
    ]
    notes = ["workflow rules are not evaluated: this runs as a pipeline of the default branch"]
    image = default.get("image", document.get("image"))
    if image:
        notes.append(f"image {image}: the jobs run on this machine instead")
    return Pipeline("gitlab", path, in_order(jobs), variables, tuple(notes))


def _stage_index(item: tuple[str, Any], stages: list[str]) -> int:
    job_id, body = item
    stage = str(body.get("stage", "test")) if isinstance(body, dict) else "test"
    if stage not in stages:
        raise InvalidInput(f"job '{job_id}' is in stage '{stage}', which `stages:` does not list")
    return stages.index(stage)


def _job(
    job_id: str,
    body: Any,
    stages: list[str],
    staged: list[tuple[str, Any]],
    defaults: Mapping[str, Any],
    environ: Mapping[str, str],
) -> Job:
    where = f"job '{job_id}'"
    if not isinstance(body, dict):
        raise InvalidInput(f"{where} is not a mapping")
    if "extends" in body:
        raise InvalidInput(f"{where}: `extends:` is not run locally; inline what it brings")
    if "script" not in body:
        raise InvalidInput(f"{where} has no `script:`")
    before = body.get("before_script", defaults["before_script"])
    after = body.get("after_script", defaults["after_script"])
    lines = [*_lines(before, where), *_lines(body["script"], where)]
    when = str(body.get("when", "on_success"))
    if when not in _WHEN:
        raise InvalidInput(f"{where}: `when: {when}` is not known")
    variables = expand(_variables(body.get("variables"), where), environ)
    notes = [f"ignored here: {key}" for key in sorted(set(body) - _UNDERSTOOD_JOB)]
    for key in ("image", "services"):
        if key in body:
            notes.append(f"{key} {body[key]}: runs on this machine instead")
    if when == "delayed":
        notes.append("when: delayed: runs at once here")
    return Job(
        id=job_id,
        title=f"stage {body.get('stage', 'test')}",
        needs=_needs(job_id, body, stages, staged),
        steps=tuple(Step(line.split("\n")[0], line) for line in lines),
        env=variables,
        condition=_WHEN[when],
        approval=f"GitLab manual job '{job_id}' (someone starts it)" if when == "manual" else None,
        allow_failure=body.get("allow_failure") is True,
        one_shell=True,
        after=tuple(
            Step(line.split("\n")[0], line, condition="always") for line in _lines(after, where)
        ),
        dotenv=_dotenv(body.get("artifacts"), where),
        timeout_seconds=_timeout(body.get("timeout"), where),
        notes=tuple(notes),
    )


def _needs(
    job_id: str, body: dict[str, Any], stages: list[str], staged: list[tuple[str, Any]]
) -> tuple[str, ...]:
    if "needs" in body:
        found = []
        for need in body["needs"] or []:
            found.append(str(need["job"] if isinstance(need, dict) else need))
        return tuple(found)
    own = _stage_index((job_id, body), stages)
    return tuple(other for other, b in staged if _stage_index((other, b), stages) < own)


def _lines(value: Any, where: str) -> list[str]:
    """Script entries, nested lists (from anchors) flattened."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise InvalidInput(f"{where}: a script must be a list of commands")
    found: list[str] = []
    for entry in value:
        found.extend(_lines(entry, where))
    return found


def _variables(values: Any, where: str) -> dict[str, str]:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InvalidInput(f"{where}: `variables:` must be a mapping")
    found = {}
    for name, value in values.items():
        if isinstance(value, dict):
            value = value.get("value", "")
        found[str(name)] = "" if value is None else str(value)
    return found


def expand(values: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """`$NAME` and `${NAME}` in each value, from `environ` and the values before it."""
    found: dict[str, str] = {}
    for name, value in values.items():
        scope = {**environ, **found}
        found[name] = _VARIABLE.sub(partial(_lookup, scope), value)
    return found


def _lookup(scope: Mapping[str, str], match: re.Match[str]) -> str:
    return scope.get(match[1] or match[2], "")


def _dotenv(artifacts: Any, where: str) -> tuple[str, ...]:
    if not isinstance(artifacts, dict):
        return ()
    reports = artifacts.get("reports")
    dotenv = reports.get("dotenv") if isinstance(reports, dict) else None
    if dotenv is None:
        return ()
    return tuple(str(p) for p in ([dotenv] if isinstance(dotenv, str) else dotenv))


_UNITS = {
    "s": 1,
    "sec": 1,
    "m": 60,
    "min": 60,
    "minutes": 60,
    "h": 3600,
    "hour": 3600,
    "hours": 3600,
}


def _timeout(value: Any, where: str) -> float | None:
    if value is None:
        return None
    parts = re.findall(r"(\d+)\s*([a-z]+)", str(value).lower())
    if not parts or any(unit not in _UNITS for _, unit in parts):
        raise InvalidInput(
            f"{where}: timeout {value!r} is not understood here; write e.g. 2h or 30m"
        )
    return float(sum(int(n) * _UNITS[unit] for n, unit in parts))
