"""`berth endpoints`, `berth rollout` and `berth experiments`, run in process through the real
entry point against a SQLite registry, in local and in remote mode (`run_both`). No controller
runs: the tests act by hand and check what is stored (rollout state, routes, history, audit)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from berth.config import Settings
from berth.observability.metrics import LATENCY_BUCKETS
from berth.registry.endpoints import EndpointService
from berth.registry.service import Registry
from berth.rollouts.canary_analysis import Check, Verdict
from berth.rollouts.service import RolloutService
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from berth.serving.route_stats import RouteStats, _Totals
from berth.store.audit import AuditLog
from tests.cli_modes import REMOTE_KEY, UNUSABLE_DATABASE, Mode, threaded_server
from tests.conftest import Run, register_iris


@pytest.fixture
def iris3(sqlite_registry: Registry, iris_files: tuple[Path, Path]) -> Registry:
    """iris:1 (@production), iris:2 and iris:3."""
    register_iris(sqlite_registry, iris_files, aliases=("production",))
    register_iris(sqlite_registry, iris_files)
    register_iris(sqlite_registry, iris_files)
    return sqlite_registry


def _routes(registry: Registry, name: str = "flowers") -> list[tuple[str, str, str, float]]:
    info = EndpointService(registry).get(name)
    return [(r.label, r.role, r.ref, r.weight) for r in info.routes]


def _json(run: Run, *args: str) -> Any:
    outcome = run(*args, "--json")
    assert outcome.code == 0, outcome.err
    return json.loads(outcome.out)


def _error(run: Run, *args: str) -> str:
    """The one-line error of a command that must fail with exit code 1."""
    outcome = run(*args)
    assert outcome.code == 1, (args, outcome.out)
    assert outcome.err.startswith("error:"), outcome.err
    return _flat(outcome.err)


def _flat(text: str) -> str:
    """Output as one line of words: rich's table borders and line wrapping removed."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", text).split())


def _traffic(registry: Registry, rows: dict[tuple[str, int], _Totals]) -> None:
    """What serving processes would have written to route_stats."""
    RouteStats(registry.db).write(((("flowers", m, v), t) for (m, v), t in rows.items()))


