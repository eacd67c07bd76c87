"""Downloading a version through the API: GET .../versions/N/artifact and .../record.

Against a real server (uvicorn in a thread) and a real store: a file comes as its own bytes with
its sha256 in headers, a directory as a deterministic tar that unpacks to its sha256, a 40 MB
artifact streams in chunks, only an admin key may download (a predict or read key may not),
unknown versions and a lost artifact are 404, and a client refuses bytes that changed in the
store. The record gives back the very `VersionInfo` the registry holds.
"""

from __future__ import annotations

import base64
import hashlib
import io
import socket
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from berth.cli.profiles import Profile
from berth.cli.remote import Remote
from berth.cli.remote_build import RemoteSource
from berth.config import Settings
from berth.errors import ArtifactIntegrityError, BerthError
from berth.registration.service import RegisterRequest, register
from berth.registry.artifact_transfer import receive
from berth.registry.artifacts import directory_sha256
from berth.registry.service import Registry
from berth.registry.version_record import version_from_record
from berth.registry.versions import Lineage, VersionInfo
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from tests.cli_modes import UNUSABLE_DATABASE, threaded_server
from tests.conftest import Run, register_iris

DIRECTORY_MODEL = """
import numpy as np


class Scaled:
    def load(self, path):
        self.weights = np.loadtxt(path / "data" / "weights.txt")

    def predict(self, inputs):
        return np.asarray(inputs, dtype=float) @ self.weights
"""
LONG_NAME = "données-" + "très-long-" * 12 + ".txt"
BIG_BYTES = 40 * 1024 * 1024
KEYS = {
    "admin": ("admin",),
    "predictor": ("predict",),
    "iris-only": ("predict:iris",),
    "reader": ("read",),
    "user": ("predict", "read"),
}


@dataclass
class Served:
    url: str
    registry: Registry
    secrets: dict[str, str]
    iris: VersionInfo
    scaled: VersionInfo

    def get(self, route: str, key: str | None = "admin") -> httpx.Response:
        headers = {"X-API-Key": self.secrets[key]} if key else {}
        return httpx.get(f"{self.url}/api/v1{route}", headers=headers, timeout=30)

    def remote(self, key: str = "admin") -> Remote:
        return Remote(Profile("test", self.url, key=self.secrets[key]))

    def stored(self, version: VersionInfo, relative: str) -> Path:
        """The store's own copy of one of the version's files."""
        return Path(self.registry.store.root) / "sha256" / version.artifact.sha256 / relative


def _scaled_folder(root: Path) -> Path:
    folder = root / "scaled"
    (folder / "data").mkdir(parents=True)
    (folder / "model.py").write_text(DIRECTORY_MODEL)
    (folder / "data" / "weights.txt").write_text("1\n10\n100\n")
    (folder / "data" / LONG_NAME).write_bytes(bytes(range(256)) * 40)
    return folder


@pytest.fixture
def served(settings: Settings, iris_files: tuple[Path, Path], tmp_path: Path) -> Iterator[Served]:
    registry = Registry.from_settings(settings)
    iris = register_iris(registry, iris_files, aliases=("production",))
    sample = tmp_path / "scaled.npy"
    np.save(sample, np.array([[1.0, 2.0, 3.0]]))
    scaled = register(
        registry, RegisterRequest(name="scaled", path=_scaled_folder(tmp_path), sample=sample)
    )
    keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
    secrets = {name: keys.create(name, scopes)[1] for name, scopes in KEYS.items()}
    with threaded_server(settings) as url:
        yield Served(url, registry, secrets, iris, scaled)
    registry.db.dispose()


def test_a_file_comes_as_its_own_bytes_with_its_sha256(served: Served) -> None:
    response = served.get("/models/iris/versions/1/artifact")
    assert response.status_code == 200, response.text
    sha256 = served.iris.artifact.sha256
    assert hashlib.sha256(response.content).hexdigest() == sha256
    headers = response.headers
    assert headers["content-type"] == "application/octet-stream"
    assert (
        int(headers["content-length"]) == len(response.content) == served.iris.artifact.size_bytes
    )
    assert headers["content-disposition"] == 'attachment; filename="model.joblib"'
    assert headers["x-berth-sha256"] == sha256
    assert headers["x-berth-artifact"] == "file"
    assert headers["etag"] == f'"{sha256}"'
    assert headers["repr-digest"] == f"sha-256=:{base64.b64encode(bytes.fromhex(sha256)).decode()}:"
    assert headers["cache-control"] == "private, no-store"
    assert "content-encoding" not in headers  # sent as stored, even to a gzip-accepting client


