"""The controller's smoke test, through this process's own dataplane."""

from __future__ import annotations

import anyio.to_thread

from berth.registry.endpoints import RouteSpec
from berth.serving.dataplane import DataPlane
from berth.serving.validation import instances_decoder


class DataPlaneProbe:
    """Is the route served here yet, and does its version answer its registration example?

    The request goes through the endpoint with the route forced, exactly as a client's
    `X-Berth-Route` preview would, so it exercises what traffic will.
    """

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def __call__(self, endpoint: str, route: RouteSpec) -> bool:
        served = self.dataplane.endpoint(endpoint)
        found = served.route(route.label) if served is not None else None
        if found is None or found.ref != route.ref:
            return False  # this process has not applied the new routes yet
        info = await anyio.to_thread.run_sync(
            self.dataplane.registry.get_version, route.model, route.version
        )
        if not info.example:
            return True  # nothing to send: loading and warming it was the test
        decoder = instances_decoder(
            info.example[:1], "example", self.dataplane.config.max_batch_rows
        )
        await self.dataplane.predict_endpoint(endpoint, decoder, forced=route.label)
        return True
