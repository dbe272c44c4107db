"""Targets steer the export (issue 12, Build 5): ``--target`` picks the opset and IR version the runtime reads and
checks its operators before a winner is chosen; a pinned opset the exporter does not write is converted or refused.
Tiny models; the runtime matrix on a real onnxruntime 1.17.3 (an isolated venv) is the slow test at the end."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from torch import nn

import onnxgate
from onnxgate.configure import ExportFlags, export_config
from onnxgate.errors import BadInputError, ExitCode, RuntimeIncompatibleError
from onnxgate.export.ladder import default_plan
from onnxgate.spec import ExportConfig, parse_dim, parse_input
from onnxgate.verify.targets import check_targets, export_limits


class NormNet(nn.Module):
    """Conv, ReduceMean and LayerNormalization (opset 17): what old runtimes and TensorRT 8.5 trip over."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.LayerNorm(4)

    def forward(self, x):
        return self.norm(self.conv(x).mean(dim=(2, 3)))


class IsInfNet(nn.Module):
    def forward(self, x):
        return torch.isinf(x).float() + x


def cfg(**kw) -> ExportConfig:
    return ExportConfig(inputs=(parse_input("x:Bx3x8x8:float32"),), dims=(parse_dim("B=1..8"),), **kw)


def opset_and_ir(path) -> tuple[int, int]:
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), model.ir_version


def test_targets_cap_the_plan_at_the_opset_they_read():
    assert export_limits(["onnxruntime==1.17.3"]).max_opset == 20
    assert export_limits(["onnxruntime==1.17.3", "tensorrt==8.5"]).max_opset == 17
    assert export_limits(["onnxruntime==1.17"]).max_ir == 9
    assert export_limits(["openvino==2024.0"]).max_opset is None  # OpenVINO: operators, not opsets
    assert all(o <= 20 for _, o in default_plan(ExportConfig(targets=("onnxruntime==1.17",))))
    assert {o for _, o in default_plan(ExportConfig(targets=("tensorrt==8.5",)))} == {17}
    assert default_plan(ExportConfig(targets=("openvino==2024.0",))) == default_plan(ExportConfig())


def test_a_pinned_opset_newer_than_the_target_reads_is_bad_input_before_any_export():
    with pytest.raises(BadInputError, match="--opset 21 is newer than onnxruntime==1.17 reads"):
        export_config(ExportFlags(opset=21, targets=("onnxruntime==1.17",)))
    with pytest.raises(BadInputError, match="not of the form"):
        export_config(ExportFlags(targets=("onnxruntime 1.17",)))
    _, config = export_config(ExportFlags(targets=("onnxruntime==1.17.3",)))
    assert config.targets == ("onnxruntime==1.17.3",)


def test_the_toml_target_steers_export_and_run_and_a_flag_replaces_it(tmp_path):
    from onnxgate.configure import RunFlags, run_config

    toml = tmp_path / "onnxgate.toml"
    toml.write_text('ref = "torchvision:resnet18"\ntarget = ["onnxruntime==1.17"]\n')
    assert export_config(ExportFlags(config_file=toml))[1].targets == ("onnxruntime==1.17",)
    job = run_config(None, RunFlags(ExportFlags(config_file=toml)))
    assert job.targets == job.export.targets == ("onnxruntime==1.17",)
    job = run_config(None, RunFlags(ExportFlags(config_file=toml), targets=("tensorrt==10.0",)))
    assert job.targets == job.export.targets == ("tensorrt==10.0",)


def test_export_for_an_old_onnxruntime_writes_its_opset_and_ir_version(tmp_path):
    out = tmp_path / "m.onnx"
    result = onnxgate.export(NormNet().eval(), out, config=cfg(targets=("onnxruntime==1.17.3",)))
    assert opset_and_ir(out) == (20, 9)  # the dynamo exporter stamps IR 10, which onnxruntime 1.17 refuses
    assert (won := result.attempts[result.winner]).strategy == "dynamo"
    assert any("IR version 10 stamped 9" in w for w in won.warnings)
    assert all(t.supported for t in check_targets(out, ["onnxruntime==1.17.3"]))
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["onnxgate.targets"]) == ["onnxruntime==1.17.3"]


