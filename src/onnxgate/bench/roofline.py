"""The limit, per model: a roofline built from what this machine measurably does, not from a datasheet.

Three machine figures, each measured through onnxruntime (the kernels the models run on), at a given thread count:

* ``gemm_gflops`` — float32 MatMul peak (``flops.gemm_peak_gflops``): the ceiling of compute-bound layers;
* ``int8_gops`` — the same for uint8 x int8 ``MatMulInteger`` (VNNI where the CPU has it): the ceiling of the
  integer layers of a quantized model;
* ``bandwidth_gbs`` — a STREAM-like "add" (``y = x + w`` on float32 arrays of ``BANDWIDTH_MB`` each, far beyond
  the caches): two arrays read, one written, counted as STREAM counts them (3 x the array size per run; the
  write-allocate traffic of the output is not counted, as in STREAM).

A model's limit is the sum over its nodes of ``max(FLOPs / peak, bytes / bandwidth)`` at the benchmark's input
shapes: each operator is bound by compute or by memory, and they run one after another. FLOPs are those
``flops.count_flops`` counts (convolutions, matrix products, attention); every other operator is taken as
memory-bound, moving its inputs and outputs once. Bytes are the sizes of each node's inputs (weights included) and
outputs at their dtypes (a Gather reads the rows it gathers, not its whole table); view-like operators (Reshape,
Squeeze, ...) move nothing. In a QDQ graph the
Quantize/DequantizeLinear pairs are taken as fused into their neighbours (what onnxruntime does): the tensors they
carry count one byte per element and an operator reading a dequantized tensor runs at the int8 peak.

``fraction = limit / measured latency`` says how close the runtime gets: 1.0 is the machine's limit. It can exceed
1: activations of small models stay in the caches, where bandwidth is higher than the DRAM figure used here, and
convolution kernels can beat the MatMul peak a little. Shapes come from ONNX shape inference; where it stops (at
onnxruntime's contrib operators in fused and quantized graphs) from one onnxruntime run with every node output
exposed. Heavy operators whose shapes are still unknown are left out and counted in ``unresolved`` (the limit is
then an underestimate).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..runtimes.intermediates import run_with_intermediates
from .flops import _is_heavy, _known_shapes, _node_flops, gemm_peak_gflops, inferred_model

BANDWIDTH_MB = 128  # per array: far beyond the L3 caches of current server CPUs
INT8_SIZES = (256, 512, 1024)
VIEW_OPS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Size", "Constant",
            "ConstantOfShape", "Dropout"}
QDQ = {"QuantizeLinear", "DequantizeLinear"}
GATHERS = {"Gather", "GatherElements", "GatherND"}
INT8_OPS = {"QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul",
            "MatMulIntegerToFloat", "QGemm", "QAttention"}
# ONNX TensorProto element type -> bytes per element
_DTYPE_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


@dataclass(frozen=True)
class MachineLimits:
    """What this machine does at ``threads`` intra-op threads (see the module docstring)."""

    threads: int
    gemm_gflops: float
    bandwidth_gbs: float
    int8_gops: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Roofline:
    """The limit of one model on one machine: the sum of each node's compute or memory bound."""

    limit_ms: float
    compute_ms: float  # the compute-bound nodes' share of the limit
    memory_ms: float  # the memory-bound nodes' share of the limit
    flops: int
    bytes: int
    limits: MachineLimits
    unresolved: int = 0  # heavy nodes left out (unknown shapes)
    by_op: dict[str, float] = field(default_factory=dict)  # op type -> ms of the limit

    @property
    def bound(self) -> str:
        """Which ceiling dominates the limit: "compute" or "memory"."""
        return "compute" if self.compute_ms >= self.memory_ms else "memory"

    def fraction(self, latency_ms: float | None) -> float | None:
        """Limit over measured latency: 1.0 is this machine's limit (see the module docstring for > 1)."""
        return self.limit_ms / latency_ms if latency_ms else None

    def to_dict(self) -> dict:
        return {"limit_ms": self.limit_ms, "compute_ms": self.compute_ms, "memory_ms": self.memory_ms,
                "bound": self.bound, "flops": self.flops, "bytes": self.bytes, "unresolved": self.unresolved,
                "limits": self.limits.to_dict(), "by_op": self.by_op}


def measure_limits(threads: int, *, seconds: float = 1.0, int8: bool = True) -> MachineLimits:
    """The float32 GEMM peak, the int8 GEMM peak (``int8``) and the memory bandwidth at ``threads``."""
    return MachineLimits(threads, gemm_peak_gflops(threads, seconds=seconds),
                         memory_bandwidth_gbs(threads, seconds=seconds),
                         int8_gemm_peak_gops(threads, seconds=seconds) if int8 else None)


def memory_bandwidth_gbs(threads: int, *, megabytes: int = BANDWIDTH_MB, seconds: float = 1.0) -> float:
    """STREAM-like "add" bandwidth in GB/s (1e9 bytes): onnxruntime's float32 Add of two arrays of ``megabytes``
    each (one a constant, as weights are), the fastest repeat's median."""
    from onnx import TensorProto, helper, numpy_helper

    n = megabytes * 2 ** 20 // 4
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "stream_add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])],
        [numpy_helper.from_array(rng.standard_normal(n, dtype=np.float32), "w")])
    feed = {"x": rng.standard_normal(n, dtype=np.float32)}
    stats = _time_graph(graph, feed, threads, seconds)
    return 3 * n * 4 / (min(stats.repeat_medians_ms) * 1e-3) / 1e9


