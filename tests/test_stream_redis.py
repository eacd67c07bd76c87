"""`berth stream run` on the running Redis: consumer groups, dead letters, crashes, SIGTERM, lag.

Every test uses streams and groups of its own (uuid names) and deletes them afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.typing import EncodableT, FieldT

from berth.config import Settings
from berth.errors import InvalidInput, NotFound
from berth.jobs.stream.options import StreamOptions
from berth.jobs.stream.runner import run_stream
from berth.jobs.stream.transport import BrokerUnavailable
from berth.registry.service import Registry
from tests.conftest import free_port, require_service
from tests.private_redis import PrivateRedis
from tests.stream_helpers import (
    Producer,
    assert_output,
    consumer_env,
    customers,
    expected,
    kill_leftovers,
    metric,
    register_model,
    run_consumer,
    scraper,
    settled,
    start_consumer,
    train_model,
    wait_for,
)

REDIS = "redis://127.0.0.1:6379"
BATCH = 50


@pytest.fixture(autouse=True)
def _no_leftover_consumers() -> Iterator[None]:
    yield
    kill_leftovers()


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return train_model(tmp_path_factory.mktemp("stream-model"))


@dataclass
class Streams:
    """A source stream, its output and dead-letter streams, and a group, all fresh."""

    client: redis.Redis
    name: str
    group: str

    @property
    def source(self) -> str:
        return f"{REDIS}/0?stream={self.name}"

    @property
    def sink(self) -> str:
        return f"{REDIS}/0?stream={self.name}.out"

    @property
    def dead(self) -> str:
        return f"{self.name}.dead"

    def add(self, events: list[dict[str, Any]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            pipe.xadd(self.name, {"data": json.dumps(event)})
        pipe.execute()

    def entries(self, stream: str, db: redis.Redis | None = None) -> list[dict[str, Any]]:
        found: list[tuple[bytes, dict[bytes, bytes]]] = (db or self.client).xrange(stream)  # type: ignore[assignment]
        return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in found]

    def add_fields(self, fields: dict[str, str]) -> None:
        entry: dict[FieldT, EncodableT] = {k: v for k, v in fields.items()}  # noqa: C416
        self.client.xadd(self.name, entry)

    def outputs(self, db: redis.Redis | None = None) -> list[dict[str, Any]]:
        return [json.loads(e["data"]) for e in self.entries(f"{self.name}.out", db)]

    def group_info(self) -> dict[str, Any]:
        groups = self.client.xinfo_groups(self.name)
        return next(g for g in groups if g["name"].decode() == self.group)

    def entries_read(self) -> int:
        """The group's read counter; Redis reports nil until the group's first read delivers."""
        return int(self.group_info()["entries-read"] or 0)

    def pending_of(self, consumer: str) -> int:
        summary = self.client.xpending(self.name, self.group)
        counts = {c["name"].decode(): int(c["pending"]) for c in summary["consumers"]}
        return counts.get(consumer, 0)

    def consumer_args(self, *extra: str, sink: str | None = None) -> list[str]:
        return [
            "churn@production",
            "--source",
            self.source,
            "--sink",
            sink or self.sink,
            "--group",
            self.group,
            *extra,
        ]


@pytest.fixture
def streams() -> Iterator[Streams]:
    client = redis.Redis.from_url(f"{REDIS}/0", socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        require_service("Redis", str(exc))
    name = f"berth-test-{uuid.uuid4().hex[:10]}"
    yield Streams(client, name, f"g-{uuid.uuid4().hex[:6]}")
    client.delete(name, f"{name}.out", f"{name}.dead")
    client.close()


@pytest.fixture
def env(
    settings: Settings, sqlite_registry: Registry, model_files: tuple[Path, Path, Path]
) -> dict[str, str]:
    register_model(sqlite_registry, model_files)
    return consumer_env(settings)


def test_scores_every_event_and_reports_lag(
    streams: Streams, env: dict[str, str], sqlite_registry: Registry, tmp_path: Path
) -> None:
    """Events queued before the consumer starts (in the `data` field and as flat fields) come out
    once each, with the runtime's own predictions; the lag gauge starts above 0 and falls to 0,
    and the event counters match what was processed."""
    events = customers(300)
    streams.add(events[:250])
    for event in events[250:]:  # flat fields: every value a string, as redis-cli sends them
        streams.add_fields({k: str(v) for k, v in event.items()})
    port = free_port()
    consumer = start_consumer(
        env,
        tmp_path / "consumer.log",
        *streams.consumer_args("--metrics-port", str(port), "--report-seconds", "1"),
    )
    try:
        consumer.wait_consuming()
        scrape = scraper(port)
        labels = {"source": streams.name, "group": streams.group}
        lags: list[float] = []

        def lag_known() -> bool:
            value = metric(scrape(), "berth_stream_consumer_lag", **labels)
            lags.extend([] if value is None else [value])
            return value is not None

        wait_for(lag_known, "the lag gauge")
        assert lags[0] > 0  # measured before consuming began
        wait_for(lambda: len(streams.outputs()) >= len(events), "every output")
        wait_for(lambda: metric(scrape(), "berth_stream_consumer_lag", **labels) == 0, "lag 0")
        text = scrape()
    finally:
        assert consumer.stop() == 0, consumer.text()
    outputs = streams.outputs()
    want = expected(sqlite_registry, events)
    assert sorted(o["id"] for o in outputs) == sorted(want)
    for output in outputs:
        assert_output(output, want[output["id"]], version=1)
    assert [e["id"] for e in streams.entries(f"{streams.name}.out")] == [o["id"] for o in outputs]
    source = {"source": streams.name}
    assert metric(text, "berth_stream_events_received_total", **source) == 300
    assert metric(text, "berth_stream_events_total", outcome="scored", **source) == 300
    assert metric(text, "berth_stream_events_total", outcome="dead_lettered", **source) == 0
    assert streams.group_info()["pending"] == 0
    assert not streams.client.exists(streams.dead)


def test_bad_events_go_to_the_dead_letter_stream(
    streams: Streams, settings: Settings, sqlite_registry: Registry, model_files: Any
) -> None:
    """Each bad event is dead-lettered with a reason that names the problem and with its original
    payload; the good events of the same batch are scored; nothing stays pending."""
    register_model(sqlite_registry, model_files)
    good = customers(3)
    bad: dict[str, tuple[dict[str, str], str]] = {
        "bad-json": ({"data": '{"id": "bad-json", "tenure_months": 3,'}, "not valid JSON"),
        "not-object": ({"data": "[1, 2]"}, "is a list, not a JSON object"),
        "missing": (_event("missing", drop="plan"), "missing column 'plan'"),
        "unknown": (_event("unknown", extra={"colour": "red"}), "unknown column 'colour'"),
        "wrong-type": (
            _event("wrong-type", plan=3),
            "plan: row 0 expected strings, got a number 3",
        ),
        "range": (_event("range", tenure_months=900), "outside the allowed range [0, 600]"),
        "flat-text": (
            {"id": "flat-text", **{k: str(v) for k, v in good[0].items() if k != "id"}}
            | {"support_calls": "many"},
            "support_calls: row 0 expected integers, got a string 'many'",
        ),
    }
    streams.add(good[:2])
    for fields, _ in bad.values():
        streams.add_fields(fields)
    streams.add(good[2:])
    options = StreamOptions(
        "churn@production", streams.source, streams.sink, group=streams.group, batch_size=100
    )
    dead = asyncio.run(_run_until(settings, sqlite_registry, options, streams, dead=len(bad)))
    assert len(dead) == len(bad)
    for key, (fields, reason) in bad.items():
        entry = next(e for e in dead if json.loads(e["data"])["payload"] == fields)
        assert reason in entry["reason"], entry["reason"]
        assert json.loads(entry["data"])["reason"] == entry["reason"]
        if key in ("bad-json", "not-object"):  # no readable id: known by the Redis entry id
            assert re.fullmatch(r"\d+-\d+", entry["id"])
        else:
            assert entry["id"] == key
    assert sorted(o["id"] for o in streams.outputs()) == ["e-0", "e-1", "e-2"]
    assert streams.group_info()["pending"] == 0


def _event(
    event_id: str, drop: str | None = None, extra: dict[str, Any] | None = None, **values: Any
) -> dict[str, str]:
    event = {"id": event_id, **customers(1)[0], **values} | (extra or {})
    event["id"] = event_id
    event.pop(drop or "", None)
    return {"data": json.dumps(event)}


async def _run_until(
    settings: Settings, registry: Registry, options: StreamOptions, streams: Streams, dead: int
) -> list[dict[str, Any]]:
    """Run the consumer in this process until `dead` dead letters are written, then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_stream(registry, settings, options, stop))
    deadline = time.monotonic() + 60
    while len(streams.entries(streams.dead)) < dead and not task.done():
        assert time.monotonic() < deadline, "dead letters did not arrive"
        await asyncio.sleep(0.05)
    stop.set()
    await task
    return streams.entries(streams.dead)


