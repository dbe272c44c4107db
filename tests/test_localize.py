"""Layer-wise localization on real exports of tiny models: broken ones name the culprit, healthy ones pass."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from onnxgate.verify.compare import Tolerance  # noqa: E402
from onnxgate.verify.localize import LocalizationReport, localize  # noqa: E402


def _export(model, example, path, *, dynamo=False, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings are the point of the broken models
        torch.onnx.export(model, (example,), str(path), dynamo=dynamo, input_names=["x"], **kwargs)
    return path


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


class ScaleByWidth(nn.Module):
    """``1 / sqrt(width)`` is a Python float: tracing bakes the export width into the graph."""

    def forward(self, x):
        return x * (1 / math.sqrt(x.shape[-1]))


class FlattenBatch(nn.Module):
    """``int(x.shape[0])`` freezes the export batch size into the Reshape."""

    def forward(self, x):
        return x.reshape(int(x.shape[0]), -1)


class Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.relu(self.bn1(self.conv1(x)))) + x


class Healthy(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layer1 = nn.Sequential(Block(4), Block(4))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.pool(self.layer1(self.stem(x))).flatten(1))


@pytest.fixture(scope="module")
def healthy():
    torch.manual_seed(0)
    model = Healthy().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a fused BatchNorm is visible in the values
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 2)
    return model


def test_names_the_module_with_a_frozen_width(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), ScaleByWidth(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 4)).eval()
    path = _export(model, torch.randn(2, 3, 8, 16), tmp_path / "odd.onnx", dynamic_axes={"x": {3: "W"}})
    at_export_width = localize(model, path, {"x": _rand(2, 3, 8, 16)})
    assert at_export_width.first_divergent is None and at_export_width.strategy == "torchscript-names"

    report = localize(model, path, {"x": _rand(2, 3, 8, 20)})
    first = report.first_divergent
    assert first is not None and first.module == "2" and first.module_type == "ScaleByWidth"
    assert first.max_abs_err > 0.01 and any("Mul" in n for n in first.onnx_nodes)
    assert [row.passed for row in report.layers[:2]] == [True, True]  # conv and relu still agree
    assert "first divergence at module '2' (ScaleByWidth): max abs err" in report.summary()


def test_names_dropout_exported_in_training_mode(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("body", nn.Linear(16, 32))
    model.add_module("act", nn.ReLU())
    model.add_module("drop", nn.Dropout(0.5))
    model.add_module("head", nn.Linear(32, 4))
    model.train()
    path = _export(model, torch.randn(4, 16), tmp_path / "drop.onnx", training=torch.onnx.TrainingMode.TRAINING)
    report = localize(model, path, {"x": _rand(4, 16)})  # PyTorch reference runs in eval mode: no dropout
    assert report.first_divergent is not None and report.first_divergent.module == "drop"
    assert report.first_divergent.module_type == "Dropout"
    assert report.first_divergent.onnx_nodes[-1].endswith("Dropout")
    assert [row.module for row in report.layers if row.passed] == ["body", "act"]


def test_names_the_module_that_fails_to_run_in_onnxruntime(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("features", nn.Conv2d(3, 3, 3, padding=1))
    model.add_module("flatten", FlattenBatch())
    model.add_module("head", nn.Linear(75, 4))
    model.eval()
    path = _export(model, torch.randn(2, 3, 5, 5), tmp_path / "batch.onnx", dynamic_axes={"x": {0: "B"}})
    report = localize(model, path, {"x": _rand(3, 3, 5, 5)})  # 3 * 75 elements do not reshape to [2, -1]
    first = report.first_divergent
    assert first is not None and first.module == "flatten" and first.module_type == "FlattenBatch"
    assert first.note.startswith("fails to run in onnxruntime:") and "Reshape" in first.note
    assert first.max_abs_err is None
    features, head = report.layers[0], report.layers[-1]
    assert features.module == "features" and features.passed and features.max_abs_err is not None
    assert head.module == "head" and not head.passed and head.note == "not run: onnxruntime fails at module 'flatten'"
    assert "fails to run in onnxruntime" in report.summary()


def test_frozen_batch_that_runs_is_a_shape_mismatch(tmp_path):
    model = nn.Sequential()
    model.add_module("flatten", FlattenBatch())
    model.eval()
    path = _export(model, torch.randn(2, 3, 4), tmp_path / "batch.onnx", dynamic_axes={"x": {0: "B"}})
    report = localize(model, path, {"x": _rand(4, 3, 4)})  # reshapes to [2, 24] instead of [4, 12]
    assert report.first_divergent.module == "flatten"
    assert "shape mismatch" in report.first_divergent.note


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_healthy_model_passes_with_either_exporter(healthy, tmp_path, dynamo):
    path = _export(healthy, torch.randn(2, 3, 8, 8), tmp_path / "healthy.onnx", dynamo=dynamo)
    report = localize(healthy, path, {"x": _rand(2, 3, 8, 8)})
    assert report.strategy == ("dynamo-metadata" if dynamo else "torchscript-names")
    assert report.first_divergent is None and all(row.passed for row in report.layers)
    n_conv_linear = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in healthy.modules())
    assert report.matched == len(report.layers) >= n_conv_linear
    matched = {row.module for row in report.layers}
    assert {"stem", "layer1", "layer1.0", "layer1.1.conv2", "pool", "fc"} <= matched
    # BatchNorm is folded into the Conv before it: TorchScript keeps the Conv's name, dynamo the BatchNorm's.
    fused_away = "layer1.0.conv1" if dynamo else "layer1.0.bn1"
    assert fused_away in report.unmatched_modules
    if not dynamo:
        conv1 = next(row for row in report.layers if row.module == "layer1.0.conv1")
        assert "fused 'layer1.0.bn1'" in conv1.note
    assert report.summary().startswith(f"all {report.matched} matched modules agree with PyTorch")
    data = report.to_dict()
    assert data["strategy"] == report.strategy and len(data["layers"]) == report.matched
    assert LocalizationReport(**{**data, "layers": [], "first_divergent": None}).matched == report.matched


def test_dynamo_optimizer_merging_across_modules_is_not_a_divergence(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(block=nn.Sequential(nn.Linear(6, 6), nn.ReLU()), act=nn.ReLU(),
                                      head=nn.Linear(6, 3))).eval()
    path = _export(model, torch.randn(2, 6), tmp_path / "relu.onnx", dynamo=True)
    report = localize(model, path, {"x": _rand(2, 6)})
    assert report.first_divergent is None and report.strategy == "dynamo-metadata"
    assert report.unmatched_modules == ["block.1"]  # relu(relu(x)) became one node, in the scope of 'act'
    block = next(row for row in report.layers if row.module == "block")
    assert block.passed and "merged its last op into a later node" in block.note


def test_reused_module_and_keyword_inputs(tmp_path):
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 6)
            self.act = nn.Tanh()

        def forward(self, x):
            return self.act(self.lin(self.act(self.lin(x))))

    torch.manual_seed(0)
    model = Shared().eval()
    path = _export(model, torch.randn(2, 6), tmp_path / "shared.onnx")
    report = localize(model, path, {"x": _rand(2, 6)}, input_names=["x"], tolerance=Tolerance(1e-4, 1e-5))
    assert report.first_divergent is None
    lin = next(row for row in report.layers if row.module == "lin")
    assert "called 2 times" in lin.note and len(lin.onnx_nodes) == 2


def test_external_data_and_no_scope_information(healthy, tmp_path):
    path = _export(healthy, torch.randn(1, 3, 8, 8), tmp_path / "healthy.onnx")
    proto = onnx.load(str(path))
    external = tmp_path / "ext" / "model.onnx"
    external.parent.mkdir()
    onnx.save_model(proto, str(external), save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert localize(healthy, external, {"x": _rand(1, 3, 8, 8)}).first_divergent is None

    proto = onnx.load(str(path))  # saving as external data moved the weights out of the first copy
    for i, node in enumerate(proto.graph.node):
        node.name = f"n{i}"
    anonymous = tmp_path / "anonymous.onnx"
    onnx.save_model(proto, str(anonymous))
    report = localize(healthy, anonymous, {"x": _rand(1, 3, 8, 8)})
    assert report.strategy == "none" and report.layers == [] and report.first_divergent is None
    assert "stem" in report.unmatched_modules and report.summary().startswith("no layer-wise localization")


def test_a_model_over_the_protobuf_limit_runs_from_a_scratch_file(healthy, tmp_path, monkeypatch):
    """A model too big for one protobuf reaches onnxruntime as a file with external data, in a scratch folder that
    is removed afterwards (simulated: serde's limits lowered below this tiny model's size)."""
    import tempfile

    from onnxgate import serde
    from onnxgate.fsutil import STAGING_PREFIX

    path = _export(healthy, torch.randn(1, 3, 8, 8), tmp_path / "healthy.onnx")
    expected = localize(healthy, path, {"x": _rand(1, 3, 8, 8)})
    monkeypatch.setattr(serde, "PROTOBUF_LIMIT", 100)
    monkeypatch.setattr(serde, "EXTERNAL_DATA_THRESHOLD", 100)
    saved = []
    real_save = serde.save
    monkeypatch.setattr(serde, "save", lambda model, out, **kw: saved.append(out) or real_save(model, out, **kw))
    report = localize(healthy, path, {"x": _rand(1, 3, 8, 8)})
    assert saved and report.first_divergent is None
    assert [(r.module, r.max_abs_err) for r in report.layers] == [(r.module, r.max_abs_err) for r in expected.layers]
    assert not any(Path(tempfile.gettempdir(), p.parent.name).exists() for p in saved)
    assert all(p.parent.name.startswith(STAGING_PREFIX) for p in saved)


def test_external_data_outside_the_model_folder_is_refused(healthy, tmp_path):
    from onnxgate.errors import UnsafeInputError

    path = _export(healthy, torch.randn(1, 3, 8, 8), tmp_path / "healthy.onnx")
    proto = onnx.load(str(path))
    inner = tmp_path / "inner"
    inner.mkdir()
    onnx.save_model(proto, str(inner / "model.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    (inner / "weights.bin").rename(tmp_path / "weights.bin")  # and point the model at it, one folder up
    crafted = onnx.load(str(inner / "model.onnx"), load_external_data=False)
    for tensor in crafted.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"
    (inner / "model.onnx").write_bytes(crafted.SerializeToString())
    with pytest.raises(UnsafeInputError, match="outside its folder"):
        localize(healthy, inner / "model.onnx", {"x": _rand(1, 3, 8, 8)})


def test_importable_without_torch():
    code = ("import sys; sys.modules['torch'] = None; "
            "from onnxgate.verify.localize import localize; assert sys.modules['torch'] is None")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
