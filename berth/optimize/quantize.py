"""Dynamic int8 quantization of an ONNX graph with onnxruntime.

Dynamic quantization stores the weights of matrix products, convolutions and embeddings as int8
and quantizes activations on the fly. Graphs without such weights (tree ensembles, and the
linear models skl2onnx writes as one LinearClassifier operator) have nothing to quantize: they
are refused with the operators they hold rather than registered unchanged under an int8 label.

Exporters write a fully connected layer as one Gemm, which dynamic quantization leaves alone
(onnxruntime has integer kernels for MatMul, not Gemm); such a Gemm with constant weights is
rewritten as the equivalent MatMul followed by Add first, so its weights are quantized too.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
    model = onnx.load_from_string(onnx_bytes)
    if _gemms_as_matmuls(onnx, model):
        onnx_bytes = model.SerializeToString()
    graph = model.graph
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
            f"(MatMul, Gemm, Conv, Gather); this graph holds only {', '.join(sorted(before))}, which "
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


def _gemms_as_matmuls(onnx: Any, model: Any) -> int:
    """Rewrite each Gemm(A, B, C) with constant B (alpha = beta = 1, A not transposed) as
    Add(MatMul(A, B'), C), B' the weights in the orientation MatMul takes; how many were."""
    numpy_helper = onnx.numpy_helper
    weights = {tensor.name: tensor for tensor in model.graph.initializer}
    # Weights already written in MatMul's orientation, by name: Gemms sharing weights (tied
    # layers) share one copy, as a graph may not define a name twice.
    transposed: dict[str, str] = {}
    nodes, rewritten = [], 0
    for node in model.graph.node:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        plain = attributes.get("alpha", 1.0) == 1.0 and attributes.get("beta", 1.0) == 1.0
        if (
            node.op_type != "Gemm"
            or not plain
            or attributes.get("transA", 0)
            or node.input[1] not in weights
        ):
            nodes.append(node)
            continue
        name = node.input[1]
        if attributes.get("transB", 0):
            if name not in transposed:
                matrix = numpy_helper.to_array(weights[name]).T.copy()
                transposed[name] = f"{name}_matmul"
                model.graph.initializer.append(numpy_helper.from_array(matrix, transposed[name]))
            name = transposed[name]
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", [node.input[0], name], [product]))
        if has_bias:
            nodes.append(onnx.helper.make_node("Add", [product, node.input[2]], [node.output[0]]))
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        used = {name for node in model.graph.node for name in node.input}
        kept = [t for t in model.graph.initializer if t.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
    return rewritten


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
