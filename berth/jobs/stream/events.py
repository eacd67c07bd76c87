"""Events in and out: a received entry decoded into a row for the signature; results encoded.

An event is one JSON object whose fields are the model's inputs (tabular: the column names;
tensor: the input names) plus, optionally, the id field. Unknown and missing fields are an error,
as in the v1 API, so a producer that drifts from the signature is told instead of half-scored.

The event id is the value of the id field when the event has one, else the message key (Kafka),
else the transport's own id (the Redis entry id, the NATS stream sequence, the Kafka
PARTITION:OFFSET). Outputs and dead letters carry it, so a reader can key results by event id.

A transport with message metadata (Kafka headers and key) fills `Received.attributes`: the
request id, carried to the outputs, and the model, version and method the event is addressed to,
checked against the consumer's model (`misaddressed`), so a producer written for MLServer's Kafka
server (`mlserver-model`, `mlserver-version`, `mlserver-method` headers) is scored, or told why
not, instead of being scored by the wrong model. A consumer of an endpoint checks them against the
endpoint and the route chosen for the event (`misrouted`).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from berth.errors import InvalidInput
from berth.registry.endpoints import EndpointInfo, RouteSpec
from berth.registry.signature import Signature
from berth.registry.versions import VersionInfo
from berth.runtimes.base import Prediction
from berth.serving.responses import plain
from berth.serving.validation import json_type

Payload = bytes | Mapping[str, bytes] | None
"""NATS: the message body. Redis: the entry's fields. None: the broker no longer has the entry."""

DATA_FIELD = "data"
"""A Redis entry with this field holds the event as a JSON object in it (other fields are
metadata, not inputs); without it, every field of the entry is an input."""
MAX_ID_LENGTH = 512
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Attributes:
    """What a message says about itself besides its payload (Kafka: the key and headers)."""

    key: str | None = None
    """The message key: the event id when the body has none, and the key of its outputs (so the
    outputs of one key land in one partition, in order)."""
    request_id: str | None = None
    model: str | None = None
    """The model the event is addressed to; it must be the model this consumer scores."""
    version: str | None = None
    """The version number the event asks for; it must be the version scoring."""
    method: str | None = None
    """MLServer's `mlserver-method`: only `infer` is scored."""
    route: str | None = None
    """`x-berth-route`: the endpoint route forced for this event, as the HTTP header does."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Every header as text, by lower-case name: where a `header:NAME` sticky key is read."""


@dataclass(frozen=True)
class Received:
    """One entry as a source delivered it, before any decoding."""

    transport_id: str
    """The Redis entry id, or the NATS stream sequence."""
    payload: Payload
    token: object = None
    """What the source needs to acknowledge the entry (a NATS message); unused by Redis."""
    acknowledged: bool = False
    """The broker already dropped the entry from its pending list (Redis reports entries deleted
    while pending this way); it needs no acknowledgement, and its dead letter is always written."""
    attributes: Attributes | None = None


@dataclass(frozen=True)
class Event:
    """An entry decoded into a row for the signature (not yet validated against it)."""

    received: Received
    id: str
    row: Any
    key_value: Any = None
    """The value of the endpoint's `field:NAME` sticky key field, when the event has one."""


@dataclass(frozen=True)
class Rejected:
    """An entry that cannot be scored, and why, in words that tell the producer what to fix."""

    received: Received
    id: str
    reason: str


@dataclass(frozen=True)
class Record:
    """One document for a sink: an output event or a dead letter."""

    key: str
    """The event id: the Redis field `id`, the NATS `Nats-Msg-Id` header."""
    data: bytes
    """The JSON document."""
    origin: str
    """The transport id of the received entry it answers."""
    reason: str | None = None
    """Dead letters: why the event was not scored."""
    always: bool = False
    """Write even when the entry is no longer pending (see `Received.acknowledged`)."""
    partition_key: str | None = None
    """Kafka: the key to write it under: the input's key, else the event id."""
    request_id: str | None = None
    """The request id the input carried, written as a header where the broker has headers."""


# decoding ----------------------------------------------------------------------------------


