"""`berth batch ...`: score a table or file with a registered version, now or on a schedule.

A schedule and the admin API store the same arguments as `run` takes and check them with
`berth.jobs.run_args.parse_run_args`, so a stored job always runs exactly as `berth batch run` would.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from berth.cli.context import console, err_console, registry, remote, settings
from berth.jobs import spec as s
from berth.jobs.run_args import run_args, spec_from_options

app = typer.Typer(
    help="Score tables and files in batch: resumable, exactly once, optionally on a schedule.",
    no_args_is_help=True,
)


@app.command(
    "run",
    epilog="A killed or cancelled job resumes where it stopped when the same command runs again.",
)
def run(
    model: str = typer.Argument(..., help="The version to score with: NAME, NAME:N or NAME@ALIAS."),
    source: str = typer.Option(
        ...,
        "--source",
        help="A .csv/.parquet/.jsonl file, or a SQLAlchemy URL (with --query or --table).",
    ),
    sink: str = typer.Option(
        ..., "--sink", help="A .csv/.parquet/.jsonl path (a folder of parts), or a SQLAlchemy URL."
    ),
    query: str | None = typer.Option(None, "--query", help="SQL source: the SELECT to score."),
    table: str | None = typer.Option(None, "--table", help="SQL source: the table to score."),
    sink_table: str | None = typer.Option(
        None, "--sink-table", help="SQL sink: the table results go to (created when missing)."
    ),
    id_column: str = typer.Option(
        "id", "--id-column", help="Unique row key: pages SQL sources, keys upserts and skips."
    ),
    mode: str = typer.Option(
        s.APPEND, "--mode", help="append (keep rows already in the sink) or upsert (replace them)."
    ),
    features: str | None = typer.Option(
        None, "--features", help="Comma-separated input columns; default the signature's."
    ),
    chunk_size: int = typer.Option(
        s.DEFAULT_CHUNK_ROWS, "--chunk-size", help="Rows read, scored and committed at a time."
    ),
    workers: int = typer.Option(1, "--workers", help="Processes scoring chunks in parallel."),
    skip_scored: bool = typer.Option(
        False, "--skip-scored", help="Score only rows the sink holds no result for."
    ),
    errors: str | None = typer.Option(
        None, "--errors", help="Where rejected rows go, with the reason (file or SQLAlchemy URL)."
    ),
    errors_table: str | None = typer.Option(
        None, "--errors-table", help="SQL errors sink: the table (default <sink-table>_errors)."
    ),
    max_error_rate: float = typer.Option(
        0.0, "--max-error-rate", help="Fail when more than this share of rows is rejected (0..1)."
    ),
    job: int | None = typer.Option(
        None, "--job", hidden=True, help="Attach to this queued job record (API, scheduler)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Score every row of SOURCE with MODEL and write the results to SINK.

    Rows are read, scored and committed a chunk at a time, so memory stays bounded. Output
    columns: id, prediction, one probability column per class, model, version, predicted_at.

    In remote mode (BERTH_SERVER, or `berth login`) the server runs the job on its host and
    the command follows it: files are that host's (absolute paths) or URLs.

    Example: berth batch run churn@production --source postgresql+psycopg://db/shop
    --table customers --sink postgresql+psycopg://db/shop --sink-table churn_scores
    --id-column customer_id
    """
    spec = spec_from_options(
        model, features, source=source, sink=sink, query=query, table=table,
        sink_table=sink_table, id_column=id_column, mode=mode, chunk_size=chunk_size,
        workers=workers, skip_scored=skip_scored, errors=errors, errors_table=errors_table,
        max_error_rate=max_error_rate,
    )  # fmt: skip
    # `--job` attaches to a record the server or scheduler made: always this machine's run.
    server = remote() if job is None else None
    if server is not None:
        from berth.cli.remote_batch import run_remotely

        run_remotely(server, spec, quiet=quiet, as_json=as_json)
        return
    from berth.jobs.batch import run_job
    from berth.jobs.progress import RichProgress

    progress = None if quiet or as_json else RichProgress(console)
    with stop_on_signals() as stop:
        summary = run_job(registry(), settings(), spec, args=run_args(spec), job_id=job,
                          progress=progress, stop=stop)  # fmt: skip
    if as_json:
        console.print_json(json.dumps(summary.to_dict()))
    else:
        console.print(summary.describe(), highlight=False, soft_wrap=True)
    if not summary.ok:
        raise typer.Exit(1)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGTERM or Ctrl-C ends the job after the chunk in hand, committed, so it can resume; a
    second signal stops at once (what was committed stays committed)."""
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        err_console.print("stopping after the current chunk (again to stop at once)")

    previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
