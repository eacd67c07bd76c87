"""The console's auth matrix: every console route (they are not in the OpenAPI document, so the
API's matrix in test_security_api does not see them), against every kind of missing or wrong
session, without side effects."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.routing import Route

from berth.config import Settings
from berth.console.mount import ROUTERS
from berth.console.session import COOKIE, Session, SessionSealer
from berth.jobs.records import JobService
from berth.registry.endpoints import EndpointService
from berth.rollouts.experiments import ExperimentService
from berth.rollouts.service import RolloutService
from berth.security.config import KeyConfig
from berth.security.keys import server_secret
from berth.store.audit import AuditLog
from tests.console_client import ConsoleSetup, console_app, csrf_of

# Every console route, by kind. A new route fails `test_every_console_route_is_classified`
# until it is added here, and so is checked below.
OPEN = {("GET", "/console/sign-in"), ("POST", "/console/sign-in")}
PAGES = {
    ("GET", "/console"),
    ("GET", "/console/fragments/overview"),
    ("GET", "/console/models"),
    ("GET", "/console/models/{name}"),
    ("GET", "/console/models/{name}/versions/{version}"),
    ("GET", "/console/endpoints/{name}"),
    ("GET", "/console/fragments/endpoints/{name}"),
    ("GET", "/console/series/overview"),
    ("GET", "/console/series/endpoints/{name}"),
    ("GET", "/console/rollouts"),
    ("GET", "/console/rollouts/{id}"),
    ("GET", "/console/fragments/rollouts/{id}"),
    ("GET", "/console/jobs"),
    ("GET", "/console/fragments/jobs"),
    ("GET", "/console/jobs/{id}"),
    ("GET", "/console/fragments/jobs/{id}"),
    ("GET", "/console/experiments"),
    ("GET", "/console/experiments/{name}"),
    ("GET", "/console/models/{name}/versions/{version}/monitoring"),
    ("GET", "/console/series/models/{name}/versions/{version}/accuracy"),
}
ADMIN_PAGES = {
    ("GET", "/console/audit"),
    ("GET", "/console/rollouts/{id}/confirm/{action}"),
    ("GET", "/console/keys"),
    ("GET", "/console/keys/{name}/revoke"),
}
FORMS = {("POST", "/console/sign-out")}
ACTIONS = {
    ("POST", "/console/rollouts/{id}/{action}"),
    ("POST", "/console/keys"),
    ("POST", "/console/keys/{name}/revoke"),
}
VALUES = {"name": "iris", "version": "1", "id": "1", "action": "abort"}
ELSEWHERE = {"/console/experiments/{name}": {"name": "flowers"}}
"""Routes whose values differ: the experiment is on another endpoint than iris's rollout."""

CASES = ["no session", "altered cookie", "foreign cookie", "expired session", "revoked key"]


@pytest.fixture
def console(settings: Settings, iris_files: tuple[Path, Path]) -> Iterator[ConsoleSetup]:
    with console_app(settings, iris_files) as setup:
        setup.secrets["revoked"] = setup.keys.create("revoked", ("admin",))[1]
        setup.keys.revoke("revoked")
        JobService(setup.registry.db).create(
            job_key="k", model="iris@production", source="a.csv", sink="b.csv", args=[]
        )
        EndpointService(setup.registry).create("flowers", "iris:1")
        ExperimentService(setup.registry).start("flowers", ["a=iris:1:50", "b=iris:2:50"])
        yield setup


def console_routes() -> set[tuple[str, str]]:
    found = set()
    for router in ROUTERS:
        for route in router.routes:
            assert isinstance(route, Route)
            assert route.path.startswith("/console")
            found |= {(m, route.path) for m in route.methods or () if m != "HEAD"}
    return found


def concrete(template: str) -> str:
    values = {**VALUES, **ELSEWHERE.get(template, {})}
    return re.sub(r"{(\w+)}", lambda m: values[m[1]], template)