def parse(
    received: Received, signature: Signature, id_field: str, key_field: str | None = None
) -> Event | Rejected:
    """Decode a received entry; the reasons of a rejection name the field and what to send.

    `key_field`: a field holding the sticky key of an endpoint (`field:NAME`); like the id field,
    it is taken out of the inputs unless it is one of them.
    """
    try:
        document = _document(received.payload, signature, id_field)
    except InvalidInput as exc:
        return Rejected(received, fallback_id(received), exc.message)
    try:
        event_id = _event_id(document, id_field, fallback_id(received))
    except InvalidInput as exc:
        return Rejected(received, fallback_id(received), exc.message)
    key_value = document.get(key_field) if key_field is not None else None
    for name in (id_field, key_field):
        if name is not None and name not in signature.input_names:  # an input stays an input
            document.pop(name, None)
    try:
        return Event(received, event_id, _row(document, signature), key_value)
    except InvalidInput as exc:
        return Rejected(received, event_id, exc.message)


def fallback_id(received: Received) -> str:
    key = received.attributes.key if received.attributes is not None else None
    return key or received.transport_id


def misaddressed(received: Received, model: str, version: int, reference: str) -> str | None:
    """Why the event is not for this consumer (its headers name another model, version or
    method), or None when it is."""
    found = received.attributes
    if found is None:
        return None
    if found.method is not None and found.method != "infer":
        return f"method {found.method!r} is not scored here; only 'infer' (or no method header) is"
    if found.model is not None and found.model != model:
        return (
            f"the event is addressed to model {found.model!r}, but this consumer scores "
            f"{reference} ({model} version {version}); send it to the topic that model's "
            "consumer reads, or drop the model header"
        )
    if found.version is not None and found.version.removeprefix("v") != str(version):
        return (
            f"the event asks for version {found.version!r}, but this consumer scores "
            f"{reference}, now version {version} of {model}; send a version number that "
            "matches, or drop the version header to be scored by whichever version is current"
        )
    return None


def misrouted(received: Received, endpoint: EndpointInfo, route: RouteSpec | None) -> str | None:
    """Why the event is not for this endpoint consumer, or None when it is: the model header
    must name the endpoint or a model one of its routes serves; the version header, the version
    of the route chosen for the event (unchecked when none was)."""
    found = received.attributes
    if found is None:
        return None
    if found.method is not None and found.method != "infer":
        return f"method {found.method!r} is not scored here; only 'infer' (or no method header) is"
    models = sorted({r.model for r in endpoint.routes})
    if found.model is not None and found.model not in (endpoint.name, *models):
        return (
            f"the event is addressed to model {found.model!r}, but this consumer scores "
            f"endpoint {endpoint.name!r} (models {', '.join(models)}); send it to the topic "
            "that model's consumer reads, or name the endpoint or drop the model header"
        )
    if route is None or found.version is None:
        return None
    if found.version.removeprefix("v") != str(route.version):
        versions = ", ".join(f"{r.label}={r.ref}" for r in endpoint.routes)
        return (
            f"the event asks for version {found.version!r}, but it is routed to "
            f"{route.label} ({route.ref}) of endpoint {endpoint.name!r} (routes: {versions}); "
            "send the version of a route, or drop the version header to be routed by weight"
        )
    return None


def _document(payload: Payload, signature: Signature, id_field: str) -> dict[str, Any]:
    if payload is None:
        raise InvalidInput(
            "the entry was deleted from the stream before it was scored; its fields are gone, "
            "so publish the event again"
        )
    if isinstance(payload, bytes):
        return _json_object(payload, "the event", signature)
    if DATA_FIELD in payload:
        return _json_object(payload[DATA_FIELD], f"field {DATA_FIELD!r}", signature)
    text_fields = {id_field} | {c.name for c in signature.columns if c.dtype == "string"}
    return {
        name: _flat_value(name, raw, as_text=name in text_fields) for name, raw in payload.items()
    }


def _json_object(raw: bytes, what: str, signature: Signature) -> dict[str, Any]:
    fields = ", ".join(signature.input_names)
    try:
        found = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(
            f"{what} is not valid JSON ({exc}); send one JSON object per event with the "
            f"fields {fields}"
        ) from exc
    if not isinstance(found, dict):
        raise InvalidInput(
            f"{what} is {json_type(found)}, not a JSON object; send an object with the "
            f"fields {fields}"
        )
    return found


