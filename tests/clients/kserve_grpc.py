"""Run by tests/test_grpc.py under KServe's own environment (`make kserve-client`): KServe's
InferenceGRPCClient, unmodified, against a Berth server. Prints one JSON document of what it saw.

Usage: python kserve_grpc.py HOST:PORT API_KEY ROWS_JSON
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb


async def main(url: str, key: str, rows: np.ndarray[Any, Any]) -> dict[str, Any]:
    client = InferenceGRPCClient(url=url, timeout=30)
    headers = (("x-api-key", key),)
    seen: dict[str, Any] = {
        "live": await client.is_server_live(),
        "ready": await client.is_server_ready(),
        "model_ready": await client.is_model_ready("iris", headers=headers),
    }
    # The client has no metadata calls of its own; its generated stub does.
    server = await client._client_stub.ServerMetadata(pb.ServerMetadataRequest())
    model = await client._client_stub.ModelMetadata(
        pb.ModelMetadataRequest(name="iris"), metadata=headers
    )
    seen["server"] = {"name": server.name, "version": server.version}
    seen["model"] = {
        "name": model.name,
        "platform": model.platform,
        "inputs": [(t.name, t.datatype, list(t.shape)) for t in model.inputs],
    }
    raw = InferInput("input", list(rows.shape), "FP32")
    raw.set_data_from_numpy(rows, binary_data=True)
    typed = InferInput("input", list(rows.shape), "FP32", data=rows.reshape(-1).tolist())
    for name, tensor in (("raw", raw), ("typed", typed)):
        reply = await client.infer(
            InferRequest(model_name="iris", infer_inputs=[tensor], request_id=name),
            headers=headers,
        )
        seen[name] = {
            "id": reply.id,
            "version": reply.model_version,
            "outputs": {o.name: o.as_numpy().tolist() for o in reply.outputs},
        }
    canary = await client.infer(
        InferRequest(model_name="flowers", infer_inputs=[raw]),
        headers=(*headers, ("x-berth-route", "canary")),
    )
    seen["canary"] = {
        "model": canary.model_name,
        "version": canary.model_version,
        "predict": canary.outputs[0].as_numpy().tolist(),
    }
    failures = {
        "missing": (InferRequest(model_name="lilies", infer_inputs=[raw]), headers),
        "no_key": (InferRequest(model_name="iris", infer_inputs=[raw]), ()),
    }
    for name, (request, metadata) in failures.items():
        try:
            await client.infer(request, headers=metadata)
            seen[name] = "OK"
        except grpc.RpcError as exc:
            seen[name] = exc.code().name
    await client.close()
    return seen


if __name__ == "__main__":
    found = asyncio.run(main(sys.argv[1], sys.argv[2], np.array(json.loads(sys.argv[3]), "f4")))
    print(json.dumps(found))