@contextmanager
def remote_mode(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Commands run in remote mode from here on (as `run_both`'s remote mode sets them up)."""
    registry = Registry.from_settings(settings)
    try:
        keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
        _info, secret = keys.create(REMOTE_KEY, scopes=("admin",))
    finally:
        registry.db.dispose()
    with threaded_server(settings) as url, monkeypatch.context() as patched:
        patched.setenv("BERTH_SERVER", url)
        patched.setenv("BERTH_API_KEY", secret)
        patched.setenv("BERTH_DATABASE_URL", UNUSABLE_DATABASE)
        yield


def _latencies(seconds: float, count: int) -> list[int]:
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    counts[int(np.searchsorted(LATENCY_BUCKETS, seconds))] = count
    return counts


# endpoints -----------------------------------------------------------------------------------


def test_endpoint_lifecycle(run_both: Run, cli_mode: Mode, iris3: Registry) -> None:
    created = run_both(
        "endpoints", "create", "flowers", "--model", "iris@production", "--sticky", "header:X-User"
    )
    assert created.code == 0, created.err
    assert "iris:1" in created.out
    assert "/api/v1/endpoints/flowers/predict" in created.out
    assert "already exists" in _error(
        run_both, "endpoints", "create", "flowers", "--model", "iris:2"
    )
    listed = _json(run_both, "endpoints", "list")
    assert [(e["name"], e["sticky"]) for e in listed] == [("flowers", "header:x-user")]
    assert "flowers" in run_both("endpoints", "list").out

    changed = _json(
        run_both, "endpoints", "routes", "flowers", "--route", "stable=iris:1:90",
        "--route", "canary=iris@production:10:variant", "--reason", "by hand",
    )  # fmt: skip
    assert [(r["label"], r["role"], r["version"], r["weight"]) for r in changed["routes"]] == [
        ("stable", "stable", 1, 90.0),
        ("canary", "variant", 1, 10.0),
    ]
    run_both(
        "endpoints", "routes", "flowers", "--route", "stable=iris:1:90", "--route", "b=iris:2:10"
    )
    assert _routes(iris3)[1] == ("b", "canary", "iris:2", 10.0)  # role defaults to canary
    shown = run_both("endpoints", "routes", "flowers")  # without --route: the routes, unchanged
    assert shown.code == 0, shown.err
    assert shown.out.strip() == "flowers: stable iris:1 90%, b iris:2 10%"
    assert [r["label"] for r in _json(run_both, "endpoints", "routes", "flowers")["routes"]] == [
        "stable",
        "b",
    ]
    assert _routes(iris3)[1] == ("b", "canary", "iris:2", 10.0)
    assert "pass the --route options" in _error(
        run_both, "endpoints", "routes", "flowers", "--sticky", "header:X"
    )

    shadowed = run_both("endpoints", "shadow", "flowers", "--to", "iris:3", "--percent", "20")
    assert shadowed.code == 0, shadowed.err
    assert _routes(iris3) == [
        ("stable", "stable", "iris:1", 90.0),
        ("b", "canary", "iris:2", 10.0),
        ("shadow", "shadow", "iris:3", 20.0),
    ]
    _traffic(
        iris3,
        {
            ("iris", 1): _Totals(
                requests=200, errors=2, latency_counts=_latencies(0.004, 198), latency_sum=0.8
            ),
            ("iris", 3): _Totals(
                requests=40,
                latency_counts=_latencies(0.004, 40),
                latency_sum=0.16,
                shadow_compared=40,
                shadow_agreed=30,
                shadow_seconds_delta=0.04,
            ),
        },
    )
    shown = run_both("endpoints", "show", "flowers")
    assert shown.code == 0, shown.err
    text = _flat(shown.out)
    assert "sticky: header:x-user" in text
    assert "stable stable iris:1 90% 200 2 1.00%" in text
    assert "shadow shadow iris:3 20% mirrored" in text
    assert "agrees on 75.0% of 40 compared requests, +1.0 ms mean latency" in text
    assert "by hand" in text  # the recent history
    document = _json(run_both, "endpoints", "show", "flowers")
    stable = document["stats"]["versions"][0]
    assert (stable["requests"], stable["errors"], stable["error_rate"]) == (200, 2, 0.01)
    assert stable["p99_ms"] == pytest.approx(5.0, abs=1.0)
    assert document["stats"]["shadow"]["agreement"] == 0.75
    assert document["rollout"] is None

    assert run_both("endpoints", "shadow", "flowers", "--off").code == 0
    assert [r[0] for r in _routes(iris3)] == ["stable", "b"]
    assert "no shadow route" in _error(run_both, "endpoints", "shadow", "flowers", "--off")
    assert "either --to" in _error(run_both, "endpoints", "shadow", "flowers")

    history = _json(run_both, "endpoints", "history", "flowers")
    assert [h["reason"] for h in history][:3] == [
        "shadow removed",
        "shadow iris:3 on 20% of requests",
        "set by hand",
    ]
    assert history[-1]["reason"] == "created with iris:1"
    assert "created with iris:1" in run_both("endpoints", "history", "flowers").out

    assert run_both("endpoints", "delete", "flowers").code == 0
    assert "berth endpoints create flowers" in _error(run_both, "endpoints", "show", "flowers")
    events = [e for e in reversed(AuditLog(iris3.db).list()) if e.action.startswith("endpoint")]
    assert [e.action for e in events] == [
        "endpoint.create",
        "endpoint.create",  # refused: it existed
        *["endpoint.routes"] * 4,
        "endpoint.delete",
    ]
    assert [e.outcome for e in events][:2] == ["ok", "refused"]
    assert {e.actor for e in events} == {cli_mode.actor}


def test_endpoint_errors_say_what_to_do(run_both: Run, iris3: Registry) -> None:
    assert "berth endpoints create ghost --model" in _error(run_both, "endpoints", "show", "ghost")
    assert "berth endpoints create ghost" in _error(run_both, "endpoints", "delete", "ghost")
    assert "header:NAME" in _error(
        run_both, "endpoints", "create", "flowers", "--model", "iris", "--sticky", "ip"
    )
    assert "not registered" in _error(run_both, "endpoints", "create", "flowers", "--model", "nope")
    assert "not valid" in _error(run_both, "endpoints", "create", "../x", "--model", "iris")
    assert run_both("endpoints", "create", "flowers", "--model", "iris").code == 0
    for route, message in (
        ("stable", "LABEL=REF:WEIGHT"),
        ("stable=iris", "is not LABEL=REF:WEIGHT"),
        ("stable=iris:1", "got stable=1"),  # read as iris (its production version) at 1%
        ("stable=iris:1:x:y", "has no weight"),
        ("stable=iris:1:90", "add up to 100"),
        ("stable=iris:9:100", "has no version 9"),
        ("stable=iris:1:100:boss", "role 'boss'"),
    ):
        assert message in _error(run_both, "endpoints", "routes", "flowers", "--route", route), (
            route
        )
    assert _routes(iris3) == [("stable", "stable", "iris:1", 100.0)]


# rollouts ------------------------------------------------------------------------------------


def _start(run: Run, *extra: str) -> dict[str, Any]:
    outcome = run("rollout", "start", "flowers", "--to", "iris:2", "--json", *extra)
    assert outcome.code == 0, outcome.err
    document: dict[str, Any] = json.loads(outcome.out)
    return document


def test_canary_start_pause_resume_promote_wait(
    run_both: Run, cli_mode: Mode, iris3: Registry
) -> None:
    run_both("endpoints", "create", "flowers", "--model", "iris:1")
    started = _start(
        run_both, "--steps", "10,50,100", "--interval", "5m", "--max-error-rate", "0.02",
        "--max-p99-ms", "250", "--min-requests", "50",
    )  # fmt: skip
    rollout = started["rollout"]
    assert started["gates"] is None
    assert (rollout["status"], rollout["phase"], rollout["from"], rollout["to"]) == (
        "running",
        "loading",
        "iris:1",
        "iris:2",
    )
    assert rollout["config"]["steps"] == [10.0, 50.0, 100.0]
    assert rollout["config"]["interval_seconds"] == 300.0
    assert rollout["config"]["criteria"]["max_error_rate"] == 0.02
    assert rollout["config"]["criteria"]["min_requests"] == 50
    assert _routes(iris3) == [
        ("stable", "stable", "iris:1", 100.0),
        ("canary", "canary", "iris:2", 0.0),
    ]
    assert "in progress" in _error(run_both, "rollout", "start", "flowers", "--to", "iris:3")
    assert "in progress" in _error(
        run_both, "endpoints", "routes", "flowers", "--route", "stable=iris:3:100"
    )

    assert "paused" in run_both("rollout", "pause", "flowers").out
    assert RolloutService(iris3).latest("flowers").status == "paused"
    assert "already paused" in _error(run_both, "rollout", "pause", "flowers")
    assert run_both("rollout", "resume", "flowers").code == 0
    assert RolloutService(iris3).latest("flowers").status == "running"

    # what the controller would have recorded: a verdict waiting for traffic
    service = RolloutService(iris3)
    info = service.latest("flowers")
    verdict = Verdict(
        "wait",
        (
            Check("requests", "wait", 12, 50, "12 of 50 requests so far"),
            Check("error rate", "wait", None, 0.02, "no canary requests yet"),
        ),
    )
    state = {**info.state, "last_verdict": {"decision": "wait", "reasons": verdict.reasons}}
    service.record(info, "analysis", "wait: 12 of 50 requests so far", verdict.to_dict(), state)
    status = run_both("rollout", "status", "flowers")
    assert status.code == 0, status.err
    text = _flat(status.out)
    assert "rollout 1 of flowers: canary, running, phase loading" in text
    assert "iris:1 → iris:2 candidate at 0%" in text
    assert "last verdict: wait: 12 of 50 requests so far; no canary requests yet" in text
    assert "requests wait 12 50 12 of 50 requests so far" in text
    assert "error rate wait - 2.00% no canary requests yet" in text
    for kind in ("started", "paused", "resumed", "analysis"):
        assert kind in text
    assert (
        _json(run_both, "rollout", "status", "flowers")["state"]["last_verdict"]["decision"]
        == "wait"
    )

    promoted = run_both("rollout", "promote", "flowers")
    assert promoted.code == 0, promoted.err
    assert "promoted" in promoted.out
    assert _routes(iris3) == [("stable", "stable", "iris:2", 100.0)]
    assert "no rollout in progress" in _error(run_both, "rollout", "pause", "flowers")
    waited = run_both("rollout", "wait", "flowers", "--timeout", "5s")
    assert waited.code == 0, waited.err
    assert "rollout 1 of flowers: promoted (promoted by hand)" in waited.out
    listed = _json(run_both, "rollout", "list", "--endpoint", "flowers")
    assert [(r["id"], r["status"]) for r in listed] == [(1, "promoted")]
    assert "promoted" in run_both("rollout", "list").out
    assert _json(run_both, "rollout", "list", "--endpoint", "other") == []
    events = [
        e
        for e in reversed(AuditLog(iris3.db).list())
        if e.outcome == "ok" and e.action.startswith(("endpoint", "rollout"))
    ]
    assert {e.actor for e in events} == {cli_mode.actor}
    assert [e.action for e in events] == [
        "endpoint.create",
        "rollout.start",
        "rollout.pause",
        "rollout.resume",
        "rollout.promote",
    ]


@pytest.mark.parametrize(
    ("action", "status", "extra"),
    [("abort", "aborted", []), ("rollback", "rolled_back", ["--reason", "tickets"])],
)
def test_abort_and_rollback_restore_the_old_version(
    run_both: Run, iris3: Registry, action: str, status: str, extra: list[str]
) -> None:
    run_both("endpoints", "create", "flowers", "--model", "iris:1")
    run_both("endpoints", "shadow", "flowers", "--to", "iris:3", "--percent", "5")
    _start(run_both)
    assert [r[0] for r in _routes(iris3)] == ["stable", "canary", "shadow"]
    done = run_both("rollout", action, "flowers", *extra)
    assert done.code == 0, done.err
    info = RolloutService(iris3).latest("flowers")
    assert info.status == status
    if extra:
        assert info.reason == "tickets"
    # the shadow route survives the rollout
    assert _routes(iris3) == [
        ("stable", "stable", "iris:1", 100.0),
        ("shadow", "shadow", "iris:3", 5.0),
    ]
    waited = run_both("rollout", "wait", "flowers")
    assert waited.code == 1
    assert status.replace("_", " ") in waited.out


def test_blue_green_switch_and_finalize(run_both: Run, iris3: Registry) -> None:
    run_both("endpoints", "create", "flowers", "--model", "iris:1")
    started = _start(
        run_both, "--strategy", "blue-green", "--switch", "manual", "--preview", "30s",
        "--finalize-after", "10m",
    )  # fmt: skip
    assert started["rollout"]["config"]["switch"] == "manual"
    assert started["rollout"]["config"]["finalize_after_seconds"] == 600.0
    assert _routes(iris3) == [
        ("stable", "stable", "iris:1", 100.0),
        ("green", "green", "iris:2", 0.0),
    ]
    assert "after its switch" in _error(run_both, "rollout", "finalize", "flowers")
    assert run_both("rollout", "promote", "flowers").code == 0
    info = RolloutService(iris3).latest("flowers")
    assert (info.status, info.phase) == ("running", "switched")
    assert _routes(iris3) == [("green", "green", "iris:2", 100.0), ("blue", "blue", "iris:1", 0.0)]
    assert run_both("rollout", "finalize", "flowers").code == 0
    assert RolloutService(iris3).latest("flowers").status == "promoted"
    assert _routes(iris3) == [("stable", "stable", "iris:2", 100.0)]


def test_rollout_errors_say_what_to_do(run_both: Run, iris3: Registry) -> None:
    assert "berth rollout start ghost" in _error(run_both, "rollout", "status", "ghost")
    assert "no rollout in progress" in _error(run_both, "rollout", "promote", "ghost")
    assert "berth endpoints create ghost" in _error(
        run_both, "rollout", "start", "ghost", "--to", "iris:2"
    )
    run_both("endpoints", "create", "flowers", "--model", "iris:1")
    start = ("rollout", "start", "flowers", "--to")
    for args, message in (
        (("iris:2", "--steps", "5,x"), "is not a list of percentages"),
        (("iris:2", "--steps", "50,10,100"), "rising percentages"),
        (("iris:2", "--steps", "10,50"), "must be 100"),
        (("iris:2", "--interval", "soon"), "not a duration"),
        (("iris:2", "--max-error-rate", "2"), "--max-error-rate is a fraction"),
        (("iris:2", "--alpha", "0.7"), "--alpha must be within"),
        (("iris:2", "--max-p99-ms", "0"), "--max-p99-ms must be positive"),
        (("iris:2", "--max-p99-ratio", "0.5"), "--max-p99-ratio must be at least 1 (or 0"),
        (("iris:2", "--p99-slack-ms", "-1"), "--p99-slack-ms must not be negative"),
        (("iris:2", "--strategy", "yolo"), "canary or blue-green"),
        (("iris:2", "--switch", "maybe"), "--switch must be auto or manual"),
        (("iris:2", "--metrics-source", "statsd"), "Prometheus server"),
        (("iris:1",), "already serves iris:1"),
        (("iris:9",), "has no version 9"),
        (("iris:2", "--gate-no-regression"), "--gate-no-regression needs test rows"),
        (("iris:2", "--gate-min-auc", "0.9", "--gate-data", "x.csv"), "pass --gate-target"),
        (("iris:2", "--gate-data", "x.csv"), "no gate"),
        (("iris:2", "--gate-output-range", "1"), "--gate-output-range '1' is not LOW,HIGH"),
    ):
        assert message in _error(run_both, *start, *args), args
    assert RolloutService(iris3).list() == []
    assert _routes(iris3) == [("stable", "stable", "iris:1", 100.0)]


def test_gates_that_fail_record_a_failed_rollout_and_keep_the_routes(
    run_both: Run, iris3: Registry, iris_files: tuple[Path, Path]
) -> None:
    _model, sample = iris_files
    run_both("endpoints", "create", "flowers", "--model", "iris:1")
    failed = run_both(
        "rollout", "start", "flowers", "--to", "iris:2", "--gate-data", str(sample),
        "--gate-no-nan", "--gate-output-range", "5,10",
    )  # fmt: skip
    assert failed.code == 1
    text = _flat(failed.out)
    assert "output_range" in text
    assert "FAIL" in text
    assert "recorded as failed and the routes are unchanged" in _flat(failed.err)
    info = RolloutService(iris3).latest("flowers")
    assert (info.status, info.phase) == ("failed", "gates")
    assert "output_range" in info.reason
    assert _routes(iris3) == [("stable", "stable", "iris:1", 100.0)]
    shown = _flat(run_both("rollout", "status", "flowers").out)
    assert "validation gates" in shown
    assert "no_nan" in shown

    passed = run_both(
        "rollout", "start", "flowers", "--to", "iris:2", "--json", "--gate-data", str(sample),
        "--gate-no-nan", "--gate-output-range", "0,2", "--gate-max-latency-ms", "1000",
    )  # fmt: skip
    assert passed.code == 0, passed.err
    document = json.loads(passed.out)
    assert document["gates"]["passed"] is True
    assert [c["name"] for c in document["gates"]["checks"]] == [
        "latency_p99_ms",
        "no_nan",
        "output_range",
    ]
    assert document["rollout"]["status"] == "running"
    assert document["rollout"]["config"]["gates"]["no_nan"] is True
    assert [r[2] for r in _routes(iris3)] == ["iris:1", "iris:2"]


def test_latency_against_stable_is_the_default_and_its_flags_are_stored(
    run_both: Run, iris3: Registry
) -> None:
    run_both("endpoints", "create", "flowers", "--model", "iris:1")
    criteria = _start(run_both)["rollout"]["config"]["criteria"]
    assert (criteria["max_p99_ms"], criteria["max_p99_ratio"], criteria["p99_slack_ms"]) == (
        None,
        1.5,
        10.0,
    )
    assert run_both("rollout", "abort", "flowers").code == 0
    started = _start(
        run_both, "--max-p99-ms", "300", "--max-p99-ratio", "2", "--p99-slack-ms", "25"
    )
    criteria = started["rollout"]["config"]["criteria"]
    assert (criteria["max_p99_ms"], criteria["max_p99_ratio"], criteria["p99_slack_ms"]) == (
        300.0,
        2.0,
        25.0,
    )
    text = _flat(run_both("rollout", "status", "flowers").out)
    assert "max_p99_ms=300, max_p99_ratio=2, p99_slack_ms=25" in text
    assert run_both("rollout", "abort", "flowers").code == 0
    off = _start(run_both, "--max-p99-ratio", "0")["rollout"]["config"]["criteria"]
    assert off["max_p99_ratio"] == 0.0


def test_wait_prints_a_line_per_change_not_per_poll(run_both: Run, iris3: Registry) -> None:
    """A history with an analysis event per controller tick (counts moving while it waits)
    prints one line per change of decision, phase or weight, and the final line."""
    run_both("endpoints", "create", "flowers", "--model", "iris:1")
    _start(run_both)
    service = RolloutService(iris3)
    for decision, count in (("wait", 10), ("wait", 20), ("wait", 30), ("pass", 100)):
        info = service.latest("flowers")
        reasons = [f"{count} of 100 requests so far"] if decision == "wait" else []
        message = decision + (": " + reasons[0] if reasons else "")
        service.record(info, "analysis", message, {"decision": decision, "reasons": reasons})
    service.record(service.latest("flowers"), "analysis", "pass", {"decision": "pass"})
    assert run_both("rollout", "promote", "flowers").code == 0
    waited = run_both("rollout", "wait", "flowers", "--timeout", "5s")
    assert waited.code == 0, waited.err
    lines = [re.sub(r"^\d\d:\d\d:\d\d  ", "", line) for line in waited.out.splitlines()]
    assert lines == [
        "started     rollout 1: loading iris:2 at 0%",
        "analysis    wait: 10 of 100 requests so far",
        "analysis    pass",
        "promoted    promoted by hand",
        "rollout 1 of flowers: promoted (promoted by hand)",
    ]


def test_wait_gives_up_at_the_timeout(run_both: Run, iris3: Registry) -> None:
    run_both("endpoints", "create", "flowers", "--model", "iris:1")
    _start(run_both)
    waited = run_both("rollout", "wait", "flowers", "--timeout", "1s", "--poll-seconds", "0.1")
    assert waited.code == 1
    assert "started" in waited.out  # the events so far
    assert "still running" in _flat(waited.err)


@pytest.mark.parametrize(
    ("action", "code", "last"),
    [
        ("promote", 0, "promoted    promoted by hand"),
        ("rollback", 1, "rolled_back rolled back by hand"),
    ],
)
def test_wait_follows_a_rollout_that_changes_while_it_waits(
    run_both: Run, iris3: Registry, action: str, code: int, last: str
) -> None:
    """Someone acts on the rollout a second into the wait: `wait` prints the change and exits
    0 only for a promotion. Remotely the server answers as soon as the rollout changes (a long
    poll), so the change shows within about a second either way."""
    run_both("endpoints", "create", "flowers", "--model", "iris:1")
    started = run_both("rollout", "start", "flowers", "--to", "iris:2")
    assert started.code == 0, started.err
    assert _flat(started.out).startswith(
        "Started rollout 1: canary of flowers from iris:1 to iris:2, now at 0%."
    )
    service = RolloutService(iris3)

    def act() -> None:
        time.sleep(1.0)
        getattr(service, action)("flowers", actor="operator")

    acting = threading.Thread(target=act)
    began = time.monotonic()
    acting.start()
    try:
        waited = run_both("rollout", "wait", "flowers", "--timeout", "30s", "--poll-seconds", "0.2")
    finally:
        acting.join()
    elapsed = time.monotonic() - began
    assert waited.code == code, waited.err
    lines = [re.sub(r"^\d\d:\d\d:\d\d  ", "", line) for line in waited.out.splitlines()]
    status = "promoted (promoted by hand)" if code == 0 else "rolled back (rolled back by hand)"
    assert lines == [
        "started     rollout 1: loading iris:2 at 0%",
        last,
        f"rollout 1 of flowers: {status}",
    ]
    assert waited.err == ""
    assert 1.0 <= elapsed < 5.0


def test_remote_output_is_the_local_output(
    run: Run, settings: Settings, iris3: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every reading command, and a refusal, prints the same bytes and exits with the same code
    in both modes: the commands print from the documents the admin API returns."""
    run("endpoints", "create", "flowers", "--model", "iris:1", "--sticky", "header:X-User")
    run("endpoints", "shadow", "flowers", "--to", "iris:3", "--percent", "20")
    run("endpoints", "create", "tulips", "--model", "iris:1")
    _traffic(
        iris3,
        {
            ("iris", 1): _Totals(
                requests=200, errors=2, latency_counts=_latencies(0.004, 198), latency_sum=0.8
            ),
            ("iris", 3): _Totals(
                requests=40,
                latency_counts=_latencies(0.004, 40),
                latency_sum=0.16,
                shadow_compared=40,
                shadow_agreed=30,
                shadow_seconds_delta=0.04,
            ),
        },
    )
    _start(run, "--steps", "10,100", "--max-error-rate", "0.02")
    service = RolloutService(iris3)
    verdict = Verdict("wait", (Check("requests", "wait", 12, 100, "12 of 100 requests so far"),))
    info = service.latest("flowers")
    state = {**info.state, "last_verdict": {"decision": "wait", "reasons": verdict.reasons}}
    service.record(info, "analysis", "wait: 12 of 100 requests so far", verdict.to_dict(), state)
    assert run("experiments", "start", "tulips", "--variant", "a=iris:1:50",
               "--variant", "b=iris:2:50", "--min-samples", "10").code == 0  # fmt: skip
    commands = [
        ("endpoints", "list"),
        ("endpoints", "show", "flowers"),
        ("endpoints", "history", "flowers", "--limit", "2"),
        ("endpoints", "routes", "flowers"),
        ("endpoints", "show", "ghost"),
        ("rollout", "status", "flowers"),
        ("rollout", "list"),
        ("rollout", "list", "--endpoint", "tulips"),
        ("rollout", "status", "tulips"),
        ("experiments", "list"),
        ("experiments", "report", "tulips"),
        ("experiments", "report", "flowers"),
    ]
    commands += [(*command, "--json") for command in commands if "ghost" not in command]
    local = [run(*command) for command in commands]
    with remote_mode(settings, monkeypatch):
        remote = [run(*command) for command in commands]
    for command, here, there in zip(commands, local, remote, strict=True):
        assert (there.code, _aged(there.out), there.err) == (
            here.code,
            _aged(here.out),
            here.err,
        ), command
    refused = [c for c, outcome in zip(commands, local, strict=True) if outcome.code != 0]
    assert [c[:3] for c in refused] == [
        ("endpoints", "show", "ghost"),
        ("rollout", "status", "tulips"),
        ("experiments", "report", "flowers"),
        ("rollout", "status", "tulips"),
        ("experiments", "report", "flowers"),
    ]


def _aged(text: str) -> str:
    """Output without the age of the rollout's phase (`3s in this phase`), which moves on."""
    return re.sub(r"\d+[hms]( \d+[ms])? in this phase", "_ in this phase", text)


# experiments ---------------------------------------------------------------------------------


def test_experiment_start_report_conclude(run_both: Run, iris3: Registry) -> None:
    run_both("endpoints", "create", "flowers", "--model", "iris:1")
    started = run_both(
        "experiments", "start", "flowers", "--variant", "a=iris:1:50", "--variant", "b=iris:2:50",
        "--min-samples", "10",
    )  # fmt: skip
    assert started.code == 0, started.err
    assert "a=iris:1 50%, b=iris:2 50%" in started.out
    assert _routes(iris3) == [("a", "variant", "iris:1", 50.0), ("b", "variant", "iris:2", 50.0)]
    assert "runs experiment" in _error(run_both, "rollout", "start", "flowers", "--to", "iris:3")
    assert "runs experiment" in _error(
        run_both, "experiments", "start", "flowers", "--variant", "a=iris:1:50", "--variant",
        "b=iris:3:50",
    )  # fmt: skip

    _traffic(
        iris3,
        {
            ("iris", 1): _Totals(
                requests=30, latency_counts=_latencies(0.004, 30), latency_sum=0.1
            ),
            ("iris", 2): _Totals(requests=20, errors=1, latency_counts=_latencies(0.02, 19)),
        },
    )
    report = run_both("experiments", "report", "flowers")
    assert report.code == 0, report.err
    text = _flat(report.out)
    assert "experiment 1 on flowers: running; metric accuracy" in text
    assert "a iris:1 30 0 (0.0%)" in text
    assert "b iris:2 20 1 (5.0%)" in text
    assert "0/10" in text
    assert "no recommendation yet" in text
    document = _json(run_both, "experiments", "report", "flowers")
    assert [v["requests"] for v in document["report"]["variants"]] == [30, 20]
    assert document["report"]["recommendation"] is None
    assert document["experiment"]["status"] == "running"

    assert "pick one of a, b" in _error(
        run_both, "experiments", "conclude", "flowers", "--winner", "c"
    )
    concluded = run_both("experiments", "conclude", "flowers", "--winner", "b")
    assert concluded.code == 0, concluded.err
    assert "b (iris:2) takes all traffic" in concluded.out
    assert _routes(iris3) == [("stable", "stable", "iris:2", 100.0)]
    assert "runs no experiment" in _error(
        run_both, "experiments", "conclude", "flowers", "--winner", "b"
    )
    listed = _json(run_both, "experiments", "list")
    assert [(e["id"], e["status"], e["winner"]) for e in listed] == [(1, "concluded", "b")]
    assert "concluded" in run_both("experiments", "list", "--endpoint", "flowers").out


def test_experiment_errors_say_what_to_do(run_both: Run, iris3: Registry) -> None:
    assert "berth experiments start ghost" in _error(run_both, "experiments", "report", "ghost")
    run_both("endpoints", "create", "flowers", "--model", "iris:1")
    start = ("experiments", "start", "flowers", "--variant", "a=iris:1:50")
    for args, message in (
        (("--variant", "b=iris"), "NAME=MODEL:VERSION:WEIGHT"),
        (("--variant", "b=iris:2:40"), "add up to 100"),
        (("--variant", "a=iris:2:50"), "names must differ"),
        (("--variant", "b=iris:1:50"), "its own version"),
        (("--variant", "b=iris:2:50", "--sticky", "ip"), "header:NAME"),
        (("--variant", "b=iris:2:50", "--metric", "revenue"), "accuracy, outcome"),
        (("--variant", "b=iris:2:50", "--alpha", "2"), "significance level"),
    ):
        assert message in _error(run_both, *start, *args), args
    assert "at least two variants" in _error(run_both, *start)
    assert _routes(iris3) == [("stable", "stable", "iris:1", 100.0)]