def int8_gemm_peak_gops(threads: int, *, sizes: tuple[int, ...] = INT8_SIZES, seconds: float = 1.0) -> float:
    """The best int8 GOP/s (multiply-adds x 2) of onnxruntime uint8 x int8 ``MatMulInteger`` of ``n`` x ``n``
    matrices with a constant int8 weight, over ``sizes``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    best = 0.0
    for n in sizes:
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["x", "w"], ["y"])], "int8_peak",
            [helper.make_tensor_value_info("x", TensorProto.UINT8, [n, n])],
            [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])],
            [numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "w")])
        stats = _time_graph(graph, {"x": rng.integers(0, 256, (n, n), dtype=np.uint8)}, threads,
                            seconds / len(sizes))
        best = max(best, 2 * n ** 3 / (min(stats.repeat_medians_ms) * 1e-3) / 1e9)
    return best


def roofline(model_path: str | Path, input_shapes: dict[str, tuple[int, ...]], limits: MachineLimits) -> Roofline:
    """The limit of the model at ``model_path`` for inputs of ``input_shapes`` on a machine with ``limits``."""
    model = inferred_model(model_path, input_shapes)
    graph = model.graph
    shapes = _known_shapes(graph)
    dtypes = _dtypes(graph)
    if any(_is_heavy(n.op_type) and _node_flops(n, shapes) is None for n in graph.node):
        # ONNX shape inference stops at onnxruntime's contrib operators (fused and quantized graphs): take the
        # shapes onnxruntime computes instead
        shapes, dtypes = _runtime_shapes(model, input_shapes, shapes, dtypes)
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized_in = {i for n in graph.node if n.op_type == "QuantizeLinear" for i in n.input[:1]}
    int8_peak = (limits.int8_gops or limits.gemm_gflops) * 1e9
    compute_ms = memory_ms = 0.0
    total_flops = total_bytes = unresolved = 0
    by_op: dict[str, float] = {}

    def size(name: str) -> int:
        if not name or name not in shapes:
            return 0
        per = 1 if name in dequantized else _DTYPE_BYTES.get(dtypes.get(name, 1), 4)
        return int(np.prod(shapes[name], dtype=np.int64)) * per

    for node in graph.node:
        if node.op_type in VIEW_OPS or node.op_type in QDQ:
            continue
        flops = _node_flops(node, shapes)
        if flops is None and _is_heavy(node.op_type):
            unresolved += 1
            continue
        outputs = sum(size(o) // (4 if o in quantized_in else 1) for o in node.output)
        if node.op_type in GATHERS:  # reads the rows it gathers, not the whole table (an embedding)
            moved = sum(size(i) for i in node.input[1:]) + 2 * outputs
        else:
            moved = sum(size(i) for i in node.input) + outputs
        integer = node.op_type in INT8_OPS or any(i in dequantized for i in node.input[:2])
        compute = (flops or 0) / (int8_peak if integer else limits.gemm_gflops * 1e9) * 1e3
        memory = moved / (limits.bandwidth_gbs * 1e9) * 1e3
        if compute >= memory:
            compute_ms += compute
        else:
            memory_ms += memory
        by_op[node.op_type] = by_op.get(node.op_type, 0.0) + max(compute, memory)
        total_flops += flops or 0
        total_bytes += moved
    return Roofline(compute_ms + memory_ms, compute_ms, memory_ms, total_flops, total_bytes, limits, unresolved,
                    dict(sorted(by_op.items(), key=lambda kv: -kv[1])))


def _runtime_shapes(model, input_shapes, shapes: dict, dtypes: dict) -> tuple[dict, dict]:
    """Every value's shape and dtype as onnxruntime computes them for one input of ``input_shapes`` (floats
    random, integers 0, masks 1), with every node output exposed; the inferred ones where the run fails."""
    import onnx

    rng = np.random.default_rng(0)
    feed = {}
    for value in model.graph.input:
        shape = input_shapes.get(value.name) or [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        feed[value.name] = (rng.standard_normal(shape).astype(dtype) if np.dtype(dtype).kind == "f" else
                            np.full(shape, 1 if "mask" in value.name else 0, dtype=dtype))
    try:
        values = run_with_intermediates(model, feed)
    except Exception:  # a graph onnxruntime cannot run as written: keep what inference found
        return shapes, dtypes
    shapes, dtypes = dict(shapes), dict(dtypes)
    to_onnx = {np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t)): t for t in _DTYPE_BYTES}
    for name, value in values.items():
        arr = np.asarray(value)
        shapes[name] = list(arr.shape)
        dtypes[name] = to_onnx.get(arr.dtype, dtypes.get(name, 1))
    return shapes, dtypes


def _dtypes(graph) -> dict[str, int]:
    found = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]
             if v.type.HasField("tensor_type")}
    found.update({i.name: i.data_type for i in graph.initializer})
    return found


def _time_graph(graph, feed, threads: int, seconds: float):
    from onnx import helper

    from ..runtimes.ort import OrtRunner
    from .harness import measure

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with OrtRunner(model, intra_op_threads=threads) as runner:
        return measure(lambda: runner.run(feed), warmup_runs=2, runs=10_000, seconds=seconds, repeats=3)