def test_a_directory_comes_as_a_tar_that_unpacks_to_its_sha256(
    served: Served, tmp_path: Path
) -> None:
    response = served.get("/models/scaled/versions/1/artifact")
    assert response.status_code == 200, response.text
    headers = response.headers
    assert headers["content-type"] == "application/x-tar"
    assert headers["content-disposition"] == 'attachment; filename="scaled-1.tar"'
    assert headers["x-berth-artifact"] == "directory"
    assert headers["x-berth-sha256"] == served.scaled.artifact.sha256
    assert "repr-digest" not in headers  # the tar's own digest is not the version's
    assert int(headers["content-length"]) == len(response.content)
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(
        ["model.py", "data/weights.txt", f"data/{LONG_NAME}"]
    )
    assert {(m.type, m.mode, m.mtime, m.uid, m.gid) for m in members} == {
        (tarfile.REGTYPE, 0o644, 0, 0, 0)
    }
    again = served.get("/models/scaled/versions/1/artifact")
    assert again.content == response.content  # the same version, the same bytes (its ETag)
    folder = tmp_path / "unpacked"
    folder.mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    receive([response.content], "directory", served.scaled.artifact, folder, scratch=scratch)
    assert directory_sha256(folder) == served.scaled.artifact.sha256
    assert (folder / "data" / LONG_NAME).read_bytes() == bytes(range(256)) * 40
    assert not list(scratch.iterdir())


def test_only_an_admin_key_downloads_or_reads_the_record(served: Served) -> None:
    for route in ("/models/iris/versions/1/artifact", "/models/iris/versions/1/record"):
        assert served.get(route).status_code == 200
        assert served.get(route, key=None).status_code == 401
        for key in ("predictor", "iris-only", "reader", "user"):
            refused = served.get(route, key=key)
            assert refused.status_code == 403, (route, key)
            assert refused.json() == {
                "error": f"key '{key}' may not administer Berth; it needs the admin scope"
            }
    # A predict:iris key still reads iris's metadata, which holds no model bytes.
    assert served.get("/models/iris/versions/1", key="iris-only").status_code == 200


def test_unknown_versions_and_a_lost_artifact_are_404(served: Served) -> None:
    missing_model = served.get("/models/nosuch/versions/1/artifact")
    assert missing_model.status_code == 404
    assert missing_model.json()["error"].startswith("model 'nosuch' is not registered")
    missing_version = served.get("/models/iris/versions/9/artifact")
    assert missing_version.status_code == 404
    assert missing_version.json()["error"] == "model 'iris' has no version 9 (versions: 1)"
    assert served.get("/models/iris/versions/x/artifact").status_code == 400
    served.stored(served.iris, "model.joblib").unlink()
    lost = served.get("/models/iris/versions/1/artifact")
    assert lost.status_code == 404
    assert "is missing from the store" in lost.json()["error"]


def test_a_big_artifact_streams_in_chunks_and_is_verified_on_arrival(
    served: Served, iris_files: tuple[Path, Path], tmp_path: Path
) -> None:
    features = np.random.default_rng(0).random((30, 4)).astype(np.float32)
    model = LogisticRegression().fit(features, np.arange(30) % 2)
    model.padding_ = np.random.default_rng(1).integers(0, 255, BIG_BYTES, dtype=np.uint8)
    path = tmp_path / "big.joblib"
    joblib.dump(model, path)
    big = register(
        served.registry,
        RegisterRequest(name="big", path=path, sample=iris_files[1], trust_pickle=True),
    )
    assert big.artifact.size_bytes > BIG_BYTES
    headers = {"X-API-Key": served.secrets["admin"]}
    digest, chunks, received = hashlib.sha256(), 0, 0
    with httpx.stream(
        "GET", f"{served.url}/api/v1/models/big/versions/1/artifact", headers=headers
    ) as response:
        assert int(response.headers["content-length"]) == big.artifact.size_bytes
        for chunk in response.iter_raw():
            digest.update(chunk)
            chunks += 1
            received += len(chunk)
    assert received == big.artifact.size_bytes
    assert digest.hexdigest() == big.artifact.sha256
    assert chunks > 10  # sent as it is read, never as one body
    folder = tmp_path / "fetched"
    folder.mkdir()
    RemoteSource(served.remote()).fetch_artifact(big, folder)
    assert [p.name for p in folder.iterdir()] == ["big.joblib"]
    assert hashlib.sha256((folder / "big.joblib").read_bytes()).hexdigest() == big.artifact.sha256


