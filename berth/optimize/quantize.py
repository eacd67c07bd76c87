"""Dynamic int8 quantization of an ONNX graph with onnxruntime.

Dynamic quantization stores the weights of matrix products, convolutions and embeddings as int8
and quantizes activations on the fly. Graphs without such weights (tree ensembles, and the
linear models skl2onnx writes as one LinearClassifier operator) have nothing to quantize: they
are refused with the operators they hold rather than registered unchanged under an int8 label.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from berth.errors import InvalidInput
from berth.optimize.convert import require

QUANTIZATIONS = ("int8",)
WEIGHT_OPS = frozenset({"MatMul", "Conv", "Gather", "Attention", "LSTM", "EmbedLayerNormalization"})
"""Operators onnxruntime's dynamic quantization rewrites (its IntegerOpsRegistry, with weights)."""


class QuantizationError(InvalidInput):
    """The graph has nothing to quantize, or the quantizer failed on it."""


def quantize_int8(onnx_bytes: bytes) -> bytes:
    """The graph with its weights quantized to int8 (activations quantized at run time)."""
    onnx = require("onnx", "int8 quantization")
    quantization = require("onnxruntime.quantization", "int8 quantization")
    graph = onnx.load_from_string(onnx_bytes).graph
    doubles = [
        i.name for i in graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    ]
    if doubles:
        raise QuantizationError(
            f"int8 dynamic quantization works on float32 graphs; this one takes double inputs "
            f"({', '.join(doubles)}). Optimize the scikit-learn source with --quantize int8, "
            "which converts in float32"
        )
    before = Counter(node.op_type for node in graph.node)
    if not WEIGHT_OPS & set(before):
        raise QuantizationError(
            "int8 dynamic quantization rewrites matrix products, convolutions and embeddings "
            f"(MatMul, Conv, Gather); this graph holds only {', '.join(sorted(before))}, which "
            "would stay as they are. Optimize without --quantize"
        )
    with tempfile.TemporaryDirectory(prefix="berth-quantize-") as folder:
        source, target = Path(folder) / "model.onnx", Path(folder) / "model.int8.onnx"
        source.write_bytes(onnx_bytes)
        try:
            with _quiet_quantizer():
                quantization.quantize_dynamic(
                    source, target, weight_type=quantization.QuantType.QInt8
                )
        except Exception as exc:  # the quantizer raises anything; reported
            raise QuantizationError(f"int8 quantization failed: {exc}") from exc
        quantized = target.read_bytes()
    after = Counter(node.op_type for node in onnx.load_from_string(quantized).graph.node)
    if after == before:
        raise QuantizationError(
            "int8 dynamic quantization left the graph unchanged (no weights it could quantize); "
            "optimize without --quantize"
        )
    return quantized


class _DropPreprocessingAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Keep the quantizer's advice to run its pre-processing script out of Berth's output.

    It logs through the root logger; only that one message is dropped.
    """
    advice = _DropPreprocessingAdvice()
    logging.getLogger().addFilter(advice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(advice)
