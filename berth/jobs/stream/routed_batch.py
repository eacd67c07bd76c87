"""Score a micro-batch through an endpoint: pick each event's route, then one call per route.

Each event's route is what the endpoint's router picks for it, as for an HTTP request:
- forced by the Kafka header `x-berth-route` (a label, a role or a version like `churn:3`), or by
  a version header (`berth-version`, `mlserver-version`) naming the version of one of its routes,
  as `/v2/models/NAME/versions/N` does; a forced event is not copied to the shadow;
- else by its sticky key: the endpoint's `field:NAME` (a field of the event, taken out of the
  inputs unless it is one) or `header:NAME` (a Kafka header), else the Kafka message key, so the
  events of one key keep one version while the weights hold;
- else (Redis and NATS events without a `field:` key) a weighted random choice per event.

The events of each route are then validated against its version's signature and predicted in one
`predict_endpoint` call (one by one when that call fails, as `MicroBatch` does), which records the
route's evidence for rollouts and copies the call to the shadow route. A call that fails on a route
other than the primary one (a broken canary) is recorded as that route's error, which the rollout
controller judges, and its events are predicted by the primary route instead: a bad candidate
rolls back without holding up or dead-lettering the stream. Forced events get no such second
chance, and the primary route failing on every event stops the consumer (`ModelFailing`), nothing
acknowledged, as a model consumer does.

Events are decoded against the signature of the endpoint's primary route (the version it describes
itself by); routes of one endpoint normally share a signature, and each route's validation decides.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from berth.errors import InvalidInput, NotFound, PayloadTooLarge
from berth.jobs.stream.events import Event, Received, Rejected, misrouted, parse
from berth.jobs.stream.micro_batch import MicroBatch, Outcome
from berth.registry.endpoints import EndpointInfo, RouteSpec
from berth.serving.dataplane import DataPlane, Decoder, PredictResult
from berth.serving.router import key_text

log = logging.getLogger("berth.stream")

RouteChoice = tuple[str, bool]
"""A route's label, and whether it was forced (then the call is not mirrored)."""


class RoutedBatch(MicroBatch):
    def __init__(self, dataplane: DataPlane, endpoint: str, id_field: str) -> None:
        super().__init__(dataplane, endpoint, id_field)

    @property
    def endpoint(self) -> str:
        return self.reference

    async def score(self, batch: Sequence[Received]) -> Outcome:
        info = self.dataplane.endpoint(self.endpoint)
        if info is None:
            raise NotFound(
                f"endpoint '{self.endpoint}' is no longer served (deleted, or a route's version "
                "cannot load); nothing was acknowledged. Recreate it, or consume with a model "
                "reference"
            )
        primary = self.dataplane.route_version(self.endpoint, info.primary.label).signature
        key_field = info.sticky.name if info.sticky and info.sticky.kind == "field" else None
        outcome = Outcome()
        groups: dict[RouteChoice, list[Event]] = {}
        for received in batch:
            parsed = parse(received, primary, self.id_field, key_field)
            if isinstance(parsed, Rejected):
                reason = misrouted(received, info, None)
                outcome.rejected.append(Rejected(received, parsed.id, reason or parsed.reason))
                continue
            try:
                route, forced = self._route(info, parsed)
            except InvalidInput as exc:
                outcome.rejected.append(Rejected(received, parsed.id, exc.message))
                continue
            reason = misrouted(received, info, route)
            if reason is not None:
                outcome.rejected.append(Rejected(received, parsed.id, reason))
                continue
            groups.setdefault((route.label, forced), []).append(parsed)
        for (label, forced), events in groups.items():
            version = self.dataplane.route_version(self.endpoint, label)
            what = f"route {label} ({version.ref}) of endpoint {self.endpoint}"
            fallback = None if forced or label == info.primary.label else info.primary.label
            call = _RouteCall(self.dataplane, self.endpoint, label, forced, fallback)
            await self.validate_and_predict(version.signature, events, outcome, call, what)
        return outcome

    def _route(self, info: EndpointInfo, event: Event) -> tuple[RouteSpec, bool]:
        found = event.received.attributes
        forced = found.route if found is not None else None
        if forced is None and found is not None and found.version is not None:
            number = found.version.removeprefix("v")
            forced = next((r.label for r in info.routes if str(r.version) == number), None)
        if forced is not None:
            return self.dataplane.pick_route(self.endpoint, forced=forced), True
        return self.dataplane.pick_route(self.endpoint, key=self._key(info, event)), False

    @staticmethod
    def _key(info: EndpointInfo, event: Event) -> str | None:
        """The event's sticky key: the endpoint's sticky setting where it applies to events, else
        the message key."""
        found = event.received.attributes
        sticky = info.sticky
        value = None
        if sticky is not None and sticky.kind == "field":
            value = event.key_value
        elif sticky is not None and sticky.kind == "header" and found is not None:
            value = found.headers.get(sticky.name)
        key = key_text(value)
        if key is None and found is not None:
            key = key_text(found.key)
        return key


class _RouteCall:
    """One prediction through a route picked already (`MicroBatch`'s `Call`)."""

    def __init__(
        self, dataplane: DataPlane, endpoint: str, label: str, forced: bool, fallback: str | None
    ) -> None:
        self.dataplane = dataplane
        self.endpoint = endpoint
        self.label = label
        self.forced = forced
        self.fallback = fallback
        """The route that answers when this one fails (the primary), or None."""

    async def __call__(self, decode: Decoder) -> PredictResult:
        if self.forced:
            return await self.dataplane.predict_endpoint(self.endpoint, decode, forced=self.label)
        try:
            return await self.dataplane.predict_endpoint(self.endpoint, decode, route=self.label)
        except (InvalidInput, PayloadTooLarge):
            raise  # the events' fault, not the route's: the primary would refuse them too
        except Exception as exc:
            if self.fallback is None:
                raise
            log.warning(
                "route %s of endpoint %s failed (%s); its events are predicted by route %s",
                self.label, self.endpoint, exc, self.fallback,
            )  # fmt: skip
            return await self.dataplane.predict_endpoint(self.endpoint, decode, route=self.fallback)