@dataclass(frozen=True)
class Crash:
    ids: list[str]
    """Event ids in the output, in order."""
    in_flight: int
    """Entries the killed consumer had read and not acknowledged."""
    written: int
    """Of those, entries whose output it had written already."""


def _crash_then_finish(
    streams: Streams,
    env: dict[str, str],
    tmp_path: Path,
    sink: str,
    restart_as: str,
    atomic: bool,
) -> Crash:
    """2,000 events flow in; consumer `a` is killed (-9) mid-batch, `restart_as` finishes.

    The kill aims at the worst moment, outputs written and entries not yet acknowledged (which
    cannot happen when `atomic`: sink on the source's server); failing that, at any moment with
    entries in flight.
    """
    events = customers(1000)
    output = _db(sink)
    args = ("--batch-size", str(BATCH), "--max-wait-ms", "100", "--claim-idle-ms", "1000")
    first = start_consumer(
        env, tmp_path / "a.log", *streams.consumer_args(*args, "--consumer", "a", sink=sink)
    )
    first.wait_consuming()

    def in_flight() -> bool:
        return streams.pending_of("a") > 0

    def written_not_acknowledged() -> int:
        info = streams.group_info()
        written = int(output.xlen(f"{streams.name}.out"))
        return written - (int(info["entries-read"] or 0) - int(info["pending"]))

    with Producer(streams.add, events):
        wait_for(lambda: streams.entries_read() >= 300, "300 events read")
        worst = lambda: in_flight() and written_not_acknowledged() > 0  # noqa: E731
        if atomic or not first.freeze_when(worst, 1.2):
            assert first.freeze_when(in_flight), "the consumer never had events in flight"
        first.kill()
        # commands it had sent before the freeze (XACK) reach Redis
        pending, written = settled(
            lambda: (streams.pending_of("a"), written_not_acknowledged()), "events in flight"
        )
        second = start_consumer(
            env,
            tmp_path / "b.log",
            *streams.consumer_args(*args, "--consumer", restart_as, sink=sink),
        )
    try:
        wait_for(lambda: streams.entries_read() >= 1000, "every event read", 90)
        wait_for(lambda: streams.group_info()["pending"] == 0, "every event acknowledged")
        assert "Traceback" not in second.text()
    finally:
        assert second.stop() == 0, second.text()
    assert 0 < pending <= BATCH
    ids = [e["id"] for e in streams.entries(f"{streams.name}.out", output)]
    return Crash(ids, pending, written)


