"""A batch job as `berth batch run` arguments, and back: the one place specs become arguments.

Schedules and the admin API store a job as the arguments of `berth batch run`, which is also how
a stored job is started (a detached process). `run_args` writes them and `parse_run_args` reads
them back with the same checks as the command, so a stored job always runs exactly as
`berth batch run` would. The command's flags are declared in `OPTIONS`; the CLI declares the
same flags with their help, and a test keeps the two equal.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from berth.errors import InvalidInput
from berth.jobs.spec import BatchSpec


@dataclass(frozen=True)
class Option:
    flag: str
    field: str
    parse: Callable[[str], Any] | None
    """Turns the argument into the field's value; None for a flag that takes no value."""
    required: bool = False


def _integer(text: str) -> int:
    return int(text)


def _number(text: str) -> float:
    return float(text)


OPTIONS: tuple[Option, ...] = (
    Option("--source", "source", str, required=True),
    Option("--sink", "sink", str, required=True),
    Option("--query", "query", str),
    Option("--table", "table", str),
    Option("--sink-table", "sink_table", str),
    Option("--id-column", "id_column", str),
    Option("--mode", "mode", str),
    Option("--features", "features", str),
    Option("--chunk-size", "chunk_size", _integer),
    Option("--workers", "workers", _integer),
    Option("--skip-scored", "skip_scored", None),
    Option("--errors", "errors", str),
    Option("--errors-table", "errors_table", str),
    Option("--max-error-rate", "max_error_rate", _number),
)
"""Every flag of `berth batch run` that describes the job (not how the run reports)."""

_RUN_ONLY = {"--job": True, "--quiet": False, "--json": False}
"""Flags of how one run reports (or which record it attaches to), not of the job: accepted and
left out of the spec; True for those that take a value."""

_BY_FLAG = {option.flag: option for option in OPTIONS}
_KINDS: dict[Callable[[str], Any], str] = {_integer: "an integer", _number: "a number"}


def spec_from_options(model: str, features: str | None = None, **options: Any) -> BatchSpec:
    """The job that `berth batch run MODEL ...` describes (`features` comma-separated)."""
    names = None
    if features is not None:
        names = tuple(n.strip() for n in features.split(",") if n.strip())
        if not names:
            raise InvalidInput("--features lists no column; give e.g. --features age,income")
    return BatchSpec(model=model, features=names, **options)


def parse_run_args(args: Sequence[str]) -> BatchSpec:
    """Check stored `berth batch run` arguments (a schedule's, an API request's) as the command
    would, and return the job they describe."""
    positional: list[str] = []
    values: dict[str, Any] = {}
    pending = list(args)
    while pending:
        arg = pending.pop(0)
        if arg == "--help":
            raise InvalidInput("the job arguments asked for help; give the run options")
        if arg == "--":  # the end of options: the rest is positional
            positional += pending
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        flag, has_value, text = arg.partition("=")
        if flag in _RUN_ONLY:
            if _RUN_ONLY[flag] and not has_value and pending:
                pending.pop(0)
            continue
        option = _BY_FLAG.get(flag)
        if option is None:
            raise _invalid(f"No such option: {flag}")
        if option.parse is None:
            if has_value:
                raise _invalid(f"Option '{flag}' does not take a value.")
            values[option.field] = True
            continue
        if not has_value:
            if not pending:
                raise _invalid(f"Option '{flag}' requires an argument.")
            text = pending.pop(0)
        values[option.field] = _value(option, text)
    if len(positional) != 1:
        problem = "Missing argument 'MODEL'." if not positional else "Got unexpected extra argument"
        raise _invalid(problem if not positional else f"{problem} ({positional[1]})")
    for option in OPTIONS:
        if option.required and option.field not in values:
            raise _invalid(f"Missing option '{option.flag}'.")
    return spec_from_options(positional[0], **values)


def run_args(spec: BatchSpec) -> list[str]:
    """The `berth batch run` arguments that describe `spec` (the inverse of parse_run_args)."""
    args = [spec.model]
    defaults = BatchSpec(model="", source="", sink="")
    for option in OPTIONS:
        value = getattr(spec, option.field)
        if option.field == "features":
            value = ",".join(value) if value else None
        if option.parse is None:
            if value:
                args.append(option.flag)
        elif value is not None and (option.required or value != getattr(defaults, option.field)):
            args += [option.flag, repr(value) if isinstance(value, float) else str(value)]
    return args


def _value(option: Option, text: str) -> Any:
    assert option.parse is not None
    try:
        return option.parse(text)
    except ValueError:
        kind = _KINDS.get(option.parse, "valid")
        raise _invalid(f"Invalid value for '{option.flag}': {text!r} is not {kind}.") from None


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(f"invalid job arguments: {message}")


def rerun_command(args: Iterable[str]) -> str:
    """The `berth batch run` command line that runs (and so resumes) the job."""
    return shlex.join(["berth", "batch", "run", *args])
