"""INT8 quantization within an accuracy budget, on real data: a small CNN trained on scikit-learn's digits (real
8x8 handwritten images), exported, quantized with calibration on the training split and judged on the test split."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import onnxgate
from onnxgate.cli.main import main
from onnxgate.errors import BadInputError, ExitCode
from onnxgate.examples.digits import accuracy, digits_split, trained_digits_cnn
from onnxgate.spec import ExportConfig, parse_dim, parse_input
from onnxgate.transform.quantize import quantize


def linear_model(path):
    """x[B,16] -> MatMul -> Relu -> MatMul -> y[B,10]: what dynamic quantization is for, built without torch."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")], "linear",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["B", 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["B", 10])],
        [numpy_helper.from_array(rng.standard_normal((16, 64)).astype(np.float32), "w1"),
         numpy_helper.from_array(rng.standard_normal((64, 10)).astype(np.float32), "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"onnxgate.inputs": '["x:Bx16:float32"]',
                                   "onnxgate.dims": '{"B": {"name": "B", "min": 1, "max": 64, "example": 4}}'})
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """(model path, train npz, test npz, splits): the trained digits CNN exported once for this module."""
    folder = tmp_path_factory.mktemp("digits")
    module, _ = trained_digits_cnn()
    path = folder / "digits.onnx"
    onnxgate.export(module, path, config=ExportConfig(inputs=(parse_input("x:Bx1x8x8:float32"),),
                                                      dims=(parse_dim("B=1..512@4"),)))
    x_train, y_train, x_test, y_test = digits_split()
    np.savez(folder / "train.npz", x=x_train, labels=y_train)
    np.savez(folder / "test.npz", x=x_test, labels=y_test)
    return path, folder / "train.npz", folder / "test.npz", (x_train, y_train, x_test, y_test)


def top1_of(path, x, y, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> float:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    return accuracy(ort.InferenceSession(str(path), so).run(None, {"x": x})[0], y)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_int8_keeps_top1_within_one_point_of_fp32(digits, tmp_path, method):
    path, _, _, (x_train, y_train, x_test, y_test) = digits
    calib = [{"x": x_train[i:i + 100]} for i in range(0, len(x_train), 100)]  # ragged last batch on purpose
    out = tmp_path / f"int8_{method}.onnx"
    report = quantize(path, out, calib=calib, eval_data=[{"x": x_test}], labels=y_test, method=method,
                      max_accuracy_drop=1.0)
    assert report.passed, report.summary()
    assert report.output == str(out) and report.record.status == "applied"
    # Judge the written file independently of the report: FP32 vs INT8 top-1 on the held-out split.
    fp32, int8 = top1_of(path, x_test, y_test), top1_of(out, x_test, y_test)
    assert fp32 > 0.9
    assert (fp32 - int8) * 100 <= 1.0
    assert report.fp32_accuracy == pytest.approx(fp32)
    model = onnx.load(str(out))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["onnxgate.quantization"])["method"] == method and "onnxgate.inputs" in meta
    assert report.record.size_after < report.record.size_before


def test_impossible_budget_reports_the_miss_and_the_nodes_tried(digits, tmp_path):
    path, train, test, _ = digits
    out = tmp_path / "never.onnx"
    report = quantize(path, out, calib=str(train), eval_data=str(test), max_error=1e-9)
    assert not report.passed and not out.exists() and report.output is None
    assert report.record.status == "rolled_back" and "not written" in report.record.message
    tried = [s.node for s in report.float_nodes]
    assert tried and len(report.steps) == len(tried) + 1
    assert [s.float_nodes for s in report.steps][-1] == tried
    assert all(s.added_error >= 0 and s.op_type for s in report.float_nodes)
    assert "misses the budget" in report.summary() and tried[0] in report.summary()
    assert all(step.miss for step in report.steps)


