"""The `berth` command. Each command group lives in its own module."""

from __future__ import annotations

import atexit
import gc
import sys

import typer

from berth import __version__
from berth.cli import (
    audit,
    batch,
    bench,
    build,
    config_cmd,
    demo,
    endpoints,
    experiments,
    export,
    feedback,
    init,
    jobs,
    keys,
    models,
    observability,
    predict,
    rollouts,
    schedules,
    serve,
    stream,
    validate,
)
from berth.cli.context import err_console
from berth.errors import BerthError

# A command's process ends with it. At exit, the objects SQLAlchemy, pydantic and the rest built
# are left to the OS instead of being garbage-collected one by one, which took up to 0.3 s a
# command. Exit handlers still run; only the last collection of cyclic garbage is skipped.
atexit.register(gc.freeze)

app = typer.Typer(
    name="berth",
    help="Berth: register, serve and watch trained models.\n\nStart with `berth demo`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(models.app, name="models")
app.add_typer(keys.app, name="keys")
app.add_typer(config_cmd.app, name="config")
app.add_typer(audit.app, name="audit")
app.add_typer(feedback.app, name="feedback")
app.add_typer(observability.app, name="observability")
app.add_typer(endpoints.app, name="endpoints")
app.add_typer(rollouts.app, name="rollout")
app.add_typer(experiments.app, name="experiments")
app.add_typer(batch.app, name="batch")
schedules.register(batch.app)
app.add_typer(stream.app, name="stream")
app.add_typer(jobs.app, name="jobs")
app.command("init")(init.init)
app.command("serve")(serve.serve)
app.command("predict")(predict.predict)
app.command("demo")(demo.demo)
app.command("bench")(bench.bench)
app.command("validate")(validate.validate)
app.command("export")(export.export)
app.command("build")(build.build)
app.command("scheduler")(schedules.scheduler)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"berth {__version__}")
        raise typer.Exit


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
) -> None:
    """Berth: register, serve and watch trained models."""


def main() -> None:
    try:
        app()
    except BerthError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