def _flat_value(name: str, raw: bytes, as_text: bool) -> Any:
    """A Redis field's value: JSON when it parses ("3" -> 3, "[1, 2]" -> a list), else text.

    String columns and the id field stay text: "00123" is an id and "42" may be a plan name.
    """
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"field {name!r} is not UTF-8 text; send text or JSON values") from exc
    if as_text:
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _event_id(document: Mapping[str, Any], id_field: str, fallback: str) -> str:
    if id_field not in document:
        return fallback
    value = document[id_field]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidInput(
            f"field {id_field!r} (the event id) is {json_type(value)}; send a string or an "
            "integer, or name another id field with --id-field"
        )
    text = str(value)
    if not text or len(text) > MAX_ID_LENGTH or _CONTROL.search(text):
        raise InvalidInput(
            f"field {id_field!r} (the event id) must be 1 to {MAX_ID_LENGTH} characters "
            "without control characters"
        )
    return text


def _row(document: dict[str, Any], signature: Signature) -> Any:
    """The row as the v1 `instances` decoder takes it: an object of columns or inputs, or, for a
    tensor signature with one input, that input's value."""
    if signature.kind == "tabular" or len(signature.inputs) > 1:
        return document
    name = signature.inputs[0].name
    unknown = [key for key in document if key != name]
    if unknown:
        raise InvalidInput(f"event: unknown input {unknown[0]!r}; expected inputs [{name!r}]")
    if name not in document:
        raise InvalidInput(f"event: missing input {name!r}; send it as a list of values")
    return document[name]


# encoding ----------------------------------------------------------------------------------


def utc_now() -> str:
    """ISO 8601 in UTC with milliseconds and a Z, like the log lines."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def outputs(
    events: Sequence[Event],
    version: VersionInfo,
    prediction: Prediction,
    predicted_at: str,
    endpoint: str = "",
    route: str = "",
) -> list[Record]:
    """One output record per event; `prediction` holds their rows in the same order.

    Through an endpoint, the outputs also name it and the route that answered (its version is
    `version`), so a reader can compare a canary's outputs with the stable's."""
    predictions = plain(prediction.predictions)
    probabilities = plain(prediction.probabilities)
    classes = [str(c) for c in plain(prediction.classes) or []]
    records = []
    for index, event in enumerate(events):
        document: dict[str, Any] = {"id": event.id, "prediction": predictions[index]}
        if probabilities is not None:
            row = probabilities[index]
            names = classes or [str(j) for j in range(len(row))]
            document["probabilities"] = dict(zip(names, row, strict=True))
        document |= {"model": version.model, "version": version.number}
        if endpoint:
            document |= {"endpoint": endpoint, "route": route}
        document["predicted_at"] = predicted_at
        records.append(
            Record(
                event.id,
                orjson.dumps(document),
                event.received.transport_id,
                **_carried(event.received, event.id),
            )
        )
    return records


def _carried(received: Received, event_id: str) -> dict[str, Any]:
    """The key and request id an output or dead letter carries from its input."""
    found = received.attributes
    if found is None:
        return {}
    return {"partition_key": found.key or event_id, "request_id": found.request_id}


def dead_letter(rejected: Rejected, source: str, reference: str, failed_at: str) -> Record:
    """The dead letter of a rejected event: its id, the reason and the original payload."""
    received = rejected.received
    document = {
        "id": rejected.id,
        "reason": rejected.reason,
        "source": source,
        "transport_id": received.transport_id,
        "payload": original(received.payload),
        "reference": reference,
        "failed_at": failed_at,
    }
    return Record(
        rejected.id,
        orjson.dumps(document),
        received.transport_id,
        reason=rejected.reason,
        always=received.acknowledged,
        **_carried(received, rejected.id),
    )


def original(payload: Payload) -> Any:
    """The payload as JSON: text as it came (bytes that are not UTF-8 as {"base64": ...})."""
    if payload is None:
        return None
    if isinstance(payload, bytes):
        return _text(payload)
    return {name: _text(value) for name, value in payload.items()}


def _text(raw: bytes) -> Any:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode()}
