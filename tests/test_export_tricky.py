"""Tricky modules through the whole ladder: each ends in a working, proven export or a diagnosis naming the
cause — never a silently wrong file."""

import numpy as np
import pytest
import torch
from torch import nn

import onnxgate
from onnxgate.errors import ExitCode, ExportError
from onnxgate.runtimes.ort import OrtRunner
from onnxgate.spec import ExportConfig, parse_dim, parse_input


def cfg(*inputs, dims=()):
    return ExportConfig(inputs=tuple(map(parse_input, inputs)), dims=tuple(map(parse_dim, dims)))


class DataDependentBranch(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


class ClampTimesTwo(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0) * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


class CustomFunction(nn.Module):
    def forward(self, x):
        return ClampTimesTwo.apply(x) + 1


class BooleanMask(nn.Module):
    def forward(self, x):
        return x.masked_fill(x < 0, 0.0).sum(dim=1)  # masking without a data-dependent shape


class BooleanSelect(nn.Module):
    def forward(self, x):
        return x[x > 0]  # output size depends on the values


class Median(nn.Module):
    def forward(self, x):
        return x.median(dim=1).values


@pytest.mark.parametrize("first", ["", "draft"], ids=["plan", "draft-first"])
def test_data_dependent_branch_is_diagnosed_not_baked_in(tmp_path, monkeypatch, first):
    """With the draft rung forced first too (issue 23): draft export records the branch its example took; the
    judge refuses it, naming the assumption, and the ladder ends in the same diagnosis."""
    monkeypatch.setenv("ONNXGATE_TEST_FIRST_RUNG", first)
    with pytest.raises(ExportError) as info:
        onnxgate.export(DataDependentBranch(), tmp_path / "m.onnx", config=cfg("x:Bx8:float32", dims=["B=1..8"]))
    err = info.value
    assert err.exit_code == ExitCode.EXPORT_FAILED
    assert err.result.diagnosis["id"] == "data_dependent_control_flow"
    assert "torch.where" in err.message or "torch.cond" in err.message
    assert "test_export_tricky.py" in err.message  # points at the user's `if`
    scripted = [a.outcome for a in err.result.attempts if a.strategy == "torchscript"]
    assert scripted[0] == "traced_branch"  # tracing 'worked' but baked one branch in: rejected
    assert set(scripted[1:]) <= {"skipped"}  # the same trace at another opset: not run (issue 25)
    assert not (tmp_path / "m.onnx").exists()
    drafts = [a for a in err.result.attempts if a.variant == "draft"]
    assert drafts and all(a.outcome == "traced_branch" for a in drafts)
    assert drafts[0].assumptions[0]["kind"] == "data_dependent"
    assert "draft export" in err.message and "if x.sum() > 0" in err.message
    if first:
        assert err.result.attempts[0].variant == "draft"


def test_custom_autograd_function_exports_and_matches(tmp_path):
    result = onnxgate.export(CustomFunction(), tmp_path / "m.onnx", config=cfg("x:Bx8:float32", dims=["B=1..8"]))
    assert result.ok
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    np.testing.assert_allclose(OrtRunner(tmp_path / "m.onnx").run({"x": x})["output"], np.clip(x, 0, None) * 2 + 1,
                               rtol=1e-6)


def test_dict_and_nested_outputs(tmp_path):
    class Nested(nn.Module):
        def forward(self, x):
            return {"a": x + 1, "b": (x * 2, [x.sum(1), x.mean(1)])}

    result = onnxgate.export(Nested(), tmp_path / "m.onnx", config=cfg("x:Bx4:float32", dims=["B=1..8"]))
    assert result.outputs == ["a", "b.0", "b.1.0", "b.1.1"]


def test_boolean_masking_exports(tmp_path):
    result = onnxgate.export(BooleanMask(), tmp_path / "m.onnx", config=cfg("x:Bx8:float32", dims=["B=1..8"]))
    assert result.ok


def test_boolean_selection_with_data_dependent_size(tmp_path):
    """x[x > 0] has a size only known at run time: the ladder finds an export that is right on several inputs
    (ONNX NonZero/GatherND), or names the cause."""
    try:
        result = onnxgate.export(BooleanSelect(), tmp_path / "m.onnx", config=cfg("x:4x8:float32"))
    except ExportError as exc:
        assert exc.result.diagnosis["id"] != "unknown"
        return
    assert result.ok
    x = np.random.default_rng(3).standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_array_equal(OrtRunner(tmp_path / "m.onnx").run({"x": x})["output"], x[x > 0])


def test_unsupported_operator_is_named(tmp_path):
    """median(dim) has no ONNX translation in either exporter of torch 2.14: the message names the op."""
    with pytest.raises(ExportError) as info:
        onnxgate.export(Median(), tmp_path / "m.onnx", config=cfg("x:2x8:float32"))
    assert info.value.result.diagnosis["id"] == "unsupported_aten_op"
    assert "median" in info.value.message
