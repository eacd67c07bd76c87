"""`berth keys ...` and `berth audit list`, in process through the real entry point, in local
mode and in remote mode (through the admin API of a real server on the test's registry)."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from berth.config import Settings
from berth.registry.service import Registry
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, hash_key, server_secret
from berth.store.audit import AuditLog
from tests.cli_modes import REMOTE_KEY, Mode
from tests.conftest import Run
from tests.local_twin import assert_same_output, local_twin

ONLY_REMOTE = pytest.mark.parametrize("cli_mode", ["remote"], indirect=True)


@pytest.fixture
def keys(settings: Settings) -> Iterator[KeyService]:
    registry = Registry.from_settings(settings)
    yield KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
    registry.db.dispose()


def _works(keys: KeyService, secret: str) -> bool:
    """Whether a server would accept `secret` now (as its verifier checks it)."""
    stored = keys.lookup(secret.split("_")[1])
    return (
        stored is not None and stored.info.active and stored.matches(hash_key(keys.secret, secret))
    )


def _rows(text: str) -> dict[str, list[str]]:
    """A printed table's rows by their first cell (rich draws cells between │ characters)."""
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines()]
    return {row[0]: row for row in cells if row and row[0]}


def _without(text: str, name: str) -> str:
    return "\n".join(line for line in text.splitlines() if f"│ {name} " not in line)


