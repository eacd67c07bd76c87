"""The ceiling of Python gRPC servers on this machine, with nothing behind them.

Two processes (as `berth serve --workers 2`) answer ModelInfer with a constant, pre-serialized
response: with Berth's own transport (`berth.grpc.server.GrpcServer`, what Berth serves gRPC
with), with `grpc.aio` (what it served with before) and with grpcio's thread-pool server
(`grpc.server`); h2load sends the iris request with 8 connections x 8 streams, as
`make bench-grpc` does. Whatever Berth does per call comes on top of these figures, so they
bound what its gRPC can reach against its REST (whose own ceiling is the constant route of
`make bench`).

Usage: .venv/bin/python benchmarks/grpc_transport.py     Env: DUR=10 (seconds per run)
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from grpc_bench import h2load  # noqa: E402
from serve_bench import free_port  # noqa: E402

from berth.grpc.generated import open_inference_grpc_pb2 as pb  # noqa: E402

SERVICE = "inference.GRPCInferenceService"
OPTIONS = [("grpc.so_reuseport", 1)]


def answer() -> bytes:
    reply = pb.ModelInferResponse(model_name="iris", model_version="1", id="")
    reply.outputs.add(name="label", datatype="INT64", shape=[1])
    reply.raw_output_contents.append(b"\0" * 8)
    return bytes(reply.SerializeToString())


def _same(data: bytes) -> bytes:
    return data


def _handlers(call: Any) -> grpc.GenericRpcHandler:
    method = grpc.unary_unary_rpc_method_handler(
        call, request_deserializer=_same, response_serializer=_same
    )
    return grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": method})


def serve_aio(port: int) -> None:
    import uvloop

    data = answer()

    async def call(_request: bytes, _context: Any) -> bytes:
        return data

    async def run() -> None:
        server = grpc.aio.server(options=OPTIONS)
        server.add_generic_rpc_handlers((_handlers(call),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(run())


def serve_berth(port: int) -> None:
    import uvloop

    from berth.grpc.config import GrpcConfig
    from berth.grpc.rpc import CallContext, Method
    from berth.grpc.server import GrpcServer

    data = answer()

    async def call(_request: bytes, _context: CallContext) -> bytes:
        return data

    async def run() -> None:
        config = GrpcConfig(port, "127.0.0.1", 64 << 20, None, None, False)
        server = GrpcServer(config, {f"/{SERVICE}/ModelInfer": Method(unary=call)})
        await server.start()
        await asyncio.Event().wait()

    uvloop.run(run())


def serve_threads(port: int) -> None:
    data = answer()
    server = grpc.server(ThreadPoolExecutor(max_workers=4), options=OPTIONS)
    server.add_generic_rpc_handlers((_handlers(lambda _request, _context: data),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def measure(target: Any) -> dict[str, Any]:
    port = free_port()
    context = multiprocessing.get_context("spawn")
    servers = [context.Process(target=target, args=(port,), daemon=True) for _ in range(2)]
    for server in servers:
        server.start()
    try:
        time.sleep(3)
        return h2load(f"127.0.0.1:{port}", "iris", None)
    finally:
        for server in servers:
            server.terminate()
            server.join(10)


def main() -> None:
    servers = (
        ("Berth's HTTP/2", serve_berth),
        ("grpc.aio", serve_aio),
        ("grpc.server, 4 threads", serve_threads),
    )
    for name, target in servers:
        found = measure(target)
        microseconds = 2 / found["rps"] * 1e6  # two cores' time per call
        print(
            f"{name}, 2 processes, constant answer: {found['rps']:,.0f} req/s "
            f"({microseconds:.0f} us of the two cores a call), {found['errors']} failed",
            flush=True,
        )


if __name__ == "__main__":
    main()
