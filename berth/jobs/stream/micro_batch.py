"""Score one micro-batch of events through the dataplane, so one bad event cannot sink the rest.

1. Decode every entry (JSON, id, fields): failures are rejected with the reason, and so are
   entries whose headers address another model, version or method (see `events.misaddressed`).
2. Validate the rows against the signature, all at once (one pass per column); only when that
   fails, one event at a time, to find which events are at fault and why.
3. Predict the valid events in one dataplane call (the frame validated in step 2 is handed over,
   so rows are not decoded twice). If that call still fails, predict them one at a time: an event
   the model fails on is rejected with the model's error; the others are scored.

When the model fails on every event of a batch, the model (not the events) is at fault: that
raises `ModelFailing` and nothing is acknowledged, rather than dead-lettering a whole stream.

A consumer of an endpoint (`berth.jobs.stream.routed_batch`) does steps 2 and 3 once per route.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from berth.errors import BerthError, InvalidInput
from berth.jobs.stream.events import (
    Event,
    Received,
    Rejected,
    misaddressed,
    parse,
)
from berth.registry.signature import Signature
from berth.runtimes.base import ModelInput
from berth.serving.dataplane import DataPlane, Decoder, PredictResult
from berth.serving.validation import decode_instances, instances_decoder

log = logging.getLogger("berth.stream")

BATCH_FIELD = "events"
EVENT_FIELD = "event"

Call = Callable[[Decoder], Awaitable[PredictResult]]
"""One prediction of the dataplane: a model reference's, or an endpoint route's."""


class ModelFailing(BerthError):
    """The model failed on every event of a batch: a broken version, not bad events."""


@dataclass(frozen=True)
class Scored:
    """Events that one prediction answered, in its row order."""

    events: list[Event]
    result: PredictResult


@dataclass
class Outcome:
    scored: list[Scored] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def scored_events(self) -> int:
        return sum(len(s.events) for s in self.scored)


class MicroBatch:
    def __init__(self, dataplane: DataPlane, reference: str, id_field: str) -> None:
        self.dataplane = dataplane
        self.reference = reference
        self.id_field = id_field

    async def score(self, batch: Sequence[Received]) -> Outcome:
        version = await self.dataplane.version(self.reference)
        signature = version.signature
        outcome = Outcome()
        events: list[Event] = []
        for received in batch:
            parsed = parse(received, signature, self.id_field)
            reason = misaddressed(received, version.model, version.number, self.reference)
            if reason is not None:  # addressed elsewhere: that, not its fields, is the reason
                parsed = Rejected(received, parsed.id, reason)
            if isinstance(parsed, Event):
                events.append(parsed)
            else:
                outcome.rejected.append(parsed)
        await self.validate_and_predict(signature, events, outcome, self._call, self.reference)
        return outcome

    async def _call(self, decode: Decoder) -> PredictResult:
        return await self.dataplane.predict(self.reference, decode)

    async def validate_and_predict(
        self, signature: Signature, events: list[Event], outcome: Outcome, call: Call, what: str
    ) -> None:
        """Steps 2 and 3 for events that one version scores; `what` names it in errors."""
        valid, inputs = self._validate(signature, events, outcome)
        if valid:
            await self._predict(signature, valid, inputs, outcome, call, what)

    def _validate(
        self, signature: Signature, events: list[Event], outcome: Outcome
    ) -> tuple[list[Event], ModelInput | None]:
        """The events that pass the signature, and their decoded input when all of them did."""
        if not events:
            return [], None
        try:
            rows = [e.row for e in events]
            return events, decode_instances(signature, rows, BATCH_FIELD, len(rows))
        except InvalidInput:
            pass  # find out which events are at fault, and tell each one why
        valid = []
        for event in events:
            try:
                decode_instances(signature, [event.row], EVENT_FIELD, 1, single=True)
            except InvalidInput as exc:
                outcome.rejected.append(Rejected(event.received, event.id, exc.message))
            else:
                valid.append(event)
        return valid, None

    async def _predict(
        self,
        signature: Signature,
        events: list[Event],
        inputs: ModelInput | None,
        outcome: Outcome,
        call: Call,
        what: str,
    ) -> None:
        rows = [e.row for e in events]
        decode = instances_decoder(rows, BATCH_FIELD, self.dataplane.config.max_batch_rows)
        if inputs is not None:
            decode = _reuse(signature, inputs, decode)
        try:
            outcome.scored.append(Scored(events, await call(decode)))
            return
        except Exception as exc:
            if len(events) == 1:
                outcome.rejected.append(Rejected(events[0].received, events[0].id, _reason(exc)))
                return
            log.info(
                "a batch of %d events failed (%s); predicting them one at a time", len(events), exc
            )
        await self._one_by_one(events, outcome, call, what)

    async def _one_by_one(
        self, events: list[Event], outcome: Outcome, call: Call, what: str
    ) -> None:
        failures: list[Exception] = []
        for event in events:
            decode = instances_decoder(
                [event.row], EVENT_FIELD, self.dataplane.config.max_batch_rows, single=True
            )
            try:
                result = await call(decode)
            except Exception as exc:
                outcome.rejected.append(Rejected(event.received, event.id, _reason(exc)))
                if not isinstance(exc, InvalidInput):
                    failures.append(exc)
            else:
                outcome.scored.append(Scored([event], result))
        if len(failures) == len(events):
            raise ModelFailing(
                f"{what} failed on every one of {len(events)} valid events "
                f"(first: {_reason(failures[0])}); nothing was acknowledged. Fix or roll back "
                "the model, then start the consumer again"
            )


def _reuse(signature: Signature, inputs: ModelInput, fallback: Decoder) -> Decoder:
    """The input validated already, unless the dataplane moved to another version meanwhile."""
    return lambda current: inputs if current is signature else fallback(current)


def _reason(exc: Exception) -> str:
    if isinstance(exc, InvalidInput):
        return exc.message
    detail = exc.message if isinstance(exc, BerthError) else str(exc) or type(exc).__name__
    return f"the model failed on this event: {detail}"
