"""One judge: the same failure gives the same exit code and the same JSON envelope from every door
(inspect, verify, export, run, and the Python API through outcome.judge)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

import onnxgate
from onnxgate.cli.main import main
from onnxgate.errors import ExitCode, OnnxgateError
from onnxgate.outcome import judge

ENVELOPE_KEYS = {"envelope", "onnxgate_version", "command", "ok", "exit_code", "reason", "hint", "result", "error"}

FROZEN = ("import torch\nfrom torch import nn\n"
          "class Flat(nn.Module):\n    def forward(self, x):\n        return x.reshape(int(x.shape[0]), -1)\n"
          "def build():\n    torch.manual_seed(0)\n    return nn.Sequential(nn.Linear(6, 6), Flat()).eval()\n")


def tiny(path: Path, *, valid: bool = True, opset: int = 17) -> Path:
    """y = x * w; invalid: the Mul reads a value nothing produces (onnx.checker refuses it)."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [6], [1.0] * 6)
    node = helper.make_node("Mul", ["x", "w" if valid else "nowhere"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 6])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    helper.set_model_props(model, {"onnxgate.inputs": json.dumps([{"name": "x", "shape": ["B", 6],
                                                                    "dtype": "float32", "value_range": None}])})
    onnx.save(model, path)
    return path


def cli(capsys, *argv) -> tuple[int, dict]:
    code = main([str(a) for a in argv] + ["--json"])
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == ENVELOPE_KEYS
    assert doc["exit_code"] == code and doc["ok"] is (code == 0)
    assert (doc["error"] is None) is doc["ok"]
    return code, doc


def api(call) -> int:
    """The Python API's verdict: the judge on the result, or the error it raised at the edge."""
    try:
        return judge(call()).exit_code
    except OnnxgateError as exc:
        return judge(exc).exit_code


@pytest.fixture
def frozen_ref(tmp_path) -> str:
    (tmp_path / "frozen.py").write_text(FROZEN)
    return f"{tmp_path / 'frozen.py'}:build"


def test_checker_failure_is_bad_input_everywhere(capsys, tmp_path, frozen_ref):
    bad = tiny(tmp_path / "bad.onnx", valid=False)
    codes = {
        "inspect": cli(capsys, "inspect", bad)[0],
        "verify": cli(capsys, "verify", bad, "--against", frozen_ref)[0],
        "api inspect": api(lambda: onnxgate.inspect(bad)),
        "api verify": api(lambda: onnxgate.verify(bad, frozen_ref)),
    }
    assert set(codes.values()) == {ExitCode.BAD_INPUT}, codes


def test_parity_failure_is_4_everywhere(capsys, tmp_path, frozen_ref):
    from onnxgate.spec import ExportConfig, parse_dim, parse_input

    # --no-repair: TorchDynamo's strict capture (an extra rung) would keep this int(x.shape[0]) symbolic
    _, exported = cli(capsys, "export", frozen_ref, "-o", tmp_path / "e.onnx", "--input", "x:Bx6:float32",
                      "--dim", "B=1..8@2", "--no-repair")
    _, ran = cli(capsys, "run", frozen_ref, "-o", tmp_path / "run", "--input", "x:Bx6:float32", "--dim", "B=1..8@2",
                 "--bench", "none", "--no-repair")
    rejected = next(tmp_path.glob("e.rejected.onnx"), None) or next((tmp_path / "run").glob("*.rejected.onnx"))
    _, verified = cli(capsys, "verify", rejected, "--against", frozen_ref, "--input", "x:Bx6:float32",
                      "--dim", "B=1..8@2")
    config = ExportConfig(inputs=(parse_input("x:Bx6:float32"),), dims=(parse_dim("B=1..8@2"),), repair=False)
    codes = {"export": exported["exit_code"], "run": ran["exit_code"], "verify": verified["exit_code"],
             "api export": api(lambda: onnxgate.export(frozen_ref, tmp_path / "api.onnx", config=config)),
             "api verify": api(lambda: onnxgate.verify(rejected, frozen_ref, config=config))}
    assert set(codes.values()) == {ExitCode.PARITY_FAILED}, codes
    assert {exported["error"]["type"], ran["error"]["type"], verified["error"]["type"]} == {"ParityError"}


def test_incompatible_target_is_6_everywhere(capsys, tmp_path, frozen_ref):
    model = tiny(tmp_path / "m21.onnx", opset=21)
    codes = {
        "inspect": cli(capsys, "inspect", model, "--target", "onnxruntime==1.16")[0],
        "verify": cli(capsys, "verify", model, "--against", frozen_ref, "--target", "onnxruntime==1.16")[0],
        "api verify": api(lambda: onnxgate.verify(model, frozen_ref, targets=("onnxruntime==1.16",))),
    }
    assert set(codes.values()) == {ExitCode.RUNTIME_INCOMPATIBLE}, codes


def test_bad_input_is_2_everywhere(capsys, tmp_path, frozen_ref):
    model = tiny(tmp_path / "m.onnx")
    bad_spec = "x:1x6xx:float32"
    codes = {
        "inspect": cli(capsys, "inspect", tmp_path / "missing.onnx")[0],
        "verify": cli(capsys, "verify", model, "--against", frozen_ref, "--input", bad_spec)[0],
        "export": cli(capsys, "export", frozen_ref, "-o", tmp_path / "x.onnx", "--input", bad_spec)[0],
        "run": cli(capsys, "run", frozen_ref, "-o", tmp_path / "r", "--input", bad_spec)[0],
        "api verify": api(lambda: onnxgate.verify(model, frozen_ref, runtimes=("tensorflow",))),
    }
    assert set(codes.values()) == {ExitCode.BAD_INPUT}, codes