def _state(setup: ConsoleSetup) -> tuple[object, ...]:
    rollout = RolloutService(setup.registry).get(setup.rollout_id)
    queue = setup.client.app.state.services.audit  # type: ignore[attr-defined]
    setup.client.portal.call(queue.flush)  # type: ignore[union-attr]
    actions = [e.action for e in AuditLog(setup.registry.db).list(limit=500)]
    changes = [a for a in actions if not a.startswith("auth.")]
    return rollout.status, rollout.updated_at, tuple(changes)


def _cookie(setup: ConsoleSetup, case: str, settings: Settings) -> str | None:
    sealer = SessionSealer(server_secret(KeyConfig.from_settings(settings)))
    admin = setup.secrets["admin"]
    later = 4102444800.0
    return {
        "no session": None,
        "altered cookie": sealer.seal(Session(admin, later, "t"))[:-4] + "AAAA",
        "foreign cookie": SessionSealer(b"not this server").seal(Session(admin, later, "t")),
        "expired session": sealer.seal(Session(admin, 1.0, "t")),
        "revoked key": sealer.seal(Session(setup.secrets["revoked"], later, "t")),
    }[case]


def test_every_console_route_is_classified(console: ConsoleSetup) -> None:
    assert console_routes() == OPEN | PAGES | ADMIN_PAGES | FORMS | ACTIONS


def test_every_console_route_refuses_without_a_valid_session(
    console: ConsoleSetup, settings: Settings
) -> None:
    before = _state(console)
    checked = 0
    for method, template in sorted(PAGES | ADMIN_PAGES | FORMS | ACTIONS):
        path = concrete(template)
        for case in CASES:
            console.client.cookies.clear()
            value = _cookie(console, case, settings)
            if value is not None:
                console.client.cookies.set(COOKIE, value, path="/console")
            answer = console.client.request(
                method, path, data={"csrf": "t"} if method == "POST" else None,
                follow_redirects=False,
            )  # fmt: skip
            if method == "GET":
                assert answer.status_code == 303, (path, case)
                assert answer.headers["location"].startswith("/console/sign-in?next=/console")
            else:
                assert answer.status_code == 401, (path, case, answer.text)
            assert console.secrets["admin"] not in answer.text
            checked += 1
    assert checked == len(PAGES | ADMIN_PAGES | FORMS | ACTIONS) * len(CASES)
    assert _state(console) == before


def test_scopes_csrf_and_origin_on_every_action(console: ConsoleSetup) -> None:
    before = _state(console)
    console.sign_in("reader")
    token = console.csrf()
    for method, template in sorted(PAGES):
        answer = console.client.request(method, concrete(template))
        assert answer.status_code == 200, (template, answer.status_code)
    for method, template in sorted(ADMIN_PAGES | ACTIONS):
        answer = console.client.request(
            method, concrete(template), data={"csrf": token} if method == "POST" else None
        )
        assert answer.status_code == 403, (template, answer.text)
    console.client.cookies.clear()
    console.sign_in("admin")
    token = console.csrf()
    for _method, template in sorted(ACTIONS):
        path = concrete(template)
        assert console.client.post(path, data={"other": "field"}).status_code == 403
        assert console.client.post(path, data={"csrf": token + "x"}).status_code == 403
        foreign = console.client.post(
            path, data={"csrf": token}, headers={"Origin": "https://evil.example"}
        )
        assert foreign.status_code == 403
    for _method, template in sorted(FORMS):
        assert console.client.post(concrete(template), data={"other": "f"}).status_code == 403
    status, updated, changes = _state(console)
    assert (status, updated) == before[:2]
    assert [c for c in changes if not c.startswith("console.sign_in")] == list(before[2])


def test_the_sign_in_form_refuses_a_missing_token(console: ConsoleSetup) -> None:
    answer = console.client.post("/console/sign-in", data={"credential": "x"})
    assert answer.status_code == 403
    page = console.client.get("/console/sign-in")
    assert csrf_of(page.text)
