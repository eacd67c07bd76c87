"""Berth's gRPC against Berth's REST v2 and MLServer's gRPC, in one run (`make bench-grpc`).

The iris LogisticRegression of the peer benchmark, one row per request, 64 requests in flight:
- Berth REST v2: `berth serve --workers 2`, API keys on, wrk with 64 connections;
- Berth gRPC: the same server's `--grpc-port`, h2load with 8 connections x 8 streams;
- MLServer 1.7 gRPC (no authentication: it has none), h2load the same way, once with its default
  settings (one process) and once with `parallel_workers: 2`.

wrk and h2load are C clients, so the client's cost stays small beside the server's on these two
cores. h2load counts HTTP statuses, and gRPC failures arrive as HTTP 200 with a grpc-status
trailer: Berth's own counter of gRPC predictions (berth_predictions_total{protocol="grpc"})
must grow by exactly h2load's successes, and each MLServer run starts and ends with a checked
call. Latency percentiles come from h2load's per-request log.

Usage: .venv/bin/python benchmarks/grpc_bench.py     Env: DUR=10 (seconds per run)
MLServer comes from .tools/mlserver (made by `make bench-grpc`).
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from serve_bench import free_port, rss_mb, train, tree, wrk  # noqa: E402

from berth.grpc.generated import open_inference_grpc_pb2 as pb  # noqa: E402

ROOT = HERE.parent
BIN = Path(sys.executable).parent
MLSERVER = ROOT / ".tools" / "mlserver" / "bin" / "mlserver"
DUR = int(os.environ.get("DUR", "10"))
ROW = [5.1, 3.5, 1.4, 0.2]
INFER = "/inference.GRPCInferenceService/ModelInfer"


def infer_message(model: str) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model)
    message.inputs.add(name="input-0", datatype="FP32", shape=[1, 4])
    message.raw_input_contents.append(np.asarray([ROW], dtype="<f4").tobytes())
    return message


def grpc_frame(message: pb.ModelInferRequest) -> bytes:
    """The request body gRPC puts on HTTP/2: uncompressed flag, length, message."""
    data = message.SerializeToString()
    return struct.pack(">?I", False, len(data)) + data


def checked_call(address: str, model: str, key: str | None) -> None:
    metadata = [("x-api-key", key)] if key else []
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            INFER,
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        reply = call(infer_message(model), metadata=metadata, timeout=10)
    assert reply.raw_output_contents, reply


def h2load(address: str, model: str, key: str | None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp())
    body, log = work / "request.bin", work / "requests.log"
    body.write_bytes(grpc_frame(infer_message(model)))
    headers = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    if key:
        headers += ["-H", f"x-api-key: {key}"]
    out = subprocess.run(
        ["h2load", "-t2", "-c8", "-m8", f"-D{DUR}", "--warm-up-time=2", "-d", str(body),
         "--log-file", str(log), *headers, f"http://{address}{INFER}"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    found = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out)
    assert found, out
    assert counts, out
    micros = np.array([int(line.split("\t")[2]) for line in log.read_text().splitlines()])
    return {
        "rps": round(float(found.group(1)), 1),
        "succeeded": int(counts.group(3)),
        "errors": int(counts.group(2)) - int(counts.group(3)),
        "p50_ms": round(float(np.percentile(micros, 50)) / 1000, 2),
        "p99_ms": round(float(np.percentile(micros, 99)) / 1000, 2),
    }


def grpc_ok_count(base: str, key: str) -> int:
    request = urllib.request.Request(f"{base}/metrics", headers={"X-API-Key": key})
    with urllib.request.urlopen(request, timeout=10) as answer:
        text = answer.read().decode()
    pattern = r'^berth_predictions_total\{[^}]*protocol="grpc",status="ok"[^}]*\} ([\d.e+]+)$'
    return int(sum(float(v) for v in re.findall(pattern, text, re.M)))


def wait_for(check: Any, what: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            check()
            return
        except Exception:  # not up yet
            time.sleep(0.2)
    raise SystemExit(f"{what} did not come up in {seconds:g} s")


def berth_runs(work: Path, model_file: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env |= {"BERTH_HOME": str(work / "berth"), "BERTH_LOG_LEVEL": "WARNING"}
    berth = str(BIN / "berth")
    sample = work / "sample.npy"
    np.save(sample, np.asarray([ROW], dtype=np.float32))
    subprocess.run([berth, "models", "register", "iris", str(model_file), "--sample", str(sample),
                    "--alias", "production", "--trust-pickle"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    key = subprocess.run([berth, "keys", "create", "bench"], env=env, check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]  # fmt: skip
    port, grpc_port = free_port(), free_port()
    server = subprocess.Popen(
        [berth, "serve", "iris@production", "--workers", "2", "--port", str(port),
         "--grpc-port", str(grpc_port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base, address = f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
    try:
        wait_for(lambda: checked_call(address, "iris", key), "berth serve")
        time.sleep(2)  # both workers up
        idle = rss_mb(tree(server.pid))
        body = json.dumps(
            {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
        )
        rest = wrk(f"{base}/v2/models/iris/infer", body, key, 64)
        before = grpc_ok_count(base, key)
        over_grpc = h2load(address, "iris", key)
        counted = grpc_ok_count(base, key) - before
        # h2load's successes include its warm-up's; the server counted every one of them
        assert counted >= over_grpc["succeeded"], (counted, over_grpc)
        over_grpc["server_counted_ok"] = counted
        return {"rest_v2": rest, "grpc": over_grpc, "idle_rss_mb": idle}
    finally:
        server.terminate()
        server.wait(timeout=30)


def mlserver_run(work: Path, model_file: Path, parallel_workers: int | None) -> dict[str, Any]:
    folder = work / f"mlserver-{parallel_workers}"
    (folder / "iris").mkdir(parents=True)
    grpc_port = free_port()
    settings: dict[str, Any] = {
        "http_port": free_port(),
        "grpc_port": grpc_port,
        "metrics_port": free_port(),
        "host": "127.0.0.1",
    }
    if parallel_workers is not None:
        settings["parallel_workers"] = parallel_workers
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / "iris" / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "iris",
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": str(model_file)},
            }
        )
    )
    server = subprocess.Popen(
        [str(MLSERVER), "start", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    address = f"127.0.0.1:{grpc_port}"
    try:
        wait_for(lambda: checked_call(address, "iris", None), "MLServer")
        time.sleep(2)
        idle = rss_mb(tree(server.pid))
        result = h2load(address, "iris", None)
        checked_call(address, "iris", None)  # still answering, and answering right
        return {"grpc": result, "idle_rss_mb": idle}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    if not MLSERVER.exists():
        raise SystemExit("MLServer is not installed; run `make bench-grpc`")
    work = Path(tempfile.mkdtemp(prefix="berth-grpc-bench-"))
    model_file = train(work)["iris"]
    results = {
        "berth": berth_runs(work, model_file),
        "mlserver_default": mlserver_run(work, model_file, None),
        "mlserver_2_workers": mlserver_run(work, model_file, 2),
    }
    best_mlserver = max(
        results["mlserver_default"]["grpc"]["rps"], results["mlserver_2_workers"]["grpc"]["rps"]
    )
    berth_grpc = results["berth"]["grpc"]["rps"]
    rest = results["berth"]["rest_v2"]["rps"]
    rows = [
        ("Berth gRPC (2 workers, keys on)", results["berth"]["grpc"]),
        ("Berth REST v2 (2 workers, keys on)", results["berth"]["rest_v2"]),
        ("MLServer 1.7 gRPC (default)", results["mlserver_default"]["grpc"]),
        ("MLServer 1.7 gRPC (parallel_workers 2)", results["mlserver_2_workers"]["grpc"]),
    ]
    print(f"iris, one row per request, 64 in flight, {DUR} s each\n")
    print("| server | req/s | p50 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|")
    for name, row in rows:
        print(
            f"| {name} | {row['rps']:,.0f} | {row['p50_ms']} | {row['p99_ms']} | {row['errors']} |"
        )
    print(
        f"\nBerth gRPC / Berth REST v2: {berth_grpc / rest:.2f}x (target >= 1)"
        f"\nBerth gRPC / best MLServer gRPC: {berth_grpc / best_mlserver:.2f}x (target >= 2)"
    )
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "grpc.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
