"""Stream events without a broker: decoding, encoding, URLs, options and micro-batch scoring
(through a model, and through an endpoint's routes).

Micro-batches run through a real DataPlane over a registered version (a user Python class that
fails on one input value, so a model error on a single event can be provoked).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from berth.errors import InvalidInput
from berth.jobs.stream import events as ev
from berth.jobs.stream.events import Attributes as Ev
from berth.jobs.stream.events import Event, Received, Rejected, parse
from berth.jobs.stream.micro_batch import MicroBatch, ModelFailing
from berth.jobs.stream.nats_streams import NatsAddress, subject_matches
from berth.jobs.stream.options import StreamOptions
from berth.jobs.stream.redis_streams import RedisAddress
from berth.jobs.stream.routed_batch import RoutedBatch
from berth.jobs.stream.transport import dead_letter_url, redact, split
from berth.registration.service import RegisterRequest, register
from berth.registry.endpoints import EndpointService, RouteSpec
from berth.registry.service import Registry
from berth.registry.signature import ColumnSpec, Signature, TensorSpec
from berth.registry.versions import VersionInfo
from berth.runtimes.base import Prediction
from berth.serving.dataplane import DataPlane
from berth.serving.route_stats import RouteStats, read_shadow, read_totals

TABLE = Signature(
    kind="tabular",
    columns=(
        ColumnSpec("tenure_months", "int64", minimum=0, maximum=600),
        ColumnSpec("plan", "string"),
    ),
)
TENSOR = Signature(kind="tensor", inputs=(TensorSpec("input", "float32", (-1, 4)),))


def _body(document: Any) -> Received:
    return Received("7", json.dumps(document).encode())


# decoding ----------------------------------------------------------------------------------


def test_an_event_is_a_json_object_of_inputs_and_its_id() -> None:
    parsed = parse(_body({"id": "c-1", "tenure_months": 3, "plan": "pro"}), TABLE, "id")
    assert isinstance(parsed, Event)
    assert (parsed.id, parsed.row) == ("c-1", {"tenure_months": 3, "plan": "pro"})


def test_without_its_id_field_an_event_is_known_by_the_transport_id() -> None:
    parsed = parse(_body({"tenure_months": 3, "plan": "pro"}), TABLE, "id")
    assert isinstance(parsed, Event)
    assert parsed.id == "7"
    other = parse(_body({"key": 12, "tenure_months": 3, "plan": "pro"}), TABLE, "key")
    assert isinstance(other, Event)
    assert (other.id, other.row) == ("12", {"tenure_months": 3, "plan": "pro"})


def test_redis_entries_hold_json_in_data_or_flat_fields() -> None:
    data = Received("1-0", {"data": b'{"id": "a", "tenure_months": 5, "plan": "basic"}'})
    parsed = parse(data, TABLE, "id")
    assert isinstance(parsed, Event)
    assert (parsed.id, parsed.row) == ("a", {"tenure_months": 5, "plan": "basic"})
    # Flat values are JSON where they parse, except string columns and the id: "007" stays text.
    flat = Received("1-1", {"id": b"007", "tenure_months": b"5", "plan": b"42"})
    parsed = parse(flat, TABLE, "id")
    assert isinstance(parsed, Event)
    assert (parsed.id, parsed.row) == ("007", {"tenure_months": 5, "plan": "42"})
    words = parse(Received("1-2", {"tenure_months": b"many", "plan": b"pro"}), TABLE, "id")
    assert isinstance(words, Event)
    assert words.row["tenure_months"] == "many"  # left for the signature check to reject


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "the event is not valid JSON"),
        (b"[1, 2]", "the event is a list, not a JSON object"),
        (b"\xff\xfe", "not valid JSON"),
        ({"data": b"12"}, "field 'data' is a number, not a JSON object"),
        ({"plan": b"\xff"}, "field 'plan' is not UTF-8 text"),
        (None, "deleted from the stream before it was scored"),
    ],
)
def test_undecodable_entries_are_rejected_with_the_reason(payload: Any, reason: str) -> None:
    parsed = parse(Received("3-0", payload), TABLE, "id")
    assert isinstance(parsed, Rejected)
    assert reason in parsed.reason
    assert parsed.id == "3-0"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ([1], "is a list; send a string or an integer"),
        (True, "is a boolean"),
        ("a\nb", "without control characters"),
        ("", "must be 1 to"),
    ],
)
def test_a_bad_event_id_is_rejected(value: Any, reason: str) -> None:
    parsed = parse(_body({"id": value, "tenure_months": 3, "plan": "pro"}), TABLE, "id")
    assert isinstance(parsed, Rejected)
    assert reason in parsed.reason


def test_tensor_events_carry_the_input_by_name() -> None:
    parsed = parse(_body({"id": "t", "input": [1, 2, 3, 4]}), TENSOR, "id")
    assert isinstance(parsed, Event)
    assert parsed.row == [1, 2, 3, 4]
    unknown = parse(_body({"id": "t", "input": [1, 2, 3, 4], "x": 1}), TENSOR, "id")
    assert isinstance(unknown, Rejected)
    assert unknown.reason == "event: unknown input 'x'; expected inputs ['input']"
    assert unknown.id == "t"
    missing = parse(_body({"id": "t"}), TENSOR, "id")
    assert isinstance(missing, Rejected)
    assert "missing input 'input'" in missing.reason


def test_an_id_field_that_is_also_an_input_stays_an_input() -> None:
    signature = Signature(kind="tabular", columns=(ColumnSpec("id", "int64"),))
    parsed = parse(_body({"id": 4}), signature, "id")
    assert isinstance(parsed, Event)
    assert (parsed.id, parsed.row) == ("4", {"id": 4})


# encoding ----------------------------------------------------------------------------------


def _version(registry: Registry, directory: Path) -> VersionInfo:
    directory.mkdir()
    (directory / "model.py").write_text(SCORER)
    sample = directory.parent / "sample.npy"
    np.save(sample, np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 1.0, 0.5, 7.0]], dtype=np.float32))
    request = RegisterRequest(name="scorer", path=directory, flavor="python", sample=sample)
    return register(registry, request)


def test_outputs_carry_id_prediction_probabilities_model_version_and_time(
    sqlite_registry: Registry, tmp_path: Path
) -> None:
    version = _version(sqlite_registry, tmp_path / "scorer")
    events = [Event(Received(str(i), b""), f"e{i}", None) for i in range(2)]
    prediction = Prediction(
        predictions=np.array(["stay", "churn"]),
        probabilities=np.array([[0.9, 0.1], [0.2, 0.8]]),
        classes=[0, 1],
    )
    records = ev.outputs(events, version, prediction, "2024-05-01T10:00:00.000Z")
    assert [r.key for r in records] == ["e0", "e1"]
    assert [r.origin for r in records] == ["0", "1"]
    assert orjson.loads(records[1].data) == {
        "id": "e1",
        "prediction": "churn",
        "probabilities": {"0": 0.2, "1": 0.8},
        "model": "scorer",
        "version": 1,
        "predicted_at": "2024-05-01T10:00:00.000Z",
    }
    plain = ev.outputs(events[:1], version, Prediction(np.array([3.5])), "t")
    assert "probabilities" not in orjson.loads(plain[0].data)


def test_dead_letters_keep_the_original_payload_and_the_reason() -> None:
    received = Received("5-0", {"data": b"{oops", "raw": b"\xff"}, acknowledged=True)
    record = ev.dead_letter(Rejected(received, "5-0", "bad JSON"), "redis://h/0?stream=s", "m", "t")
    document = orjson.loads(record.data)
    assert document["payload"] == {"data": "{oops", "raw": {"base64": "/w=="}}
    assert (document["id"], document["reason"], document["transport_id"]) == (
        "5-0",
        "bad JSON",
        "5-0",
    )
    assert (record.reason, record.always) == ("bad JSON", True)
    assert ev.utc_now().endswith("Z")


# URLs and options --------------------------------------------------------------------------


def test_redis_urls() -> None:
    address = RedisAddress.parse("redis://:pw@127.0.0.1:6379/2?stream=events&socket_timeout=3")
    assert (address.stream, address.url) == (
        "events",
        "redis://:pw@127.0.0.1:6379/2?socket_timeout=3",
    )
    assert address.display == "redis://:***@127.0.0.1:6379/2?stream=events&socket_timeout=3"
    same = RedisAddress.parse("redis://:pw@127.0.0.1/2?stream=other")
    assert same.server == address.server
    assert RedisAddress.parse("redis://127.0.0.1:6379?stream=e").server[3] == 0
    with pytest.raises(InvalidInput, match=r"names no stream; add \?stream=NAME"):
        RedisAddress.parse("redis://127.0.0.1:6379/0")
    assert dead_letter_url("redis://h:1/0?stream=events") == "redis://h:1/0?stream=events.dead"


def test_nats_urls() -> None:
    address = NatsAddress.parse("nats://u:pw@127.0.0.1:4222/orders.created?stream=ORDERS")
    assert (address.server, address.subject, address.stream) == (
        "nats://u:pw@127.0.0.1:4222",
        "orders.created",
        "ORDERS",
    )
    assert address.display == "nats://u:***@127.0.0.1:4222/orders.created?stream=ORDERS"
    assert dead_letter_url("nats://h:4222/orders") == "nats://h:4222/orders.dead"
    # The source's stream does not hold `orders.created.dead`: the dead-letter sink finds (or
    # creates) the stream that does, by subject.
    assert (
        dead_letter_url("nats://u:pw@h:4222/orders.created?stream=ORDERS")
        == "nats://u:pw@h:4222/orders.created.dead"
    )
    with pytest.raises(InvalidInput, match="has wildcards"):
        dead_letter_url("nats://h:4222/orders.>")
    for bad in ("nats://h/a..b", "nats://h/a.>.b", "nats://h/a b"):
        with pytest.raises(InvalidInput, match="is not a NATS subject"):
            NatsAddress.parse(bad)
    with pytest.raises(InvalidInput, match="unknown option 'durable'"):
        NatsAddress.parse("nats://h/a?durable=x")


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("orders", "orders", True),
        ("orders", "orders.dead", False),
        ("orders.*", "orders.out", True),
        ("orders.*", "orders.out.dead", False),
        ("orders.>", "orders.out.dead", True),
        ("orders.>", "orders", False),
        ("*.in", "x.in", True),
    ],
)
def test_subject_matching(pattern: str, subject: str, matches: bool) -> None:
    assert subject_matches(pattern, subject) is matches


def test_unknown_schemes_and_hosts_are_explained() -> None:
    with pytest.raises(InvalidInput, match=r"unknown stream scheme 'amqp'; use redis://.*kafka://"):
        split("amqp://broker:5672/events")
    assert split("kafka://k1:9092,k2/events").path == "/events"
    with pytest.raises(InvalidInput, match="is not a valid URL"):
        split("kafka://k1:9092,k2:x/events")
    with pytest.raises(InvalidInput, match="names no host"):
        split("redis:///0?stream=a")
    with pytest.raises(InvalidInput, match="is not a valid URL"):
        split("redis://h:port/0?stream=a")
    assert redact("nats://u:secret@h:1/s") == "nats://u:***@h:1/s"


def test_options_are_checked() -> None:
    def options(**changes: Any) -> StreamOptions:
        return StreamOptions(
            "my.model@production", "redis://h?stream=a", "redis://h?stream=b", **changes
        )

    assert options().group_name == "berth-my_model"
    assert options(group="g", consumer="c").consumer_name == "c"
    with pytest.raises(InvalidInput, match="--batch-size"):
        options(batch_size=0)
    with pytest.raises(InvalidInput, match="twice --max-wait-ms"):
        options(claim_idle_ms=150, max_wait_ms=100)
    with pytest.raises(InvalidInput, match="not a model reference"):
        StreamOptions("a b", "redis://h?stream=a", "redis://h?stream=b")


# micro-batches -----------------------------------------------------------------------------

SCORER = """
import numpy as np


