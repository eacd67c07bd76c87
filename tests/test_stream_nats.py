"""`berth stream run` on the running NATS server with JetStream: a durable pull consumer,
outputs keyed by event id (`Nats-Msg-Id`), dead letters, a kill -9 mid-stream.

Every test uses subjects of its own (uuid names) and deletes the streams afterwards.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo

from berth.config import Settings
from berth.errors import InvalidInput
from berth.jobs.stream.options import StreamOptions
from berth.jobs.stream.runner import run_stream
from berth.jobs.stream.transport import BrokerUnavailable
from berth.registry.service import Registry
from tests.conftest import free_port, require_service
from tests.stream_helpers import (
    InOutNames,
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

NATS = "nats://127.0.0.1:4222"
BATCH = 50


@pytest.fixture(autouse=True)
def _no_leftover_consumers() -> Iterator[None]:
    yield
    kill_leftovers()


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return train_model(tmp_path_factory.mktemp("stream-model"))


@dataclass(frozen=True)
class Message:
    data: dict[str, Any]
    headers: dict[str, str]


@dataclass
class Subjects(InOutNames):
    """`<base>.in` (source), `<base>.out` (sink), `<base>.in.dead` (default dead letters)."""

    base: str

    def url(self, subject: str) -> str:
        return f"{NATS}/{subject}"

    def publish(self, events: list[bytes]) -> None:
        asyncio.run(_publish(self.source, events))

    def messages(self, subject: str) -> list[Message]:
        return asyncio.run(_messages(subject))

    def count(self, subject: str) -> int:
        return asyncio.run(_count(subject))

    def consumer(self, durable: str) -> ConsumerInfo:
        return asyncio.run(_consumer_info(self.source, durable))


async def _publish(subject: str, events: list[bytes]) -> None:
    client = await nats.connect(NATS)
    js = client.jetstream()
    await asyncio.gather(*(js.publish(subject, event) for event in events))
    await client.close()


async def _messages(subject: str) -> list[Message]:
    """Every message of the stream holding `subject`, through a throwaway consumer."""
    client = await nats.connect(NATS)
    js = client.jetstream()
    stream = await js.find_stream_name_by_subject(subject)
    state = (await js.stream_info(stream, subjects_filter=subject)).state
    total = (state.subjects or {}).get(subject, 0)
    config = ConsumerConfig(ack_policy=AckPolicy.NONE, filter_subject=subject)
    subscription = await js.pull_subscribe(subject, stream=stream, config=config)
    found: list[Message] = []
    try:
        while len(found) < total:
            batch = await subscription.fetch(500, timeout=1)
            found += [Message(json.loads(m.data), dict(m.headers or {})) for m in batch]
    finally:
        await client.close()
    return found


async def _count(subject: str) -> int:
    client = await nats.connect(NATS)
    js = client.jetstream()
    try:
        stream = await js.find_stream_name_by_subject(subject)
        state = (await js.stream_info(stream, subjects_filter=subject)).state
        return (state.subjects or {}).get(subject, 0)
    except nats.js.errors.NotFoundError:
        return 0
    finally:
        await client.close()


async def _consumer_info(subject: str, durable: str) -> ConsumerInfo:
    client = await nats.connect(NATS)
    js = client.jetstream()
    try:
        stream = await js.find_stream_name_by_subject(subject)
        info: ConsumerInfo = await js.consumer_info(stream, durable)
        return info
    finally:
        await client.close()


async def _delete_streams(base: str) -> None:
    client = await nats.connect(NATS)
    js = client.jetstream()
    for info in await js.streams_info():
        name = info.config.name
        if name and any(s.startswith(base) for s in info.config.subjects or []):
            await js.delete_stream(name)
    await client.close()


@pytest.fixture
def subjects() -> Iterator[Subjects]:
    try:
        asyncio.run(_ping())
    except (nats.errors.Error, OSError) as exc:
        require_service("NATS", str(exc) or type(exc).__name__)
    base = f"bt{uuid.uuid4().hex[:10]}"
    yield Subjects(base)
    asyncio.run(_delete_streams(base))


async def _ping() -> None:
    client = await nats.connect(NATS, connect_timeout=2, max_reconnect_attempts=1)
    try:
        await client.jetstream().account_info()
    finally:
        await client.close()


@pytest.fixture
def env(
    settings: Settings, sqlite_registry: Registry, model_files: tuple[Path, Path, Path]
) -> dict[str, str]:
    register_model(sqlite_registry, model_files)
    return consumer_env(settings)


def test_scores_events_and_dead_letters_the_bad_ones(
    subjects: Subjects, env: dict[str, str], sqlite_registry: Registry, tmp_path: Path
) -> None:
    """The consumer creates the missing streams (and says so); each good event comes out once,
    with the runtime's prediction and `Nats-Msg-Id` = event id (an event without an id is known by
    its stream sequence); bad events go to `<subject>.dead` with the reason; nothing is left
    pending, and the lag gauge reaches 0."""
    port = free_port()
    group = "scorer"
    consumer = start_consumer(
        env,
        tmp_path / "consumer.log",
        "churn@production",
        "--source",
        subjects.url(subjects.source),
        "--sink",
        subjects.url(subjects.sink),
        "--group",
        group,
        "--metrics-port",
        str(port),
        "--report-seconds",
        "0.5",
    )
    good = customers(200)
    anonymous = {k: v for k, v in customers(1, seed=5)[0].items() if k != "id"}
    bad = {
        b"{not json": "is not valid JSON",
        json.dumps({**good[0], "id": "far", "tenure_months": 900}).encode(): "outside the allowed",
        json.dumps({"id": "short", "plan": "pro"}).encode(): "missing column 'tenure_months'",
    }
    try:
        consumer.wait_consuming()
        assert f"created stream {subjects.source.replace('.', '_')}" in consumer.text()
        subjects.publish([json.dumps(e).encode() for e in good[:100]])
        subjects.publish(list(bad))
        subjects.publish([json.dumps(anonymous).encode()])
        subjects.publish([json.dumps(e).encode() for e in good[100:]])
        wait_for(lambda: subjects.count(subjects.sink) >= 201, "every output")
        wait_for(lambda: subjects.count(subjects.dead) >= 3, "the dead letters")
        scrape = scraper(port)
        labels = {"source": subjects.source, "group": group}
        wait_for(lambda: metric(scrape(), "berth_stream_consumer_lag", **labels) == 0, "lag 0")
        text = scrape()
    finally:
        assert consumer.stop() == 0, consumer.text()
    outputs = subjects.messages(subjects.sink)
    want = expected(sqlite_registry, good)
    by_id = {m.data["id"]: m for m in outputs}
    assert len(outputs) == len(by_id) == 201
    for event_id, message in by_id.items():
        assert message.headers["Nats-Msg-Id"] == event_id
        if event_id in want:
            assert_output(message.data, want[event_id], version=1)
    assert (set(by_id) - set(want)) == {"104"}  # the 104th message on the subject has no id
    dead = subjects.messages(subjects.dead)
    assert len(dead) == 3
    for payload, reason in bad.items():
        letter = next(m for m in dead if m.data["payload"] == payload.decode())
        assert reason in letter.data["reason"]
        assert letter.headers["Nats-Msg-Id"] == letter.data["id"]
    info = subjects.consumer(group)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    source = {"source": subjects.source}
    assert metric(text, "berth_stream_events_total", outcome="scored", **source) == 201
    assert metric(text, "berth_stream_events_total", outcome="dead_lettered", **source) == 3


def test_kill_9_then_restart_publishes_each_output_once(
    subjects: Subjects, env: dict[str, str], tmp_path: Path
) -> None:
    """A kill -9 lands after the consumer published outputs and before it acknowledged their
    events (aimed at; else any moment with events in flight). Restarted on the same durable,
    it gets those events again after the ack wait (`--claim-idle-ms`), scores them again and
    publishes with the same `Nats-Msg-Id`, which JetStream drops as duplicates: every input id
    appears in the output stream exactly once. (This holds within the stream's duplicate window,
    2 minutes; a restart later than that would repeat at most the unacknowledged batch.)"""
    asyncio.run(_create_stream(subjects.base))
    group = "crash"
    args = (
        "churn@production",
        "--source",
        subjects.url(subjects.source),
        "--sink",
        subjects.url(subjects.sink),
        "--group",
        group,
        "--batch-size",
        str(BATCH),
        "--max-wait-ms",
        "100",
        "--claim-idle-ms",
        "1000",
    )
    events = [json.dumps(e).encode() for e in customers(1000)]
    first = start_consumer(env, tmp_path / "a.log", *args)
    first.wait_consuming()

    def in_flight() -> int:
        return subjects.consumer(group).num_ack_pending or 0

    def written_not_acknowledged() -> int:
        info = subjects.consumer(group)
        acknowledged = _delivered(info) - (info.num_ack_pending or 0)
        return subjects.count(subjects.sink) - acknowledged

    with Producer(subjects.publish, events):
        wait_for(lambda: _delivered(subjects.consumer(group)) >= 300, "300 read")
        if not first.freeze_when(lambda: in_flight() > 0 and written_not_acknowledged() > 0, 1.2):
            assert first.freeze_when(lambda: in_flight() > 0), "no events were ever in flight"
        first.kill()
        # bytes it had sent before the freeze (acks) reach the server
        pending, written = settled(
            lambda: (in_flight(), written_not_acknowledged()), "events in flight"
        )
        second = start_consumer(env, tmp_path / "b.log", *args)
    try:
        wait_for(lambda: subjects.count(subjects.sink) >= 1000, "every output", 90)
        wait_for(lambda: in_flight() == 0, "every event acknowledged")
        info = subjects.consumer(group)
        assert info.num_pending == 0
    finally:
        assert second.stop() == 0, second.text()
    ids = Counter(m.data["id"] for m in subjects.messages(subjects.sink))
    assert set(ids) == {f"e-{i}" for i in range(1000)}
    assert max(ids.values()) == 1
    assert 0 < pending <= BATCH * 2  # a batch, plus what a pull in flight at the kill delivered
    dropped = sum(int(n) for n in re.findall(r"JetStream dropped (\d+) of", second.text()))
    assert dropped == written  # exactly the outputs published before the kill came again
    print(
        f"\nnats: 1000 sent, {pending} in flight at the kill ({written} published), 0 lost, "
        f"{dropped} republished and dropped by JetStream, 0 duplicates in the output stream"
    )


def _delivered(info: ConsumerInfo) -> int:
    """Deliveries the durable made (redeliveries included)."""
    return info.delivered.consumer_seq or 0 if info.delivered else 0


async def _create_stream(base: str) -> None:
    client = await nats.connect(NATS)
    await client.jetstream().add_stream(name=base, subjects=[f"{base}.>"])
    await client.close()


async def _add_stream(name: str, subjects: list[str]) -> None:
    client = await nats.connect(NATS)
    await client.jetstream().add_stream(name=name, subjects=subjects)
    await client.close()


async def _delete_stream(name: str) -> None:
    client = await nats.connect(NATS)
    await client.jetstream().delete_stream(name)
    await client.close()


def test_a_source_that_names_its_stream_gets_its_dead_letters(
    subjects: Subjects, env: dict[str, str], tmp_path: Path
) -> None:
    """Issue 15: `nats://.../SUBJECT?stream=NAME` as the source, dead letters by default.

    NAME holds SUBJECT only, as a stream made for it by its owner would. The dead letters go
    to SUBJECT.dead, which NAME does not hold: the consumer creates the stream that does (and
    says so), every bad event is dead-lettered once and acknowledged, none is delivered again.
    Deleted while the consumer runs, the dead-letter stream is created again."""
    stream = f"{subjects.base}_ORDERS"
    asyncio.run(_add_stream(stream, [subjects.source]))
    group = "named"
    consumer = start_consumer(
        env,
        tmp_path / "consumer.log",
        "churn@production",
        "--source",
        f"{subjects.url(subjects.source)}?stream={stream}",
        "--sink",
        subjects.url(subjects.sink),
        "--group",
        group,
        "--claim-idle-ms",
        "1000",
    )
    bad = [b"{not json", json.dumps({"id": "short", "plan": "pro"}).encode()]
    try:
        consumer.wait_consuming()
        dead_stream = subjects.dead.replace(".", "_")
        assert f"created stream {dead_stream} for it" in consumer.text()
        subjects.publish([json.dumps(e).encode() for e in customers(20)] + bad)
        wait_for(lambda: subjects.count(subjects.dead) >= 2, "the dead letters", 20)
        wait_for(lambda: subjects.count(subjects.sink) >= 20, "every output", 20)
        wait_for(lambda: (subjects.consumer(group).num_ack_pending or 0) == 0, "all acked")
        time.sleep(1.5)  # longer than the ack wait: nothing comes back
        info = subjects.consumer(group)
        assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 0, 0)

        asyncio.run(_delete_stream(dead_stream))
        subjects.publish([b"{still not json"])
        wait_for(lambda: subjects.count(subjects.dead) >= 1, "a dead letter after the delete")
        wait_for(lambda: (subjects.consumer(group).num_ack_pending or 0) == 0, "all acked")
    finally:
        assert consumer.stop() == 0, consumer.text()
    assert "nothing answered" not in consumer.text()
    assert [m.data["payload"] for m in subjects.messages(subjects.dead)] == ["{still not json"]


def test_a_named_stream_that_does_not_hold_the_subject_is_refused_at_start(
    subjects: Subjects, env: dict[str, str], tmp_path: Path
) -> None:
    """Publishing to a subject no stream holds gets no answer: rather than retrying forever
    and blaming NATS, the consumer refuses to start and says what to change."""
    stream = f"{subjects.base}_ORDERS"
    asyncio.run(_add_stream(stream, [subjects.source]))
    wrong = f"{subjects.base}.failed"
    done = run_consumer(
        env,
        "churn@production",
        "--source",
        f"{subjects.url(subjects.source)}?stream={stream}",
        "--sink",
        subjects.url(subjects.sink),
        "--dead-letter",
        f"{subjects.url(wrong)}?stream={stream}",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    *_logs, error = done.stderr.strip().splitlines()
    assert error == (
        f"error: JetStream stream {stream!r} at {NATS}/{wrong}?stream={stream} does not hold "
        f"subject {wrong!r} (its subjects: {subjects.source}); add the subject to the stream, "
        "or drop ?stream= to let Berth find the stream that holds it (or create one)"
    )
    assert "Traceback" not in done.stderr


def test_unreachable_nats_and_bad_subjects_are_clear(
    settings: Settings, sqlite_registry: Registry, model_files: tuple[Path, Path, Path]
) -> None:
    register_model(sqlite_registry, model_files)
    port = free_port()

    def fails(source: str, sink: str, **extra: Any) -> str:
        options = StreamOptions("churn@production", source, sink, **extra)
        with pytest.raises((InvalidInput, BrokerUnavailable)) as caught:
            asyncio.run(run_stream(sqlite_registry, settings, options))
        return str(caught.value)

    message = fails(f"nats://127.0.0.1:{port}/events", f"nats://127.0.0.1:{port}/out")
    assert f"cannot reach NATS at nats://127.0.0.1:{port}/events" in message
    assert "check that nats-server runs there with JetStream (-js)" in message
    assert "names no subject" in fails(NATS, f"{NATS}/out")
    assert "has wildcards" in fails(f"{NATS}/orders.*", f"{NATS}/out")
    assert "read its own output forever" in fails(
        f"{NATS}/orders.*", f"{NATS}/orders.out", dead_letter=f"{NATS}/d"
    )
    assert "not a NATS durable name" in fails(f"{NATS}/a", f"{NATS}/b", group="my.group")
