"""The API documentation: /docs with local assets, /openapi.json, and BERTH_DOCS deciding who reads."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from berth.api.app import build_services, create_app
from berth.config import Settings
from berth.registry.service import Registry
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from tests.conftest import register_iris


def _client(settings: Settings, iris_files: tuple[Path, Path]) -> Iterator[tuple[TestClient, str]]:
    registry = Registry.from_settings(settings)
    register_iris(registry, iris_files, aliases=("production",))
    _, key = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings))).create(
        "reader", ("read",)
    )
    with TestClient(create_app(settings, build_services(settings, registry))) as client:
        yield client, key
    registry.db.dispose()


@pytest.fixture(params=["authenticated", "public", "off", "dev"])
def docs(
    request: pytest.FixtureRequest,
    settings: Settings,
    iris_files: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[str, TestClient, str]]:
    if request.param == "dev":
        monkeypatch.setenv("BERTH_DEV", "1")
    else:
        monkeypatch.setenv("BERTH_DOCS", request.param)
    yield from ((request.param, *pair) for pair in _client(Settings(), iris_files))


def test_docs_follow_the_policy(docs: tuple[str, TestClient, str]) -> None:
    policy, client, key = docs
    page = client.get("/docs")
    spec = client.get("/openapi.json")
    spec_with_key = client.get("/openapi.json", headers={"X-API-Key": key})
    assert client.get("/redoc").status_code == 404  # one documentation page, not two
    if policy == "off":
        assert (page.status_code, spec.status_code, spec_with_key.status_code) == (404, 404, 404)
        return
    assert page.status_code == 200
    assert spec_with_key.status_code == 200
    assert "/v2/models/{name}/infer" in spec_with_key.json()["paths"]
    if policy == "authenticated":
        assert spec.status_code == 401
        assert spec.headers["WWW-Authenticate"].startswith('Bearer realm="berth"')
        assert "API key" in page.text  # the page asks for one and sends it
        bad = client.get("/openapi.json", headers={"X-API-Key": "berth_0123456789ab_nope"})
        assert bad.status_code == 401
    else:
        assert spec.status_code == 200


def test_the_docs_page_loads_nothing_from_other_hosts(
    settings: Settings, iris_files: tuple[Path, Path]
) -> None:
    for client, _key in _client(settings, iris_files):
        page = client.get("/docs").text
        urls = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert urls, page
        for url in urls:
            assert url.startswith("/"), f"{url} is not served by Berth"
            asset = client.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 500, url
        script = client.get("/docs/assets/swagger-ui-bundle.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert b"SwaggerUIBundle" in script.content
        assert client.get("/docs/assets/../../etc/passwd").status_code == 404
        assert client.get("/docs/assets/__init__.py").status_code == 404