class Scorer:
    def load(self):
        pass

    def predict(self, inputs):
        x = np.asarray(inputs, dtype=float)
        if np.any(x[:, 0] == 13):
            raise RuntimeError("no score for a first value of 13")
        return (x.sum(axis=1) > 10).astype(int)
"""


def _score(registry: Registry, rows: list[Any]) -> Any:
    async def scenario() -> Any:
        dataplane = DataPlane(registry, ["scorer:1"])
        await dataplane.start()
        try:
            batch = [_body({"id": f"r{i}", "input": row}) for i, row in enumerate(rows)]
            return await MicroBatch(dataplane, "scorer:1", "id").score(batch)
        finally:
            await dataplane.stop()

    return asyncio.run(scenario())


def test_one_bad_event_does_not_sink_the_batch(sqlite_registry: Registry, tmp_path: Path) -> None:
    _version(sqlite_registry, tmp_path / "scorer")
    rows = [[1, 2, 3, 4], [13, 0, 0, 0], [1, 2, 3], [9, 9, 9, 9]]
    outcome = _score(sqlite_registry, rows)
    reasons = {r.id: r.reason for r in outcome.rejected}
    assert reasons == {
        "r1": "the model failed on this event: no score for a first value of 13",
        "r2": "event: expected 4 values per row, got 3",
    }
    scored = {
        e.id: s.result.prediction.predictions.tolist() for s in outcome.scored for e in s.events
    }
    assert scored == {"r0": [0], "r3": [1]}
    assert outcome.scored_events == 2


def test_valid_events_are_predicted_in_one_call(sqlite_registry: Registry, tmp_path: Path) -> None:
    _version(sqlite_registry, tmp_path / "scorer")
    outcome = _score(sqlite_registry, [[1, 2, 3, 4], [5, 5, 5, 5], [0, 0, 0, 1]])
    assert len(outcome.scored) == 1
    assert [e.id for e in outcome.scored[0].events] == ["r0", "r1", "r2"]
    assert outcome.scored[0].result.prediction.predictions.tolist() == [0, 1, 0]


def test_a_model_failing_on_every_event_stops_the_consumer(
    sqlite_registry: Registry, tmp_path: Path
) -> None:
    _version(sqlite_registry, tmp_path / "scorer")
    with pytest.raises(ModelFailing, match="failed on every one of 2 valid events"):
        _score(sqlite_registry, [[13, 0, 0, 0], [13, 1, 1, 1]])


# micro-batches through an endpoint ---------------------------------------------------------


def _endpoint(registry: Registry, tmp_path: Path, sticky: str) -> None:
    """Endpoint `scoring`: routes stable (scorer:1) and canary (scorer:2) at 50/50."""
    _version(registry, tmp_path / "one")
    _version(registry, tmp_path / "two")
    service = EndpointService(registry)
    service.create("scoring", "scorer:1", sticky=sticky)
    routes = [
        RouteSpec("stable", "stable", "scorer", 1, 50),
        RouteSpec("canary", "canary", "scorer", 2, 50),
    ]
    service.set_routes("scoring", routes, "half and half")


def _routed(registry: Registry, batches: list[list[Received]]) -> list[Any]:
    async def scenario() -> list[Any]:
        dataplane = DataPlane(
            registry, [], route_stats=RouteStats(registry.db), endpoints=["scoring"]
        )
        await dataplane.start()
        try:
            scorer = RoutedBatch(dataplane, "scoring", "id")
            return [await scorer.score(batch) for batch in batches]
        finally:
            await dataplane.stop()

    return asyncio.run(scenario())


def _kafka(document: dict[str, Any], **attributes: Any) -> Received:
    return Received(document["id"], json.dumps(document).encode(), attributes=Ev(**attributes))


def _answered(outcome: Any) -> dict[str, tuple[str, int]]:
    """Event id -> (route, version) that scored it."""
    return {
        e.id: (s.result.route, s.result.version.number) for s in outcome.scored for e in s.events
    }


def test_an_endpoint_batch_routes_each_event_and_predicts_once_per_route(
    sqlite_registry: Registry, tmp_path: Path
) -> None:
    """Sticky by a field of the event (taken out of the inputs): one user, one version; both
    versions get users; `x-berth-route` and a version header force a route; another model's or
    an unknown route's events are rejected; events without a key are split per event. Each
    route's events are one call, and each call is route evidence for rollouts."""
    _endpoint(sqlite_registry, tmp_path, "field:user")
    row = [1, 2, 3, 4]
    users = [
        _body({"id": f"u{i}-{j}", "user": f"user-{i}", "input": row})
        for i in range(20)
        for j in range(3)
    ]
    forced = [_kafka({"id": f"f{i}", "input": row}, route="canary") for i in range(3)]
    pinned = [_kafka({"id": f"v{i}", "input": row}, version="1") for i in range(3)]
    keyed = [_kafka({"id": f"k{i}", "input": row}, key="same-key") for i in range(5)]
    wrong = [
        _kafka({"id": "other-model", "input": row}, model="fraud"),
        _kafka({"id": "no-route", "input": row}, route="nope"),
        _kafka({"id": "clash", "input": row}, route="canary", version="1"),
        _kafka({"id": "endpoint-named", "input": row}, model="scoring"),
    ]
    unkeyed = [_body({"id": f"r{i}", "input": row}) for i in range(60)]
    first, second = _routed(sqlite_registry, [users + forced + pinned + keyed + wrong, unkeyed])

    answered = _answered(first)
    by_user = {}
    for i in range(20):
        by_user[i] = {answered[f"u{i}-{j}"] for j in range(3)}
        assert len(by_user[i]) == 1, f"user-{i} answered by {by_user[i]}"
    assert {next(iter(v)) for v in by_user.values()} == {("stable", 1), ("canary", 2)}
    assert {answered[f"f{i}"] for i in range(3)} == {("canary", 2)}
    assert {answered[f"v{i}"] for i in range(3)} == {("stable", 1)}
    assert len({answered[f"k{i}"] for i in range(5)}) == 1  # the message key sticks
    assert answered["endpoint-named"][1] in (1, 2)
    reasons = {r.id: r.reason for r in first.rejected}
    assert set(reasons) == {"other-model", "no-route", "clash"}
    assert "addressed to model 'fraud'" in reasons["other-model"]
    assert "has no route 'nope'" in reasons["no-route"]
    assert "asks for version '1', but it is routed to canary" in reasons["clash"]
    # routed stable, routed canary, forced canary, forced stable: one call each
    assert len(first.scored) == 4

    spread = _answered(second)
    assert len(spread) == 60
    assert set(spread.values()) == {("stable", 1), ("canary", 2)}
    assert len(second.scored) == 2

    records = ev.outputs(
        first.scored[0].events,
        first.scored[0].result.version,
        first.scored[0].result.prediction,
        "2024-05-01T10:00:00.000Z",
        first.scored[0].result.endpoint,
        first.scored[0].result.route,
    )
    document = orjson.loads(records[0].data)
    assert document["endpoint"] == "scoring"
    assert (document["route"], document["version"]) in {("stable", 1), ("canary", 2)}

    totals = read_totals(sqlite_registry.db, "scoring")
    assert totals[("scorer", 1)].requests >= 2
    assert totals[("scorer", 2)].requests >= 2
    assert totals[("scorer", 1)].errors == totals[("scorer", 2)].errors == 0


