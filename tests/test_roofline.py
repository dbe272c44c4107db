"""The roofline: measured machine limits (float32 and int8 GEMM peaks, STREAM-like bandwidth) and a model's limit
as the sum of each node's compute or memory bound, checked exactly on graphs built here."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxgate.bench.roofline import MachineLimits, int8_gemm_peak_gops, memory_bandwidth_gbs, roofline

LIMITS = MachineLimits(threads=1, gemm_gflops=100.0, bandwidth_gbs=10.0, int8_gops=400.0)
M, K, N = 64, 256, 128


def _save(tmp_path, nodes, inits, name="m.onnx", out_shape=(M, N)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", out_shape[1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _weight(name, *shape, dtype=np.float32):
    return numpy_helper.from_array(np.ones(shape, dtype=dtype), name)


def test_each_node_is_bound_by_compute_or_memory(tmp_path):
    path = _save(tmp_path, [helper.make_node("MatMul", ["x", "w"], ["h"]),
                            helper.make_node("Reshape", ["h", "shape"], ["r"]),
                            helper.make_node("Relu", ["r"], ["y"])],
                 [_weight("w", K, N), numpy_helper.from_array(np.array([M, N], np.int64), "shape")])
    line = roofline(path, {"x": (M, K)}, LIMITS)
    flops = 2 * M * K * N
    matmul_bytes = (M * K + K * N + M * N) * 4
    relu_bytes = 2 * M * N * 4
    matmul_ms = max(flops / 100e9, matmul_bytes / 10e9) * 1e3
    relu_ms = relu_bytes / 10e9 * 1e3  # no FLOPs counted: memory-bound
    assert line.flops == flops and line.bytes == matmul_bytes + relu_bytes  # Reshape moves nothing
    assert math.isclose(line.limit_ms, matmul_ms + relu_ms, rel_tol=1e-9)
    assert math.isclose(line.memory_ms, relu_ms + (matmul_ms if matmul_bytes / 10e9 > flops / 100e9 else 0))
    assert set(line.by_op) == {"MatMul", "Relu"} and line.unresolved == 0
    assert math.isclose(line.fraction(2 * line.limit_ms), 0.5) and line.fraction(None) is None
    assert line.bound in ("compute", "memory")


def test_a_dequantized_weight_runs_at_the_int8_peak_and_moves_one_byte(tmp_path):
    nodes = [helper.make_node("DequantizeLinear", ["wq", "scale", "zero"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    inits = [_weight("wq", K, N, dtype=np.int8), numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
             numpy_helper.from_array(np.array(0, np.int8), "zero")]
    line = roofline(_save(tmp_path, nodes, inits), {"x": (M, K)}, LIMITS)
    flops, moved = 2 * M * K * N, (M * K + M * N) * 4 + K * N  # the weight at one byte per element
    assert line.bytes == moved
    assert math.isclose(line.limit_ms, max(flops / 400e9, moved / 10e9) * 1e3, rel_tol=1e-9)


def test_a_heavy_node_of_unknown_shape_is_counted_as_unresolved(tmp_path):
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [])
    graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, None))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "u.onnx"))
    line = roofline(tmp_path / "u.onnx", {}, LIMITS)
    assert line.unresolved == 1 and line.limit_ms == 0.0


def test_machine_limits_are_measured():
    bandwidth = memory_bandwidth_gbs(1, megabytes=16, seconds=0.3)
    int8 = int8_gemm_peak_gops(1, sizes=(128,), seconds=0.2)
    assert 0.1 < bandwidth < 5000 and 0.1 < int8 < 1e6
    with pytest.raises(TypeError):
        MachineLimits(1, 1.0)  # a limit without its bandwidth is not a limit


def test_a_gather_reads_the_rows_it_gathers_and_contrib_ops_get_runtime_shapes(tmp_path):
    """An embedding lookup moves its indices and rows, not its table; a graph ONNX shape inference cannot see
    through (onnxruntime's FusedMatMul) still gets its heavy node counted, from the shapes onnxruntime computes."""
    table = numpy_helper.from_array(np.ones((1000, 64), np.float32), "table")
    ids = numpy_helper.from_array(np.arange(8, dtype=np.int64).reshape(1, 8), "ids")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("FusedMatMul", ["x", "w"], ["h"], domain="com.microsoft", alpha=1.0),
             helper.make_node("Relu", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
                              [table, ids, _weight("w", K, N)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "g.onnx"))
    line = roofline(tmp_path / "g.onnx", {"x": (M, K)}, LIMITS)
    assert line.unresolved == 0 and line.flops == 2 * M * K * N
    gather_bytes = 8 * 8 + 2 * 8 * 64 * 4  # int64 indices, rows read and written
    assert math.isclose(line.by_op["Gather"], gather_bytes / 10e9 * 1e3, rel_tol=1e-9)
