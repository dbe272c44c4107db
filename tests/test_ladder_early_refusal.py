"""Refusals that stop early (issue 25, item 3): when every plain rung fails with a diagnosis that a remaining rung
cannot change, that rung is not run; the attempts table names it as skipped, with the reason. Rungs that exist to
fix a cause (strict capture for a Python int taken from a shape, draft export for a data-dependent guard, the repair
rung for adaptive pooling) still run."""

import pytest
import torch
from torch import nn

import onnxgate
from onnxgate.errors import ExitCode, ExportError
from onnxgate.export.ladder import RULED_OUT, SKIPPED, Attempt, _ruled_out
from onnxgate.spec import ExportConfig, parse_dim, parse_input


def cfg(*inputs, dims=(), **kw):
    return ExportConfig(inputs=tuple(map(parse_input, inputs)), dims=tuple(map(parse_dim, dims)), **kw)


class Median(nn.Module):
    def forward(self, x):
        return x.median(dim=1).values  # no ONNX translation in either exporter of torch 2.14


class Branch(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


def ran(result):
    return [a for a in result.attempts if a.outcome != SKIPPED]


def test_an_unsupported_operator_is_refused_without_the_rungs_it_rules_out(tmp_path):
    """median(dim): the dynamo and TorchScript exporters both lack it. Before: 7 attempts ran (each exporter at
    two opsets, then auto-dims, strict and draft capture); now one per exporter, the rest skipped and named."""
    notes = []
    with pytest.raises(ExportError) as info:
        onnxgate.export(Median(), tmp_path / "m.onnx", config=cfg("x:Bx8:float32", dims=["B=1..8"]),
                        progress=notes.append)
    err = info.value
    assert err.exit_code == ExitCode.EXPORT_FAILED and err.result.diagnosis["id"] == "unsupported_aten_op"
    # the "N/M" count grows when the extra rungs are added: a line says so (issue 27 item 7: "4/4" then "5/7")
    added = [n for n in notes if "extra rung(s)" in n]
    assert len(added) == 1 and "none of the 4 planned attempt(s) won: adding 3 extra rung(s)" in added[0], notes
    assert "7 attempts in all now" in added[0]
    assert "median" in err.message
    attempts = err.result.attempts
    assert [(a.strategy, a.variant) for a in ran(err.result)] == [("dynamo", None), ("torchscript", None)]
    variants = {a.variant: a for a in attempts if a.variant}
    assert set(variants) == {"auto-dims", "strict", "draft"}, "the extra rungs are listed, not dropped"
    for a in variants.values():
        assert a.outcome == SKIPPED and a.error_class == "unsupported_aten_op"
        assert a.error.startswith("not run: every plain rung failed with unsupported_aten_op")
    assert "Capture variants tried" not in err.message  # skipped rungs are never said to have been tried
    assert "Not run, as they cannot change unsupported_aten_op: dynamo (Dim.AUTO capture)" in err.message
    older = [a for a in attempts if not a.variant and a.opset == 17]
    assert older and all(a.outcome == SKIPPED and "an older opset does not change" in a.error for a in older)
    assert not (tmp_path / "m.onnx").exists()


def test_a_data_dependent_branch_skips_what_cannot_capture_it_and_keeps_draft(tmp_path):
    """A Python `if` on a tensor's value: auto-dims and strict capture cannot capture it and are skipped; draft
    export could (it assumes) and still runs, refused on the branch's other side."""
    with pytest.raises(ExportError) as info:
        onnxgate.export(Branch(), tmp_path / "m.onnx", config=cfg("x:Bx8:float32", dims=["B=1..8"]))
    result = info.value.result
    assert result.diagnosis["id"] == "data_dependent_control_flow"
    by_variant = {a.variant: a for a in result.attempts if a.variant}
    assert by_variant["auto-dims"].outcome == SKIPPED and by_variant["strict"].outcome == SKIPPED
    assert "TorchDynamo refuses" in by_variant["strict"].error
    assert by_variant["draft"].outcome == "traced_branch"
    assert len(ran(result)) == 3  # dynamo, TorchScript (each at its newest opset), draft


class RangeOfBatch(nn.Module):
    def forward(self, x):
        w = torch.tensor([float(i) for i in range(x.shape[0])])  # a list as long as the batch: no capture keeps it
        return x * w[:, None]


def test_a_frozen_dim_no_capture_keeps_skips_draft_export_only(tmp_path):
    """Every capture freezes B (a Python list as long as the batch). Strict and Dim.AUTO capture still run (they
    fix other frozen dims); draft export, which falls back on the non-strict and Dim.AUTO captures that both froze
    B without assuming values, is skipped and named."""
    from onnxgate.errors import ParityError

    with pytest.raises(ParityError) as info:
        onnxgate.export(RangeOfBatch(), tmp_path / "m.onnx", config=cfg("x:Bx4:float32", dims=["B=1..8"]))
    by_variant = {a.variant: a for a in info.value.result.attempts if a.variant}
    assert by_variant["auto-dims"].outcome == "frozen_dim" and by_variant["strict"].outcome == "frozen_dim"
    draft = by_variant["draft"]
    assert draft.outcome == SKIPPED and "both froze B" in draft.error
    assert "B (frozen at 2)" in info.value.message and "(draft export)" in info.value.message


def test_causes_the_extra_rungs_exist_for_rule_nothing_out():
    """Per cause and per rung: a frozen dim (strict capture keeps a Python int symbolic), a dynamic-shape guard
    (auto-dims), an unknown error, or plain rungs failing for different reasons skip nothing; a repair is never
    ruled out by an operator it may replace (pooling)."""
    def failed(strategy, cause, outcome="export_error", **kw):
        return Attempt(strategy, 18, outcome=outcome, diagnosis={"id": cause, **kw})

    def frozen(strategy):
        return Attempt(strategy, 18, outcome="frozen_dim")

    for cause in ("dynamic_shape_guard", "unknown", "opset_too_low", "dim_range_excludes_example"):
        assert cause not in RULED_OUT
        plain = [failed("dynamo", cause), failed("torchscript", cause)]
        assert not any(_ruled_out(Attempt("dynamo", 18, variant=v), plain) for v in ("auto-dims", "strict", "draft"))
    plain = [frozen("dynamo"), frozen("torchscript")]
    assert not any(_ruled_out(Attempt("dynamo", 18, variant=v), plain) for v in ("auto-dims", "strict", "draft"))
    mixed = [failed("dynamo", "unsupported_aten_op"), failed("torchscript", "data_dependent_control_flow")]
    assert not _ruled_out(Attempt("dynamo", 18, variant="strict"), mixed)
    pooling = [failed("dynamo", "unsupported_aten_op", operator="aten::adaptive_max_pool2d"),
               failed("torchscript", "unsupported_aten_op", operator="aten::adaptive_max_pool2d")]
    repair = Attempt("dynamo", 18, repairs={"adaptive_pool": ["pool"]})
    assert not _ruled_out(repair, pooling)
    other = [failed("dynamo", "unsupported_aten_op", operator="aten::median"),
             failed("torchscript", "unsupported_aten_op", operator="aten::median")]
    assert _ruled_out(repair, other) and repair.outcome == SKIPPED
    assumed = [frozen("dynamo"), Attempt("dynamo", 18, variant="auto-dims", outcome="frozen_dim",
                                         assumptions=[{"kind": "data_dependent", "what": "x", "location": None}])]
    assert not _ruled_out(Attempt("dynamo", 18, variant="draft"), assumed)  # a value assumed: draft may differ
    assert not _ruled_out(Attempt("dynamo", 18, variant="draft"), plain)  # Dim.AUTO not tried yet
    custom = [failed("dynamo", "custom_op", outcome="export_error")]
    custom[0].stage = "capture"
    assert not _ruled_out(Attempt("dynamo", 18, variant="draft"), custom)  # no fake kernel: draft stands in
    assert _ruled_out(Attempt("dynamo", 18, variant="strict"), custom)



def test_a_ladder_budget_counts_attempts_and_names_the_rest(tmp_path):
    """--ladder-budget N (toml: [export] ladder_budget): at most N attempts run; every other rung is listed as
    skipped, saying why. Counted in attempts, never in seconds."""
    from onnxgate.configure import load_toml
    from onnxgate.errors import BadInputError

    with pytest.raises(ExportError) as info:
        onnxgate.export(Branch(), tmp_path / "m.onnx", config=cfg("x:Bx8:float32", dims=["B=1..8"], ladder_budget=1))
    result = info.value.result
    assert len(ran(result)) == 1 and result.diagnosis["id"] == "data_dependent_control_flow"
    budgeted = [a for a in result.attempts if a.error_class == "ladder_budget"]
    assert budgeted and all("ladder budget of 1 attempt was spent" in a.error for a in budgeted)
    with pytest.raises(BadInputError):
        cfg("x:2x8:float32", ladder_budget=0)
    toml = tmp_path / "onnxgate.toml"
    toml.write_text('ref = "torchvision:resnet18"\n[export]\nladder_budget = 3\n')
    assert load_toml(toml).export.ladder_budget == 3
