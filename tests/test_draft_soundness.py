"""Issue 23: a rung that assumed a value (draft export's data-dependent guards, a traced Python bool or int) never wins
on the side its example took. The ladder's judge must see each assumption's other side agree with PyTorch, or refuse
the rung naming the assumption; `verify` re-checks a claim on sign/scale variants and names the branch."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import onnxgate
from onnxgate import serde
from onnxgate.errors import ExitCode, ExportError, ParityError
from onnxgate.examples import corpus
from onnxgate.export.assumptions import exercised, record_path, value_sites
from onnxgate.export.ladder import FIRST_RUNG_ENV, TRACED_BRANCH, Attempt, _judge
from onnxgate.export.prepare import prepare
from onnxgate.export.strategies import export_dynamo
from onnxgate.runtimes.ort import OrtRunner
from onnxgate.sources import LoadedModel
from onnxgate.spec import ExportConfig, parse_dim, parse_input

ISSUE_MODEL = '''import torch
from torch import nn
class BranchOnValues(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1
def pos():
    return BranchOnValues().eval(), {"x": torch.ones(2, 6)}
'''


def cfg(*inputs, dims=()):
    return ExportConfig(inputs=tuple(map(parse_input, inputs)), dims=tuple(map(parse_dim, dims)))


def _prepared(module, x: torch.Tensor):
    return prepare(LoadedModel(module, "m", example_inputs={"x": x}), cfg("x:Bx6:float32", dims=["B=1..8"]))


def _draft(module, x: torch.Tensor, path: Path):
    """The draft rung's file for the example ``x`` (exported in-process), and what it assumed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = export_dynamo(_prepared(module, x), 23, path, variant="draft")
    return out


def test_recorded_path_shows_which_probe_takes_the_other_side():
    """The eager path of each value-dependent corpus model: one decision site, flipped by the probe built for it
    (sign for `if x.sum() > 0`, magnitude for `.item()` as a size and a loop bound), not by the others."""
    x = torch.ones(2, 6)
    for factory, flips, keeps in ((corpus.branch_on_values, -1.0, 10.0), (corpus.item_as_size, 0.1, 10.0),
                                  (corpus.loop_bound_from_value, 10.0, 1.0)):
        model = factory()
        example = record_path(model, (x,))
        (site,) = value_sites(example)
        assert site.startswith(corpus.__file__)
        assert exercised(example, record_path(model, (x * flips,)), site)
        assert not exercised(example, record_path(model, (x * keeps,)), site)
    assert value_sites(record_path(corpus.branch_as_where(), (x,))) == []  # a graph-side decision: nothing assumed


def test_draft_rung_carries_its_assumptions(tmp_path):
    out = _draft(corpus.branch_on_values(), torch.ones(2, 6), tmp_path / "d" / "m.onnx")
    (a,) = out.assumptions
    assert a["kind"] == "data_dependent" and a["code"] == "if x.sum() > 0:"
    assert a["location"].startswith(corpus.__file__ + ":")


def test_one_branch_draft_graph_is_refused_for_examples_of_either_sign_and_20_random_ones(tmp_path):
    """Whatever the example's sign, draft export writes the branch it took (one Mul, or one Sub); the judge refuses
    both. Held to the real draft files, judged under 22 examples: all-ones, all-minus-ones and 20 seeded draws."""
    model = corpus.branch_on_values()
    files = {}
    for sign in (1.0, -1.0):
        out = _draft(model, torch.full((2, 6), sign), tmp_path / f"s{sign}" / "m.onnx")
        files[sign] = out
    examples = [torch.ones(2, 6), -torch.ones(2, 6)]
    examples += [torch.from_numpy(np.random.default_rng(seed).standard_normal((2, 6)).astype(np.float32))
                 for seed in range(20)]
    for x in examples:
        out = files[1.0 if float(x.sum()) > 0 else -1.0]
        attempt = Attempt("dynamo", 23, variant="draft", assumptions=out.assumptions)
        _judge(_prepared(model, x), attempt, out.path, (), [])
        assert attempt.outcome == TRACED_BRANCH, (x, attempt.error)
        assert "specialized" in attempt.error and "if x.sum() > 0" in attempt.error


