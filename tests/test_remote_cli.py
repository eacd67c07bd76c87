"""Remote mode: `berth` talks to a server's API with a key, and holds no database credentials.

One real `berth serve` holds iris; the remote commands run in another BERTH_HOME whose
BERTH_DATABASE_URL is unusable, so any database access there would fail the command. Their
output is compared with the local mode's, run on the server's own home.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import BERTH, berth, create_key, free_port, iris_home, serving

pytestmark = pytest.mark.server

UNUSABLE_DATABASE = "postgresql+psycopg://nobody@127.0.0.1:1/x"


@dataclass(frozen=True)
class Server:
    url: str
    local: dict[str, str]
    """The server's own environment: the local mode, on the same registry."""
    key: str
    """Has the admin scope."""
    narrow_key: str
    """May predict with another model only: not read the model list."""


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, iris_files: tuple[Path, Path]
) -> Iterator[Server]:
    env = iris_home(tmp_path_factory.mktemp("server") / "home", iris_files)
    env["COLUMNS"] = "120"
    key = create_key(env, "ci", "--scope", "admin")
    narrow_key = create_key(env, "narrow", "--scope", "predict:other")
    with serving(env) as (url, _port):
        yield Server(url, env, key, narrow_key)


@pytest.fixture
def remote_env(tmp_path: Path, server: Server) -> dict[str, str]:
    """A machine with no registry: an unusable database and its own, empty config folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env.update(
        BERTH_HOME=str(tmp_path / "remote-home"),
        BERTH_DATABASE_URL=UNUSABLE_DATABASE,
        BERTH_CONFIG_DIR=str(tmp_path / "config"),
        COLUMNS="120",
    )
    return env


@pytest.fixture
def key_file(tmp_path: Path, server: Server) -> Path:
    path = tmp_path / "berth-key"
    path.write_text(server.key + "\n")
    path.chmod(0o600)
    return path


def _profiles(env: dict[str, str]) -> Path:
    return Path(env["BERTH_CONFIG_DIR"]) / "profiles.toml"


def _no_secret(server: Server, *texts: str) -> None:
    for text in texts:
        assert server.key not in text
        assert server.narrow_key not in text


def _table_rows(text: str) -> list[list[str]]:
    """The cells of a printed table's rows (rich draws cells between │ characters)."""
    return [[c.strip() for c in line.split("│")] for line in text.splitlines() if "│" in line]


