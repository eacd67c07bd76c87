"""The `berth` command. Each command group lives in its own module."""

from __future__ import annotations

import atexit
import gc
import os
import sys

import typer

from berth import __version__
from berth.cli import (
    audit,
    backup,
    backup_schedules,
    batch,
    bench,
    build,
    ci,
    config_cmd,
    demo,
    endpoints,
    experiments,
    export,
    feedback,
    init,
    jobs,
    keys,
    login,
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
    # Plain help: typer's rich help shows every flag as taking a value (`--json <bool>`).
    rich_markup_mode=None,
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
backup_schedules.register(backup.app)
app.add_typer(stream.app, name="stream")
app.add_typer(jobs.app, name="jobs")
app.add_typer(backup.app, name="backup")
app.add_typer(ci.app, name="ci")
app.add_typer(login.app, name="profile")
app.command("login")(login.login)
app.command("logout")(login.logout)
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


DEBUG_VARIABLE = "BERTH_DEBUG"
"""Set to 1 to let an unexpected exception through with its traceback (for a bug report)."""


def main() -> None:
    try:
        app()
    except BerthError as exc:
        _fail(exc.message)
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:
        # The machine refused a file or network operation: the user can act on that.
        if os.environ.get(DEBUG_VARIABLE) == "1":
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        _fail(
            f"{exc.strerror or exc}{where}; check that the path exists and is writable, "
            f"or run with {DEBUG_VARIABLE}=1 to see where it happened"
        )
    except Exception as exc:
        # Every error Berth expects is a BerthError; anything else is a bug, still one line.
        if os.environ.get(DEBUG_VARIABLE) == "1":
            raise
        _fail(
            f"unexpected {type(exc).__name__}: {exc}; this is a bug, please report it with the "
            f"command you ran (run it again with {DEBUG_VARIABLE}=1 for the traceback)"
        )


def _fail(message: str) -> None:
    """Print one line (a library's multi-line message is joined) and exit 1."""
    from rich.text import Text

    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    # A Text, not markup: messages hold brackets ("pip install 'berth[s3]'") that are not styles.
    err_console.print(Text.assemble(("error:", "bold red"), " ", line), soft_wrap=True)
    sys.exit(1)
