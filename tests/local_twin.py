"""The same command in local mode, from inside a remote-mode test: its output must be the
remote output, character for character.

In a test that runs only in remote mode (`@pytest.mark.parametrize("cli_mode", ["remote"],
indirect=True)`), `local_twin(run, monkeypatch, registry_url)` runs a command with no server
and the registry opened directly, so a test can compare both outputs of one state.
"""

from __future__ import annotations

import pytest

from tests.conftest import Outcome, Run


def local_twin(
    run: Run, monkeypatch: pytest.MonkeyPatch, database_url: str | None, *args: str
) -> Outcome:
    """`run(*args)` in local mode, on the registry at `database_url` (None: the default)."""
    with monkeypatch.context() as local:
        local.delenv("BERTH_SERVER", raising=False)
        local.delenv("BERTH_API_KEY", raising=False)
        if database_url is None:
            local.delenv("BERTH_DATABASE_URL", raising=False)
        else:
            local.setenv("BERTH_DATABASE_URL", database_url)
        return run(*args)


def assert_same_output(
    run: Run, monkeypatch: pytest.MonkeyPatch, database_url: str | None, *args: str
) -> Outcome:
    """Run `args` remotely and locally; both exit alike and print the same stdout."""
    remote = run(*args)
    local = local_twin(run, monkeypatch, database_url, *args)
    assert (remote.code, remote.out) == (local.code, local.out), (args, remote, local)
    if remote.code:
        assert remote.err == local.err, (args, remote.err, local.err)
    return remote
