"""Endpoints and routes: the service on both databases, routing, and prediction through the API."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from berth.errors import Conflict, InvalidInput, NotFound
from berth.registry.endpoints import EndpointService, RouteSpec, parse_sticky
from berth.registry.service import Registry
from berth.serving.router import Router, key_unit
from tests.conftest import ApiSetup, register_iris


def _two_versions(registry: Registry, iris_files: tuple[Path, Path]) -> None:
    register_iris(registry, iris_files, aliases=("production",))
    register_iris(registry, iris_files)


def _routes(stable: float, canary: float) -> list[RouteSpec]:
    return [
        RouteSpec("stable", "stable", "iris", 1, stable),
        RouteSpec("canary", "canary", "iris", 2, canary),
    ]


# the service ---------------------------------------------------------------------------------


def test_create_list_show_history_delete(registry: Registry, iris_files: tuple[Path, Path]) -> None:
    _two_versions(registry, iris_files)
    service = EndpointService(registry)
    revision = service.revision()
    created = service.create("flowers", "iris@production", sticky="header:X-User-ID")
    assert created.routes == (RouteSpec("stable", "stable", "iris", 1, 100.0),)
    assert str(created.sticky) == "header:x-user-id"
    assert service.revision() == revision + 1
    assert [e.name for e in service.all()] == ["flowers"]

    changed = service.set_routes("flowers", _routes(90, 10), "try v2 on 10%", actor="tester")
    assert [(r.label, r.weight) for r in changed.routes] == [("stable", 90.0), ("canary", 10.0)]
    assert service.get("flowers").route("canary") == RouteSpec("canary", "canary", "iris", 2, 10)

    history = service.history("flowers")
    assert [h.reason for h in history] == ["try v2 on 10%", "created with iris:1"]
    assert history[0].actor == "tester"
    assert [r.weight for r in history[0].routes] == [90.0, 10.0]

    with pytest.raises(Conflict, match="already exists"):
        service.create("flowers", "iris:2")
    service.delete("flowers")
    with pytest.raises(NotFound, match="berth endpoints create flowers"):
        service.get("flowers")
    assert service.history("flowers")[0].reason == "deleted"


def test_route_rules_are_checked(sqlite_registry: Registry, iris_files: tuple[Path, Path]) -> None:
    _two_versions(sqlite_registry, iris_files)
    service = EndpointService(sqlite_registry)
    service.create("flowers", "iris:1")
    bad = {
        "add up to 100": _routes(90, 20),
        "percentage": _routes(150, -50),
        "labels must differ": [
            RouteSpec("a", "variant", "iris", 1, 50),
            RouteSpec("a", "variant", "iris", 2, 50),
        ],
        "role 'boss'": [RouteSpec("stable", "boss", "iris", 1, 100)],
        "route that serves": [RouteSpec("s", "shadow", "iris", 1, 100)],
        "at least one route": [],
    }
    for message, routes in bad.items():
        with pytest.raises(InvalidInput, match=message):
            service.set_routes("flowers", routes, "bad")
    with pytest.raises(NotFound, match="no version iris:7"):
        service.set_routes("flowers", [RouteSpec("stable", "stable", "iris", 7, 100)], "x")
    with pytest.raises(InvalidInput, match="sticky key"):
        parse_sticky("query:user")
    # Nothing of the refused changes was stored.
    assert service.get("flowers").routes == (RouteSpec("stable", "stable", "iris", 1, 100.0),)


def test_a_routed_version_cannot_be_deleted(
    registry: Registry, iris_files: tuple[Path, Path]
) -> None:
    _two_versions(registry, iris_files)
    EndpointService(registry).create("flowers", "iris:2")
    with pytest.raises(Conflict, match="served by endpoint 'flowers'"):
        registry.delete_version("iris", 2)
    registry.remove_alias("iris", "production")
    with pytest.raises(Conflict, match="served by endpoint 'flowers'"):
        registry.delete_model("iris")


# routing -------------------------------------------------------------------------------------


def _router(stable: float, canary: float) -> Router:
    from datetime import UTC, datetime

    from berth.registry.endpoints import EndpointInfo

    now = datetime.now(UTC)
    return Router(EndpointInfo("e", None, "", tuple(_routes(stable, canary)), now, now))


def test_sticky_keys_keep_their_route_and_follow_the_weights() -> None:
    keys = [f"user-{i}" for i in range(20_000)]
    router = _router(75, 25)
    first = {k: router.pick(k).label for k in keys}
    assert {k: router.pick(k).label for k in keys} == first  # the same every time
    share = Counter(first.values())["canary"] / len(keys)
    assert share == pytest.approx(0.25, abs=0.015)

    # 25% -> 50%: only stable keys move, and only about a third of them (25 of 75 points).
    wider = _router(50, 50)
    moved = [k for k in keys if wider.pick(k).label != first[k]]
    assert all(first[k] == "stable" for k in moved)
    assert len(moved) / len(keys) == pytest.approx(0.25, abs=0.015)


def test_random_split_follows_the_weights_and_forcing_wins() -> None:
    router = _router(90, 10)
    picks = Counter(router.pick().label for _ in range(20_000))
    assert picks["canary"] / 20_000 == pytest.approx(0.10, abs=0.01)
    assert router.pick("anyone", forced="canary").label == "canary"
    assert router.pick(forced="iris:2").label == "canary"
    assert _router(100, 0).pick(forced="canary").label == "canary"  # a 0% preview
    with pytest.raises(InvalidInput, match="no route 'green'"):
        router.pick(forced="green")


def test_key_unit_is_uniform_and_stable() -> None:
    values = [key_unit(str(i), "salt") for i in range(10_000)]
    assert all(0 < v < 1 for v in values)
    assert sum(values) / len(values) == pytest.approx(0.5, abs=0.01)
    assert key_unit("7", "salt") == key_unit("7", "salt") != key_unit("7", "other")


# through the API -----------------------------------------------------------------------------


def _apply(api: ApiSetup) -> None:
    """What the background refresh does within a second, now."""
    dataplane = api.client.app.state.services.dataplane  # type: ignore[attr-defined]
    api.client.portal.call(dataplane.refresh_endpoints)  # type: ignore[union-attr]


@pytest.fixture
def flowers(api: ApiSetup, iris_files: tuple[Path, Path]) -> ApiSetup:
    register_iris(api.registry, iris_files)  # iris:2
    EndpointService(api.registry).create("flowers", "iris:1", sticky="header:X-User-ID")
    _apply(api)
    return api


ROW = {"features": [5.1, 3.5, 1.4, 0.2]}


def test_endpoint_predict_says_which_version_answered(flowers: ApiSetup) -> None:
    response = flowers.client.post(
        "/api/v1/endpoints/flowers/predict", json=ROW, headers=flowers.auth()
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["model_version"]) == ("iris", 1)
    assert (body["endpoint"], body["route"]) == ("flowers", "stable")
    assert response.headers["X-Berth-Model-Version"] == "iris:1"
    assert response.headers["X-Berth-Route"] == "stable"

    batch = flowers.client.post(
        "/api/v1/endpoints/flowers/batch-predict",
        json={"instances": [ROW["features"]] * 3},
        headers=flowers.auth(),
    )
    assert batch.status_code == 200
    assert len(batch.json()["predictions"]) == 3


def test_weights_sticky_keys_and_forced_routes_over_http(flowers: ApiSetup) -> None:
    EndpointService(flowers.registry).set_routes("flowers", _routes(50, 50), "half")
    _apply(flowers)

    def version(user: str, **headers: str) -> str:
        response = flowers.client.post(
            "/api/v1/endpoints/flowers/predict",
            json=ROW,
            headers={**flowers.auth(), "X-User-ID": user, **headers},
        )
        assert response.status_code == 200, response.text
        return str(response.headers["X-Berth-Model-Version"])

    seen = {user: version(user) for user in (f"u{i}" for i in range(40))}
    assert set(seen.values()) == {"iris:1", "iris:2"}
    assert all(version(user) == v for user, v in seen.items())
    assert version("u0", **{"X-Berth-Route": "canary"}) == "iris:2"
    forced = flowers.client.post(
        "/api/v1/endpoints/flowers/predict",
        json=ROW,
        headers={**flowers.auth(), "X-Berth-Route": "nope"},
    )
    assert forced.status_code == 400
    assert "no route 'nope'" in forced.json()["error"]


def test_v2_takes_an_endpoint_name_where_a_model_name_goes(flowers: ApiSetup) -> None:
    body = {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW["features"]}]
    }
    metadata = flowers.client.get("/v2/models/flowers", headers=flowers.auth())
    assert metadata.status_code == 200, metadata.text
    assert metadata.json()["name"] == "flowers"
    assert metadata.json()["versions"] == ["1"]
    ready = flowers.client.get("/v2/models/flowers/ready", headers=flowers.auth())
    assert ready.status_code == 200
    response = flowers.client.post("/v2/models/flowers/infer", json=body, headers=flowers.auth())
    assert response.status_code == 200, response.text
    assert response.json()["model_name"] == "flowers"
    assert response.json()["model_version"] == "1"
    assert response.headers["X-Berth-Route"] == "stable"


def test_unknown_endpoint_is_404_with_a_hint(flowers: ApiSetup) -> None:
    response = flowers.client.post(
        "/api/v1/endpoints/nope/predict", json=ROW, headers=flowers.auth()
    )
    assert response.status_code == 404
    assert "berth endpoints create nope" in response.json()["error"]


def test_shadow_gets_a_copy_and_its_agreement_is_recorded(flowers: ApiSetup) -> None:
    from berth.serving.route_stats import read_shadow

    routes = [
        RouteSpec("stable", "stable", "iris", 1, 100),
        RouteSpec("shadow", "shadow", "iris", 2, 100),
    ]
    EndpointService(flowers.registry).set_routes("flowers", routes, "shadow v2")
    _apply(flowers)
    for _ in range(20):
        response = flowers.client.post(
            "/api/v1/endpoints/flowers/predict", json=ROW, headers=flowers.auth()
        )
        assert response.headers["X-Berth-Model-Version"] == "iris:1"
    dataplane = flowers.client.app.state.services.dataplane  # type: ignore[attr-defined]

    async def settle() -> None:
        while dataplane._shadows:
            await asyncio.sleep(0.01)
        await dataplane.route_stats.flush()

    flowers.client.portal.call(settle)  # type: ignore[union-attr]
    shadow = read_shadow(flowers.registry.db, "flowers")[("iris", 2)]
    assert shadow.compared == 20
    assert shadow.agreed == 20  # the same model, trained the same way
    assert shadow.agreement == 1.0
