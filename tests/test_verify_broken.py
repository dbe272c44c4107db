"""Deliberately broken exports (the way a hand-written torch.onnx.export goes wrong) are caught, and the
localizer names the responsible module."""

import math

import numpy as np
import torch
from torch import nn

import onnxgate
from onnxgate.cli.main import main
from onnxgate.errors import ExitCode
from onnxgate.spec import ExportConfig, parse_dim


class FlattenBatch(nn.Module):
    def forward(self, x):
        return x.reshape(int(x.shape[0]), -1)  # the batch becomes a constant under tracing


class ScaleByWidth(nn.Module):
    def forward(self, x):
        return x * (1.0 / math.sqrt(x.shape[-1]))  # a Python float: right only at the traced width


class SignBranch(nn.Module):
    def forward(self, x):
        if x.mean() > 0:  # data-dependent: tracing keeps the branch it took
            return x * 2
        return x - 1


def net(middle: nn.Module, width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), middle, nn.Linear(width, 3)).eval()


def hand_export(model, x, path, dynamic_axes, training=False):
    """What people copy from tutorials: the TorchScript exporter, traced once."""
    kwargs = {"training": torch.onnx.TrainingMode.TRAINING} if training else {}
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], output_names=["output"],
                      dynamic_axes=dynamic_axes, opset_version=17, do_constant_folding=False, **kwargs)
    return path


def test_frozen_batch_is_named_and_localized(tmp_path):
    model = nn.Sequential(nn.Linear(6, 6), FlattenBatch(), nn.Linear(6, 2)).eval()
    path = hand_export(model, torch.randn(2, 6), tmp_path / "m.onnx", {"x": {0: "B"}})
    result = onnxgate.verify(path, model)
    parity = result.parities[0]
    assert not result.passed and "B" in parity.frozen
    assert "traced at 2" in parity.frozen["B"]
    assert result.localization["first_divergent"]["module"] == "1"
    assert "FlattenBatch" in result.localization["summary"]


def test_scale_from_traced_width_is_named_and_localized(tmp_path):
    model = net(ScaleByWidth(), width=16)
    model[0] = nn.Identity()
    path = hand_export(model, torch.randn(2, 16), tmp_path / "m.onnx", {"x": {0: "B", 1: "W"}})
    # Linear(16, 3) fixes the width the model accepts... so probe only W within what the model can take:
    config = ExportConfig(dims=(parse_dim("W=16..16@16"),))
    ok = onnxgate.verify(path, model, config=config)
    assert ok.passed  # at the traced width the export is right
    wide = nn.Sequential(nn.Identity(), nn.ReLU(), ScaleByWidth()).eval()  # accepts any width
    path2 = hand_export(wide, torch.randn(2, 16), tmp_path / "w.onnx", {"x": {0: "B", 1: "W"}})
    result = onnxgate.verify(path2, wide, config=ExportConfig(dims=(parse_dim("W=4..64@16"),)))
    parity = result.parities[0]
    assert not result.passed and "W" in parity.frozen and "traced at 16" in parity.frozen["W"]
    assert result.localization["first_divergent"]["module"] == "2"
    assert "ScaleByWidth" in result.localization["summary"]


def test_dropout_exported_in_training_mode_is_localized(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    path = hand_export(model, torch.randn(2, 8), tmp_path / "m.onnx", {"x": {0: "B"}}, training=True)
    model.eval()
    result = onnxgate.verify(path, model)
    assert not result.passed
    assert result.localization["first_divergent"]["module"] == "1"
    assert "Dropout" in result.localization["summary"]


def test_branch_on_input_values_is_caught_and_localized(tmp_path):
    model = net(SignBranch())
    model[0] = nn.Identity()
    model[1] = nn.Identity()  # the branch sees the raw input, so its sign is under the test's control
    path = hand_export(model, torch.rand(2, 8) + 0.5, tmp_path / "m.onnx", {"x": {0: "B"}})
    negative = [{"x": -np.abs(np.random.default_rng(0).standard_normal((2, 8))).astype(np.float32) - 0.5}]
    result = onnxgate.verify(path, model, data=negative)
    parity = result.parities[0]
    assert not result.passed
    assert any(c.label == "data[0]" and not c.passed for c in parity.cases)
    assert result.localization["first_divergent"]["module"] == "2"
    assert "SignBranch" in result.localization["summary"]


def test_cli_exits_with_parity_code(tmp_path, capsys):
    model_file = tmp_path / "frozen.py"
    model_file.write_text(
        "import torch\nfrom torch import nn\n"
        "class Flat(nn.Module):\n    def forward(self, x):\n        return x.reshape(int(x.shape[0]), -1)\n"
        "def build():\n    torch.manual_seed(0)\n    return nn.Sequential(nn.Linear(6, 6), Flat()).eval()\n")
    import importlib.util

    spec = importlib.util.spec_from_file_location("frozen_model", model_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    path = hand_export(mod.build(), torch.randn(2, 6), tmp_path / "m.onnx", {"x": {0: "B"}})
    code = main(["verify", str(path), "--against", f"{model_file}:build"])
    err = capsys.readouterr().err
    assert code == ExitCode.PARITY_FAILED
    assert "dim B is frozen" in err and "localizer" in err