def test_assumption_no_input_can_flip_refuses_the_rung(tmp_path):
    """`if torch.isnan(x).any()`: no constructed input takes the other side, so the draft graph (x + 1) agrees on
    every probe and still cannot win: refused, the assumption named."""
    class NanGuard(nn.Module):
        def forward(self, x):
            if torch.isnan(x).any():
                return torch.zeros_like(x)
            return x + 1

    model = NanGuard().eval()
    out = _draft(model, torch.ones(2, 6), tmp_path / "d" / "m.onnx")
    attempt = Attempt("dynamo", 23, variant="draft", assumptions=out.assumptions)
    _judge(_prepared(model, torch.ones(2, 6)), attempt, out.path, (), [])
    assert attempt.parity.passed  # parity alone would have let it win
    assert attempt.outcome == TRACED_BRANCH and attempt.error_class == "assumption"
    assert "no input onnxgate constructed takes the other side" in attempt.error
    assert "if torch.isnan(x).any():" in attempt.error


def _right_on_both_sides(module, path: Path) -> None:
    runner = OrtRunner(path)
    for scale in (-3.0, -0.5, 0.05, 0.5, 1.5, 2.5, 5.0):
        x = np.full((3, 6), scale, dtype=np.float32)
        got = runner.run({"x": x})
        ref = module(torch.from_numpy(x)).detach().numpy()
        out = next(iter(got.values()))
        assert out.shape == ref.shape and np.allclose(out, ref, atol=1e-5), scale


@pytest.mark.parametrize("ref, inputs, dims", corpus.VALUE_DEPENDENT,
                         ids=[ref.split(":")[-1] for ref, _, _ in corpus.VALUE_DEPENDENT])
def test_value_dependent_models_are_refused_or_right_on_both_sides_with_draft_first(ref, inputs, dims, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setenv(FIRST_RUNG_ENV, "draft")
    out = tmp_path / "m.onnx"
    module = onnxgate.load_model(ref).module
    try:
        result = onnxgate.export(ref, out, config=cfg(*inputs, dims=dims))
    except (ExportError, ParityError) as exc:
        attempts = exc.result.attempts
        assert not out.exists()
        assert all(a.outcome != "ok" for a in attempts)
    else:
        attempts = result.attempts
        _right_on_both_sides(module, out)
    draft = attempts[0]
    assert draft.variant == "draft" and draft.outcome == TRACED_BRANCH and draft.assumptions  # forced first, refused


def test_where_equivalent_wins_with_draft_first(tmp_path, monkeypatch):
    monkeypatch.setenv(FIRST_RUNG_ENV, "draft")
    ref, inputs, dims = corpus.VALUE_BRANCH_AS_WHERE
    result = onnxgate.export(ref, tmp_path / "m.onnx", config=cfg(*inputs, dims=dims))
    assert result.winner == 0 and result.attempts[0].variant == "draft" and not result.attempts[0].assumptions
    _right_on_both_sides(onnxgate.load_model(ref).module, tmp_path / "m.onnx")


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    env.pop(FIRST_RUNG_ENV, None)
    return subprocess.run([sys.executable, "-m", "onnxgate.cli.main", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_issue_command_no_longer_exports_a_one_branch_graph(tmp_path):
    (tmp_path / "b.py").write_text(ISSUE_MODEL)
    proc = _cli("export", "b.py:pos", "-o", "pos.onnx", "--input", "x:Bx6:float32", cwd=tmp_path)
    assert proc.returncode == ExitCode.EXPORT_FAILED, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not (tmp_path / "pos.onnx").exists()
    assert "b.py:5" in proc.stdout + proc.stderr


def test_verify_fails_a_one_branch_file_and_names_the_branch(tmp_path):
    """Today's wrong file (the draft graph of the positive example: one Mul) against its model: exit 4, the
    all-negative variant fails, and the message names the `if` PyTorch decides differently on."""
    (tmp_path / "b.py").write_text(ISSUE_MODEL)
    sys.path.insert(0, str(tmp_path))
    try:
        import b  # noqa: PLC0415
    finally:
        sys.path.remove(str(tmp_path))
    model, example = b.pos()
    out = _draft(model, example["x"], tmp_path / "pos.onnx")
    assert [n.op_type for n in serde.load(out.path).graph.node] == ["Mul"]
    proc = _cli("verify", "pos.onnx", "--against", "b.py:pos", "--input", "x:Bx6:float32", "--json", cwd=tmp_path)
    assert proc.returncode == ExitCode.PARITY_FAILED, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "all-negative" in proc.stdout and "b.py:5" in proc.stdout and "if x.sum() > 0:" in proc.stdout