def _db(url: str) -> redis.Redis:
    return redis.Redis.from_url(url.split("?")[0])


def test_kill_9_then_restart_loses_nothing_and_duplicates_nothing(
    streams: Streams, env: dict[str, str], tmp_path: Path
) -> None:
    """Sink on the source's server: each batch's outputs are written and its entries acknowledged
    in one Lua script, so a kill -9 at any point leaves either both or neither. The restarted
    consumer (same name) re-reads what it had not acknowledged: every id comes out exactly once."""
    crash = _crash_then_finish(streams, env, tmp_path, streams.sink, "a", atomic=True)
    counts = Counter(crash.ids)
    assert set(counts) == {f"e-{i}" for i in range(1000)}
    assert crash.written == 0
    assert max(counts.values()) == 1, "duplicates"
    assert "re-reading" in (tmp_path / "b.log").read_text()
    print(
        f"\nredis, same server: 1000 sent, {crash.in_flight} in flight at the kill, 0 lost, 0 dup"
    )


def test_kill_9_second_consumer_claims_pending_entries(
    streams: Streams, env: dict[str, str], tmp_path: Path
) -> None:
    """Sink in another database: outputs are written first and entries acknowledged after, so a
    kill between the two repeats exactly the outputs written and not acknowledged (at most one
    batch). Consumer `a` is not restarted: `b` claims its entries once idle (XAUTOCLAIM)."""
    sink = f"{REDIS}/1?stream={streams.name}.out"
    try:
        crash = _crash_then_finish(streams, env, tmp_path, sink, "b", atomic=False)
    finally:
        _db(sink).delete(f"{streams.name}.out")
    counts = Counter(crash.ids)
    assert set(counts) == {f"e-{i}" for i in range(1000)}
    duplicates = len(crash.ids) - len(counts)
    assert duplicates == crash.written <= crash.in_flight <= BATCH
    assert streams.pending_of("a") == 0
    assert "claimed" in (tmp_path / "b.log").read_text()
    print(
        f"\nredis, other database: 1000 sent, {crash.in_flight} in flight at the kill "
        f"({crash.written} written), 0 lost, {duplicates} duplicates"
    )


