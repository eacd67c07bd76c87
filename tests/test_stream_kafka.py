"""`berth stream run` on a real Kafka-protocol broker (Tansu, tests/kafka_broker.py): a consumer
group with offsets committed after the outputs are acknowledged, dead letters with reasons,
headers and keys, a rebalance between two consumers, a kill -9 mid-batch, lag per partition.

Every test uses topics and a group of its own (uuid names).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from berth.config import Settings
from berth.errors import InvalidInput
from berth.jobs.stream.kafka_streams import KafkaSource
from berth.jobs.stream.options import StreamOptions
from berth.jobs.stream.runner import run_stream
from berth.jobs.stream.transport import BrokerUnavailable, SourceConfig
from berth.registry.endpoints import EndpointService, RouteSpec
from berth.registry.service import Registry
from berth.serving.route_stats import read_totals
from tests.conftest import free_port
from tests.kafka_broker import KafkaBroker
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

T = TypeVar("T")
BATCH = 50
Headers = list[tuple[str, bytes]]


@pytest.fixture(autouse=True)
def _no_leftover_consumers() -> Iterator[None]:
    yield
    kill_leftovers()


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return train_model(tmp_path_factory.mktemp("stream-model"))


@pytest.fixture
def env(
    settings: Settings, sqlite_registry: Registry, model_files: tuple[Path, Path, Path]
) -> dict[str, str]:
    register_model(sqlite_registry, model_files)
    return consumer_env(settings)


@dataclass(frozen=True)
class Message:
    partition: int
    offset: int
    key: str | None
    data: dict[str, Any]
    headers: dict[str, str]


class Loop:
    """An event loop in a thread of its own, so the tests' Kafka clients stay connected while
    the test thread waits, and can be asked from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Topics(InOutNames):
    """`<base>.in` (source, `partitions` partitions), `<base>.out`, `<base>.in.dead`."""

    broker: KafkaBroker
    base: str
    loop: Loop
    producer: AIOKafkaProducer
    group: str

    def url(self, topic: str) -> str:
        return self.broker.url(topic)

    def create(self, topic: str, partitions: int) -> None:
        self.loop.run(_create(self.broker.bootstrap, topic, partitions))

    def send(
        self, events: Sequence[bytes | dict[str, Any]], key: str | None = None, **headers: str
    ) -> None:
        """Events to the source, each acknowledged, one at a time (Tansu reports a partition's
        end offset right only after single-record writes)."""
        header_list = [(k.replace("_", "-"), v.encode()) for k, v in headers.items()]

        async def send() -> None:
            for event in events:
                value = event if isinstance(event, bytes) else json.dumps(event).encode()
                await self.producer.send_and_wait(
                    self.source,
                    value,
                    key=key.encode() if key is not None else None,
                    headers=header_list,
                )

        self.loop.run(send(), timeout=120)

    def messages(self, topic: str) -> list[Message]:
        return self.loop.run(_read_all(self.broker.bootstrap, topic))

    def committed(self) -> dict[int, int]:
        return self.loop.run(_committed(self.broker.bootstrap, self.source, self.group))


