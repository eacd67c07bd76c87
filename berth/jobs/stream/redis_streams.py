"""Redis Streams: a consumer group as the source, XADD as the sink.

URL: `redis[s]://[[user]:password@]host[:port][/db]?stream=NAME`; any other query parameter
goes to redis-py (e.g. `socket_timeout`). The dead-letter stream defaults to `NAME.dead`.

Reading: this consumer's own unacknowledged entries first (a restart under the same `--consumer`
takes them over at once), then entries other consumers left unacknowledged for longer than the
claim idle time (XAUTOCLAIM: a dead consumer's work), then new entries (XREADGROUP `>`).

Settling: when the sink and dead-letter streams live on the source's server (and database), one
Lua script acknowledges each entry and writes its output atomically, and skips the write of an
entry another consumer already acknowledged: exactly one output per entry, even across a kill -9
or a claim race. Elsewhere the records are written first and the entries acknowledged after:
at least once, duplicates only from the batch in flight.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from berth import redis_client
from berth.errors import InvalidInput
from berth.jobs.stream.events import Received, Record
from berth.jobs.stream.transport import (
    BrokerUnavailable,
    Lag,
    Sink,
    SourceConfig,
    Write,
    redact,
    split,
)

log = logging.getLogger("berth.stream")

CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 15.0
"""Longer than any blocking read we issue (they block at most a second)."""
EXAMPLE = "redis://127.0.0.1:6379/0?stream=events"

# KEYS[1]: the source stream; KEYS[2..]: the streams written to.
# ARGV[1]: the group; ARGV[2]: n; ARGV[3 .. n+2]: entry ids to acknowledge; then one group of six
# per record: entry id it answers, index into KEYS, event id, JSON data, reason ('' = none),
# '1' to write even if the entry was not pending.
SETTLE_SCRIPT = """
local group = ARGV[1]
local n = tonumber(ARGV[2])
local fresh = {}
for i = 3, n + 2 do
  if redis.call('XACK', KEYS[1], group, ARGV[i]) == 1 then fresh[ARGV[i]] = true end
end
local written = 0
for i = n + 3, #ARGV, 6 do
  if fresh[ARGV[i]] or ARGV[i + 5] == '1' then
    local key = KEYS[tonumber(ARGV[i + 1])]
    if ARGV[i + 4] == '' then
      redis.call('XADD', key, '*', 'id', ARGV[i + 2], 'data', ARGV[i + 3])
    else
      redis.call('XADD', key, '*', 'id', ARGV[i + 2], 'reason', ARGV[i + 4], 'data', ARGV[i + 3])
    end
    written = written + 1
  end
