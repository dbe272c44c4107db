"""Issue 24: ``serde.load`` checks the external-data location of every tensor onnx's own loader would read, not
only the main graph's initializers. Each model here hides one tensor whose data lives at
``../../../../etc/hostname`` in another place a tensor can sit (an ``If`` branch, a ``Constant`` node's attribute, a
sparse initializer, a local function, a ``Loop`` body inside an ``If`` branch); each must be refused (exit 7) before
any data is read. A subgraph tensor whose data lies inside the model's folder still loads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxgate import serde
from onnxgate.errors import ExitCode, UnsafeInputError

ESCAPE = "../../../../etc/hostname"


def external(name: str, location: str = ESCAPE, dims=(1,)) -> TensorProto:
    """A float tensor whose data onnx would read from ``location`` (nothing is written there)."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(dims))
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    tensor.external_data.add(key="length", value=str(4 * int(np.prod(dims))))
    return tensor


def branch(name: str, tensor: TensorProto | None = None, nodes=()) -> onnx.GraphProto:
    """A one-output subgraph: y = Identity(w), with ``w`` an initializer (or produced by ``nodes``)."""
    body = list(nodes) or [helper.make_node("Identity", ["w"], [f"{name}_y"])]
    return helper.make_graph(body, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [1])],
                             [tensor] if tensor is not None else [])


def if_model(then_tensor: TensorProto) -> onnx.ModelProto:
    safe = numpy_helper.from_array(np.zeros(1, np.float32), "w")
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch("then", then_tensor),
                            else_branch=branch("else", safe))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def constant_model() -> onnx.ModelProto:
    node = helper.make_node("Constant", [], ["y"], value=external("k"))
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def sparse_model() -> onnx.ModelProto:
    indices = numpy_helper.from_array(np.array([0], np.int64), "s_indices")
    sparse = helper.make_sparse_tensor(external("s"), indices, [4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    graph.sparse_initializer.append(sparse)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def function_model() -> onnx.ModelProto:
    inner = helper.make_node("Constant", [], ["k"], value=external("fk"))
    function = helper.make_function("local", "F", [], ["k"], [inner], [helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("F", [], ["y"], domain="local")], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                             functions=[function])


def nested_model() -> onnx.ModelProto:
    """The escaping tensor two levels down: a Constant in a Loop body inside an If branch."""
    loop_body = helper.make_graph(
        [helper.make_node("Constant", [], ["deep"], value=external("deep")),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("deep", TensorProto.FLOAT, [1])])
    loop = helper.make_node("Loop", ["n", "c"], ["then_y"], body=loop_body)
    then = helper.make_graph([helper.make_node("Constant", [], ["n"], value=numpy_helper.from_array(
        np.array(1, np.int64))), loop], "then", [], [helper.make_tensor_value_info("then_y", TensorProto.FLOAT, None)])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then,
                            else_branch=branch("else", numpy_helper.from_array(np.zeros(1, np.float32), "w")))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


CASES = {
    "If branch initializer": lambda: if_model(external("w")),
    "Constant node attribute": constant_model,
    "sparse initializer": sparse_model,
    "local function node": function_model,
    "Loop body inside an If branch": nested_model,
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_escaping_location_anywhere_in_the_model_is_refused(tmp_path, case):
    folder = tmp_path / "deep" / "er" / "model"
    folder.mkdir(parents=True)
    path = folder / "m.onnx"
    path.write_bytes(CASES[case]().SerializeToString())
    assert ESCAPE in serde.external_data_locations(onnx.load(str(path), load_external_data=False))
    with pytest.raises(UnsafeInputError) as info:
        serde.load(path)
    assert info.value.exit_code == ExitCode.UNSAFE_INPUT
    assert ESCAPE in info.value.message and "outside its folder" in info.value.message
    with pytest.raises(UnsafeInputError):  # also when the caller does not ask for the data
        serde.load(path, load_external_data=False)


def test_a_subgraph_tensor_with_its_data_inside_the_folder_loads(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.array([2.5], np.float32).tobytes())
    path = tmp_path / "m.onnx"
    path.write_bytes(if_model(external("w", "w.bin")).SerializeToString())
    model = serde.load(path)
    then = next(a.g for a in model.graph.node[0].attribute if a.name == "then_branch")
    (tensor,) = then.initializer
    assert numpy_helper.to_array(tensor).tolist() == [2.5]