def test_sigterm_drains_and_exits_0(streams: Streams, env: dict[str, str], tmp_path: Path) -> None:
    """SIGTERM during a burst: the consumer finishes what it read (written and acknowledged:
    nothing pending, one output per entry read) and exits with 0."""
    streams.add(customers(1000))
    consumer = start_consumer(env, tmp_path / "c.log", *streams.consumer_args("--batch-size", "20"))
    consumer.wait_consuming()
    with Producer(streams.add, customers(1000, prefix="late")):
        wait_for(lambda: len(streams.outputs()) >= 100, "the first outputs")
        consumer.signal(signal.SIGTERM)
        assert consumer.process.wait(timeout=30) == 0, consumer.text()
    info = streams.group_info()
    assert info["pending"] == 0
    assert len(streams.outputs()) == info["entries-read"] < 1000
    assert "SIGTERM: finishing the events in flight" in consumer.text()


def test_unreachable_redis_says_where_and_what_to_check(
    env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    url = f"redis://:secret@127.0.0.1:{port}/0?stream=events"
    result = run_consumer(
        env, "churn@production", "--source", url, "--sink", url.replace("events", "out")
    )
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0?stream=events" in message
    assert "check that redis-server runs there" in message
    assert "secret" not in result.stderr + result.stdout


def test_clear_errors_for_bad_urls_and_unknown_models(
    streams: Streams, settings: Settings, sqlite_registry: Registry, model_files: Any
) -> None:
    register_model(sqlite_registry, model_files)

    def fails(**changes: Any) -> str:
        fields: dict[str, Any] = {
            "reference": "churn@production",
            "source": streams.source,
            "sink": streams.sink,
        }
        fields.update(changes)
        with pytest.raises((InvalidInput, NotFound, BrokerUnavailable)) as caught:
            asyncio.run(run_stream(sqlite_registry, settings, StreamOptions(**fields)))
        return str(caught.value)

    assert "names no stream; add ?stream=NAME" in fails(source=f"{REDIS}/0")
    assert "unknown stream scheme 'amqp'" in fails(source="amqp://127.0.0.1:5672/events")
    assert "would read its own output forever" in fails(sink=streams.source)
    assert "database 'x' is not a number" in fails(sink=f"{REDIS}/x?stream=o")
    assert "'nope'" in fails(reference="nope@production")
    streams.client.set(f"{streams.name}.out", "a string")
    assert "holds a string, not a stream" in fails()


def test_a_sink_outage_loses_nothing(
    streams: Streams,
    settings: Settings,
    sqlite_registry: Registry,
    model_files: Any,
    private_redis: PrivateRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The sink's Redis dies mid-stream: the batch in hand stays unacknowledged, the consumer
    retries, and once Redis is back it re-reads its own pending entries and writes them all."""
    register_model(sqlite_registry, model_files)
    sink = f"{private_redis.url}?stream=out"
    options = StreamOptions("churn@production", streams.source, sink, group=streams.group)
    output = redis.Redis.from_url(private_redis.url)

    def written() -> list[str]:
        return [json.loads(e["data"])["id"] for e in streams.entries("out", output)]

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_stream(sqlite_registry, settings, options, stop))
        streams.add(customers(50))
        await _until(lambda: len(written()) == 50, task)
        private_redis.kill()
        streams.add(customers(50, prefix="late"))
        await _until(lambda: "trying again" in caplog.text, task)
        private_redis.start()  # empty: it kept nothing
        await _until(lambda: streams.group_info()["pending"] == 0 and len(written()) == 50, task)
        stop.set()
        await task

    with caplog.at_level(logging.INFO, logger="berth.stream"):
        asyncio.run(scenario())
    assert sorted(written()) == sorted(f"late-{i}" for i in range(50))
    assert "cannot reach Redis at" in caplog.text
    assert "re-reading" in caplog.text
    output.close()


async def _until(check: Callable[[], bool], task: asyncio.Task[None], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if task.done():
            task.result()  # raises what stopped the consumer
            raise AssertionError("the consumer stopped")
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
