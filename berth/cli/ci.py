"""`berth ci ...`: CI/CD pipelines for model repositories, and the commands their steps run."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from berth.cli.context import console, registry, remote
from berth.errors import InvalidInput, NotFound

# The configuration (pydantic), the runner (PyYAML) and the smoke checks (httpx, pandas) are
# imported by the commands that use them.
if TYPE_CHECKING:
    from berth.ci.config import CiConfig
    from berth.ci.smoke import Check

app = typer.Typer(
    help="CI/CD for a model repository: write its pipeline, and the steps it runs.",
    no_args_is_help=True,
)

CONFIG_VARIABLE = "BERTH_CI_CONFIG"


def _config_option() -> Any:
    return typer.Option(
        Path("berth-ci.toml"),
        "--config",
        envvar=CONFIG_VARIABLE,
        help=f"The pipeline's configuration (or {CONFIG_VARIABLE}).",
    )


def _load(path: Path) -> CiConfig:
    from berth.ci.config import load

    return load(path)


@app.command("init")
def init(
    provider: str = typer.Option(..., "--provider", help="github or gitlab."),
    directory: Path = typer.Option(Path("."), "--dir", help="The model repository."),
    model: str | None = typer.Option(
        None, "--model", help="The registered model's name (default: the folder's name)."
    ),
    endpoint: str | None = typer.Option(
        None, "--endpoint", help="The production endpoint (default: the model's name)."
    ),
    approval: bool = typer.Option(
        False,
        "--approval",
        help="The canary waits for a person's approval (GitHub: environment reviewers; "
        "GitLab: a manual job).",
    ),
    environment: str = typer.Option(
        "production", "--environment", help="The provider's environment of the canary job."
    ),
    candidate: str = typer.Option(
        "model.skops", "--candidate", help="The model file or folder the repository ships."
    ),
    sample: str = typer.Option("data/sample.csv", "--sample", help="Rows for its signature."),
    data: str = typer.Option("data/holdout.csv", "--data", help="Held-out rows for the gates."),
    target: str | None = typer.Option(None, "--target", help="The column of --data to predict."),
    install: str | None = typer.Option(
        None, "--install", help="What the pipeline's pip installs for Berth (default this version)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing pipeline file."),
) -> None:
    """Write berth-ci.toml and a pipeline (GitHub Actions or GitLab CI) into a model repository.

    The pipeline runs the repository's tests, the validation gates (no regression against
    NAME@production), registers the candidate on the server with the commit and run as tags,
    builds and pushes its image, moves the staging alias and checks staging, then runs a canary
    on the production endpoint and rolls it back on failure. It reaches the server with the
    secrets BERTH_SERVER and BERTH_API_KEY only. An existing berth-ci.toml is kept.

    Example: berth ci init --provider github --model churn --target churned --approval
    """
    from berth.ci.options import InitOptions
    from berth.ci.scaffold import init as write

    options = InitOptions(
        provider=provider,
        model=model or directory.resolve().name,
        endpoint=endpoint,
        approval=approval,
        environment=environment,
        candidate=candidate,
        sample=sample,
        data=data,
        target=target,
        **({"install": install} if install else {}),
    )
    for written in write(directory, options, force=force):
        verb = "Kept" if written.kept else "Wrote"
        console.print(f"{verb} {written.path}", highlight=False, markup=False)
    console.print(
        "Next: edit berth-ci.toml, add the BERTH_SERVER and BERTH_API_KEY secrets, and dry-run "
        f"the pipeline against a server with `berth ci run --provider {provider}`",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


@app.command("gates")
def gates(config: Path = _config_option()) -> None:
    """Print the `berth validate` command berth-ci.toml's [gates] make.

    Example: berth ci gates
    """
    from berth.ci.commands import command_line, validate_args

    typer.echo(command_line(validate_args(_load(config), config.parent)))


@app.command("validate")
def validate(config: Path = _config_option()) -> None:
    """Run `berth validate` on the candidate with berth-ci.toml's [gates]; exit 1 if one fails.

    The command is printed first; it runs in this process, remotely when a server is set.

    Example: berth ci validate
    """
    from typer.main import get_command

    from berth.ci.commands import command_line, validate_args
    from berth.cli.main import app as berth

    args = validate_args(_load(config), config.parent)
    console.print(f"$ {command_line(args)}", highlight=False, markup=False, soft_wrap=True)
    code = get_command(berth).main(args, prog_name="berth", standalone_mode=False)
    if code:
        raise typer.Exit(int(code))


@app.command("env")
def env(
    config: Path = _config_option(),
    style: str = typer.Option(
        "shell",
        "--format",
        help='shell: export lines, for `eval "$(berth ci env)"`; github: KEY=VALUE lines, '
        'for `berth ci env --format github >> "$GITHUB_ENV"`.',
    ),
) -> None:
    """Print berth-ci.toml's names for the pipeline's steps: BERTH_CI_MODEL, _ENDPOINT, ...

    Example: eval "$(berth ci env)"
    """
    from berth.ci.commands import render, variables

    typer.echo(render(variables(_load(config), config.parent), style), nl=False)


@app.command("version")
def version(
    tag: list[str] = typer.Option(
        ..., "--tag", help="KEY=VALUE the version carries (repeatable), e.g. git_sha=abc123."
    ),
    model: str | None = typer.Option(
        None, "--model", help="The model (default: berth-ci.toml's [model] name)."
    ),
    config: Path = _config_option(),
) -> None:
    """Print the number of the newest version of the model carrying every --tag.

    How a pipeline finds the version its commit registered.

    Example: berth ci version --tag git_sha=$GITHUB_SHA
    """
    from berth.cli.remote import path

    wanted = _pairs(tag, "--tag")
    name = model or _load(config).model.name
    server = remote()
    if server is not None:
        versions = server.get(path("models", name))["versions"]
    else:
        versions = [v.to_dict() for v in registry().get_model(name).versions]
    found = [v for v in versions if all(v["tags"].get(k) == x for k, x in wanted.items())]
    if not found:
        shown = ", ".join(f"{k}={x}" for k, x in wanted.items())
        raise NotFound(f"no version of '{name}' carries {shown}; see `berth models show {name}`")
    typer.echo(str(max(v["version"] for v in found)))


@app.command("smoke")
def smoke(
    config: Path = _config_option(),
    alias: str | None = typer.Option(
        None, "--alias", help="The alias to check (default: berth-ci.toml's [staging] alias)."
    ),
    wait: float = typer.Option(
        30.0, "--wait", min=0, help="Seconds to wait for the server to serve the alias's version."
    ),
) -> None:
    """Smoke and Open Inference Protocol checks of NAME@staging on the server; exit 1 on failure.

    Readiness, the model's v2 metadata, v2 inference and a v1 prediction on the sample's rows,
    each answered by the version the alias names.

    Example: berth ci smoke
    """
    from berth.ci.smoke import Target
    from berth.ci.smoke import smoke as run_checks

    loaded = _load(config)
    server = remote()
    if server is None:
        raise InvalidInput(
            "berth ci smoke checks a running server: set BERTH_SERVER and BERTH_API_KEY, or "
            "`berth login URL --key-file FILE`"
        )
    target = Target(
        server.url, server.profile.secret(), loaded.model.name, alias or loaded.staging.alias
    )
    report = run_checks(
        target, config.parent / loaded.model.sample, wait_seconds=wait, on_check=_print_check
    )
    if not report.passed:
        failed = [c.name for c in report.checks if not c.passed]
        console.print(
            f"[bold red]FAIL[/] {report.reference} ({report.version}): {', '.join(failed)}",
            highlight=False,
        )
        raise typer.Exit(1)
    console.print(
        f"[green]PASS[/] {report.reference} serves version {report.version}: "
        f"{len(report.checks)} checks passed",
        highlight=False,
    )


def _print_check(check: Check) -> None:
    from rich.markup import escape

    verdict = "[green]PASS[/]" if check.passed else "[bold red]FAIL[/]"
    console.print(
        f"{verdict} {check.name}: {escape(check.detail)} ({check.milliseconds:.0f} ms)",
        highlight=False,
        soft_wrap=True,
    )


@app.command("run")
def run(
    provider: str | None = typer.Option(
        None, "--provider", help="github or gitlab (default: the one whose file is there)."
    ),
    directory: Path = typer.Option(Path("."), "--dir", help="The model repository."),
    file: Path | None = typer.Option(
        None, "--file", help="The pipeline file (default: the provider's, under --dir)."
    ),
    variable: list[str] = typer.Option(
        [], "--env", help="KEY=VALUE for the run, e.g. a secret (repeatable)."
    ),
    approve: bool = typer.Option(
        True,
        "--approve/--no-approve",
        help="Give the approvals the pipeline waits for, or stop before the jobs that need one.",
    ),
) -> None:
    """Run the pipeline's jobs on this machine, step by step, as the provider would.

    Jobs run in dependency order; each step's bash runs in --dir with the provider's variables
    (local values), the pipeline's, and secrets read by name from this environment (BERTH_SERVER,
    BERTH_API_KEY). Actions, pip, docker and approvals are stand-ins: nothing is installed, built,
    pushed or asked for. Each step prints its time; the first failure runs the job's failure
    steps (rollback), skips the jobs after it, and exits 1.

    Example: BERTH_SERVER=http://127.0.0.1:8321 BERTH_API_KEY=... berth ci run --provider github
    """
    from berth.ci.options import PROVIDERS
    from berth.ci.runner import Runner, read_pipeline
    from berth.ci.scaffold import pipeline_path

    root = directory.resolve()
    chosen = provider or _detect(root)
    if chosen not in PROVIDERS:
        raise InvalidInput(f"provider '{chosen}' is not known; use {' or '.join(PROVIDERS)}")
    environ = {**os.environ, **_pairs(variable, "--env")}
    run_id = str(int(time.time()))
    path = file or root / pipeline_path(chosen)
    pipeline = read_pipeline(chosen, path, root, run_id, environ)

    def write(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    result = Runner(pipeline, root, environ, run_id, write, approve=approve).run()
    if not result.passed:
        raise typer.Exit(1)


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    found = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"{flag} {value!r} is not KEY=VALUE; write e.g. {flag} name=value")
        found[key.strip()] = text
    return found


def _detect(root: Path) -> str:
    from berth.ci.scaffold import pipeline_path

    found = [p for p in ("github", "gitlab") if (root / pipeline_path(p)).is_file()]
    if len(found) != 1:
        which = "neither {} nor {}" if not found else "both {} and {}"
        files = which.format(pipeline_path("github"), pipeline_path("gitlab"))
        raise InvalidInput(f"{root} has {files}; give --provider")
    return found[0]