def test_an_endpoint_sticky_by_header_reads_the_kafka_header_else_the_key(
    sqlite_registry: Registry, tmp_path: Path
) -> None:
    _endpoint(sqlite_registry, tmp_path, "header:X-User")
    row = [1, 2, 3, 4]
    batch = [
        _kafka({"id": f"h{i}-{j}", "input": row}, key=f"other-{j}", headers={"x-user": f"u{i}"})
        for i in range(10)
        for j in range(4)
    ]
    (outcome,) = _routed(sqlite_registry, [batch])
    answered = _answered(outcome)
    for i in range(10):
        assert len({answered[f"h{i}-{j}"] for j in range(4)}) == 1
    assert set(answered.values()) == {("stable", 1), ("canary", 2)}


def test_an_endpoint_batch_follows_a_weight_change(
    sqlite_registry: Registry, tmp_path: Path
) -> None:
    """A rollout moving the weights applies to the stream at the next refresh, as on a server."""
    _endpoint(sqlite_registry, tmp_path, "field:user")
    batch = [_body({"id": f"u{i}", "user": f"user-{i}", "input": [1, 2, 3, 4]}) for i in range(40)]

    async def scenario() -> tuple[Any, Any]:
        dataplane = DataPlane(sqlite_registry, [], endpoints=["scoring"])
        await dataplane.start()
        try:
            scorer = RoutedBatch(dataplane, "scoring", "id")
            before = await scorer.score(batch)
            routes = [
                RouteSpec("stable", "stable", "scorer", 1, 0),
                RouteSpec("canary", "canary", "scorer", 2, 100),
            ]
            EndpointService(sqlite_registry).set_routes("scoring", routes, "promote")
            await dataplane.refresh_endpoints()
            return before, await scorer.score(batch)
        finally:
            await dataplane.stop()

    before, after = asyncio.run(scenario())
    assert set(_answered(before).values()) == {("stable", 1), ("canary", 2)}
    assert set(_answered(after).values()) == {("canary", 2)}


