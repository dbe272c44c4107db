"""Verified transforms: every pass is re-verified, a pass that breaks parity is rolled back, records say what
changed. Models are built with onnx.helper (no torch), so these tests take seconds."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from helpers import MLP_DIMS, MLP_INPUTS, mlp

from onnxgate.cli.main import main
from onnxgate.errors import ExitCode, OutputExistsError
from onnxgate.transform import PassResult, Verifier, optimize, run_passes, to_fp16
from onnxgate.transform.passes import graph_changed
from onnxgate.transform.simplify import Simplify

INPUTS, DIMS = MLP_INPUTS, MLP_DIMS


@pytest.fixture
def mlp_path(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp(), str(path))
    return path


def verifier() -> Verifier:
    rng = np.random.default_rng(1)
    return Verifier([{"x": rng.standard_normal((4, 16)).astype(np.float32)},
                     {"x": rng.standard_normal((7, 16)).astype(np.float32)}])


def flip_sign_of_w2(model: onnx.ModelProto) -> PassResult:
    """A faulty rewrite: claims to be an optimization, negates a weight."""
    for i, init in enumerate(model.graph.initializer):
        if init.name == "w2":
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), "w2"))
    return PassResult(model, True, "flip-sign", {"rewrote": "w2"})


flip_sign_of_w2.name = "flip-sign"


def crash(model: onnx.ModelProto) -> PassResult:
    raise RuntimeError("the tool cannot handle this graph")


crash.name = "crash"


def no_op(model: onnx.ModelProto) -> PassResult:
    return PassResult(model, False, "no-op")


no_op.name = "no-op"


def test_a_pass_that_breaks_parity_is_rolled_back():
    model = mlp()
    original = model.SerializeToString()
    report = run_passes(model, [flip_sign_of_w2, crash, no_op, Simplify("onnxslim")], verifier=verifier())
    flipped, crashed, unchanged, simplified = report.records
    assert flipped.status == "rolled_back"
    assert "broke parity" in flipped.message and "y on feed 0:" in flipped.message
    assert flipped.error_vs_previous > 1.0 and flipped.error_vs_float is None
    assert crashed.status == "failed" and "the tool cannot handle this graph" in crashed.message
    assert unchanged.status == "unchanged"
    # The passes after the rollback ran on the unbroken model: onnxslim removed the Identity, exactly.
    assert simplified.status == "applied" and simplified.nodes_before == 6 and simplified.nodes_after == 5
    assert simplified.error_vs_previous == 0.0 and report.error_vs_float == 0.0
    assert model.SerializeToString() == original  # the input is never modified
    assert report.applied == ["simplify:onnxslim"]


def test_rolled_back_run_ends_with_the_pre_transform_model():
    model = mlp()
    report = run_passes(model, [flip_sign_of_w2], verifier=verifier())
    assert report.records[0].status == "rolled_back"
    assert not graph_changed(model, report.model)
    assert report.model.SerializeToString() == model.SerializeToString()
    assert report.to_dict()["transforms"][0]["status"] == "rolled_back"


def test_optimize_writes_a_verified_model_with_records_and_metadata(mlp_path, tmp_path):
    out = tmp_path / "opt.onnx"
    report = optimize(mlp_path, out, level="extended")
    assert report.passed and report.output == str(out) and out.is_file()
    names = [r.name for r in report.records]
    assert names == ["fold-constants", "simplify:onnxslim", "ort-optimize:extended"]
    ort_record = report.records[-1]
    assert ort_record.details["ort_only"] is True and "com.microsoft" in ort_record.details["custom_domains"]
    for r in report.records:
        assert r.status in ("applied", "unchanged") and r.seconds >= 0
        assert set(r.to_dict()) >= {"nodes_before", "nodes_after", "size_before", "size_after", "error_vs_float"}
    assert report.nodes_after < report.nodes_before and report.error_vs_float < 1e-4
    written = onnx.load(str(out))
    meta = {p.key: p.value for p in written.metadata_props}
    assert meta["onnxgate.inputs"] == INPUTS and "ort-optimize:extended" in json.loads(meta["onnxgate.transforms"])
    with pytest.raises(OutputExistsError):
        optimize(mlp_path, out)


def test_onnxsim_is_selectable(mlp_path, tmp_path):
    pytest.importorskip("onnxsim")
    report = optimize(mlp_path, tmp_path / "sim.onnx", simplifier="onnxsim", level=None, fold=False)
    assert [r.name for r in report.records] == ["simplify:onnxsim"]
    assert report.records[0].status == "applied" and report.nodes_after == 5


def test_fp16_keeps_float32_io_and_is_judged_with_fp16_tolerances(mlp_path, tmp_path):
    report = to_fp16(mlp_path, tmp_path / "fp16.onnx")
    record = report.records[0]
    assert report.passed and record.status == "applied"
    assert 0 < record.error_vs_float < 0.5  # float16 rounding, judged against the logits' scale
    assert record.size_after < record.size_before
    model = onnx.load(report.output)
    assert sum(len(i.raw_data) for i in model.graph.initializer) == sum(len(i.raw_data) for i in mlp().graph.initializer) // 2
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)


def test_fp16_io_retypes_the_input_spec(mlp_path, tmp_path):
    report = to_fp16(mlp_path, tmp_path / "fp16io.onnx", keep_io_types=False)
    model = onnx.load(report.output)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["onnxgate.inputs"]) == [{"name": "x", "shape": ["B", 16], "dtype": "float16",
                                                    "value_range": None}]


def test_cli_optimize_json(mlp_path, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    code = main(["optimize", str(mlp_path), "-o", str(out), "--fp16", "--json"])
    doc = json.loads(capsys.readouterr().out)
    data = doc["result"]
    assert code == 0 and doc["ok"] and data["passed"] and out.is_file()
    assert [t["name"] for t in data["transforms"]] == ["fold-constants", "simplify:onnxslim", "ort-optimize:basic", "fp16"]
    assert main(["optimize", str(mlp_path), "-o", str(out)]) == ExitCode.BAD_INPUT  # exists, no --force
    assert main(["optimize", str(mlp_path), "-o", str(tmp_path / "x.onnx"), "--level", "turbo"]) == ExitCode.BAD_INPUT


def test_cli_fp16_that_breaks_parity_exits_with_the_parity_code(tmp_path, capsys):
    """x * 1e5 * 1e-5: float16 cannot hold 1e5 (its largest finite value is 65504), so FP16 must be refused."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "big"], ["h"]), helper.make_node("Mul", ["h", "small"], ["y"])], "overflow",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["B", 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["B", 16])],
        [numpy_helper.from_array(np.array(1e5, np.float32), "big"),
         numpy_helper.from_array(np.array(1e-5, np.float32), "small")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"onnxgate.inputs": INPUTS, "onnxgate.dims": DIMS})
    path, out = tmp_path / "overflow.onnx", tmp_path / "fp16.onnx"
    onnx.save(model, str(path))
    code = main(["optimize", str(path), "-o", str(out), "--fp16", "--level", "none", "--simplifier", "none",
                 "--no-fold", "--json"])
    doc = json.loads(capsys.readouterr().out)
    data = doc["result"]
    assert code == ExitCode.PARITY_FAILED == doc["error"]["exit_code"] and not out.exists()
    assert data["transforms"][0]["status"] == "rolled_back" and "y on feed 0:" in doc["error"]["message"]


def test_ort_optimize_layout_level_and_a_candidate_onnxruntime_cannot_load():
    from onnxgate.transform.ort_optimize import OrtOptimize

    result = OrtOptimize("layout")(mlp())  # offline optimization through runtimes.ort.optimize_offline
    assert result.name == "ort-optimize:layout" and result.details["level"] == "layout" and result.model.graph.node
    check = verifier()
    broken = mlp()
    broken.graph.node[0].op_type = "NoSuchOp"
    verdict = check.judge(broken, check.run(mlp()))
    assert not verdict.passed and "cannot load the transformed model" in verdict.reason