def test_a_pinned_opset_below_what_dynamo_writes_is_converted_down(tmp_path):
    """torch's dynamo exporter has no opset-17 implementations: it writes 18 (and IR 10); the ladder converts."""
    out = tmp_path / "m17.onnx"
    result = onnxgate.export(NormNet().eval(), out, config=cfg(strategy="dynamo", opset=17))
    assert opset_and_ir(out) == (17, 8)
    assert any("converted to opset 17 with onnx.version_converter" in w for w in result.attempts[0].warnings)


def test_an_operator_the_target_lacks_fails_the_attempt_and_torchscript_decomposes_it_below(tmp_path):
    out = tmp_path / "trt.onnx"
    result = onnxgate.export(NormNet().eval(), out, config=cfg(targets=("tensorrt==8.5",)))
    first, won = result.attempts[0], result.attempts[result.winner]
    assert first.outcome == "check_failed" and first.error_class == "target"
    assert "LayerNormalization is not supported by TensorRT 8.5" in first.error
    assert (won.strategy, won.opset, won.fallback) == ("torchscript", 16, True)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "LayerNormalization" not in ops and all(t.supported for t in check_targets(out, ["tensorrt==8.5"]))


class Attention(nn.Module):
    """scaled_dot_product_attention: the dynamo exporter writes ONNX's Attention operator at opset 23."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.qkv = nn.Linear(16, 48)

    def forward(self, x):
        q, k, v = self.qkv(x).reshape(x.shape[0], x.shape[1], 3, 2, 8).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return y.transpose(1, 2).reshape(x.shape[0], x.shape[1], 16)


def test_a_target_without_attention_gets_the_same_exporter_one_opset_below(tmp_path):
    out = tmp_path / "attn.onnx"
    config = ExportConfig(inputs=(parse_input("x:BxSx16:float32"),), dims=(parse_dim("S=2..32@8"),),
                          targets=("openvino==2024.0",))
    result = onnxgate.export(Attention().eval(), out, config=config)
    first, won = result.attempts[0], result.attempts[result.winner]
    assert (first.opset, first.error_class, first.lacking_ops) == (23, "target", ["Attention"])
    assert (won.strategy, won.opset, won.fallback, result.winner) == ("dynamo", 22, True, 1)
    assert "Attention" not in {n.op_type for n in onnx.load(str(out)).graph.node}


def test_no_export_that_fits_the_target_is_runtime_incompatible(tmp_path):
    with pytest.raises(RuntimeIncompatibleError, match="No export fits tensorrt==8.5.*IsInf") as caught:
        onnxgate.export(IsInfNet(), tmp_path / "inf.onnx",
                        config=ExportConfig(inputs=(parse_input("x:Bx4:float32"),), targets=("tensorrt==8.5",)))
    assert caught.value.exit_code == ExitCode.RUNTIME_INCOMPATIBLE


TINY_CNN = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.LayerNorm(8), nn.Linear(8, 4)).eval()
'''


@pytest.mark.slow
def test_run_for_onnxruntime_1_17_3_passes_its_runtime_matrix(tmp_path, monkeypatch):
    """The acceptance case: `onnxgate run MODEL --target onnxruntime==1.17.3` exits 0, and the bundle it writes runs
    and matches on that very release (an isolated venv from the package registry, bundle/matrix.py)."""
    from onnxgate.bundle import verify_matrix
    from onnxgate.cli.main import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(TINY_CNN)
    assert main(["run", "net.py:build", "--input", "x:Bx3xHxW:float32", "--dim", "B=1..8", "--dim", "H=16..48@32",
                 "--dim", "W=16..48@32", "--target", "onnxruntime==1.17.3", "--bench", "none", "-o", "out"]) == 0
    assert opset_and_ir(tmp_path / "out" / "model.onnx") == (20, 9)
    (cell,) = verify_matrix(tmp_path / "out" / "bundle", ["onnxruntime==1.17.3"])
    assert cell.status == "pass" and cell.runtime_version == "1.17.3" and cell.passed, cell.reason
