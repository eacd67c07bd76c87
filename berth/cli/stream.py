"""`berth stream ...`: score an event stream (Redis Streams, NATS JetStream, Kafka) as events
arrive."""

from __future__ import annotations

from pathlib import Path

import typer

from berth.cli.context import registry, settings
from berth.errors import InvalidInput

app = typer.Typer(
    help="Score event streams: Redis Streams, NATS JetStream or Kafka, at least once, with a "
    "dead-letter stream for events that cannot be scored.",
    no_args_is_help=True,
)

URLS = (
    "redis://HOST:PORT/DB?stream=NAME, nats://HOST:PORT/SUBJECT[?stream=JETSTREAM_STREAM], or "
    "kafka://HOST:PORT[,HOST:PORT]/TOPIC[?partitions=N&replication=R]"
)


@app.callback()
def stream() -> None:
    """Score event streams as events arrive."""


@app.command(
    "run",
    epilog="Stops on SIGTERM or Ctrl-C after writing and acknowledging the events in flight; "
    "a second signal exits at once (unacknowledged events are delivered again).",
)
def run(
    reference: str | None = typer.Argument(
        None,
        help="The model to score with: NAME, NAME:N or NAME@ALIAS; or an endpoint's NAME, to "
        "route each event as the endpoint routes requests (or give --bundle).",
    ),
    source: str = typer.Option(..., "--source", help=f"Where events come from: {URLS}."),
    sink: str = typer.Option(..., "--sink", help="Where output events go (same URL forms)."),
    dead_letter: str | None = typer.Option(
        None,
        "--dead-letter",
        help="Where events that cannot be scored go, with the reason "
        "(default: the source stream or subject + '.dead', on the same server; on NATS in "
        "the stream that holds that subject, created when none does).",
    ),
    group: str | None = typer.Option(
        None,
        "--group",
        help="Consumer group (Redis, Kafka) or durable consumer (NATS); default berth-MODEL.",
    ),
    consumer: str | None = typer.Option(
        None,
        "--consumer",
        help="This consumer's name in a Redis group (default the host name); give each "
        "process on one host its own. A restart under the same name resumes its unfinished events.",
    ),
    batch_size: int = typer.Option(100, "--batch-size", help="Most events per prediction call."),
    max_wait_ms: float = typer.Option(
        20.0, "--max-wait-ms", help="How long a batch waits to fill after its first event."
    ),
    id_field: str = typer.Option(
        "id",
        "--id-field",
        help="Event field with the event id; without it, the Kafka message key, else the Redis "
        "entry id, NATS sequence or Kafka PARTITION:OFFSET.",
    ),
    claim_idle_ms: int = typer.Option(
        30_000,
        "--claim-idle-ms",
        help="Events unacknowledged this long are taken over from a dead consumer "
        "(Redis XAUTOCLAIM; NATS ack wait; Kafka session and rebalance timeout).",
    ),
    start: str = typer.Option(
        "first",
        "--start",
        help="Where a new group begins: 'first' (every entry the stream holds) or 'new'.",
    ),
    metrics_port: int = typer.Option(
        0, "--metrics-port", help="Serve Prometheus metrics at /metrics on this port (0: off)."
    ),
    metrics_host: str = typer.Option(
        "127.0.0.1", "--metrics-host", help="Address of the metrics server."
    ),
    report_seconds: float = typer.Option(
        5.0, "--report-seconds", help="How often lag is measured and a progress line logged."
    ),
    bundle: Path | None = typer.Option(
        None,
        "--bundle",
        help="Score with the model baked by `berth build` in this folder instead of MODEL: "
        "verified by sha256 and registered if new, as `berth serve --bundle` does.",
    ),
    trust_pickle: bool = typer.Option(
        False,
        "--trust-pickle",
        help="With --bundle: the baked model is a pickle you trust.",
    ),
) -> None:
    """Score every event of SOURCE with MODEL; write one output event per input to SINK.

    An output event holds id, prediction, probabilities (per class, when the model has them),
    model, version and predicted_at (through an endpoint, also endpoint and route). Events that
    cannot be scored go to the dead-letter stream with the reason. Each event is acknowledged
    only after its output is written.

    Through an endpoint, each event goes to the route its sticky key picks (the endpoint's
    field:NAME or header:NAME, else the Kafka message key; without one, a weighted random
    split); a Kafka header x-berth-route forces a route. Weight changes apply as they happen.

    Example: berth stream run churn@production --source 'redis://127.0.0.1:6379/0?stream=events' --sink 'redis://127.0.0.1:6379/0?stream=predictions'
    """
    import asyncio

    from berth.jobs.stream.options import StreamOptions
    from berth.jobs.stream.runner import run_stream
    from berth.observability.logging import configure_logging

    current = settings()
    # Before the bundle is installed: its registration is worth a log line.
    configure_logging(current.log_level, json=(current.log_format or "json") == "json")
    options = StreamOptions(
        reference=_reference(reference, bundle, trust_pickle),
        source=source,
        sink=sink,
        dead_letter=dead_letter,
        group=group,
        consumer=consumer,
        batch_size=batch_size,
        max_wait_ms=max_wait_ms,
        id_field=id_field,
        claim_idle_ms=claim_idle_ms,
        start=start,  # type: ignore[arg-type]  # checked by StreamOptions
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        report_seconds=report_seconds,
    )
    asyncio.run(run_stream(registry(), current, options))


def _reference(reference: str | None, bundle: Path | None, trust_pickle: bool) -> str:
    """MODEL, or the version a baked bundle is registered as (the server's own, in a bundle's
    consumer Deployment: both run `--bundle` on the same image)."""
    if (reference is None) == (bundle is None):
        raise InvalidInput("give the model to score with: MODEL or --bundle DIR, not both")
    if bundle is None:
        assert reference is not None
        if trust_pickle:
            raise InvalidInput(
                "--trust-pickle goes with --bundle; MODEL was vouched for when registered"
            )
        return reference
    from berth.deploy.bundle import install_bundle

    return install_bundle(registry(), bundle, trust_pickle=trust_pickle)
