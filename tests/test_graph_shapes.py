"""Honest graph shapes (issue 12, Build 2): the dims a graph declares are held against what onnxruntime produces at
other sizes; wrong static dims are rewritten to the dim's name (or cleared) and the file re-verified."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from onnxgate.export.graph_shapes import apply_fixes, audit_model, declared_shape, probe_runs
from onnxgate.spec import Dim, parse_input


def _lying_model() -> onnx.ModelProto:
    """y = relu(x) declared B x 7 x 4 although it is B x T x 4; z = concat(x, x) on axis 1 is 2T, declared 14;
    the intermediate 'r' is declared 2 x T x 4 although its batch is B."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"]),
             helper.make_node("Concat", ["x", "x"], ["z"], axis=1)]
    graph = helper.make_graph(
        nodes, "liar", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 7, 4]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", 14, 4])],
        value_info=[helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, "T", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


DIMS = {"B": Dim("B", 1, None, 2), "T": Dim("T", 2, 64, 7)}
SPECS = [parse_input("x:BxTx4:float32")]


def test_each_dynamic_dim_is_moved_alone_to_an_off_trace_size():
    runs = probe_runs(DIMS)
    assert runs[0] == {"B": 2, "T": 7}
    assert [set(k for k in r if r[k] != runs[0][k]) for r in runs[1:]] == [{"B"}, {"T"}]
    assert probe_runs(DIMS, skip=("T",)) == runs[:2]


def test_wrong_static_dims_are_rewritten_to_the_dim_they_follow_or_cleared():
    model = _lying_model()
    audit = audit_model(model, SPECS, DIMS)
    fixes = {(f.tensor, f.axis): f for f in audit.fixes}
    assert set(fixes) == {("y", 1), ("z", 1), ("r", 0)}
    assert fixes["y", 1].rewritten_to == "T" and fixes["y", 1].declared == 7
    assert fixes["z", 1].rewritten_to is None  # 2*T follows no single dim: cleared to unknown, which is true
    assert fixes["r", 0].rewritten_to == "B" and fixes["r", 0].kind == "value_info"
    assert audit.tensors_checked == 4 and len(audit.runs) == 3
    assert any("declares axis 1 as the static 7" in line and "rewritten to the symbolic T" in line
               for line in audit.summary())
    apply_fixes(model, audit.fixes)
    outputs = {v.name: declared_shape(v) for v in model.graph.output}
    assert outputs == {"y": ["B", "T", 4], "z": ["B", None, 4]}
    assert declared_shape(model.graph.value_info[0]) == ["B", "T", 4]
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [o.shape for o in session.get_outputs()] == [["B", "T", 4], ["B", None, 4]]
    assert audit_model(model, SPECS, DIMS).fixes == []  # the rewritten file audits clean


def test_true_static_dims_and_foreign_names_are_left_alone():
    model = _lying_model()
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "s77"  # a name that is not ours: not judged
    audit = audit_model(model, SPECS, {"B": DIMS["B"], "T": Dim("T", 7, 7, 7)})  # T cannot move: one size
    assert {(f.tensor, f.axis) for f in audit.fixes} == {("r", 0)}  # only B moved, and only 'r' lied about it


def test_lstm_encoder_output_carries_the_symbolic_time_dim(tmp_path):
    """The issue's case: the dynamo exporter declares the LSTM output B x 7 x 16 for a dynamic T."""
    import torch
    from torch import nn

    import onnxgate
    from onnxgate.spec import ExportConfig, parse_dim

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(8, 16, batch_first=True)

        def forward(self, x):
            return self.lstm(x)[0]

    torch.manual_seed(0)
    out = tmp_path / "lstm.onnx"
    config = ExportConfig(inputs=(parse_input("x:BxTx8:float32"),), dims=(parse_dim("T=2..32@7"),))
    result = onnxgate.export(Encoder().eval(), out, config=config)
    won = result.attempts[result.winner]
    (output,) = onnx.load(str(out)).graph.output
    assert declared_shape(output) == ["B", "T", 16]
    # Since the ladder captures with torch.export itself and names the dims, the exporter may declare T right at
    # once; when it did not, the audit rewrote it (and says so).
    if won.shapes.get("rewritten"):
        assert any(f["tensor"] == output.name for f in won.shapes["fixes"])
        assert any("rewritten to the symbolic T" in w for w in result.warnings)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.zeros((3, 13, 8), np.float32)})
    assert y.shape == (3, 13, 16) and session.get_outputs()[0].shape == ["B", "T", 16]
