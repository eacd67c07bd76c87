"""The per-process cap on concurrent predictions, shared by every transport (REST and gRPC).

An unbounded queue turns overload into timeouts for everyone; refusing early keeps latency for
admitted requests and tells clients (and load balancers) to retry elsewhere. One counter per
process, so a worker's REST and gRPC traffic together stay under the cap.
"""

from __future__ import annotations

from prometheus_client import Counter

from berth.observability.metrics import REQUESTS_IN_FLIGHT

SHED = Counter(
    "berth_requests_shed", "Prediction requests refused because the worker was at capacity."
)


class ConcurrencyCap:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def enter(self) -> bool:
        """Admit one more prediction, or count it shed and say no."""
        if self.in_flight >= self.limit:
            SHED.inc()
            return False
        self.in_flight += 1
        REQUESTS_IN_FLIGHT.inc()
        return True

    def leave(self) -> None:
        self.in_flight -= 1
        REQUESTS_IN_FLIGHT.dec()

    def refusal(self) -> str:
        return (
            f"the server is at its limit of {self.limit} concurrent predictions; retry shortly "
            "(or raise BERTH_MAX_CONCURRENT_REQUESTS / add workers)"
        )
