"""`berth models ...` in remote mode: the same output as local mode, uploads, and failures.

The local mode works on the test's registry; the remote mode on a real server (uvicorn in a
thread) with a registry of its own, reached with a key and an unusable BERTH_DATABASE_URL. So
the same commands run once each way on equal registries, and their output is compared.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from berth.cli import context, upload
from berth.config import Settings
from berth.errors import InvalidInput
from berth.optimize import speed
from berth.registry.service import Registry
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from berth.store.audit import AuditLog
from tests.cli_modes import UNUSABLE_DATABASE, threaded_server
from tests.conftest import Outcome, Run, one_line_error
from tests.ports import free_port

PYTHON_MODEL = """
from pathlib import Path


class Scaled:
    def load(self, folder):
        self.factor = float((Path(folder) / "assets" / "factor.txt").read_text())

    def predict(self, rows):
        return rows.sum(axis=1) * self.factor
"""


@dataclass(frozen=True)
class Server:
    url: str
    admin: str
    reader: str
    """Has the read scope only."""
    settings: Settings

    def registry(self) -> Registry:
        return Registry.from_settings(self.settings)


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[Server]:
    """A real server on a registry of its own: the local mode keeps the test's registry."""
    served = settings.model_copy(update={"home": tmp_path / "server-home"})
    registry = Registry.from_settings(served)
    try:
        keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(served)))
        admin = keys.create("ci", ("admin",))[1]
        reader = keys.create("reader", ("read",))[1]
    finally:
        registry.db.dispose()
    with threaded_server(served) as url:
        yield Server(url, admin, reader, served)


@pytest.fixture
def remotely(run: Run, server: Server, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Outcome]:
    """`run` in remote mode, against `server`, with its admin key unless `key` is given."""

    def invoke(*args: str, key: str | None = None, url: str | None = None) -> Outcome:
        with monkeypatch.context() as patched:
            patched.setenv("BERTH_SERVER", url or server.url)
            patched.setenv("BERTH_API_KEY", key or server.admin)
            patched.setenv("BERTH_DATABASE_URL", UNUSABLE_DATABASE)
            return run(*args)

    return invoke


@pytest.fixture
def python_model(tmp_path: Path) -> Path:
    """A directory model: code, an asset in a subfolder, and a __pycache__ that is left out."""
    folder = tmp_path / "scaled"
    (folder / "assets").mkdir(parents=True)
    (folder / "__pycache__").mkdir()
    (folder / "model.py").write_text(PYTHON_MODEL)
    (folder / "assets" / "factor.txt").write_text("2.5\n")
    (folder / "__pycache__" / "model.cpython-312.pyc").write_bytes(b"stale")
    np.save(tmp_path / "rows.npy", np.ones((3, 2)))
    return folder


def test_every_models_command_prints_the_same_in_both_modes(
    run: Run,
    remotely: Callable[..., Outcome],
    iris_files: tuple[Path, Path],
    churn_files: tuple[Path, Path, Path],
    python_model: Path,
    tmp_path: Path,
) -> None:
    model, sample = iris_files
    churn, rows, signature = churn_files
    commands = [
        ["models", "list"],
        ["models", "register", "iris", str(model), "--sample", str(sample)],  # a pickle
        [
            *("models", "register", "iris", str(model), "--sample", str(sample)),
            *("--trust-pickle", "--alias", "production", "--metric", "accuracy=0.97"),
            *("--tag", "team=ml", "--description", "first"),
        ],
        ["models", "register", "iris", str(model), "--trust-pickle"],  # the same bytes again
        [
            *("models", "register", "churn", str(churn), "--sample", str(rows)),
            *("--signature", str(signature), "--reference", str(rows), "--flavor", "sklearn"),
        ],
        ["models", "register", "scaled", str(python_model), "--sample", str(tmp_path / "rows.npy")],
        ["models", "register", "bad", str(model), "--metric", "auc"],
        ["models", "register", "bad", str(tmp_path / "missing.joblib")],
        [
            *("models", "register", "bad", str(model), "--trust-pickle"),
            *("--sample", str(tmp_path / "missing.csv")),
        ],
        ["models", "list"],
        ["models", "show", "scaled", "--json"],
        ["models", "alias", "iris", "staging", "2"],
        ["models", "alias", "iris", "staging", "9"],
        ["models", "alias", "iris", "staging"],
        ["models", "delete", "iris:2"],
        ["models", "alias", "iris", "staging", "--remove"],
        ["models", "alias", "iris", "staging", "--remove"],
        ["models", "delete", "iris:2"],
        ["models", "delete", "iris@production"],
        ["models", "delete", "iris"],
        ["models", "delete", "iris", "--yes"],
        ["models", "delete", "churn", "--yes"],
        ["models", "delete", "ghost", "--yes"],
        ["models", "list"],
    ]
    for command in commands:
        local, remote = run(*command), remotely(*command)
        if command[-1] == "--json":  # created_at differs between the two registries
            local_doc, remote_doc = json.loads(local.out), json.loads(remote.out)
            del local_doc["created_at"], remote_doc["created_at"]
            assert remote_doc == local_doc
            continue
        assert remote == local, command
    # The directory went up as an archive and came out with the same files: same sha256.
    shown = json.loads(run("models", "show", "scaled", "--json").out)
    assert shown["size_bytes"] == len(PYTHON_MODEL) + len("2.5\n")


