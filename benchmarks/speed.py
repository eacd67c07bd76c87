"""`make bench`: Berth and its peers (MLServer 1.7, BentoML 1.4, a bare FastAPI app) in one run,
with the same two models, and a table of the speed targets with their ratios and PASS/FAIL.

The models are the peer benchmark's (see serve_bench.py): iris LogisticRegression and a
RandomForest-100 on 20 features, registered in Berth as scikit-learn files (`berth models
register`, nothing optimized by hand). Every server gets one row per request from wrk with two
threads and 64 connections; each starts alone, and its idle memory is the RSS summed over its
whole process tree (PSS, which counts a page shared between processes once, beside it). Berth
runs with 2 workers, API keys on, metrics on, JSON logs and the prediction log on; MLServer and
BentoML with their defaults (MLServer: one inference worker, and once with two, as Berth; with
batching, 32 rows / 5 ms); the bare FastAPI app in one uvicorn process. Throughput targets
compare with the faster MLServer, memory with MLServer's two workers. "No regression" serves the
same iris versions with Berth as it was before this round (BEFORE_COMMIT, from `git archive`) in
the same run. The constant route and iris, whose ratio is a target, run alternately five
times in the same server, and each one's median run is the one reported; the one-worker and the
two-worker servers are started three times each, and their median starts are reported.

Usage: .venv/bin/python benchmarks/speed.py [--write-readme]
Env: DUR=10 (seconds per wrk run). Needs .tools/mlserver and .tools/bentoml (make bench makes
them). Results: the table on stdout, JSON and Markdown under benchmarks/results/.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import serve_bench as sb  # noqa: E402  (the shared helpers: training, wrk, RSS)

ROOT = HERE.parent
MLSERVER = ROOT / ".tools" / "mlserver" / "bin" / "mlserver"
BENTOML = ROOT / ".tools" / "bentoml" / "bin" / "bentoml"
PEERS = HERE / "peer_servers"
CONNS = 64
T = TypeVar("T")
README = ROOT / "README.md"
TABLE_START = "<!-- speed table: benchmarks/speed.py writes it -->"
TABLE_END = "<!-- end of speed table -->"

BEFORE_COMMIT = "04ec75b"
"""The code before this round (speed, round two): its v2 and ONNX-path figures are measured in
the same run, from `git archive` of that commit served with this environment, so "no regression"
compares two servers on the same machine at the same time."""
V2_BEFORE = 3030.0
"""Recorded for when the commit is not in the clone: iris v2 req/s at 04ec75b on this machine
(serve_bench.py, 64 connections), back to back with the code of that day."""
ONNX_BEFORE = 4569.0
"""Recorded likewise: iris optimized to ONNX by hand, v1."""


@dataclass
class Server:
    """One server as measured: how it starts, where it answers, what it costs idle."""

    name: str
    command: list[str]
    env: dict[str, str]
    probe: tuple[str, str, dict[str, str]]
    """A request (URL, JSON body, headers) it answers with 200 once it predicts."""
    cwd: Path | None = None

    def ready(self) -> bool:
        return posts(*self.probe)


def posts(url: str, body: str, headers: dict[str, str] | None = None) -> bool:
    import urllib.request

    request = urllib.request.Request(
        url,
        data=body.encode(),
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def start(server: Server, log: Path) -> tuple[subprocess.Popen[bytes], float]:
    """Start `server`; the seconds from process start to its first answered prediction."""
    handle = log.open("w")
    started = time.perf_counter()
    process = subprocess.Popen(
        server.command,
        env={**os.environ, **server.env},
        cwd=server.cwd,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    while not server.ready():
        if process.poll() is not None:
            raise SystemExit(f"{server.name} exited; see {log}")
        if time.perf_counter() - started > 180:
            sb.stop(process)
            raise SystemExit(f"{server.name}: no answer within 180 s; see {log}")
        time.sleep(0.02)
    return process, round(time.perf_counter() - started, 2)


ROUNDS = 5
"""Runs of each load compared with another in the same server (the constant route and iris):
they alternate, and each load's median run stands for it. On a 2-core virtual machine a run's
req/s moved by up to a fifth from one run to the next (the constant route more than iris);
five runs each keep one or two outliers out of the ratio."""

STARTS = 3
"""Starts of the one-worker and the two-worker server, of each of which the median is
reported."""


def measure(
    server: Server,
    loads: dict[str, tuple[str, str | None, dict[str, str]]],
    alternate: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Start, wait, read idle memory, run wrk on each load (url, body, headers), stop.

    The loads named in `alternate` run first, in turn, ROUNDS times; each gets its median run
    (by req/s), with every run's req/s beside it in `rps_runs`.
    """
    log = HERE / "results" / f"speed-{server.name}.log"
    process, first = start(server, log)
    try:
        time.sleep(3)
        pids = sb.tree(process.pid)
        found: dict[str, Any] = {
            "first_prediction_s": first,
            "idle_rss_mb": sb.rss_mb(pids),
            "idle_pss_mb": sb.pss_mb(pids),
            "processes": len(pids),
        }
        order = [*(list(alternate) * ROUNDS), *(label for label in loads if label not in alternate)]
        runs: dict[str, list[dict[str, Any]]] = {}
        for label in order:
            url, body, headers = loads[label]
            _wrk(url, body, headers, 16, 3)  # warm-up
            run = _wrk(url, body, headers, CONNS, sb.DUR)
            runs.setdefault(label, []).append(run)
            print(f"[{server.name}] {label}: {run}", flush=True)
        for label, done in runs.items():
            found[label] = median_run(done)
        return found
    finally:
        sb.stop(process)


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median req/s (the lower middle one of an even number), with all runs' req/s
    and the non-2xx answers of all runs."""
    if len(runs) == 1:
        return runs[0]
    middle = median(runs, key=lambda run: run["rps"])
    return {
        **middle,
        "rps_runs": [run["rps"] for run in runs],
        "errors": sum(run["errors"] for run in runs),  # a failed request in any run counts
    }


def _wrk(url: str, body: str | None, headers: dict[str, str], conns: int, seconds: int) -> Any:
    key = headers.get("X-API-Key", "")
    return sb.wrk(url, body, key, conns, seconds=seconds)


def berth_server(
    name: str, env: dict[str, str], served: list[str], rows: dict[str, list[float]], **extra: str
) -> tuple[Server, str]:
    """`berth serve` with 2 workers (one for "start-1w"), and its base URL; it is ready once the
    first reference predicts."""
    port = sb.free_port()
    base = f"http://127.0.0.1:{port}"
    workers = "1" if name == "start-1w" else "2"
    path, body = sb.bodies(served[0], rows[served[0].split("@")[0]])["v1"]
    server = Server(
        f"berth-{name}",
        [sb.BERTH, "serve", *served, "--port", str(port), "--workers", workers],
        {
            **env,
            "BERTH_LOG_FORMAT": "json",
            "BERTH_LOG_LEVEL": "INFO",
            "BERTH_ACCESS_LOG": "false",
            **extra,
        },
        (base + path, body, {"X-API-Key": env["BENCH_KEY"]}),
    )
    return server, base


def started_once(server: Server) -> float:
    """Seconds from start to the server's first answered prediction, once (then stopped): a
    single start moved by a fifth from one run to the next."""
    process, seconds = start(server, HERE / "results" / f"speed-{server.name}.log")
    sb.stop(process)
    return seconds


def median(values: list[T], key: Callable[[T], Any] | None = None) -> T:
    """The middle value (the lower middle one of an even number), by `key` when given."""
    return sorted(values, key=key)[(len(values) - 1) // 2]  # type: ignore[type-var, arg-type]


def berth_runs(env: dict[str, str], rows: dict[str, list[float]]) -> dict[str, Any]:
    headers = {"X-API-Key": env["BENCH_KEY"]}
    results: dict[str, Any] = {}
    one, _ = berth_server("start-1w", env, ["iris@sklearn"], rows)
    starts = [started_once(one) for _ in range(STARTS)]
    results["first_prediction_1_worker_s"] = median(starts)
    results["first_prediction_1_worker_runs"] = starts
    # /health is an open route, rate limited per address by default: off for the constant route.
    main, url = berth_server(
        "main", env, ["iris@sklearn", "iris@onnx", "rf@sklearn"], rows, BERTH_OPEN_ROUTE_RATE=""
    )
    main_starts = [started_once(main) for _ in range(STARTS - 1)]  # and measure() starts it
    sklearn, onnx = sb.bodies("iris@sklearn", rows["iris"]), sb.bodies("iris@onnx", rows["iris"])
    loads: dict[str, tuple[str, str | None, dict[str, str]]] = {
        "const": (f"{url}/health", None, headers),
        "iris_v1": (url + sklearn["v1"][0], sklearn["v1"][1], headers),
        "iris_v2": (url + sklearn["v2"][0], sklearn["v2"][1], headers),
        "iris_onnx_v1": (url + onnx["v1"][0], onnx["v1"][1], headers),
    }
    results["main"] = measure(main, loads, alternate=("const", "iris_v1"))
    main_starts.append(results["main"]["first_prediction_s"])
    results["main"]["first_prediction_s"] = median(main_starts)
    results["main"]["first_prediction_runs"] = main_starts
    batched, _ = berth_server(
        "rf-batched",
        env,
        ["rf@sklearn"],
        rows,
        BERTH_MODELS=json.dumps({"rf": {"max_batch_size": 32, "max_latency_ms": 5}}),
    )
    results["rf_batched"] = measure(batched, {"rf_v1": batched.probe})
    return results


def before_runs(work: Path) -> dict[str, Any] | None:
    """Berth at BEFORE_COMMIT with iris (v2, and ONNX by hand, v1), in this run; None when the
    commit is not in this clone."""
    checkout = work / "before"
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", BEFORE_COMMIT], capture_output=True, check=False
    )
    if archive.returncode != 0:
        print(f"({BEFORE_COMMIT} is not in this clone: no regression judged on recorded figures)")
        return None
    checkout.mkdir()
    subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive.stdout, check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(checkout / "berth")], check=True)
    # The old checkout's own command (this environment's `berth` names today's entry point).
    command = checkout / "berth-command"
    command.write_text(f"#!{sys.executable}\nfrom berth.cli.main import main\n\nmain()\n")
    command.chmod(0o755)
    previous, today = os.environ.get("PYTHONPATH"), sb.BERTH
    os.environ["PYTHONPATH"] = str(checkout)  # every berth process of the old checkout
    sb.BERTH = str(command)
    try:
        (work / "before-models").mkdir()
        env, key, rows, _ = sb.prepare(work / "before-models")
        env["BENCH_KEY"] = key
        headers = {"X-API-Key": key}
        server, url = berth_server("before", env, ["iris@sklearn", "iris@onnx"], rows)
    finally:
        sb.BERTH = today
        if previous is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = previous
    sklearn, onnx = sb.bodies("iris@sklearn", rows["iris"]), sb.bodies("iris@onnx", rows["iris"])
    return measure(
        server,
        {
            "iris_v2": (url + sklearn["v2"][0], sklearn["v2"][1], headers),
            "iris_onnx_v1": (url + onnx["v1"][0], onnx["v1"][1], headers),
        },
    )


def mlserver(work: Path, name: str, body: str, batched: bool, workers: int | None) -> Server:
    """MLServer 1.7 with its scikit-learn runtime serving `work/NAME.joblib` (v2 REST)."""
    suffix = ("-batch" if batched else "") + (f"-{workers}w" if workers else "")
    folder = work / f"mlserver-{name}{suffix}"
    (folder / name).mkdir(parents=True)
    port = sb.free_port()
    settings: dict[str, Any] = {
        "http_port": port,
        "grpc_port": sb.free_port(),
        "metrics_port": sb.free_port(),
        "host": "127.0.0.1",
    }
    if workers is not None:
        settings["parallel_workers"] = workers
    (folder / "settings.json").write_text(json.dumps(settings))
    model_settings: dict[str, Any] = {
        "name": name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(work / f"{name}.joblib")},
    }
    if batched:
        model_settings.update(max_batch_size=32, max_batch_time=0.005)
    (folder / name / "model-settings.json").write_text(json.dumps(model_settings))
    url = f"http://127.0.0.1:{port}/v2/models/{name}/infer"
    return Server(folder.name, [str(MLSERVER), "start", str(folder)], {}, (url, body, {}))


def peer_runs(work: Path, rows: dict[str, list[float]]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    v2 = {m: sb.bodies(m, rows[m])["v2"][1] for m in ("iris", "rf")}
    for name, batched, workers in (("iris", False, None), ("iris", False, 2), ("rf", True, None)):
        server = mlserver(work, name, v2[name], batched, workers)
        results[server.name] = measure(server, {"infer": server.probe})
    port = sb.free_port()
    bento = Server(
        "bentoml-iris",
        [str(BENTOML), "serve", "bento_service:Clf", "--host", "127.0.0.1", "--port", str(port)],
        {"PEER_MODEL": str(work / "iris.joblib"), "BENTOML_HOME": str(work / "bentoml")},
        (f"http://127.0.0.1:{port}/predict", json.dumps({"input": [sb.IRIS_ROW]}), {}),
        cwd=PEERS,
    )
    results[bento.name] = measure(bento, {"infer": bento.probe})
    port = sb.free_port()
    fastapi = Server(
        "fastapi-iris",
        [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--host", "127.0.0.1", "--port",
         str(port), "--no-access-log", "--log-level", "warning", "--loop", "uvloop",
         "--http", "httptools"],
        {"PEER_MODEL": str(work / "iris.joblib")},
        (f"http://127.0.0.1:{port}/predict", json.dumps({"data": [sb.IRIS_ROW]}), {}),
        cwd=PEERS,
    )  # fmt: skip
    results[fastapi.name] = measure(fastapi, {"infer": fastapi.probe})
    return results


def targets(berth: dict[str, Any], peers: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(target, measured, ratio, passed) for each target of the speed round."""
    main, rf = berth["main"], berth["rf_batched"]
    # The faster of MLServer's default (one inference worker) and two workers, as Berth runs.
    ml = max(peers["mlserver-iris"], peers["mlserver-iris-2w"], key=lambda r: r["infer"]["rps"])
    ml_rf, ml_2w = peers["mlserver-rf-batch"], peers["mlserver-iris-2w"]
    iris, const = main["iris_v1"], main["const"]
    found = []

    def add(target: str, measured: str, ratio: float, passed: bool) -> None:
        found.append((target, measured, f"{ratio:.2f}", passed))

    add(
        "iris as scikit-learn: req/s >= 5x MLServer",
        f"{iris['rps']:.0f} vs {ml['infer']['rps']:.0f}",
        iris["rps"] / ml["infer"]["rps"],
        iris["rps"] >= 5 * ml["infer"]["rps"],
    )
    add(
        "iris: p99 <= 1/3 of MLServer's",
        f"{iris['p99_ms']} ms vs {ml['infer']['p99_ms']} ms",
        iris["p99_ms"] / ml["infer"]["p99_ms"],
        iris["p99_ms"] * 3 <= ml["infer"]["p99_ms"],
    )
    add("iris: no non-2xx", f"{iris['errors']} errors", float(iris["errors"]), iris["errors"] == 0)
    add(
        "iris: req/s >= 50% of Berth's constant route",
        f"{iris['rps']:.0f} vs {const['rps']:.0f}{_runs(iris, const)}",
        iris["rps"] / const["rps"],
        iris["rps"] >= 0.5 * const["rps"],
    )
    add(
        "RF-100 batched: req/s >= 3x batched MLServer",
        f"{rf['rf_v1']['rps']:.0f} vs {ml_rf['infer']['rps']:.0f}",
        rf["rf_v1"]["rps"] / ml_rf["infer"]["rps"],
        rf["rf_v1"]["rps"] >= 3 * ml_rf["infer"]["rps"],
    )
    add(
        "RF-100 batched: p99 <= 1/2 of MLServer's",
        f"{rf['rf_v1']['p99_ms']} ms vs {ml_rf['infer']['p99_ms']} ms",
        rf["rf_v1"]["p99_ms"] / ml_rf["infer"]["p99_ms"],
        rf["rf_v1"]["p99_ms"] * 2 <= ml_rf["infer"]["p99_ms"],
    )
    add(
        "idle RSS (all processes) <= 60% of MLServer's, 2 workers each",
        f"{main['idle_rss_mb']} MB vs {ml_2w['idle_rss_mb']} MB",
        main["idle_rss_mb"] / ml_2w["idle_rss_mb"],
        main["idle_rss_mb"] <= 0.6 * ml_2w["idle_rss_mb"],
    )
    add(
        "start to first prediction, 1 worker <= 1.5 s",
        f"{berth['first_prediction_1_worker_s']} s"
        + _starts(berth.get("first_prediction_1_worker_runs", [])),
        berth["first_prediction_1_worker_s"] / 1.5,
        berth["first_prediction_1_worker_s"] <= 1.5,
    )
    add(
        "start to first prediction, 2 workers <= 2 s",
        f"{main['first_prediction_s']} s" + _starts(main.get("first_prediction_runs", [])),
        main["first_prediction_s"] / 2.0,
        main["first_prediction_s"] <= 2.0,
    )
    before = berth.get("before")
    for label, load, recorded in (
        ("v2 (iris)", "iris_v2", V2_BEFORE),
        ("ONNX path (iris)", "iris_onnx_v1", ONNX_BEFORE),
    ):
        then = before[load]["rps"] if before else recorded
        when = f"{BEFORE_COMMIT}, same run" if before else f"{BEFORE_COMMIT}, recorded"
        now = main[load]["rps"]
        add(
            f"no regression: {label}",
            f"{now:.0f} vs {then:.0f} ({when})",
            now / then,
            now >= 0.95 * then,
        )
    return found  # fmt: skip


