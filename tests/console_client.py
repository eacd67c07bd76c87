"""A console in process for tests: the served app (API + console) on a real SQLite registry,
with keys of each scope, an endpoint and a canary rollout of iris:1 → iris:2."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from berth.config import Settings
from berth.registry.endpoints import EndpointService
from berth.registry.service import Registry
from berth.rollouts.service import RolloutService
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from tests.conftest import register_iris

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class ConsoleSetup:
    client: TestClient
    registry: Registry
    keys: KeyService
    secrets: dict[str, str]
    rollout_id: int

    def sign_in(self, name: str, next_path: str = "/console") -> Any:
        form = self.client.get(f"/console/sign-in?next={next_path}")
        assert form.status_code == 200, form.text
        return self.client.post(
            "/console/sign-in",
            data={"credential": self.secrets[name], "csrf": csrf_of(form.text), "next": next_path},
            follow_redirects=False,
        )

    def csrf(self, path: str = "/console") -> str:
        return csrf_of(self.client.get(path).text)


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found is not None, html
    return found[1]


@contextmanager
def console_app(
    settings: Settings, iris_files: tuple[Path, Path], **overrides: Any
) -> Iterator[ConsoleSetup]:
    from berth.api.app import build_services
    from berth.server import create_server_app

    settings = settings.model_copy(
        update={"refresh_seconds": 0.0, "rollout_controller": False, **overrides}
    )
    registry = Registry.from_settings(settings)
    register_iris(registry, iris_files, aliases=("production",))
    register_iris(registry, iris_files, metrics={"accuracy": 0.97})
    keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
    secrets = {
        name: keys.create(name, scopes)[1]
        for name, scopes in {
            "admin": ("admin",),
            "reader": ("read",),
            "predictor": ("predict:other",),
        }.items()
    }
    EndpointService(registry).create("iris", "iris@production")
    started = RolloutService(registry).start("iris", "iris:2", "canary")
    app = create_server_app(settings, build_services(settings, registry))
    with TestClient(app) as client:
        yield ConsoleSetup(client, registry, keys, secrets, started.rollout.id)
    registry.db.dispose()


def wait_for_requests(setup: ConsoleSetup, endpoint: str, count: int) -> None:
    """Until the shared route stats hold `count` requests of `endpoint`. The server writes them
    in the background: a flush asked for meanwhile can find nothing left to write and return
    before the background write has committed."""
    from berth.serving.route_stats import combined, read_totals

    deadline = time.monotonic() + 10
    while combined(read_totals(setup.registry.db, endpoint).values()).requests < count:
        assert time.monotonic() < deadline, f"route stats never reached {count} requests"
        time.sleep(0.02)