def test_routed_events_are_mirrored_to_the_shadow_and_forced_ones_are_not(
    sqlite_registry: Registry, tmp_path: Path
) -> None:
    _version(sqlite_registry, tmp_path / "one")
    _version(sqlite_registry, tmp_path / "two")
    service = EndpointService(sqlite_registry)
    service.create("scoring", "scorer:1")
    service.set_shadow("scoring", "scorer:2", 100)
    routed = [_body({"id": f"r{i}", "input": [1, 2, 3, 4]}) for i in range(10)]
    forced = [_kafka({"id": f"f{i}", "input": [1, 2, 3, 4]}, route="stable") for i in range(3)]
    (outcome,) = _routed(sqlite_registry, [routed + forced])
    assert set(_answered(outcome).values()) == {("stable", 1)}
    shadow = read_shadow(sqlite_registry.db, "scoring")[("scorer", 2)]
    assert (shadow.compared, shadow.agreed, shadow.mirrored) == (10, 10, 1)


BROKEN_CANARY = SCORER.replace(
    'if np.any(x[:, 0] == 13):\n            raise RuntimeError("no score for a first value of 13")',
    'if np.any(x[:, 2] == 9):\n            raise RuntimeError("the candidate cannot score a 9")',
)


def test_a_failing_canary_route_is_judged_and_its_events_go_to_the_primary(
    sqlite_registry: Registry, tmp_path: Path
) -> None:
    """A broken candidate records errors the rollout controller judges, while its events are
    scored by the primary route: the stream neither stops nor dead-letters them. An event
    forced to the candidate gets no second chance."""
    assert "the candidate cannot score" in BROKEN_CANARY
    _version(sqlite_registry, tmp_path / "one")
    broken = tmp_path / "two"
    broken.mkdir()
    (broken / "model.py").write_text(BROKEN_CANARY)
    sample = tmp_path / "two-sample.npy"
    np.save(sample, np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32))
    register(
        sqlite_registry,
        RegisterRequest(name="scorer", path=broken, flavor="python", sample=sample),
    )
    service = EndpointService(sqlite_registry)
    service.create("scoring", "scorer:1")
    service.set_routes(
        "scoring",
        [
            RouteSpec("stable", "stable", "scorer", 1, 50),
            RouteSpec("canary", "canary", "scorer", 2, 50),
        ],
        "half and half",
    )
    row = [1, 2, 9, 4]
    keyed = [_kafka({"id": f"k{i}", "input": row}, key=f"key-{i}") for i in range(40)]
    forced = [_kafka({"id": "forced", "input": row}, route="canary")]
    (outcome,) = _routed(sqlite_registry, [keyed + forced])

    answered = _answered(outcome)
    assert set(answered) == {f"k{i}" for i in range(40)}
    assert set(answered.values()) == {("stable", 1)}
    assert [(r.id, "the candidate cannot score a 9" in r.reason) for r in outcome.rejected] == [
        ("forced", True)
    ]
    totals = read_totals(sqlite_registry.db, "scoring")
    assert totals[("scorer", 2)].errors >= 1  # the evidence a rollout rolls back on
    assert totals[("scorer", 1)].errors == 0