def _runs(*loads: dict[str, Any]) -> str:
    """Every run of loads measured in turn: the medians above come from these."""
    if not all("rps_runs" in load for load in loads):
        return ""
    each = [" / ".join(f"{rps:.0f}" for rps in load["rps_runs"]) for load in loads]
    return f" (medians; runs {' vs '.join(each)})"


def _starts(seconds: list[float]) -> str:
    """Every start a median start comes from."""
    return f" (median; starts {' / '.join(map(str, seconds))})" if seconds else ""


def servers_table(berth: dict[str, Any], peers: dict[str, Any]) -> list[str]:
    lines = [
        "| server | model | req/s | p50 ms | p99 ms | non-2xx | first prediction s | idle RSS MB (PSS) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    main, rf = berth["main"], berth["rf_batched"]

    def row(server: str, model: str, run: dict[str, Any], of: dict[str, Any]) -> None:
        lines.append(
            f"| {server} | {model} | {run['rps']:,.0f} | {run['p50_ms']} | {run['p99_ms']} | "
            f"{run['errors']} | {of['first_prediction_s']} | {of['idle_rss_mb']} "
            f"({of['idle_pss_mb']}) |"
        )

    row("Berth, 2 workers", "constant route (GET /health)", main["const"], main)
    row("Berth, 2 workers", "iris, scikit-learn, v1", main["iris_v1"], main)
    row("Berth, 2 workers", "iris, scikit-learn, v2", main["iris_v2"], main)
    row("Berth, 2 workers", "iris, optimized to ONNX, v1", main["iris_onnx_v1"], main)
    row("Berth, 2 workers", "RF-100, scikit-learn, batched 32/5 ms", rf["rf_v1"], rf)
    before = berth.get("before")
    if before:
        old = f"Berth at {BEFORE_COMMIT}, 2 workers"
        row(old, "iris, scikit-learn, v2", before["iris_v2"], before)
        row(old, "iris, optimized to ONNX, v1", before["iris_onnx_v1"], before)
    row("MLServer 1.7", "iris (v2)", peers["mlserver-iris"]["infer"], peers["mlserver-iris"])
    row("MLServer 1.7, 2 workers", "iris (v2)", peers["mlserver-iris-2w"]["infer"],
        peers["mlserver-iris-2w"])  # fmt: skip
    row("MLServer 1.7", "RF-100, batched 32/5 ms", peers["mlserver-rf-batch"]["infer"],
        peers["mlserver-rf-batch"])  # fmt: skip
    row("BentoML 1.4", "iris", peers["bentoml-iris"]["infer"], peers["bentoml-iris"])
    row("bare FastAPI, 1 process", "iris", peers["fastapi-iris"]["infer"], peers["fastapi-iris"])
    return lines


def report(berth: dict[str, Any], peers: dict[str, Any]) -> str:
    lines = servers_table(berth, peers)
    lines += ["", "| target | measured | ratio | result |", "|---|---|---:|---|"]
    for target, measured, ratio, passed in targets(berth, peers):
        lines.append(f"| {target} | {measured} | {ratio} | {'PASS' if passed else 'FAIL'} |")
    return "\n".join(lines)


def write_readme(table: str) -> None:
    text = README.read_text()
    pattern = re.compile(re.escape(TABLE_START) + ".*?" + re.escape(TABLE_END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {TABLE_START} ... {TABLE_END} block to replace")
    stamp = time.strftime("%Y-%m-%d")
    block = f"{TABLE_START}\n_Measured {stamp} by `make bench` on 2 cores._\n\n{table}\n{TABLE_END}"
    README.write_text(pattern.sub(lambda _: block, text))


def main() -> None:
    for tool in (MLSERVER, BENTOML):
        if not tool.exists():
            raise SystemExit(f"{tool} is missing; `make bench` installs the peers")
    (HERE / "results").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="berth-speed-"))
    env, key, rows, optimized = sb.prepare(work)
    if not optimized:
        raise SystemExit("the ONNX versions could not be made; is berth[onnx] installed?")
    env["BENCH_KEY"] = key
    berth = berth_runs(env, rows)
    berth["before"] = before_runs(work)
    peers = peer_runs(work, rows)
    table = report(berth, peers)
    stamp = time.strftime("%Y-%m-%dT%H%M%S")
    (HERE / "results" / f"speed-{stamp}.json").write_text(
        json.dumps({"berth": berth, "peers": peers}, indent=1)
    )
    (HERE / "results" / f"speed-{stamp}.md").write_text(table + "\n")
    print("\n" + table)
    if "--write-readme" in sys.argv[1:]:
        write_readme(table)
        print("\nREADME.md speed table rewritten")


if __name__ == "__main__":
    main()
