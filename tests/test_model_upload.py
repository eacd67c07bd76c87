"""Registering a version by upload: `POST /api/v1/models/{name}/versions` (multipart, streamed)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from berth.config import Settings
from berth.registry.service import Registry
from berth.runtimes import pickle_refusal
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from berth.store.audit import AuditLog
from tests.conftest import create_key, iris_home, serving

URL = "/api/v1/models/iris/versions"
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


@dataclass
class Uploads:
    client: TestClient
    registry: Registry
    admin: dict[str, str]
    user: dict[str, str]
    spool: Path
    """Where the server's private upload directories go (tempfile's directory)."""


@pytest.fixture
def uploads(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Uploads]:
    from berth.api.app import build_services, create_app

    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    settings = settings.model_copy(update={"max_upload_bytes": 4 * 1024 * 1024})
    registry = Registry.from_settings(settings)
    keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
    admin = keys.create("ci", ("admin",))[1]
    user = keys.create("user", ("predict", "read"))[1]
    app = create_app(settings, build_services(settings, registry))
    with TestClient(app) as client:
        yield Uploads(client, registry, {"X-API-Key": admin}, {"X-API-Key": user}, spool)
    registry.db.dispose()


def _parts(iris_files: tuple[Path, Path], **metadata: Any) -> tuple[dict[str, Any], dict[str, str]]:
    model, sample = iris_files
    metadata.setdefault("sha256", hashlib.sha256(model.read_bytes()).hexdigest())
    files = {
        "artifact": (model.name, model.read_bytes()),
        "sample": (sample.name, sample.read_bytes()),
    }
    return files, {"metadata": json.dumps(metadata)}


def _nothing_registered(uploads: Uploads) -> None:
    assert uploads.registry.list_models() == []
    assert list(uploads.spool.iterdir()) == []  # the private upload directory is gone


def test_an_upload_registers_a_version_that_is_listed_and_predicts(
    uploads: Uploads, iris_files: tuple[Path, Path]
) -> None:
    files, data = _parts(
        iris_files, trust_pickle=True, aliases=["production"], metrics={"accuracy": 0.97}
    )
    response = uploads.client.post(URL, files=files, data=data, headers=uploads.admin)
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == "/api/v1/models/iris/versions/1"
    shown = uploads.client.get(response.headers["Location"], headers=uploads.user)
    assert response.json() == {**shown.json(), "notes": response.json()["notes"]}
    assert response.json()["notes"] == []  # nothing to tell: the signature came from the sample
    assert shown.json()["metrics"] == {"accuracy": 0.97}
    assert shown.json()["pickle_trusted"] is True
    listed = uploads.client.get("/api/v1/models/iris", headers=uploads.user).json()
    assert [v["version"] for v in listed["versions"]] == [1]
    dataplane = uploads.client.app.state.services.dataplane  # type: ignore[attr-defined]
    uploads.client.portal.call(dataplane.refresh)  # type: ignore[union-attr]
    predicted = uploads.client.post(
        "/api/v1/models/iris/predict", json={"features": IRIS_ROW}, headers=uploads.user
    )
    assert predicted.status_code == 200, predicted.text
    events = {e.action: e for e in AuditLog(uploads.registry.db).list(actor="ci")}
    assert set(events) == {"model.register", "model.accelerate"}
    event = events["model.register"]
    assert (event.outcome, event.address) == ("ok", "testclient")
    assert event.detail["trust_pickle"] is True
    # The upload made its ONNX twin too, on the server, and the version answers through it.
    assert events["model.accelerate"].detail == {"served": True}
    assert response.json()["accelerated"]["served"] is True
    assert response.json()["accelerated"]["check"]["agreeing"] == 1000
    assert list(uploads.spool.iterdir()) == []


def test_a_sha256_other_than_the_bytes_received_is_refused(
    uploads: Uploads, iris_files: tuple[Path, Path]
) -> None:
    files, data = _parts(iris_files, sha256="0" * 64, trust_pickle=True)
    response = uploads.client.post(URL, files=files, data=data, headers=uploads.admin)
    assert response.status_code == 400
    assert "sha256" in response.json()["error"]
    _nothing_registered(uploads)


def test_an_upload_over_the_limit_is_refused_while_streaming(
    uploads: Uploads, iris_files: tuple[Path, Path]
) -> None:
    files, data = _parts(iris_files, trust_pickle=True)
    files["reference"] = ("big.npy", os.urandom(5 * 1024 * 1024))
    announced = uploads.client.post(URL, files=files, data=data, headers=uploads.admin)
    assert announced.status_code == 413
    assert "BERTH_MAX_UPLOAD_BYTES" in announced.json()["error"]
    # without Content-Length, the bytes are counted as they arrive
    request = uploads.client.build_request("POST", URL, files=files, data=data)
    body = request.read()
    chunked = uploads.client.post(
        URL,
        content=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]),
        headers={**uploads.admin, "Content-Type": request.headers["Content-Type"]},
    )
    assert chunked.status_code == 413, chunked.text
    _nothing_registered(uploads)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("no artifact", "'artifact' part"),
        ("no metadata", "'metadata' part"),
        ("unknown part", "unknown part 'model'"),
        ("bad metadata", "the 'metadata' part: 'aliases'"),
        ("metadata not JSON", "the 'metadata' part: the request body is not valid JSON"),
        ("not multipart", "multipart/form-data"),
    ],
)
def test_a_malformed_upload_is_refused_naming_the_part(
    uploads: Uploads, iris_files: tuple[Path, Path], change: str, named: str
) -> None:
    files, data = _parts(iris_files, trust_pickle=True)
    if change == "no artifact":
        del files["artifact"]
    elif change == "no metadata":
        data = {}
    elif change == "unknown part":
        files["model"] = files["artifact"]
    elif change == "bad metadata":
        data = {"metadata": json.dumps({"sha256": "0" * 64, "aliases": "production"})}
    elif change == "metadata not JSON":
        data = {"metadata": "{"}
    if change == "not multipart":
        response = uploads.client.post(URL, json={"sha256": "0" * 64}, headers=uploads.admin)
    else:
        response = uploads.client.post(URL, files=files, data=data, headers=uploads.admin)
    assert response.status_code == 400, response.text
    assert named in response.json()["error"]
    _nothing_registered(uploads)


def test_only_an_admin_may_upload_and_trust_a_pickle(
    uploads: Uploads, iris_files: tuple[Path, Path]
) -> None:
    files, data = _parts(iris_files, trust_pickle=True)
    response = uploads.client.post(URL, files=files, data=data, headers=uploads.user)
    assert response.status_code == 403
    assert "admin scope" in response.json()["error"]
    _nothing_registered(uploads)


def test_a_pickle_without_trust_is_refused_as_the_command_refuses_it(
    uploads: Uploads, iris_files: tuple[Path, Path]
) -> None:
    files, data = _parts(iris_files)
    response = uploads.client.post(URL, files=files, data=data, headers=uploads.admin)
    assert response.status_code == 400
    assert response.json()["error"] == pickle_refusal("model.joblib")
    _nothing_registered(uploads)


def test_a_filename_with_directories_stays_in_the_upload_directory(
    uploads: Uploads, iris_files: tuple[Path, Path], tmp_path: Path
) -> None:
    files, data = _parts(iris_files, trust_pickle=True)
    files["artifact"] = ("../../model.joblib", files["artifact"][1])
    response = uploads.client.post(URL, files=files, data=data, headers=uploads.admin)
    assert response.status_code == 201, response.text
    assert not (tmp_path / "model.joblib").exists()


# ---------------------------------------------------------------------------- a real server


def _vm(pid: int, field: str) -> int:
    """A /proc/PID/status memory figure (VmRSS, VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def _server_pid(port: int) -> int:
    """The pid of the process listening on `port` (the server worker)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                inodes.add(fields[9])
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd).removeprefix("socket:[").removesuffix("]") in inodes:
                    return int(entry.name)
        except OSError:
            continue
    raise AssertionError(f"nothing listens on {port}")


def _streamed_body(boundary: str, size: int, metadata: dict[str, Any]) -> Iterator[bytes]:
    """A multipart body with a `size`-byte artifact, made as it is sent."""
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'
        f"{json.dumps(metadata)}\r\n--{boundary}\r\nContent-Disposition: form-data; "
        f'name="artifact"; filename="model.joblib"\r\n\r\n'
    ).encode()
    block = os.urandom(1024 * 1024)
    for _ in range(size // len(block)):
        yield block
    yield f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.server
def test_a_large_upload_is_streamed_to_disk_not_memory_and_slow_ones_time_out(
    tmp_path: Path, iris_files: tuple[Path, Path]
) -> None:
    env = iris_home(tmp_path / "home", iris_files)
    key = create_key(env, "ci", "--scope", "admin")
    env |= {"BERTH_UPLOAD_TIMEOUT_SECONDS": "3", "BERTH_MAX_BODY_BYTES": "1048576"}
    size = 100 * 1024 * 1024
    with serving(env) as (base, port):
        pid = _server_pid(port)
        before = _vm(pid, "VmHWM")
        boundary = "berth-test-boundary"
        response = httpx.post(
            f"{base}{URL}",
            content=_streamed_body(boundary, size, {"sha256": "0" * 64}),
            headers={
                "X-API-Key": key,
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
            timeout=60,
        )
        # the whole body went through (well over BERTH_MAX_BODY_BYTES) to the sha256 check
        assert response.status_code == 400, response.text
        assert "sha256" in response.json()["error"]
        grown = _vm(pid, "VmHWM") - before
        assert grown < size // 4, f"peak RSS grew by {grown} bytes for a {size}-byte upload"

        with socket.create_connection(("127.0.0.1", port)) as slow:
            slow.sendall(
                (
                    f"POST {URL} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
                    f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                    "Content-Length: 100000\r\n\r\n--"
                ).encode()
            )
            started = time.monotonic()
            slow.settimeout(15)
            answer = slow.recv(65536).decode()
        assert answer.startswith("HTTP/1.1 408"), answer
        assert time.monotonic() - started < 10
