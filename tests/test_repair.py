"""The repair rung and isolated attempts (issue 13): catalogued replacements that equal what they replace, export-
hostile torchvision models that now export with dynamic sizes, transformers through both exporters, and attempts
that crash or eat memory becoming attempt outcomes while onnxgate lives on."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

import onnxgate
from onnxgate.cli.main import main
from onnxgate.errors import ExitCode, ExportError
from onnxgate.export.repair.modules import adaptive_avg_pool2d, adaptive_max_pool2d
from onnxgate.spec import ExportConfig, parse_dim, parse_input

SIZES = [1, 2, 3, 5, 6, 7, 8, 13, 14, 17, 31, 32, 49, 64]
OUTPUTS = [(1, 1), (2, 3), (6, 6), (7, 7), (5, None), 4]


def cfg(*inputs, dims=(), **kw):
    return ExportConfig(inputs=tuple(parse_input(s) for s in inputs), dims=tuple(parse_dim(d) for d in dims), **kw)


@pytest.mark.parametrize("output_size", OUTPUTS, ids=str)
def test_shape_generic_pooling_equals_torch_on_many_sizes(output_size):
    """Divisible and non-divisible sizes, fewer input positions than bins, non-square, one side None."""
    g = torch.Generator().manual_seed(0)
    for height in SIZES:
        for width in (1, 7, 10, 33):
            x = torch.randn(2, 3, height, width, generator=g)
            torch.testing.assert_close(adaptive_avg_pool2d(x, output_size), F.adaptive_avg_pool2d(x, output_size),
                                       rtol=1e-5, atol=1e-6)
            assert torch.equal(adaptive_max_pool2d(x, output_size), F.adaptive_max_pool2d(x, output_size))


def _export_dynamic(ref, tmp_path, sizes="192..256@224"):
    """Traced at 224, the ImageNet size, where the pooling is an identity (6x6 -> 6x6, 7x7 -> 7x7) and the dynamo
    exporter specializes it to that size: the plain rungs fail there. (Traced at 96 the dynamo exporter keeps VGG
    dynamic by itself; AlexNet then misses parity at 159/160 — the verified domain says so.)"""
    config = cfg("x:Bx3xHxW:float32", dims=["B=1..2", f"H={sizes}", f"W={sizes}"])
    return onnxgate.export(ref, tmp_path / "m.onnx", config=config)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["alexnet", "vgg11", "vgg16_bn"])
def test_adaptive_pooling_models_export_with_dynamic_height_and_width(name, tmp_path):
    result = _export_dynamic(f"torchvision:{name}", tmp_path)
    won = result.attempts[result.winner]
    assert "adaptive_pool" in won.repairs and "avgpool" in won.repairs["adaptive_pool"]
    assert not won.frozen_dims and won.parity.passed
    probed = {dim: sorted({c.sizes[dim] for c in won.parity.cases if c.sizes and dim in c.sizes}) for dim in "BHW"}
    assert len(probed["H"]) >= 3 and len(probed["W"]) >= 3 and min(probed["H"]) == 192 and max(probed["H"]) == 256
    plain = [a for a in result.attempts[:result.winner] if not a.repairs and not a.variant]
    assert plain and all(a.outcome != "ok" for a in plain)  # the repair ran only after the plain rungs failed
    from onnxgate import serde

    props = {p.key: p.value for p in serde.load(tmp_path / "m.onnx").metadata_props}
    assert json.loads(props["onnxgate.repairs"]) == won.repairs


class _Pooled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.pool = torch.nn.AdaptiveAvgPool2d((3, 3))
        self.fc = torch.nn.Linear(36, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


def test_small_pooled_model_is_repaired_and_verified(tmp_path):
    config = cfg("x:Bx3xHxW:float32", dims=["B=1..2", "H=16..40@24", "W=16..40@24"])
    result = onnxgate.export(_Pooled(), tmp_path / "m.onnx", config=config)
    won = result.attempts[result.winner]
    assert won.repairs == {"adaptive_pool": ["pool"]} and won.parity.passed and not won.frozen_dims


@pytest.mark.parametrize("factory", ["bert", "gpt2"])
@pytest.mark.parametrize("strategy", ["dynamo", "torchscript"])
def test_transformers_export_through_both_exporters(factory, strategy, tmp_path):
    config = cfg("input_ids:BxS:int64:0..1000", "attention_mask:BxS:int64:1..2", dims=["B=1..3", "S=4..32@16"],
                 strategy=strategy)
    result = onnxgate.export(f"onnxgate.examples.tiny_transformers:{factory}", tmp_path / "m.onnx", config=config)
    won = result.attempts[result.winner]
    assert won.strategy == strategy and won.parity.passed and not won.frozen_dims


CRASHING = '''
import os, ctypes, torch
class Crash(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)
    def forward(self, x):
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            {crash}
        return self.fc(x)
def build():
    return Crash().eval()
'''


@pytest.mark.parametrize("crash, signal", [("os.abort()", "SIGABRT"), ("ctypes.string_at(0)", "SIGSEGV")])
def test_a_crashing_exporter_is_an_attempt_outcome(crash, signal, tmp_path, capsys):
    (tmp_path / "crash.py").write_text(CRASHING.format(crash=crash))
    code = main(["export", f"{tmp_path / 'crash.py'}:build", "-o", str(tmp_path / "m.onnx"), "--input",
                 "x:Bx4:float32", "--dim", "B=1..4", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == ExitCode.EXPORT_FAILED and doc["exit_code"] == 3 and not (tmp_path / "m.onnx").exists()
    assert "Crashed:" in doc["error"]["message"] and signal in doc["error"]["message"]


HUNGRY = '''
import numpy as np, torch
class Hungry(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)
    def forward(self, x):
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            hoard = [np.ones(2**26, dtype=np.uint8) for _ in range(64)]  # 4 GB, written
        return self.fc(x)
def build():
    return Hungry().eval()
'''


def test_an_attempt_past_its_memory_cap_is_stopped_and_reported(tmp_path):
    (tmp_path / "hungry.py").write_text(HUNGRY)
    config = cfg("x:Bx4:float32", dims=["B=1..4"], attempt_memory_mb=300, repair=False)
    with pytest.raises(ExportError) as info:
        onnxgate.export(f"{tmp_path / 'hungry.py'}:build", tmp_path / "m.onnx", config=config)
    attempts = info.value.result.attempts
    capped = [a for a in attempts if a.outcome == "crashed"]
    assert capped and all(a.error_class == "memory cap" for a in capped)
    assert all(300 <= a.peak_mb < 1500 for a in capped)
    assert "memory cap of 300 MB" in info.value.message
