"""Which route of an endpoint answers a request.

- A forced route (`X-Berth-Route: canary`: a label, a role or a version like `churn:3`) wins;
  it may name a route at 0% (a blue-green preview) or the shadow.
- With a sticky key, weighted rendezvous hashing: every serving route scores
  `-weight / ln(u)`, where `u` in (0, 1) is a hash of the key and the route's version, and the
  highest score wins. A key keeps its version while the weights hold, each version gets its
  weight's share of keys, and when weights change only the keys that must move do (raising the
  canary from 5% to 25% moves keys from stable to canary, never between other routes).
- Without one, a weighted random choice.

The shadow route is never picked for an answer; `mirror()` says whether to copy this request.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Any

from berth.errors import InvalidInput
from berth.registry.endpoints import SERVING_ROLES, EndpointInfo, RouteSpec

_SCALE = float(1 << 64)

ROUTE_HEADER = "x-berth-route"
"""The header that forces a route: on HTTP requests and on Kafka events alike."""
MAX_KEY_LENGTH = 512


def key_text(value: Any) -> str | None:
    """A sticky key's value as the router takes it, or None when it cannot be one.

    A number and its text are one key: {"user_id": 7} and a header "7" stick together, whether
    the value came in an HTTP request or a stream event.
    """
    if value is None or isinstance(value, dict | list) or value == "":
        return None
    text = str(value) if not isinstance(value, float) or not value.is_integer() else str(int(value))
    return text[:MAX_KEY_LENGTH]


def key_unit(key: str, salt: str) -> float:
    """A uniform number in (0, 1) from a key and a salt, the same in every process."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / _SCALE


@dataclass(frozen=True)
class Router:
    endpoint: EndpointInfo

    @property
    def serving(self) -> tuple[RouteSpec, ...]:
        return tuple(r for r in self.endpoint.routes if r.role in SERVING_ROLES and r.weight > 0)

    @property
    def shadow(self) -> RouteSpec | None:
        return self.endpoint.with_role("shadow")

    def pick(self, key: str | None = None, forced: str | None = None) -> RouteSpec:
        if forced:
            return self.forced(forced)
        routes = self.serving
        if len(routes) == 1:
            return routes[0]
        if key is not None:
            return max(routes, key=lambda r: -r.weight / math.log(key_unit(key, r.ref)))
        point = random.random() * sum(r.weight for r in routes)  # noqa: S311 (not security)
        for route in routes:
            point -= route.weight
            if point < 0:
                return route
        return routes[-1]

    def forced(self, name: str) -> RouteSpec:
        routes = self.endpoint.routes
        found = (
            next((r for r in routes if r.label == name), None)
            or next((r for r in routes if r.role == name), None)
            or next((r for r in routes if r.ref == name), None)
        )
        if found is None:
            known = ", ".join(f"{r.label} ({r.ref})" for r in routes)
            raise InvalidInput(
                f"endpoint '{self.endpoint.name}' has no route '{name}' (routes: {known}); "
                "name one of them in X-Berth-Route, or drop the header"
            )
        return found

    def mirror(self) -> RouteSpec | None:
        """The shadow route when this request should be copied to it, else None."""
        shadow = self.shadow
        if shadow is None or shadow.weight <= 0:
            return None
        if shadow.weight >= 100 or random.random() * 100 < shadow.weight:  # noqa: S311
            return shadow
        return None