def test_bytes_that_changed_in_the_store_are_refused_and_not_kept(
    served: Served, tmp_path: Path
) -> None:
    for version, relative in ((served.iris, "model.joblib"), (served.scaled, "data/weights.txt")):
        stored = served.stored(version, relative)
        data = bytearray(stored.read_bytes())
        data[-2] ^= 0x01  # same size, one bit off
        stored.write_bytes(bytes(data))
        folder = tmp_path / "fetched" / version.model
        folder.mkdir(parents=True)
        with pytest.raises(ArtifactIntegrityError, match="fails its sha256 check"):
            RemoteSource(served.remote()).fetch_artifact(version, folder)
        assert not list(folder.iterdir())
        assert not [p for p in folder.parent.iterdir() if p.name.startswith(".berth-download")]


def test_a_download_that_breaks_off_is_one_line_and_keeps_nothing(
    served: Served, tmp_path: Path
) -> None:
    """A server that announces the whole artifact and closes after half of it."""
    body = served.get("/models/iris/versions/1/artifact").content
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\nX-Berth-Sha256: {served.iris.artifact.sha256}\r\n"
        "X-Berth-Artifact: file\r\n\r\n"
    ).encode()
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_half() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(head + body[: len(body) // 2])

    thread = threading.Thread(target=answer_half, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    folder = tmp_path / "fetched"
    folder.mkdir()
    try:
        source = RemoteSource(Remote(Profile("test", url, key="berth_x_not-checked-here")))
        with pytest.raises(BerthError, match=f"^the download from {url} broke off: .*; nothing"):
            source.fetch_artifact(served.iris, folder)
    finally:
        thread.join(10)
        listener.close()
    assert not list(folder.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".berth-download")]


def test_berth_build_refuses_changed_bytes_and_a_key_without_admin(
    served: Served, run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = served.stored(served.iris, "model.joblib")
    data = bytearray(stored.read_bytes())
    data[-2] ^= 0x01
    stored.write_bytes(bytes(data))
    monkeypatch.setenv("BERTH_SERVER", served.url)
    monkeypatch.setenv("BERTH_DATABASE_URL", UNUSABLE_DATABASE)
    out = tmp_path / "bundle"
    monkeypatch.setenv("BERTH_API_KEY", served.secrets["admin"])
    tampered = run("build", "iris", "--out", str(out), "--target", "compose")
    assert tampered.code == 1
    assert tampered.err.startswith("error: the artifact received fails its sha256 check")
    assert tampered.err.count("\n") == 1
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]  # no staging left
    monkeypatch.setenv("BERTH_API_KEY", served.secrets["reader"])
    refused = run("build", "iris", "--out", str(out), "--target", "compose")
    assert refused.code == 1
    assert refused.err == (
        f"error: {served.url} refused: key 'reader' may not administer Berth; it needs the "
        "admin scope\n"
    )


def test_the_record_gives_back_the_version_the_registry_holds(
    served: Served, iris_files: tuple[Path, Path]
) -> None:
    model, sample = iris_files
    derived = register(
        served.registry,
        RegisterRequest(
            name="iris", path=model, sample=sample, reference=sample, trust_pickle=True,
            metrics={"accuracy": 0.97}, tags={"git_sha": "abc"}, description="retrained",
            lineage=Lineage("iris", 1, {"method": "retrain", "check": {"rows": 20}}),
        ),
    )  # fmt: skip
    for version in (served.iris, derived, served.scaled):
        response = served.get(f"/models/{version.model}/versions/{version.number}/record")
        assert response.status_code == 200, response.text
        stored = served.registry.get_version(version.model, version.number)
        expected = replace(stored, artifact=replace(stored.artifact, uri=""))
        assert version_from_record(response.json()) == expected
    record = served.get("/models/iris/versions/2/record").json()
    assert record["reference_stats"]["rows"] == 20
    assert record["artifact"] == {
        "sha256": derived.artifact.sha256,
        "size_bytes": derived.artifact.size_bytes,
        "entry": "model.joblib",
        "is_directory": False,
    }
    assert str(served.registry.store.root) not in response.text  # no server path leaks
