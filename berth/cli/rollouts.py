"""`berth rollout ...`: move an endpoint to a new version (canary or blue-green) and watch it.

The commands record what people decide; the rollout controller inside `berth serve` loads the
candidate, moves the weights and promotes or rolls back on live evidence.

Each command prints from the JSON documents the admin API returns: in local mode it builds them
with the services (`to_dict()`), in remote mode it asks the server for them.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from berth.cli.context import console, err_console, registry, remote
from berth.cli.remote import path as api
from berth.defaults import LONG_POLL_MAX_SECONDS
from berth.durations import parse_duration
from berth.errors import InvalidInput
from berth.rollouts.canary_analysis import CanaryCriteria
from berth.rollouts.names import CANARY

# The rollout service, its strategies and the validation gates (SQLAlchemy, numpy, httpx) are
# imported by the commands that use them.
if TYPE_CHECKING:
    from berth.cli.remote import Remote
    from berth.rollouts.requests import RolloutRequest
    from berth.rollouts.service import RolloutInfo, RolloutService

app = typer.Typer(
    help="Roll an endpoint out to a new version (canary or blue-green), and act on rollouts.",
    no_args_is_help=True,
)

_GATES = ("data", "target", "min_accuracy", "min_auc", "max_rmse", "max_mae", "max_latency_ms",
          "no_nan", "output_range", "no_regression", "regression_tolerance")  # fmt: skip
_OPTIONS = ("to", "strategy", "steps", "interval", "max_error_rate", "max_p99_ms", "max_p99_ratio",
            "p99_slack_ms", "min_requests", "min_accuracy", "min_feedback", "alpha",
            "metrics_source", "switch", "preview", "finalize_after")  # fmt: skip
_FLAGS = {
    **{name: f"--{name.replace('_', '-')}" for name in _OPTIONS},
    "endpoint": "ENDPOINT",
    "gates": "--gate-*",
    **{f"gates.{name}": f"--gate-{name.replace('_', '-')}" for name in _GATES},
}
"""The flag that sets each field of the rollout request."""
# GateConfig names the flags of `berth validate`; here the same gates carry a --gate- prefix.
_GATE_FLAGS = re.compile(
    r"--(min-accuracy|min-auc|max-rmse|max-mae|max-latency-ms|no-nan|output-range|"
    r"no-regression-vs|no-regression|regression-tolerance|data|target)\b"
)
_CHECK_EVENTS = ("analysis", "step", "switched", "promoted", "rolled_back")


def _service() -> RolloutService:
    from berth.rollouts.service import RolloutService

    return RolloutService(registry())


@app.command("start")
def start(
    endpoint: str = typer.Argument(..., help="The endpoint to move, e.g. churn."),
    to: str = typer.Option(..., "--to", help="The candidate version: NAME:VERSION or NAME@ALIAS."),
    strategy: str = typer.Option(CANARY, help="canary or blue-green."),
    steps: str = typer.Option(
        "5,25,50,100", help="Canary: the candidate's share of traffic at each step, in percent."
    ),
    interval: str = typer.Option(
        "60s",
        help="Canary: how long each step lasts at least; blue-green: the live check after "
        "the switch. e.g. 60s, 5m.",
    ),
    max_error_rate: float | None = typer.Option(
        None, help="Roll back when the candidate's error rate is significantly above this (0..1)."
    ),
    max_p99_ms: float | None = typer.Option(
        None,
        help="Absolute p99 limit in milliseconds: above it the candidate is rolled back, "
        "unless stable is as slow in the same window (within --max-p99-ratio).",
    ),
    max_p99_ratio: float = typer.Option(
        CanaryCriteria.max_p99_ratio,
        help="Roll back when the candidate's p99 latency is above this many times stable's "
        "in the same window, plus --p99-slack-ms; 0 turns the comparison off.",
    ),
    p99_slack_ms: float = typer.Option(
        CanaryCriteria.p99_slack_ms,
        help="Milliseconds added to stable's p99 times --max-p99-ratio, so that tiny "
        "latencies do not fail on noise.",
    ),
    min_requests: int = typer.Option(
        100, min=0, help="Candidate requests per step before error rate and latency are judged."
    ),
    min_accuracy: float | None = typer.Option(
        None, help="Roll back when live accuracy (from feedback) is significantly below this."
    ),
    min_feedback: int = typer.Option(
        30, min=0, help="Labelled candidate predictions before accuracy is judged."
    ),
    alpha: float = typer.Option(
        0.05, help="Significance level of every decision (0 < alpha < 0.5)."
    ),
    metrics_source: str = typer.Option(
        "server",
        help="Where traffic totals come from: server (every Berth process, via the registry) "
        "or a Prometheus URL, e.g. http://127.0.0.1:9090.",
    ),
    switch: str = typer.Option(
        "auto", help="Blue-green: auto switches after the preview; manual waits for `promote`."
    ),
    preview: str = typer.Option(
        "0s", help="Blue-green: how long green is reachable only with X-Berth-Route: green."
    ),
    finalize_after: str | None = typer.Option(
        None,
        help="Blue-green: unload blue this long after the switch; kept until `finalize` if "
        "omitted.",
    ),
    gate_data: Path | None = typer.Option(
        None, help="Validation gates: test rows (.csv, .parquet, .json or .jsonl)."
    ),
    gate_target: str | None = typer.Option(
        None, help="Validation gates: the column of --gate-data with the true outcome."
    ),
    gate_min_accuracy: float | None = typer.Option(None, help="Gate: accuracy at least this."),
    gate_min_auc: float | None = typer.Option(None, help="Gate: ROC AUC at least this."),
    gate_max_rmse: float | None = typer.Option(None, help="Gate: RMSE at most this."),
    gate_max_mae: float | None = typer.Option(None, help="Gate: MAE at most this."),
    gate_max_latency_ms: float | None = typer.Option(
        None, help="Gate: p99 ms of one-row predictions, in process."
    ),
    gate_no_nan: bool = typer.Option(
        False, "--gate-no-nan", help="Gate: no NaN or infinity in predictions."
    ),
    gate_output_range: str | None = typer.Option(
        None, help="Gate: every numeric prediction within LOW,HIGH, e.g. 0,1."
    ),
    gate_no_regression: bool = typer.Option(
        False,
        "--gate-no-regression",
        help="Gate: no metric worse than the version the endpoint serves now, on --gate-data.",
    ),
    gate_regression_tolerance: float = typer.Option(
        0.0, help="Gate: how much worse than the current version a metric may be."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Start moving an endpoint to a new version; exit 1 if the validation gates fail.

    With --gate-* options the candidate is first checked on test data; a failure is recorded
    as a failed rollout and the routes stay as they are. Otherwise the candidate joins the
    endpoint at 0%, and the controller in `berth serve` loads it, smoke-tests it and moves
    traffic: canary step by step, judged on live evidence; blue-green all at once after a
    preview. Follow it with `berth rollout status` or `berth rollout wait`.

    Example: berth rollout start churn --to churn:3 --steps 10,50,100 --interval 5m --max-error-rate 0.01 --gate-data holdout.csv --gate-target churned --gate-min-auc 0.85 --gate-no-regression
    """
    from berth.cli.flags import from_flags
    from berth.ops.gate_config import parse_output_range
    from berth.rollouts import strategies as s
    from berth.rollouts.requests import RolloutRequest

    with _gate_flags():
        output_range = parse_output_range(gate_output_range) if gate_output_range else None
    gates = {
        "data": str(gate_data) if gate_data is not None else None,
        "target": gate_target,
        "min_accuracy": gate_min_accuracy,
        "min_auc": gate_min_auc,
        "max_rmse": gate_max_rmse,
        "max_mae": gate_max_mae,
        "max_latency_ms": gate_max_latency_ms,
        "no_nan": gate_no_nan or None,
        "output_range": list(output_range) if output_range else None,
        "no_regression": gate_no_regression or None,
        "regression_tolerance": gate_regression_tolerance or None,
    }
    given = {key: value for key, value in gates.items() if value is not None}
    request = from_flags(
        RolloutRequest,
        _FLAGS,
        {
            "endpoint": endpoint,
            "to": to,
            "strategy": strategy,
            "steps": steps,
            "interval": interval,
            "max_error_rate": max_error_rate,
            "max_p99_ms": max_p99_ms,
            "max_p99_ratio": max_p99_ratio,
            "p99_slack_ms": p99_slack_ms,
            "min_requests": min_requests,
            "min_accuracy": min_accuracy,
            "min_feedback": min_feedback,
            "alpha": alpha,
            "metrics_source": metrics_source,
            "switch": switch,
            "preview": preview,
            "finalize_after": finalize_after,
            "gates": given or None,
        },
    )
    status = f"Running validation gates on {to} ..." if given else f"Starting {to} ..."
    waiting = nullcontext() if as_json else console.status(status)
    with _gate_flags(), waiting:
        result = _start(request)
    rollout, gates = result["rollout"], result["gates"]
    failed = rollout["status"] == s.FAILED
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        if failed:
            raise typer.Exit(1)
        return
    if gates is not None:
        console.print(_gate_report_table(gates))
    if failed:
        err_console.print(
            f"[bold red]FAIL[/] rollout {rollout['id']} of {endpoint} is recorded as failed and "
            f"the routes are unchanged: {rollout['reason']}. Fix the candidate, register it as "
            "a new version and start again.",
            highlight=False,
        )
        raise typer.Exit(1)
    console.print(
        f"Started rollout {rollout['id']}: {rollout['strategy']} of [bold]{endpoint}[/] from "
        f"{rollout['from']} to {rollout['to']}, now at {rollout['weight']:g}%. The controller "
        f"in `berth serve` moves it on; follow it with `berth rollout status {endpoint}`.",
        highlight=False,
    )