end
return written
"""


@dataclass(frozen=True)
class RedisAddress:
    url: str
    """The connection URL, without `stream`."""
    stream: str
    server: tuple[Any, ...]
    """Scheme, host, port, database and user: two addresses with the same server can be
    written in one script."""
    display: str

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        parts = split(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        streams = [value for key, value in query if key == "stream"]
        if len(streams) != 1 or not streams[0]:
            raise InvalidInput(f"{redact(url)!r} names no stream; add ?stream=NAME, e.g. {EXAMPLE}")
        rest = [(key, value) for key, value in query if key != "stream"]
        connection = parts._replace(query=urlencode(rest)).geturl()
        database = parts.path.strip("/") or dict(rest).get("db", "0")
        if not database.isdigit():
            raise InvalidInput(
                f"{redact(url)!r}: database {database!r} is not a number; write e.g. {EXAMPLE}"
            )
        server = (
            parts.scheme,
            parts.hostname,
            parts.port or 6379,
            int(database),
            parts.username,
            parts.password,
        )
        return cls(connection, streams[0], server, redact(url))

    def connect(self) -> aioredis.Redis:
        return redis_client.connect(
            self.url, connect_timeout=CONNECT_TIMEOUT_SECONDS, read_timeout=READ_TIMEOUT_SECONDS
        )


@contextmanager
def _broker(address: RedisAddress, doing: str) -> Iterator[None]:
    """Map redis-py errors to Berth's, once, with what the user should check."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise BrokerUnavailable(
            f"cannot reach Redis at {address.display} while {doing} ({exc}); check that "
            "redis-server runs there and that host, port and password are right"
        ) from exc
    except ResponseError as exc:
        if str(exc).startswith("WRONGTYPE"):
            raise InvalidInput(
                f"key {address.stream!r} on {address.display} is not a stream; name another "
                "stream in ?stream="
            ) from exc
        raise BrokerUnavailable(f"Redis at {address.display} refused {doing}: {exc}") from exc
    except RedisError as exc:
        raise BrokerUnavailable(f"Redis at {address.display} failed {doing}: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


Entry = tuple[bytes, dict[bytes, bytes] | None]


def _entries(reply: Any) -> list[Entry]:
    """The entries of an XREADGROUP reply for one stream (redis-py types it loosely)."""
    return cast(list[Entry], reply[0][1]) if reply else []


def _received(entry: Entry) -> Received:
    entry_id, fields = entry
    # An entry deleted while pending comes back with no fields (XADD needs at least one).
    payload = {_text(k): v for k, v in fields.items()} if fields else None
    return Received(_text(entry_id), payload)


class RedisSink:
    def __init__(self, url: str) -> None:
        self.address = RedisAddress.parse(url)
        self.name = self.address.stream
        self.display = self.address.display
        self._client: aioredis.Redis | None = None

    async def open(self) -> None:
        self._client = self.address.connect()
        with _broker(self.address, "checking the sink stream"):
            kind = _text(await self._client.type(self.address.stream))
        if kind not in ("none", "stream"):
            raise InvalidInput(
                f"key {self.address.stream!r} on {self.display} holds a {kind}, not a stream; "
                "name another stream in ?stream="
            )

    async def write(self, records: Sequence[Record]) -> None:
        if not records:
            return
        assert self._client is not None, "open() the sink first"
        pipe = self._client.pipeline(transaction=False)
        for record in records:
            pipe.xadd(self.address.stream, _fields(record))
        with _broker(self.address, f"writing to stream {self.name!r}"):
            await pipe.execute()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def _fields(record: Record) -> dict[FieldT, EncodableT]:
    fields: dict[FieldT, EncodableT] = {"id": record.key}
    if record.reason is not None:
        fields["reason"] = record.reason
    fields["data"] = record.data
    return fields


class RedisSource:
    def __init__(self, url: str, config: SourceConfig) -> None:
        self.address = RedisAddress.parse(url)
        self.config = config
        self.name = self.address.stream
        self.display = self.address.display
        self._client: aioredis.Redis | None = None
        self._script: Any = None
        self._prepared = False
        self._backlog: str | None = "0"
        """Cursor over this consumer's own pending entries; None once they are all read."""
        self._claim_cursor = "0-0"
        self._next_claim = 0.0

    @property
    def client(self) -> aioredis.Redis:
        assert self._client is not None, "open() the source first"
        return self._client

    async def open(self) -> None:
        self._client = self.address.connect()
        self._script = self._client.register_script(SETTLE_SCRIPT)
        await self._prepare()

    async def _prepare(self) -> None:
        """Join the group, creating it (and the stream) when missing."""
        start = "0" if self.config.start == "first" else "$"
        with _broker(self.address, f"joining group {self.config.group!r}"):
            try:
                await self.client.xgroup_create(
                    self.address.stream, self.config.group, id=start, mkstream=True
                )
                log.info(
                    "created consumer group %s on stream %s (%s)",
                    self.config.group,
                    self.name,
                    "from its first entry" if start == "0" else "new entries only",
                )
            except ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise
        self._prepared = True
        self._backlog = "0"  # take over what this consumer left unacknowledged

    async def read(self, count: int, timeout: float) -> list[Received]:
        try:
            if not self._prepared:
                await self._prepare()
            if self._backlog is not None:
                found = await self._read_backlog(self._backlog, count)
                if found:
                    return found
            if time.monotonic() >= self._next_claim:
                found = await self._claim(count)
                if found:
                    return found
            return await self._read_new(count, timeout)
        except BrokerUnavailable:
            self._prepared = False  # after an outage: rejoin, then re-read our pending entries
            raise

    async def _read_backlog(self, cursor: str, count: int) -> list[Received]:
        with _broker(self.address, "reading this consumer's pending entries"):
            reply = await self.client.xreadgroup(
                self.config.group, self.config.consumer, {self.address.stream: cursor}, count=count
            )
        entries = _entries(reply)
        if not entries:
            self._backlog = None
            return []
        self._backlog = _text(entries[-1][0])
        log.info("re-reading %d entries this consumer left unacknowledged", len(entries))
        return [_received(entry) for entry in entries]

    async def _claim(self, count: int) -> list[Received]:
        """Take over entries idle longer than the claim time, e.g. from a killed consumer."""
        with _broker(self.address, "claiming idle entries"):
            cursor, entries, deleted = await self.client.xautoclaim(
                self.address.stream,
                self.config.group,
                self.config.consumer,
                self.config.claim_idle_ms,
                start_id=self._claim_cursor,
                count=count,
            )
        self._claim_cursor = _text(cursor)
        if self._claim_cursor == "0-0":  # a full pass: look again in half the idle time
            self._next_claim = time.monotonic() + self.config.claim_idle_ms / 2000
        found = [_received(entry) for entry in cast(list[Entry], entries)]
        # Redis drops entries deleted while pending from the group as it reports them: only
        # their ids are left, and their dead letters must be written regardless.
        found += [Received(_text(i), None, acknowledged=True) for i in deleted]
        if found:
            log.info(
                "claimed %d entries idle for over %d ms from other consumers of group %s",
                len(found),
                self.config.claim_idle_ms,
                self.config.group,
            )
        return found

    async def _read_new(self, count: int, timeout: float) -> list[Received]:
        with _broker(self.address, f"reading stream {self.name!r}"):
            reply = await self.client.xreadgroup(
                self.config.group,
                self.config.consumer,
                {self.address.stream: ">"},
                count=count,
                block=max(1, int(timeout * 1000)),  # 0 would block forever
            )
        return [_received(entry) for entry in _entries(reply)]

    async def settle(self, batch: Sequence[Received], writes: Sequence[Write]) -> None:
        try:
            if self._atomic(writes):
                await self._settle_in_script(batch, writes)
                return
            for sink, records in writes:
                await sink.write(records)
            ids = [r.transport_id for r in batch if not r.acknowledged]
            if ids:
                with _broker(self.address, "acknowledging entries"):
                    await self.client.xack(self.address.stream, self.config.group, *ids)
        except BrokerUnavailable:
            self._prepared = False
            raise

    def _atomic(self, writes: Sequence[Write]) -> bool:
        return all(
            isinstance(sink, RedisSink) and sink.address.server == self.address.server
            for sink, records in writes
            if records
        )

    async def _settle_in_script(self, batch: Sequence[Received], writes: Sequence[Write]) -> None:
        keys: list[str] = [self.address.stream]
        ids = [r.transport_id for r in batch if not r.acknowledged]
        args: list[str | bytes | int] = [self.config.group, len(ids), *ids]
        total = 0
        for sink, records in writes:
            if not records:
                continue
            assert isinstance(sink, RedisSink)
            keys.append(sink.address.stream)
            for record in records:
                args += [record.origin, len(keys), record.key, record.data]
                args += [record.reason or "", "1" if record.always else "0"]
            total += len(records)
        with _broker(self.address, "writing outputs and acknowledging entries"):
            written = int(await self._script(keys=keys, args=args))
        if written < total:
            log.info(
                "%d of %d results were not written: another consumer of group %s had "
                "already acknowledged their entries (and written them)",
                total - written,
                total,
                self.config.group,
            )

    async def lag(self) -> Lag:
        with _broker(self.address, "reading the group's lag"):
            groups = await self.client.xinfo_groups(self.address.stream)
        for group in groups:
            if _text(group["name"]) == self.config.group:
                waiting = group.get("lag")
                return Lag(int(waiting) if waiting is not None else None, int(group["pending"]))
        return Lag(None, 0)

    def feeds(self, sink: Sink) -> bool:
        return (
            isinstance(sink, RedisSink)
            and sink.address.server == self.address.server
            and sink.address.stream == self.address.stream
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class RedisTransport:
    def source(self, url: str, config: SourceConfig) -> RedisSource:
        return RedisSource(url, config)

    def sink(self, url: str) -> RedisSink:
        return RedisSink(url)

    def dead_letter_url(self, source_url: str) -> str:
        parts = split(source_url)
        query = [
            (key, f"{value}.dead" if key == "stream" else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        return parts._replace(query=urlencode(query)).geturl()


TRANSPORT = RedisTransport()