def test_uploads_show_progress_on_stderr_only(
    run: Run,
    server: Server,
    remotely: Callable[..., Outcome],
    iris_files: tuple[Path, Path],
    python_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, sample = iris_files
    commands = [
        ["models", "register", "iris", str(model), "--sample", str(sample), "--trust-pickle"],
        ["models", "register", "scaled", str(python_model), "--sample", str(tmp_path / "rows.npy")],
    ]
    expected = [run(*command) for command in commands]
    # stderr as a terminal: what rich decides when the console is made, set afterwards
    monkeypatch.setattr(context.err_console, "_force_terminal", True)
    monkeypatch.setattr(context.err_console, "is_interactive", True)
    for command, local in zip(commands, expected, strict=True):
        remote = remotely(*command)
        assert (remote.code, remote.out) == (local.code, local.out)
        assert "Uploading" in remote.err  # the bar was drawn, on stderr
        assert f"Checking and storing on {server.url}" in remote.err
        assert "Traceback" not in remote.err
    assert "Packing" in remote.err  # the directory was packed first


def test_the_sha256_sent_is_that_of_the_bytes_sent(tmp_path: Path) -> None:
    artifact = tmp_path / "model.bin"
    artifact.write_bytes(np.random.default_rng(0).bytes(3 * upload.CHUNK_BYTES + 5))
    seen: list[int] = []
    sent: dict[str, str] = {}

    def fields(digests: dict[str, str]) -> dict[str, bytes]:
        sent.update(digests)
        return {"metadata": json.dumps({"sha256": digests["artifact"]}).encode()}

    part = upload.FilePart("artifact", artifact, artifact.name)
    body = upload.multipart([part], fields, seen.append)
    data = b"".join(body.chunks)
    assert len(data) == body.size == int(body.headers["Content-Length"])
    assert sum(seen) == artifact.stat().st_size
    assert sent["artifact"] == hashlib.sha256(artifact.read_bytes()).hexdigest()
    # the metadata, with the digest, comes after the artifact's last byte
    assert data.index(f'{{"sha256": "{sent["artifact"]}"}}'.encode()) > data.index(
        artifact.read_bytes()[-64:]
    )

    # A file that changes while it is sent stops the body before its metadata is written.
    for change in ("grow", "shrink"):
        body = upload.multipart([part], fields, lambda _size: None)
        next(body.chunks)  # the part's head
        next(body.chunks)  # its first chunk
        if change == "grow":
            with artifact.open("ab") as handle:
                handle.write(b"more")
        else:
            artifact.write_bytes(b"less")
        with pytest.raises(InvalidInput, match="changed while it was being sent"):
            list(body.chunks)


def test_a_file_changing_during_the_upload_registers_nothing(
    remotely: Callable[..., Outcome],
    server: Server,
    iris_files: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = tmp_path / "model.joblib"
    shutil.copyfile(iris_files[0], model)
    monkeypatch.setattr(upload, "CHUNK_BYTES", 64)
    read = upload._read

    def appended_to_midway(path: Path, expected: int) -> Iterator[bytes]:
        for number, chunk in enumerate(read(path, expected)):
            if number == 2 and path == model:
                with model.open("ab") as handle:
                    handle.write(b"tail")
            yield chunk

    monkeypatch.setattr(upload, "_read", appended_to_midway)
    outcome = remotely("models", "register", "iris", str(model), "--trust-pickle")
    one_line_error(outcome, "changed while it was being sent; nothing was registered")
    registry = server.registry()
    assert registry.list_models() == []
    registry.db.dispose()


def test_a_key_without_the_admin_scope_is_one_line(
    remotely: Callable[..., Outcome], server: Server, iris_files: tuple[Path, Path]
) -> None:
    model, sample = iris_files
    assert remotely("models", "register", "iris", str(model), "--trust-pickle").code == 0
    for command in (
        ["models", "register", "iris", str(model), "--sample", str(sample), "--trust-pickle"],
        ["models", "alias", "iris", "production", "1"],
        ["models", "alias", "iris", "production", "--remove"],
        ["models", "delete", "iris:1"],
        ["models", "delete", "iris", "--yes"],
        ["models", "optimize", "iris:1"],
    ):
        refused = remotely(*command, key=server.reader)
        one_line_error(refused, f"{server.url} refused: key 'reader' may not administer Berth")
        assert server.reader not in refused.err
    assert remotely("models", "list", key=server.reader).code == 0


def test_an_unreachable_server_is_one_line(
    remotely: Callable[..., Outcome], iris_files: tuple[Path, Path]
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    for command in (
        ["models", "register", "iris", str(iris_files[0]), "--trust-pickle"],
        ["models", "alias", "iris", "production", "1"],
        ["models", "delete", "iris:1"],
        ["models", "delete", "iris", "--yes"],
        ["models", "optimize", "iris:1"],
        ["models", "drift", "iris"],
    ):
        one_line_error(remotely(*command, url=nowhere), f"cannot reach {nowhere}: ")


def test_deleting_a_whole_model_over_the_api_needs_its_name_twice(
    server: Server, iris_files: tuple[Path, Path], remotely: Callable[..., Outcome]
) -> None:
    assert remotely("models", "register", "iris", str(iris_files[0]), "--trust-pickle").code == 0
    headers = {"X-API-Key": server.admin}
    url = f"{server.url}/api/v1/models/iris"
    for params in ({}, {"confirm": "other"}, {"confirm": ""}):
        refused = httpx.delete(url, params=params, headers=headers)
        assert refused.status_code == 400, refused.text
        assert "confirm with ?confirm=iris" in refused.json()["error"]
    deleted = httpx.delete(url, params={"confirm": "iris"}, headers=headers)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"deleted": "iris"}
    assert httpx.delete(url, params={"confirm": "iris"}, headers=headers).status_code == 404
    registry = server.registry()
    events = [e for e in AuditLog(registry.db).list() if e.action == "model.delete"]
    registry.db.dispose()
    # the unconfirmed requests never reached the registry; the missing model was refused
    assert [(e.actor, e.outcome) for e in events] == [("ci", "refused"), ("ci", "ok")]
    assert all(e.address == "127.0.0.1" for e in events)


def test_the_optimize_route_takes_json_nothing_or_multipart(
    server: Server,
    iris_files: tuple[Path, Path],
    remotely: Callable[..., Outcome],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(speed, "BUDGET_SECONDS", 0.005)
    model, sample = iris_files
    registered = remotely(
        "models", "register", "iris", str(model), "--sample", str(sample), "--trust-pickle"
    )
    assert registered.code == 0, registered.err
    headers = {"X-API-Key": server.admin}
    url = f"{server.url}/api/v1/models/iris:1/optimize"
    empty = httpx.post(url, headers=headers, timeout=60)
    assert empty.status_code == 200, empty.text
    assert empty.json()["version"]["version"] == 2
    options = httpx.post(url, json={"alias": "staging"}, headers=headers, timeout=60)
    assert options.status_code == 200, options.text
    assert options.json()["version"]["aliases"] == ["staging"]
    bad = httpx.post(url, json={"tolerance": "x"}, headers=headers)
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("'tolerance' must be a number")
    bad_part = httpx.post(
        url,
        files={"data": ("rows.npy", sample.read_bytes())},
        data={"options": '{"quantize": 8}'},
        headers=headers,
    )
    assert bad_part.status_code == 400
    assert bad_part.json()["error"].startswith("the 'options' part: 'quantize'")
    with_rows = httpx.post(
        url,
        files={"data": ("rows.npy", sample.read_bytes())},
        data={"options": "{}"},
        headers=headers,
        timeout=60,
    )
    assert with_rows.status_code == 200, with_rows.text
    assert with_rows.json()["check"]["data"]["sources"] == {"rows of rows.npy": 20}


def test_an_upload_over_the_server_limit_is_one_line(
    run: Run, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server refuses by Content-Length while the body is still on its way."""
    served = settings.model_copy(
        update={"home": tmp_path / "small-server", "max_upload_bytes": 256 * 1024}
    )
    registry = Registry.from_settings(served)
    keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(served)))
    admin = keys.create("ci", ("admin",))[1]
    registry.db.dispose()
    big = tmp_path / "big.joblib"
    big.write_bytes(np.random.default_rng(1).bytes(8 * 1024 * 1024))
    with threaded_server(served) as url:
        monkeypatch.setenv("BERTH_SERVER", url)
        monkeypatch.setenv("BERTH_API_KEY", admin)
        monkeypatch.setenv("BERTH_DATABASE_URL", UNUSABLE_DATABASE)
        refused = run("models", "register", "big", str(big), "--trust-pickle")
    one_line_error(
        refused, f"{url} answered 413: the upload is larger than the limit of 262144 bytes"
    )