def _one_line(done: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert done.returncode == 1, done
    err = done.stderr
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert fragment in lines[0], err


def test_remote_output_is_the_local_output(
    server: Server, remote_env: dict[str, str], key_file: Path
) -> None:
    logged = berth(remote_env, "login", server.url, "--key-file", str(key_file), "--name", "prod")
    assert logged.returncode == 0, logged.stderr
    assert "prod" in logged.stdout
    assert logged.stderr == ""  # loopback: no warning about plain http
    _no_secret(server, logged.stdout, logged.stderr)

    # The profile keeps the key file's path, not the key; the file is the user's only.
    stored = _profiles(remote_env)
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert server.key not in stored.read_text()
    document = tomllib.loads(stored.read_text())
    assert document["current"] == "prod"
    assert document["profiles"]["prod"] == {"url": server.url, "key_file": str(key_file)}

    for command in (
        ["models", "list"],
        ["models", "list", "--json"],
        ["models", "show", "iris:1"],
        ["models", "show", "iris:1", "--json"],
        ["models", "show", "iris"],
        ["models", "show", "iris@production", "--json"],
    ):
        local = berth(server.local, *command)
        remote = berth(remote_env, *command)
        assert local.returncode == remote.returncode == 0, (command, local.stderr, remote.stderr)
        assert remote.stdout == local.stdout, command
        assert remote.stderr == local.stderr == "", command
    listed = json.loads(berth(remote_env, "models", "list", "--json").stdout)
    assert [(m["name"], m["latest_flavor"]) for m in listed] == [("iris", "sklearn")]

    # Failures the server reports read as the local ones, with the same exit code.
    for command in (["models", "show", "nope:1"], ["models", "show", "iris@nope"]):
        local = berth(server.local, *command)
        remote = berth(remote_env, *command)
        assert (remote.returncode, remote.stderr) == (local.returncode, local.stderr), command
        _one_line(remote, "nope")


def test_profiles_list_use_remove_and_logout(
    server: Server, remote_env: dict[str, str], key_file: Path
) -> None:
    # A key from BERTH_API_KEY has no file to point at: the profile stores it, privately.
    from_env = berth(
        {**remote_env, "BERTH_API_KEY": server.key}, "login", server.url, "--name", "env"
    )
    assert from_env.returncode == 0, from_env.stderr
    stored = _profiles(remote_env)
    assert tomllib.loads(stored.read_text())["profiles"]["env"]["key"] == server.key
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert berth(remote_env, "login", server.url, "--key-file", str(key_file)).returncode == 0

    listed = berth({**remote_env, "COLUMNS": "300"}, "profile", "list")  # key paths are long
    assert listed.returncode == 0, listed.stderr
    _no_secret(server, listed.stdout, listed.stderr)
    default = "127.0.0.1-" + server.url.rsplit(":", 1)[1]
    rows = {cells[2]: cells for cells in _table_rows(listed.stdout)}
    assert set(rows) >= {"env", default}
    assert (rows[default][1], rows["env"][1]) == ("*", "")
    assert rows["env"][3:5] == [server.url, "stored in the profile"]
    assert rows[default][4] == f"file {key_file}"

    used = berth(remote_env, "profile", "use", "env")
    assert used.returncode == 0, used.stderr
    assert tomllib.loads(stored.read_text())["current"] == "env"
    assert berth(remote_env, "models", "list").returncode == 0

    _one_line(berth(remote_env, "profile", "use", "nope"), "no profile 'nope'")
    assert berth(remote_env, "profile", "remove", default).returncode == 0
    assert default not in berth(remote_env, "profile", "list").stdout

    # Logging out forgets the current profile: commands go back to the (here unusable) database.
    out = berth(remote_env, "logout")
    assert out.returncode == 0, out.stderr
    assert "env" not in tomllib.loads(stored.read_text()).get("profiles", {})
    _one_line(berth(remote_env, "models", "list"), "BERTH_DATABASE_URL")


def test_environment_overrides_the_profile(
    server: Server, remote_env: dict[str, str], key_file: Path
) -> None:
    env = {**remote_env, "BERTH_SERVER": server.url, "BERTH_API_KEY_FILE": str(key_file)}
    listed = berth(env, "models", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == berth(server.local, "models", "list", "--json").stdout
    assert not _profiles(remote_env).exists()
    _one_line(berth({**remote_env, "BERTH_SERVER": server.url}, "models", "list"), "BERTH_API_KEY")


def test_failures_are_one_clean_line_without_the_key(
    server: Server, remote_env: dict[str, str], tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong-key"
    wrong.write_text("berth_notarealkey_0123456789\n")
    refused = berth(remote_env, "login", server.url, "--key-file", str(wrong))
    _one_line(refused, "invalid, expired or revoked; log in again with `berth login")
    assert "berth_notarealkey" not in refused.stderr + refused.stdout
    assert not _profiles(remote_env).exists()

    bad_key = {**remote_env, "BERTH_SERVER": server.url, "BERTH_API_KEY": "berth_wrong"}
    listed = berth(bad_key, "models", "list")
    _one_line(listed, "invalid, expired or revoked")
    assert "berth_wrong" not in listed.stderr

    narrow = {**remote_env, "BERTH_SERVER": server.url, "BERTH_API_KEY": server.narrow_key}
    forbidden = berth(narrow, "models", "list")
    _one_line(forbidden, "needs the read scope")
    _no_secret(server, forbidden.stdout, forbidden.stderr)

    nowhere = f"http://127.0.0.1:{free_port()}"
    unreachable = {**remote_env, "BERTH_SERVER": nowhere, "BERTH_API_KEY": server.key}
    for command in (["models", "list"], ["models", "show", "iris:1"]):
        failed = berth(unreachable, *command)
        _one_line(failed, f"cannot reach {nowhere}: ")
        assert "berth profile list" in failed.stderr
        _no_secret(server, failed.stdout, failed.stderr)
    _one_line(
        berth(remote_env, "login", nowhere, "--key-file", str(wrong)), f"cannot reach {nowhere}"
    )
    # No key file, no BERTH_API_KEY and no terminal to prompt on: refused before any request.
    no_terminal = subprocess.run(
        [*BERTH, "login", server.url],
        env=remote_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    _one_line(no_terminal, "--key-file")
