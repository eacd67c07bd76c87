"""The generated gRPC code: current with its protocol files, and importable beside other
Open Inference Protocol clients.

tritonclient, KServe and MLServer each generate the protocol's messages into protobuf's
default descriptor pool under the package `inference`; two of them in one process have failed
with "duplicate symbol 'inference.ServerLiveRequest'". Berth's own messages live in a pool of
their own (see berth/grpc/codegen.py), so either import order works.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_service

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / ".tools" / "grpc-tools" / "bin" / "python"

BERTH_FIRST = """
from berth.grpc.generated import open_inference_grpc_pb2 as berth_pb, health_pb2
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as triton_pb
"""
TRITON_FIRST = """
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as triton_pb
from berth.grpc.generated import open_inference_grpc_pb2 as berth_pb, health_pb2
"""
BOTH_WORK = """
message = berth_pb.ModelInferRequest(model_name="iris")
message.inputs.add(name="input", datatype="FP32", shape=[1, 4])
# Same wire format: each side reads what the other wrote.
read = triton_pb.ModelInferRequest.FromString(message.SerializeToString())
assert read.model_name == "iris" and read.inputs[0].shape == [1, 4], read
back = berth_pb.ModelInferRequest.FromString(read.SerializeToString())
assert back == message
assert triton_pb.ServerLiveRequest.DESCRIPTOR.full_name == "inference.ServerLiveRequest"
assert berth_pb.ServerLiveRequest.DESCRIPTOR.full_name == "inference.ServerLiveRequest"
triton.InferenceServerClient("127.0.0.1:1")
print("ok")
"""


@pytest.mark.parametrize(
    "imports", [BERTH_FIRST, TRITON_FIRST], ids=["berth-first", "triton-first"]
)
def test_berths_messages_and_tritonclients_live_in_one_process(imports: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", imports + BOTH_WORK],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_generated_code_is_current_with_the_protocol_files() -> None:
    if not GENERATOR.exists():
        require_service("the pinned gRPC generator", "run `make grpc-tools`")
    done = subprocess.run(
        [str(GENERATOR), str(ROOT / "berth" / "grpc" / "codegen.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_protocol_file_is_the_specifications() -> None:
    spec = ROOT.parent / "shared" / "specs" / "open_inference_grpc.proto"
    if not spec.exists():
        pytest.skip("the specification folder (../shared/specs) is not beside this checkout")
    vendored = ROOT / "berth" / "grpc" / "proto" / "open_inference_grpc.proto"
    assert vendored.read_text() == spec.read_text()