def test_cli_quantize_exit_codes(digits, tmp_path, capsys):
    path, train, test, _ = digits
    out = tmp_path / "cli_int8.onnx"
    assert main(["quantize", str(path), "-o", str(out), "--calib", str(train), "--eval", str(test), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    data = doc["result"]
    assert doc["ok"] and data["passed"] and data["budget"]["max_accuracy_drop"] == 1.0  # labels: default budget
    code = main(["quantize", str(path), "-o", str(tmp_path / "miss.onnx"), "--calib", str(train), "--eval", str(test),
                 "--max-error", "1e-9", "--json"])
    doc = json.loads(capsys.readouterr().out)
    data = doc["result"]
    assert code == ExitCode.ACCURACY_BUDGET == doc["error"]["exit_code"] == doc["exit_code"]
    assert not data["passed"] and data["float_nodes"] and "Nodes tried in float" in doc["error"]["message"]


def test_dynamic_quantization_of_a_matmul_model(tmp_path):
    path = linear_model(tmp_path / "linear.onnx")
    x = np.random.default_rng(3).standard_normal((32, 16)).astype(np.float32)
    report = quantize(path, tmp_path / "dyn.onnx", mode="dynamic", eval_data=[{"x": x}], max_error=2.0)
    assert report.passed, report.summary()
    ops = {n.op_type for n in onnx.load(report.output).graph.node}
    assert "MatMulInteger" in ops and "MatMul" not in ops


def test_random_calibration_warns_and_accuracy_needs_labels(tmp_path):
    path = linear_model(tmp_path / "linear.onnx")
    report = quantize(path, tmp_path / "rand.onnx", max_error=10.0)
    assert any("random inputs" in w and "unknown" in w for w in report.warnings)
    with pytest.raises(BadInputError, match="needs labels"):
        quantize(path, tmp_path / "nolabels.onnx", eval_data=[{"x": np.zeros((2, 16), np.float32)}],
                 max_accuracy_drop=1.0)


def test_data_sources_give_feeds_and_labels(tmp_path):
    """Calibration and evaluation data come from the same sources as verification data, labels included."""
    from PIL import Image

    from onnxgate.transform.data import load_data

    specs = [parse_input("x:Bx3x8x8:float32")]
    model = onnx.ModelProto()
    for label, colour in (("cat", 40), ("dog", 200)):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (10, 10), (colour, i, 0)).save(tmp_path / "images" / label / f"{i}.png")
    # class folders are matched to the model's class names by name, not numbered in sorted order
    images = load_data(tmp_path / "images", specs, model=model, preprocess="crop=8", class_names=("dog", "Cat"))
    assert images.samples == 6 and images.labels.tolist() == [1, 1, 1, 0, 0, 0]
    assert images.classes == {"cat": 1, "dog": 0}
    with pytest.raises(BadInputError, match="records no class labels"):
        load_data(tmp_path / "images", specs, model=model, preprocess="crop=8")
    unlabelled = load_data(tmp_path / "images", specs, model=model, preprocess="crop=8", labelled=False)
    assert unlabelled.samples == 6 and unlabelled.labels is None  # calibration data needs no labels

    (tmp_path / "feeds.py").write_text(
        "import numpy as np\n"
        "def batches():\n"
        "    for i in range(2):\n"
        "        yield {'x': np.zeros((4, 3, 8, 8), np.float32), 'y': np.full(4, i)}\n")
    fn = load_data(f"{tmp_path / 'feeds.py'}:batches", specs, model=model, labels_key="y")
    assert len(fn.feeds) == 2 and set(fn.feeds[0]) == {"x"} and fn.labels.tolist() == [0] * 4 + [1] * 4

    np.savez(tmp_path / "d.npz", x=np.zeros((5, 3, 8, 8), np.float32), labels=np.arange(5))
    npz = load_data(str(tmp_path / "d.npz"), specs, model=model)
    assert npz.samples == 5 and npz.labels.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(BadInputError, match="5 samples but 2 labels"):
        load_data(str(tmp_path / "d.npz"), specs, model=model, labels=[0, 1])