def _start(request: RolloutRequest) -> dict[str, Any]:
    """The started rollout and its gate report, as `POST /api/v1/rollouts` answers."""
    from berth.store.audit import cli_actor

    server = remote()
    if server is not None:
        started: dict[str, Any] = server.post(
            api("rollouts"), request.model_dump(mode="json", exclude_unset=True)
        )
        return started
    result = _service().start_from(request, actor=cli_actor())
    gates = result.gates.to_dict() if result.gates is not None else None
    return {"rollout": result.rollout.to_dict(), "gates": gates}


@app.command("status")
def status(
    endpoint: str = typer.Argument(..., help="The endpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The endpoint's rollout in progress (else its latest): phase, weight, evidence, events.

    Example: berth rollout status churn
    """
    info = _latest(remote(), endpoint)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    print_rollout(info)


def _latest(server: Remote | None, endpoint: str) -> dict[str, Any]:
    """The endpoint's rollout in progress, else its latest, with its events."""
    if server is not None:
        found: dict[str, Any] = server.get(api("endpoints", endpoint, "rollout"))
        return found
    return _service().latest(endpoint).to_dict()


@app.command("list")
def list_rollouts(
    endpoint: str | None = typer.Option(None, help="Only this endpoint's rollouts."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List rollouts, newest first.

    Example: berth rollout list --endpoint churn
    """
    server = remote()
    if server is not None:
        query = {"endpoint": endpoint} if endpoint else None
        found: list[dict[str, Any]] = server.get(api("rollouts"), query)["rollouts"]
    else:
        found = [r.to_dict() for r in _service().list(endpoint)]
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    if not found:
        console.print("No rollouts yet; start one with `berth rollout start ENDPOINT --to REF`")
        return
    table = Table(
        "id", "endpoint", "strategy", "status", "phase", "from → to", "weight", "started", "reason"
    )
    for info in found:
        table.add_row(
            str(info["id"]),
            info["endpoint"],
            info["strategy"],
            _status(info["status"]),
            info["phase"],
            f"{info['from']} → {info['to']}",
            f"{info['weight']:g}%",
            f"{_time(info['created_at']):%Y-%m-%d %H:%M}",
            info["reason"] or "-",
        )
    console.print(table)


def _act(endpoint: str, action: str, past: str, reason: str | None = None) -> None:
    """One hand action: POST /endpoints/ENDPOINT/rollout/ACTION, or the service's method of
    the same name."""
    from berth.store.audit import cli_actor

    server = remote()
    extra = {"reason": reason} if reason is not None else {}
    if server is not None:
        body = extra or None
        info: dict[str, Any] = server.post(api("endpoints", endpoint, "rollout", action), body)
    else:
        act: Callable[..., RolloutInfo] = getattr(_service(), action)
        info = act(endpoint, actor=cli_actor(), **extra).to_dict()
    console.print(
        f"rollout {info['id']} of {endpoint} {past}: {_status(info['status'])}, phase "
        f"{info['phase']}, {info['to']} at {info['weight']:g}%",
        highlight=False,
    )


@app.command("pause")
def pause(endpoint: str = typer.Argument(..., help="The endpoint.")) -> None:
    """Hold the rollout at its current weights; the controller leaves it alone until resumed.

    Example: berth rollout pause churn
    """
    _act(endpoint, "pause", "paused")


@app.command("resume")
def resume(endpoint: str = typer.Argument(..., help="The endpoint.")) -> None:
    """Let a paused rollout go on; the current step starts over with fresh evidence.

    Example: berth rollout resume churn
    """
    _act(endpoint, "resume", "resumed")


@app.command("promote")
def promote(endpoint: str = typer.Argument(..., help="The endpoint.")) -> None:
    """Canary: all traffic to the candidate now, done. Blue-green: switch (or, after it, finish).

    Example: berth rollout promote churn
    """
    _act(endpoint, "promote", "promoted")


@app.command("finalize")
def finalize(endpoint: str = typer.Argument(..., help="The endpoint.")) -> None:
    """Blue-green after the switch: unload blue and finish the rollout.

    Example: berth rollout finalize churn
    """
    _act(endpoint, "finalize", "finalized")


@app.command("rollback")
def rollback(
    endpoint: str = typer.Argument(..., help="The endpoint."),
    reason: str = typer.Option("rolled back by hand", help="Why, for the history."),
) -> None:
    """Send all traffic back to the old version and finish the rollout as rolled back.

    Example: berth rollout rollback churn --reason "support tickets about scores"
    """
    from berth.cli.flags import from_flags
    from berth.rollouts.requests import RollbackRequest

    asked = from_flags(RollbackRequest, {"reason": "--reason"}, {"reason": reason})
    _act(endpoint, "rollback", "rolled back", reason=asked.reason or reason)


@app.command("abort")
def abort(endpoint: str = typer.Argument(..., help="The endpoint.")) -> None:
    """Stop the rollout and restore the old version (recorded as aborted, not as a failure).

    Example: berth rollout abort churn
    """
    _act(endpoint, "abort", "aborted")


@app.command("wait")
def wait(
    endpoint: str = typer.Argument(..., help="The endpoint."),
    timeout: str = typer.Option("10m", help="Give up after this long, e.g. 90s, 10m, 1h."),
    poll_seconds: float = typer.Option(
        2.0,
        min=0.05,
        help="Seconds between looks at the rollout (local mode; a remote server answers as "
        "soon as the rollout changes).",
    ),
) -> None:
    """Wait until the endpoint's rollout finishes, printing each change; exit 0 only if promoted.

    One line per change of phase, weight or analysis decision (not per look at the rollout:
    while a step waits for traffic its counts move all the time), then a final line.

    Exit 1 when it was rolled back, aborted or failed, or is still running at --timeout: a
    deployment pipeline can run `berth rollout start` and then this.

    Example: berth rollout wait churn --timeout 30m
    """
    from berth.rollouts import strategies as s

    limit = parse_duration(timeout).total_seconds()
    server = remote()
    deadline = time.monotonic() + limit
    info = _latest(server, endpoint)
    shown = 0
    decision: str | None = None
    while True:
        for event in info["events"][shown:]:
            if event["kind"] == "analysis":
                if _decision(event) == decision:
                    continue  # the same verdict with newer counts
                decision = _decision(event)
            else:
                # A step or switch carries the verdict that moved it; the next step starts
                # from that one.
                decision = _decision(event) if event["detail"] else None
            console.print(_event_line(event), highlight=False)
        shown = len(info["events"])
        if info["status"] not in s.ACTIVE:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            err_console.print(
                f"[bold red]error:[/] rollout {info['id']} of {endpoint} is still "
                f"{info['status']} (phase {info['phase']}, {info['weight']:g}%) after {timeout}; "
                f"is `berth serve` running its controller? See `berth rollout status {endpoint}`.",
                highlight=False,
            )
            raise typer.Exit(1)
        if server is not None:
            info = _changed(server, info["id"], shown, remaining)
        else:
            time.sleep(min(poll_seconds, remaining))
            info = _service().get(info["id"]).to_dict()
    summary = f"rollout {info['id']} of {endpoint}: {_status(info['status'])}"
    if info["reason"]:
        summary += f" ({info['reason']})"
    console.print(summary, highlight=False)
    if info["status"] != s.PROMOTED:
        raise typer.Exit(1)


def _changed(server: Remote, rollout_id: int, seen: int, remaining: float) -> dict[str, Any]:
    """The rollout once it has more than `seen` events or finished, or as it is after at most
    `remaining` seconds: the server holds the request (a long poll) rather than being asked
    again and again."""
    wait = min(remaining, LONG_POLL_MAX_SECONDS)  # the server holds it at most its own limit
    found: dict[str, Any] = server.request(
        "GET",
        api("rollouts", rollout_id),
        params={"wait": f"{wait:.3f}", "after_event": seen},
        timeout=wait + 30,
    )
    return found


# building ------------------------------------------------------------------------------------


@contextmanager
def _gate_flags() -> Iterator[None]:
    """Rename `berth validate`'s flags in gate errors to this command's --gate-* ones."""
    try:
        yield
    except InvalidInput as exc:
        raise InvalidInput(_GATE_FLAGS.sub(_gate_flag, exc.message)) from None


def _gate_flag(found: re.Match[str]) -> str:
    name = found[1]
    return "--gate-no-regression" if name == "no-regression-vs" else f"--gate-{name}"


# output --------------------------------------------------------------------------------------


def print_rollout(info: dict[str, Any], now: datetime | None = None) -> None:
    """A rollout from its document (`RolloutInfo.to_dict()`, as the API answers)."""
    now = now or datetime.now(UTC)
    console.print(
        f"[bold]rollout {info['id']}[/] of [bold]{info['endpoint']}[/]: {info['strategy']}, "
        f"{_status(info['status'])}, phase {info['phase']}",
        highlight=False,
    )
    console.print(
        f"{info['from']} → {info['to']}   candidate at {info['weight']:g}%{_progress(info, now)}",
        highlight=False,
    )
    if info["reason"]:
        console.print(f"reason: {info['reason']}", highlight=False)
    criteria = {k: v for k, v in info["config"]["criteria"].items() if v is not None}
    console.print(
        "criteria: " + ", ".join(f"{k}={v:g}" for k, v in criteria.items()), highlight=False
    )
    verdict = info["state"].get("last_verdict")
    if isinstance(verdict, dict):
        reasons = "; ".join(str(r) for r in verdict.get("reasons") or []) or "all checks pass"
        console.print(f"last verdict: {verdict.get('decision')}: {reasons}", highlight=False)
    events: list[dict[str, Any]] = info["events"]
    checks = _latest_checks(events)
    if checks:
        console.print(_checks_table(checks))
    gates = next((e for e in reversed(events) if e["kind"] == "gates" and e["detail"]), None)
    if gates is not None:
        console.print(_gates_table(gates["detail"]))
    if events:
        table = Table("at", "event", "message", title="events")
        for event in events:
            table.add_row(
                f"{_time(event['at']):%Y-%m-%d %H:%M:%S}", event["kind"], event["message"]
            )
        console.print(table)


def _progress(info: dict[str, Any], now: datetime) -> str:
    from berth.rollouts import strategies as s

    parts = []
    state = info["state"]
    if info["strategy"] == s.CANARY and info["phase"] == s.STEP:
        index = int(state.get("step", 0))
        parts.append(f"step {index + 1} of {len(info['config']['steps'])}")
    started = state.get("phase_started_at")
    if info["status"] in s.ACTIVE and isinstance(started, str):
        began = datetime.fromisoformat(started)
        if began.tzinfo is None:
            began = began.replace(tzinfo=UTC)
        parts.append(f"{_span((now - began).total_seconds())} in this phase")
    return "   " + ", ".join(parts) if parts else ""


def _latest_checks(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The checks of the newest verdict the controller recorded (Verdict.to_dict)."""
    for event in reversed(events):
        detail = event["detail"]
        if event["kind"] in _CHECK_EVENTS and isinstance(detail, dict) and "decision" in detail:
            return [c for c in detail.get("checks", []) if isinstance(c, dict)]
    return []


def _checks_table(checks: list[dict[str, Any]]) -> Table:
    table = Table("check", "status", "value", "threshold", "detail", title="latest analysis")
    colours = {"pass": "green", "fail": "bold red", "wait": "yellow"}
    for check in checks:
        name, state = str(check.get("name")), str(check.get("status"))
        table.add_row(
            name,
            f"[{colours.get(state, 'white')}]{state}[/]",
            _check_value(name, check.get("value")),
            _check_value(name, check.get("threshold")),
            str(check.get("detail", "")),
        )
    return table


def _check_value(name: str, value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    if name in ("error rate", "accuracy"):
        return f"{value:.2%}"
    if "latency" in name:
        return f"{value:.1f} ms"
    return f"{value:g}"


def _gates_table(report: dict[str, Any]) -> Table:
    from berth.ops.gate_report import format_value

    table = Table("gate", "value", "threshold", "result", "detail", title="validation gates")
    for check in report.get("checks", []):
        value = check.get("value")
        table.add_row(
            str(check.get("name")),
            format_value(value if isinstance(value, int | float) else None),
            str(check.get("threshold", "")),
            "[green]PASS[/]" if check.get("passed") else "[bold red]FAIL[/]",
            str(check.get("detail", "")),
        )
    return table


def _gate_report_table(report: dict[str, Any]) -> Table:
    """The gates `rollout start` ran, from their report (`GateReport.to_dict()`)."""
    from berth.ops.gate_report import GateCheck, GateReport, report_table

    checks = tuple(
        GateCheck(c["name"], c["passed"], c["value"], c["threshold"], c["detail"])
        for c in report["checks"]
    )
    found = GateReport(report["reference"], report["rows"], checks)
    return report_table(found, f"validation gates: {found.reference} on {found.rows} rows")


def _decision(event: dict[str, Any]) -> str:
    """The analysis decision an event records (pass, wait, fail)."""
    detail = event["detail"] or {}
    found = detail.get("decision")
    return str(found) if found is not None else str(event["message"]).split(":", 1)[0]


def _event_line(event: dict[str, Any]) -> str:
    return f"{_time(event['at']):%H:%M:%S}  {event['kind']:<11} {event['message']}"


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _status(status: str) -> str:
    return status.replace("_", " ")


def _span(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"
