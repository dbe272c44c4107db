"""How close to the limit: FLOPs of the graph's heavy operators, and the machine's measured GEMM peak.

FLOPs are counted from the ONNX graph after shape inference at the benchmark's concrete input shapes, for the
operators that dominate compute: convolutions, matrix products and attention (fused and quantized forms
included). A multiply-add counts as 2 FLOPs; element-wise work, normalization and activations are left out, so the
count is a slight undercount and "achieved GFLOP/s" a slight understatement. Heavy operators whose shapes could not
be inferred are counted as ``unresolved`` rather than guessed.

The peak is not a datasheet figure but what this machine does, now, at a given thread count: the best of ONNX Runtime
float32 MatMuls of square matrices (MLAS, the same kernels the convolutions and matrix products run on). Convolution
kernels can beat it a little (a fraction above 1 is possible), which says the model runs at the machine's limit.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# op type -> (index of the data input, index of the weight / second operand) for convolution-like and
# matrix-product-like operators; domains are ignored (com.microsoft fused and quantized forms share the layout).
CONV_OPS = {"Conv": (0, 1), "FusedConv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3), "NhwcConv": (0, 1)}
MATMUL_OPS = {"MatMul": (0, 1), "FusedMatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}
GEMM_OPS = {"Gemm", "FusedGemm"}
ATTENTION_OPS = {"Attention"}  # the ONNX-domain operator (opset 23), which the dynamo exporter emits for SDPA
PEAK_SIZES = (256, 512, 1024)


@dataclass
class FlopCount:
    total: int = 0
    by_op: dict[str, int] = field(default_factory=dict)
    unresolved: dict[str, int] = field(default_factory=dict)  # heavy nodes whose shapes are unknown

    def to_dict(self) -> dict:
        return {"total": self.total, "by_op": self.by_op, "unresolved": self.unresolved}


def count_flops(model_path: str | Path, input_shapes: dict[str, tuple[int, ...]]) -> FlopCount:
    """FLOPs of one inference of ``model_path`` with inputs of ``input_shapes`` (see the module docstring)."""
    model = inferred_model(model_path, input_shapes)
    shapes = _known_shapes(model.graph)
    count, by_op, unresolved = 0, Counter(), Counter()
    for node in model.graph.node:
        flops = _node_flops(node, shapes)
        if flops is None:
            if _is_heavy(node.op_type):
                unresolved[node.op_type] += 1
            continue
        count += flops
        by_op[node.op_type] += flops
    return FlopCount(count, dict(by_op), dict(unresolved))


def inferred_model(model_path: str | Path, input_shapes: dict[str, tuple[int, ...]]):
    """The model at ``model_path`` with its inputs fixed to ``input_shapes`` and ONNX shape inference run (what the
    declared shapes allow when inference fails)."""
    import onnx

    from .. import serde

    model = serde.load(model_path)
    for value in model.graph.input:
        shape = input_shapes.get(value.name)
        if shape is None:
            continue
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, shape):
            dim.Clear()
            dim.dim_value = int(size)
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError):  # count what the declared shapes allow
        pass
    return model


def _is_heavy(op_type: str) -> bool:
    return op_type in CONV_OPS or op_type in MATMUL_OPS or op_type in GEMM_OPS or op_type in ATTENTION_OPS


def _known_shapes(graph) -> dict[str, list[int]]:
    """Fully known shapes of every value: inputs, outputs, inferred intermediates and initializers."""
    shapes = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape") and all(
                d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _node_flops(node, shapes: dict[str, list[int]]) -> int | None:
    def shape(i: int, outputs: bool = False) -> list[int] | None:
        names = node.output if outputs else node.input
        return shapes.get(names[i]) if i < len(names) and names[i] else None

    op = node.op_type
    attrs = {a.name: a for a in node.attribute}
    out = shape(0, outputs=True)
    if op in CONV_OPS:
        weight = shape(CONV_OPS[op][1])
        if out is None or weight is None:
            return None
        # each output element is a dot product over (input channels / group) x kernel
        return 2 * math.prod(out) * math.prod(weight[1:])
    if op == "ConvTranspose":
        x, weight = shape(0), shape(1)
        if x is None or weight is None:
            return None
        return 2 * math.prod(x) * math.prod(weight[1:])  # each input element is scattered over (C_out/g) x kernel
    if op in MATMUL_OPS:
        a = shape(MATMUL_OPS[op][0])
        if out is None or a is None or not a:
            return None
        trans_a = op == "FusedMatMul" and "transA" in attrs and attrs["transA"].i
        k = a[-2] if trans_a and len(a) >= 2 else a[-1]
        return 2 * math.prod(out) * k
    if op in GEMM_OPS:
        a = shape(0)
        if out is None or a is None or len(a) != 2:
            return None
        k = a[0] if "transA" in attrs and attrs["transA"].i else a[1]
        return 2 * math.prod(out) * k
    if op in ATTENTION_OPS:
        return _attention_flops(shape(0), shape(1), shape(2), attrs)
    return None


def _attention_flops(q, k, v, attrs) -> int | None:
    """Q·Kᵀ and the weighted sum of V: 2·B·heads·S_q·S_kv·(head size of Q + head size of V)."""
    if q is None or k is None or v is None or len(q) != len(k) or len(q) not in (3, 4):
        return None
    if len(q) == 4:  # [batch, heads, seq, head_size]
        batch, heads, s_q, d_q = q
        return 2 * batch * heads * s_q * k[2] * (d_q + v[3])
    # [batch, seq, heads * head_size]: V's hidden size counts once per query head group
    q_heads = attrs["q_num_heads"].i if "q_num_heads" in attrs else 1
    kv_heads = attrs["kv_num_heads"].i if "kv_num_heads" in attrs else q_heads
    batch, s_q, hidden_q = q
    return 2 * batch * s_q * k[1] * (hidden_q + v[2] * q_heads // max(kv_heads, 1))


def gemm_peak_gflops(threads: int, *, sizes: tuple[int, ...] = PEAK_SIZES, seconds: float = 1.0) -> float:
    """The best GFLOP/s of onnxruntime float32 MatMuls of ``n`` x ``n`` matrices, over ``sizes``, at ``threads``.

    The second matrix is a constant, as model weights are, so onnxruntime pre-packs it. Several sizes, because the
    fastest one depends on the caches; the fastest repeat's median, because a peak is what the machine *can* do and
    interference only slows it.
    """
    from onnx import TensorProto, helper, numpy_helper

    from ..runtimes.ort import OrtRunner
    from .harness import measure

    rng = np.random.default_rng(0)
    best = 0.0
    for n in sizes:
        weight = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "w")
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm_peak",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], [weight])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        feed = {"x": rng.standard_normal((n, n)).astype(np.float32)}
        with OrtRunner(model, intra_op_threads=threads) as runner:
            stats = measure(lambda: runner.run(feed), warmup_runs=2, runs=10_000, seconds=seconds / len(sizes),
                            repeats=3)
        best = max(best, 2 * n ** 3 / (min(stats.repeat_medians_ms) * 1e-3) / 1e9)
    return best
