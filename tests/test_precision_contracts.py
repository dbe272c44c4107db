"""Reduced-precision files carry their verification contract, and what reads it judges them as what they are.

An FP16 or INT8 file judged with FP32 tolerances fails however good it is; judged with none, a broken one passes. The
transform that wrote the file knows what it proved: `verify/contract.py` reads that back. Models are built with
onnx.helper (no torch), so these tests take seconds."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from helpers import mlp

from onnxgate.errors import BadInputError
from onnxgate.transform import quantize, to_fp16
from onnxgate.verify.compare import compare_outputs
from onnxgate.verify.contract import (CONTRACT_KEY, INT8_MARGIN, Contract, PrecisionTolerance, contract_of,
                                      runtime_tolerance)


@pytest.fixture()
def mlp_path(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp(), str(path))
    return path


def meta_of(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def run(path, x):
    from onnxgate.runtimes.ort import OrtRunner

    with OrtRunner(str(path), opt_level="disable") as runner:
        return runner.run({"x": x})


def test_an_fp32_file_has_no_contract_and_a_malformed_one_is_refused():
    assert contract_of({"onnxgate.source": "torchvision:resnet18"}) is None
    for bad in ("not json", json.dumps({"precision": "int8"}), json.dumps(
            {"precision": "int4", "tolerance": {"rtol": 0, "atol": 0, "scale_fraction": 0}}),
            json.dumps({"precision": "int8", "tolerance": {"rtol": -1, "atol": 0, "scale_fraction": 0}})):
        with pytest.raises(BadInputError, match=CONTRACT_KEY):
            contract_of({CONTRACT_KEY: bad}, model="m.onnx")


def test_runtime_precisions_get_their_own_stated_tolerance():
    assert runtime_tolerance("f32") is None and runtime_tolerance("dynamic") is None  # FP32: verify's default
    bf16 = runtime_tolerance("bf16")
    assert bf16.for_scale(20.0).atol == pytest.approx(0.2) and bf16.for_scale(None).atol == pytest.approx(1e-3)
    assert str(bf16) == "rtol=1e-2 atol=1e-3 or 1e-2 x max|ref|"
    with pytest.raises(BadInputError, match="no tolerance"):
        runtime_tolerance("int4")


def test_fp16_file_carries_the_tolerance_it_was_verified_with(mlp_path, tmp_path):
    report = to_fp16(mlp_path, tmp_path / "fp16.onnx")
    assert report.passed
    contract = contract_of(meta_of(tmp_path / "fp16.onnx"))
    assert contract.precision == "fp16" and contract.measured["on"].startswith("random")
    assert contract.tolerance == PrecisionTolerance(1e-2, 1e-3, 1e-2)
    assert set(contract.tolerances()) == {"y"} and contract.output_scales["y"] > 0
    # verify's comparison with the contract's tolerances: the FP16 file passes where FP32 tolerances fail it
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    ref, got = run(mlp_path, x), run(tmp_path / "fp16.onnx", x)
    assert not compare_outputs(ref, got)[0].passed
    assert compare_outputs(ref, got, tolerances=contract.tolerances(), default=contract.default)[0].passed
    assert "not float32 tolerances" in contract.describe()


def test_int8_file_carries_the_error_its_budget_held_at(mlp_path, tmp_path):
    x = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    report = quantize(mlp_path, tmp_path / "int8.onnx", calib=[{"x": x}], eval_data=[{"x": x}], max_error=50.0)
    assert report.passed, report.summary()
    contract = contract_of(meta_of(tmp_path / "int8.onnx"))
    worst = max(e.scaled_err for e in report.final.evaluations)
    assert contract.precision == "int8" and contract.budget == {"max_accuracy_drop": None, "max_error": 50.0}
    assert contract.tolerance.scale_fraction == pytest.approx(INT8_MARGIN * worst)
    assert contract.measured["samples"] == 64 and "64 samples" in contract.measured["on"]
    ref, got = run(mlp_path, x), run(tmp_path / "int8.onnx", x)
    assert not compare_outputs(ref, got)[0].passed  # FP32 tolerances fail every honest INT8 file
    assert compare_outputs(ref, got, tolerances=contract.tolerances(), default=contract.default)[0].passed
    # ... and a file that computes something else still fails the contract
    assert not compare_outputs(ref, {"y": got["y"] * 1.5}, tolerances=contract.tolerances())[0].passed


def test_contract_round_trips_through_metadata():
    contract = Contract("int8", PrecisionTolerance(1e-3, 1e-4, 0.05), {"logits": 20.0},
                        {"max_accuracy_drop": 1.0, "max_error": None}, {"on": "photos (120 samples)"})
    again = contract_of(contract.metadata())
    assert again == contract
    assert again.tolerances()["logits"].atol == pytest.approx(1.0)


def test_verify_judges_an_fp16_file_by_its_contract(tmp_path):
    """`verify model.fp16.onnx` against PyTorch uses the tolerance the conversion was verified with (and says so);
    forcing FP32 tolerances fails the same file."""
    torch = pytest.importorskip("torch")
    import onnxgate
    from onnxgate.spec import ExportConfig, parse_dim, parse_input

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval()
    config = ExportConfig(inputs=(parse_input("x:Bx16:float32"),), dims=(parse_dim("B=1..8@2"),))
    onnxgate.export(model, tmp_path / "m.onnx", config=config)
    assert to_fp16(tmp_path / "m.onnx", tmp_path / "m.fp16.onnx").passed
    judged = onnxgate.verify(tmp_path / "m.fp16.onnx", model, localize=False)
    assert judged.passed, [p.summary() for p in judged.parities]
    assert any("not float32 tolerances" in w for w in judged.warnings)
    strict = onnxgate.verify(tmp_path / "m.fp16.onnx", model, localize=False, rtol=1e-5, atol=1e-7)
    assert not strict.passed