async def _create(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def _read_all(bootstrap: str, topic: str) -> list[Message]:
    """Every record of the topic, read to the end (the end as the fetches report it)."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        partitions = reader.partitions_for_topic(topic) or set()
        if not partitions:
            await reader.topics()  # fetches the metadata
            partitions = reader.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        found: list[Message] = []
        quiet = 0
        while quiet < 3:  # three empty fetches in a row: the end
            batch = await reader.getmany(timeout_ms=150, max_records=1000)
            records = [r for rs in batch.values() for r in rs]
            quiet = 0 if records else quiet + 1
            found += [
                Message(
                    r.partition,
                    r.offset,
                    r.key.decode() if r.key else None,
                    json.loads(r.value),
                    {k: v.decode() for k, v in r.headers},
                )
                for r in records
            ]
        return found
    finally:
        await reader.stop()


async def _committed(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    """The group's committed offset per partition (0 where it committed none)."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        await reader.topics()  # fetches the metadata
        partitions = sorted(reader.partitions_for_topic(topic) or ())
        done = [await reader.committed(TopicPartition(topic, p)) for p in partitions]
        return {p: d or 0 for p, d in zip(partitions, done, strict=True)}
    finally:
        await reader.stop()


@pytest.fixture
def topics(kafka_broker: KafkaBroker) -> Iterator[Topics]:
    loop = Loop()

    async def started() -> AIOKafkaProducer:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
        await producer.start()
        return producer

    producer = loop.run(started())
    base = f"bt{uuid.uuid4().hex[:10]}"
    try:
        yield Topics(kafka_broker, base, loop, producer, group=f"{base}-group")
    finally:
        loop.run(producer.stop())
        loop.close()


def consumer_args(topics: Topics, *extra: str) -> tuple[str, ...]:
    return (
        "churn@production",
        "--source",
        topics.url(topics.source),
        "--sink",
        topics.url(topics.sink),
        "--group",
        topics.group,
        # Tansu holds a group's first join for half the rebalance timeout (= this).
        "--claim-idle-ms",
        "3000",
        *extra,
    )


def test_scores_events_dead_letters_and_maps_headers(
    topics: Topics, env: dict[str, str], sqlite_registry: Registry, tmp_path: Path
) -> None:
    """Three partitions. Good events come out once each, with the runtime's prediction, under the
    input's key (else the event id) and with `berth-event-id`; the request id header comes
    along; a keyed event without an id is known by its key. MLServer's headers are honoured:
    naming this model (and its version) is scored, another model, version or method is
    dead-lettered with the reason. Outputs of one key keep their order. Lag per partition and
    outcomes reach the metrics port; the group's committed offsets reach the end."""
    topics.create(topics.source, 3)
    port = free_port()
    consumer = start_consumer(
        env,
        tmp_path / "consumer.log",
        *consumer_args(topics, "--metrics-port", str(port), "--report-seconds", "0.3"),
    )
    good = customers(60)
    ordered = customers(30, seed=3, prefix="o")
    anonymous = {k: v for k, v in customers(1, seed=5)[0].items() if k != "id"}
    try:
        consumer.wait_consuming()
        topics.send(good[:20])
        topics.send(good[20:30], x_request_id="req-42")
        topics.send(good[30:40], mlserver_model="churn", mlserver_version="1")
        topics.send(good[40:60], key="user-7", mlserver_method="infer")
        topics.send(ordered, key="ordered-key")
        topics.send([anonymous], key="k-anon", request_id="req-anon")
        topics.send([good[0] | {"id": "wrong-model"}], mlserver_model="fraud")
        topics.send([good[0] | {"id": "wrong-version"}], mlserver_version="v0.1.0")
        topics.send([good[0] | {"id": "wrong-method"}], mlserver_method="metadata")
        topics.send([b"{not json"], key="k-bad")
        topics.send(
            [
                {"id": "far", **{k: v for k, v in good[1].items() if k != "id"}}
                | {"tenure_months": 900}
            ]
        )
        scrape = scraper(port)
        source = {"source": topics.source}
        wait_for(
            lambda: (
                metric(scrape(), "berth_stream_events_total", outcome="dead_lettered", **source)
                == 5
            ),
            "the dead letters",
        )
        wait_for(
            lambda: metric(scrape(), "berth_stream_events_total", outcome="scored", **source) == 91,
            "every output",
        )
        labels = {"source": topics.source, "group": topics.group}
        wait_for(
            lambda: all(
                metric(scrape(), "berth_stream_partition_lag", partition=str(p), **labels) == 0
                for p in range(3)
            ),
            "lag 0 on every partition",
        )
        text = scrape()
    finally:
        assert consumer.stop() == 0, consumer.text()
    assert metric(text, "berth_stream_consumer_lag", **labels) == 0
    assert "refused an idempotent producer" in consumer.text() or (
        "idempotent producer" in consumer.text()
    )
    outputs = topics.messages(topics.sink)
    by_id = {m.data["id"]: m for m in outputs}
    assert len(outputs) == len(by_id) == 91
    want = expected(sqlite_registry, good + ordered)
    for event_id, message in by_id.items():
        assert message.headers["berth-event-id"] == event_id
        if event_id in want:
            assert_output(message.data, want[event_id], version=1)
    assert by_id["k-anon"].key == "k-anon"  # no id in the body: the key is the event id
    assert by_id["k-anon"].headers["x-request-id"] == "req-anon"
    assert by_id["e-0"].key == "e-0"  # no key: written under the event id
    assert all(by_id[f"e-{i}"].headers["x-request-id"] == "req-42" for i in range(20, 30))
    assert "x-request-id" not in by_id["e-0"].headers
    assert {by_id[f"e-{i}"].key for i in range(40, 60)} == {"user-7"}
    in_order = sorted((m for m in outputs if m.key == "ordered-key"), key=lambda m: m.offset)
    assert [m.data["id"] for m in in_order] == [f"o-{i}" for i in range(30)]
    dead = {m.data["id"]: m for m in topics.messages(topics.dead)}
    assert set(dead) == {"wrong-model", "wrong-version", "wrong-method", "k-bad", "far"}
    assert "addressed to model 'fraud'" in dead["wrong-model"].data["reason"]
    assert "asks for version 'v0.1.0'" in dead["wrong-version"].data["reason"]
    assert "method 'metadata' is not scored" in dead["wrong-method"].data["reason"]
    assert "is not valid JSON" in dead["k-bad"].data["reason"]
    assert dead["k-bad"].key == "k-bad"
    assert "outside the allowed" in dead["far"].data["reason"]
    for letter in dead.values():
        assert letter.headers["berth-reason"] == letter.data["reason"]
        assert letter.headers["berth-event-id"] == letter.data["id"]
    assert sum(topics.committed().values()) == 96


def test_lag_per_partition_before_consuming(topics: Topics, settings: Settings) -> None:
    """The source reads the group's lag per partition from the broker: every record of a
    partition before the group committed anything (`--start first`), none for `--start new`."""
    topics.create(topics.source, 2)
    for i in range(8):
        topics.send(customers(1, prefix=f"k{i}"), key=f"k{i}")

    async def lag(start: str) -> tuple[int | None, int, dict[int, int]]:
        config = SourceConfig(topics.group + start, "test", 3000, start=start)  # type: ignore[arg-type]
        source = KafkaSource(topics.url(topics.source), config)
        await source.open()
        try:
            found = await source.lag()
        finally:
            await source.close()
        return found.waiting, found.pending, dict(found.partitions or {})

    written = Counter(m.partition for m in topics.messages(topics.source))
    waiting, pending, partitions = asyncio.run(lag("first"))
    assert partitions == {p: written[p] for p in (0, 1)}
    assert (waiting, pending) == (8, 0)
    assert asyncio.run(lag("new"))[2] == {0: 0, 1: 0}


def test_rebalance_between_two_consumers_loses_nothing(
    topics: Topics, env: dict[str, str], tmp_path: Path
) -> None:
    """Four partitions, events flowing. A second consumer joins the group (the partitions are
    shared: both score), then the first stops on SIGTERM mid-stream (the second takes all).
    Every event comes out; repeats, if any, are at most one batch per rebalance."""
    topics.create(topics.source, 4)
    args = consumer_args(topics, "--batch-size", str(BATCH))
    ports = free_port(), free_port()
    events = customers(900)
    first = start_consumer(env, tmp_path / "a.log", *args, "--metrics-port", str(ports[0]))
    first.wait_consuming()
    keys = [f"user-{i % 40}" for i in range(len(events))]

    def send(chunk: list[tuple[str, dict[str, Any]]]) -> None:
        for key, event in chunk:
            topics.send([event], key=key)
        time.sleep(0.08)  # about 100 events/s: still flowing when the second consumer is up

    scored = [scraper(port) for port in ports]
    source = {"source": topics.source, "outcome": "scored"}

    def scored_by(index: int) -> float:
        try:
            return metric(scored[index](), "berth_stream_events_total", **source) or 0
        except httpx.TransportError:  # not serving metrics yet
            return 0

    with Producer(send, list(zip(keys, events, strict=True)), chunk=10):
        wait_for(lambda: scored_by(0) >= 150, "the first consumer scoring")
        second = start_consumer(env, tmp_path / "b.log", *args, "--metrics-port", str(ports[1]))
        wait_for(lambda: scored_by(1) >= 50, "the second consumer scoring", 90)
        assert first.stop() == 0, first.text()
    try:
        wait_for(lambda: len(topics.messages(topics.sink)) >= 900, "every output", 90)
        wait_for(lambda: sum(topics.committed().values()) == 900, "every offset committed")
    finally:
        assert second.stop() == 0, second.text()
    ids = Counter(m.data["id"] for m in topics.messages(topics.sink))
    assert set(ids) == {f"e-{i}" for i in range(900)}
    repeats = sum(n - 1 for n in ids.values())
    assert repeats <= 2 * BATCH  # two rebalances, at most one batch each
    assert "assigned partitions" in first.text()
    assert "assigned partitions" in second.text()
    print(f"\nkafka rebalance: 900 sent, 0 lost, {repeats} repeated")


def test_kill_9_mid_batch_then_restart_loses_nothing(
    topics: Topics, env: dict[str, str], tmp_path: Path
) -> None:
    """A kill -9 lands after the consumer wrote outputs and before it committed their offsets
    (aimed at; else any moment with events flowing). Restarted in the same group, it reads from
    the committed offsets: every event comes out, and the only repeats are the outputs written
    and not committed at the kill, at most one batch."""
    topics.create(topics.source, 2)
    args = consumer_args(topics, "--batch-size", str(BATCH), "--max-wait-ms", "100")
    events = customers(1000)
    first = start_consumer(env, tmp_path / "a.log", *args)
    first.wait_consuming()
    outputs = OutputCounter(topics)

    def written_not_committed() -> int:
        return outputs.count() - sum(topics.committed().values())

    def send(chunk: list[dict[str, Any]]) -> None:
        topics.send(chunk)

    try:
        with Producer(send, events, chunk=20):
            wait_for(lambda: outputs.count() >= 300, "300 scored")
            aimed = first.freeze_when(lambda: written_not_committed() > 0, 15)
            first.kill()
            # the outputs it had written reach the counter
            written = settled(written_not_committed, "outputs written and not committed")
            second = start_consumer(env, tmp_path / "b.log", *args)
        wait_for(lambda: outputs.count() >= 1000 + written, "every output", 90)
        wait_for(lambda: sum(topics.committed().values()) == 1000, "every offset committed")
    finally:
        outputs.close()
        assert second.stop() == 0, second.text()
    ids = Counter(m.data["id"] for m in topics.messages(topics.sink))
    assert set(ids) == {f"e-{i}" for i in range(1000)}
    repeats = sum(n - 1 for n in ids.values())
    assert repeats == written
    assert 0 <= repeats <= BATCH
    print(
        f"\nkafka: 1000 sent, kill -9 {'mid-batch' if aimed else 'at a random moment'} "
        f"with {written} outputs written and not committed, 0 lost, {repeats} repeated"
    )


class OutputCounter:
    """Counts the records of the output topic as they arrive, in a reader of its own."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.seen = 0
        self.running = True
        self.task = asyncio.run_coroutine_threadsafe(self._follow(), topics.loop.loop)

    async def _follow(self) -> None:
        reader = AIOKafkaConsumer(
            self.topics.sink,
            bootstrap_servers=self.topics.broker.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            metadata_max_age_ms=500,
        )
        await reader.start()
        try:
            while self.running:
                batch = await reader.getmany(timeout_ms=50)
                self.seen += sum(len(r) for r in batch.values())
        finally:
            await reader.stop()

    def count(self) -> int:
        time.sleep(0.1)  # let the reader catch up with what was written before now
        return self.seen

    def close(self) -> None:
        self.running = False
        self.task.result(10)


def test_sigterm_drains_and_exits_0(topics: Topics, env: dict[str, str], tmp_path: Path) -> None:
    topics.create(topics.source, 1)
    topics.send(customers(200))
    consumer = start_consumer(env, tmp_path / "c.log", *consumer_args(topics, "--batch-size", "20"))
    wait_for(lambda: sum(topics.committed().values()) > 0, "a first commit")
    assert consumer.stop() == 0, consumer.text()
    committed = sum(topics.committed().values())
    ids = Counter(m.data["id"] for m in topics.messages(topics.sink))
    assert len(ids) == committed  # every output written was committed, and no more
    assert max(ids.values()) == 1


def test_bad_urls_and_an_unreachable_broker_are_one_line_errors(
    kafka_broker: KafkaBroker,
    settings: Settings,
    sqlite_registry: Registry,
    model_files: tuple[Path, Path, Path],
    env: dict[str, str],
) -> None:
    register_model(sqlite_registry, model_files)
    port = free_port()
    here = kafka_broker.url("t")

    def fails(source: str, sink: str, **extra: Any) -> str:
        options = StreamOptions("churn@production", source, sink, **extra)
        with pytest.raises((InvalidInput, BrokerUnavailable)) as caught:
            asyncio.run(run_stream(sqlite_registry, settings, options))
        return str(caught.value)

    message = fails(f"kafka://127.0.0.1:{port}/events", f"kafka://127.0.0.1:{port}/out")
    assert f"cannot reach Kafka at kafka://127.0.0.1:{port}/events" in message
    assert "check that a Kafka broker runs there" in message
    assert "names no topic" in fails(f"kafka://{kafka_broker.bootstrap}", here)
    assert "is not a Kafka topic name" in fails(f"kafka://{kafka_broker.bootstrap}/a b", here)
    assert "unknown option 'acks'" in fails(f"{here}?acks=1", f"{here}.out")
    assert "partitions must be a number" in fails(f"{here}?partitions=0", f"{here}.out")
    assert "take no user or password" in fails(f"kafka://u:p@{kafka_broker.bootstrap}/a", here)
    assert "read its own output forever" in fails(here, here, dead_letter=f"{here}.d")
    assert "is not a valid URL" in fails("kafka://127.0.0.1:1,127.0.0.1:x/a", here)

    done = run_consumer(
        env, "churn@production", "--source", f"kafka://127.0.0.1:{port}/in", "--sink", here
    )
    assert done.returncode == 1, done.stdout + done.stderr
    *_logs, error = done.stderr.strip().splitlines()
    assert error.startswith(f"error: cannot reach Kafka at kafka://127.0.0.1:{port}/in while ")
    assert "Traceback" not in done.stderr


def test_dead_letter_url_and_multiple_servers() -> None:
    from berth.jobs.stream.transport import dead_letter_url

    url = "kafka://k1:9093,k2/orders?partitions=6"
    assert dead_letter_url(url) == "kafka://k1:9093,k2:9092/orders.dead"


def test_an_endpoint_routes_by_the_key_and_the_route_header(
    topics: Topics,
    env: dict[str, str],
    sqlite_registry: Registry,
    model_files: tuple[Path, Path, Path],
    tmp_path: Path,
) -> None:
    """`berth stream run ENDPOINT`: churn:1 and churn:2 at 50/50 with no sticky setting, so the
    Kafka key is the sticky key: the events of one key all land on one version, both versions get
    keys, `x-berth-route` sends an event to that route, and every output names the endpoint, the
    route and the version. Each route's traffic is recorded where rollouts read it."""
    register_model(sqlite_registry, model_files)  # churn:2 beside churn:1
    service = EndpointService(sqlite_registry)
    service.create("churn-live", "churn:1")
    routes = [
        RouteSpec("stable", "stable", "churn", 1, 50),
        RouteSpec("canary", "canary", "churn", 2, 50),
    ]
    service.set_routes("churn-live", routes, "half and half")
    topics.create(topics.source, 2)
    args = consumer_args(topics)
    consumer = start_consumer(env, tmp_path / "consumer.log", "churn-live", *args[1:])
    events = customers(48)
    try:
        consumer.wait_consuming()
        for k in range(12):
            topics.send(events[k * 4 : k * 4 + 4], key=f"user-{k}")
        topics.send(customers(5, seed=4, prefix="f"), x_berth_route="canary")
        topics.send([events[0] | {"id": "pinned"}], mlserver_version="1")
        topics.send([events[0] | {"id": "elsewhere"}], mlserver_model="fraud")
        wait_for(lambda: len(topics.messages(topics.sink)) >= 54, "every output")
    finally:
        assert consumer.stop() == 0, consumer.text()
    by_id = {m.data["id"]: m.data for m in topics.messages(topics.sink)}
    assert len(by_id) == 54
    answered = {i: (d["endpoint"], d["route"], d["model"], d["version"]) for i, d in by_id.items()}
    per_key = [{answered[f"e-{k * 4 + j}"] for j in range(4)} for k in range(12)]
    assert all(len(versions) == 1 for versions in per_key), per_key
    assert {next(iter(v)) for v in per_key} == {
        ("churn-live", "stable", "churn", 1),
        ("churn-live", "canary", "churn", 2),
    }
    assert {answered[f"f-{i}"] for i in range(5)} == {("churn-live", "canary", "churn", 2)}
    assert answered["pinned"] == ("churn-live", "stable", "churn", 1)
    dead = {m.data["id"]: m.data for m in topics.messages(topics.dead)}
    assert "addressed to model 'fraud'" in dead["elsewhere"]["reason"]
    totals = read_totals(sqlite_registry.db, "churn-live")
    assert totals[("churn", 1)].requests > 0
    assert totals[("churn", 2)].requests > 0