def test_keys_create_prints_secret_last_list_revoke(
    run_both: Run, keys: KeyService, cli_mode: Mode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = run_both("keys", "create", "web", "--scope", "predict:churn", "--expires", "90d")
    assert created.code == 0, created.err
    secret = created.out.strip().splitlines()[-1]
    assert secret.startswith("berth_")
    assert created.out == secret + "\n"  # stdout is the secret alone: scripts read it
    assert "Created key web (scopes: predict:churn)" in created.err
    assert secret not in created.err
    assert secret not in caplog.text  # no log line of the command or the server holds it
    assert _works(keys, secret)

    listing = run_both("keys", "list")
    assert listing.code == 0, listing.err
    rows = _rows(listing.out)
    expected = {"web", REMOTE_KEY} if cli_mode.remote else {"web"}
    assert set(rows) - {"name"} == expected
    assert rows["web"][2:5] == ["predict:churn", "default", "active"]
    expires = datetime.now(UTC) + timedelta(days=90)
    assert rows["web"][6] in {f"{expires:%Y-%m-%d}", f"{expires - timedelta(days=1):%Y-%m-%d}"}
    assert secret not in listing.out

    revoked = run_both("keys", "revoke", "web")
    assert (revoked.code, revoked.out) == (0, "Revoked key web\n")
    assert _rows(run_both("keys", "list").out)["web"][4] == "revoked"
    assert not _works(keys, secret)

    bad_scope = run_both("keys", "create", "bad", "--scope", "root")
    assert bad_scope.code == 1
    assert bad_scope.err.startswith("error:")
    assert "root" in bad_scope.err
    bad_expiry = run_both("keys", "create", "bad", "--expires", "soon")
    assert bad_expiry.code == 1
    assert "'soon' is not a duration" in bad_expiry.err
    assert run_both("keys", "create", "taken").code == 0
    taken = run_both("keys", "create", "taken")
    assert taken.code == 1
    assert "already" in taken.err
    missing = run_both("keys", "revoke", "ghost")
    assert missing.code == 1
    assert "ghost" in missing.err
    assert "bad" not in _rows(run_both("keys", "list").out)

    actions = [(e.actor, e.action, e.target, e.outcome) for e in AuditLog(keys.db).list()]
    assert (cli_mode.actor, "key.create", "web", "ok") in actions
    assert (cli_mode.actor, "key.revoke", "web", "ok") in actions
    assert (cli_mode.actor, "key.revoke", "ghost", "refused") in actions


def test_keys_rotate_prints_the_new_secret_and_keeps_the_old_for_the_grace(
    run_both: Run, keys: KeyService, cli_mode: Mode
) -> None:
    old = run_both("keys", "create", "ci", "--scope", "read").out.strip()
    rotated = run_both("keys", "rotate", "ci", "--grace", "24h")
    assert rotated.code == 0, rotated.err
    new = rotated.out.strip()
    assert rotated.out == new + "\n"
    assert new.startswith("berth_")
    assert new != old
    assert "Rotated key ci; the old secret stops working in 24h" in rotated.err
    assert "this command's key" not in rotated.err  # not the key the command was made with
    assert _works(keys, new)
    assert _works(keys, old)

    at_once = run_both("keys", "rotate", "ci", "--grace", "0s")
    assert at_once.code == 0, at_once.err
    assert _works(keys, at_once.out.strip())
    assert not _works(keys, new)

    bad = run_both("keys", "rotate", "ci", "--grace", "soon")
    assert bad.code == 1
    assert "'soon' is not a duration" in bad.err
    run_both("keys", "revoke", "ci")
    gone = run_both("keys", "rotate", "ci")
    assert gone.code == 1
    assert "revoked or expired; create a new key" in gone.err
    rotations = [e for e in AuditLog(keys.db).list() if e.action == "key.rotate"]
    assert {e.actor for e in rotations} == {cli_mode.actor}


@ONLY_REMOTE
def test_the_remote_key_cannot_revoke_itself_and_is_told_when_rotated(
    run_both: Run, keys: KeyService, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = os.environ["BERTH_API_KEY"]
    refused = run_both("keys", "revoke", REMOTE_KEY)
    assert refused.code == 1
    assert refused.err.startswith("error: ")
    assert len(refused.err.strip().splitlines()) == 1
    assert f"key '{REMOTE_KEY}' is the key this request is made with" in refused.err
    assert "another admin key" in refused.err
    assert _works(keys, own)
    assert run_both("keys", "list").code == 0  # still logged in
    events = [(e.action, e.target, e.outcome) for e in AuditLog(keys.db).list()]
    assert ("key.revoke", REMOTE_KEY, "refused") in events

    # Another admin key may revoke it; the CLI then says what to do at its next command.
    rotated = run_both("keys", "rotate", REMOTE_KEY, "--grace", "1h")
    assert rotated.code == 0, rotated.err
    assert "this command's key (the key in BERTH_API_KEY) is the one rotated" in rotated.err
    assert "berth login http://127.0.0.1:" in rotated.err
    new = rotated.out.strip()
    assert new not in rotated.err
    assert _works(keys, own)
    assert _works(keys, new)
    other = keys.create("other-admin", ("admin",))[1]
    monkeypatch.setenv("BERTH_API_KEY", other)
    assert run_both("keys", "revoke", REMOTE_KEY).code == 0
    monkeypatch.setenv("BERTH_API_KEY", new)
    locked_out = run_both("keys", "list")
    assert locked_out.code == 1
    assert "invalid, expired or revoked; log in again" in locked_out.err


@ONLY_REMOTE
def test_keys_and_audit_print_the_same_in_both_modes(
    run_both: Run, keys: KeyService, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_both("keys", "create", "web", "--scope", "predict", "--rate", "5/s", "--expires", "7d")
    run_both("keys", "create", "gone")
    run_both("keys", "revoke", "gone")
    # The server records when its own key was last used at its next read of the key: that
    # row alone may change between the two runs.
    remote = run_both("keys", "list")
    local = local_twin(run_both, monkeypatch, None, "keys", "list")
    assert remote.code == local.code == 0
    assert _without(remote.out, REMOTE_KEY) == _without(local.out, REMOTE_KEY)
    assert _rows(remote.out)["web"] == _rows(local.out)["web"]
    assert "5/s" in _rows(remote.out)["web"]
    for command in (
        ["audit", "list"],
        ["audit", "list", "--json"],
        ["audit", "list", "--actor", REMOTE_KEY, "--limit", "2", "--json"],
        ["audit", "list", "--since", "1h"],
        ["audit", "list", "--limit", "0"],
        ["audit", "list", "--since", "soon"],
        ["audit", "list", "--actor", "x" * 129],
        ["keys", "revoke", "ghost"],
    ):
        assert_same_output(run_both, monkeypatch, None, *command)


def test_audit_list_filters_and_refuses_bad_filters(
    run_both: Run, keys: KeyService, cli_mode: Mode
) -> None:
    keys.create("fixture-made", ("read",), actor="someone-else")
    assert run_both("keys", "create", "web").code == 0
    assert run_both("keys", "revoke", "web").code == 0

    listed = run_both("audit", "list", "--json")
    assert listed.code == 0, listed.err
    events = json.loads(listed.out)
    actions = [(e["actor"], e["action"], e["target"]) for e in events]
    assert actions[:2] == [
        (cli_mode.actor, "key.revoke", "web"),
        (cli_mode.actor, "key.create", "web"),
    ]
    assert ("someone-else", "key.create", "fixture-made") in actions
    mine = json.loads(run_both("audit", "list", "--actor", cli_mode.actor, "--json").out)
    assert {e["actor"] for e in mine} == {cli_mode.actor}
    assert [e["action"] for e in mine][:2] == ["key.revoke", "key.create"]
    newest = json.loads(run_both("audit", "list", "--limit", "1", "--json").out)
    assert [(e["action"], e["target"]) for e in newest] == [("key.revoke", "web")]
    assert len(json.loads(run_both("audit", "list", "--since", "1h", "--json").out)) == len(events)

    table = run_both("audit", "list", "--actor", cli_mode.actor).out
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", table)
    assert "key.revoke" in table
    assert "someone-else" not in table

    for args, words in (
        (["--limit", "0"], "limit must be a whole number from 1 to 1000"),
        (["--limit", "1001"], "limit must be a whole number from 1 to 1000"),
        (["--since", "soon"], "soon"),
        (["--actor", "x" * 129], "actor is at most 128 characters"),
    ):
        refused = run_both("audit", "list", *args)
        assert refused.code == 1, args
        assert refused.err.startswith("error:"), refused.err
        assert words in refused.err, (args, refused.err)
