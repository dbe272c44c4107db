"""Failure diagnosis against the errors torch's exporters really raise.

Every case below exports a tiny module that the exporter really rejects and diagnoses the exception it raised:
no hand-written messages, so a torch upgrade that rewords an error fails here instead of in front of a user.
Each failure is produced once per session (``failures``) and shared by the tests that need it.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.export import Dim  # noqa: E402

from onnxgate.export.diagnose import Diagnosis, diagnose, format_message, summarize  # noqa: E402

# By import path: the package re-exports an ``export`` function that shadows its submodule's attribute.
diagnose_module = importlib.import_module("onnxgate.export.diagnose")
THIS_FILE = Path(__file__)


def line_of(marker: str) -> int:
    """The line of this file holding ``# <- marker``, where a diagnosis must point."""
    lines = THIS_FILE.read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.rstrip().endswith(f"# <- {marker}"))


# --- the tricky modules -------------------------------------------------------------------------------------


class DataDependentBranch(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # <- branch
            return x * 2
        return x - 1


class MedianHead(nn.Module):
    def forward(self, x):
        return torch.median(x, dim=1).values  # <- median


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = MedianHead()

    def forward(self, x):
        return self.head(x)


class MedianNet(nn.Module):
    """The unsupported operator sits two submodules deep, so the diagnosis can name the module path."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(Block(), nn.Identity())

    def forward(self, x):
        return self.blocks(x * 2)


class Histc(nn.Module):
    def forward(self, x):
        return torch.histc(x, bins=4)


class StableSort(nn.Module):
    def forward(self, x):
        return torch.sort(x, dim=1, stable=True).values


class GridSample(nn.Module):
    def forward(self, x, grid):
        return nn.functional.grid_sample(x, grid, align_corners=False)


class ClampTimesThree(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0) * 3

    @staticmethod
    def backward(ctx, grad):
        return grad


class UsesAutogradFunction(nn.Module):
    def forward(self, x):
        return ClampTimesThree.apply(x)  # <- autograd function


@torch.library.custom_op("onnxgate_test::scale", mutates_args=())
def scale(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@scale.register_fake
def _(x):
    return torch.empty_like(x)


class UsesCustomOp(nn.Module):
    def forward(self, x):
        return scale(x) + 1


class InverseStft(nn.Module):
    def forward(self, spec):
        return torch.istft(spec, n_fft=8, window=torch.ones(8))


class AssertsBatchOfFour(nn.Module):
    def forward(self, x):
        assert x.shape[0] == 4
        return x + 1


class ReshapesToFixedSize(nn.Module):
    def forward(self, x):
        return x.reshape(4, 3)


class RejectsBatchOfThree(nn.Module):
    def forward(self, x):
        if x.shape[0] == 3:
            return x * 0
        return x + 1


class TakesMode(nn.Module):
    def forward(self, x, mode: str):
        return x * 2 if mode == "double" else x


class TakesTokens(nn.Module):
    def forward(self, x, tokens: list[str]):
        return x * len(tokens)


class Doubles(nn.Module):
    def forward(self, x):
        return x * 2


class ReturnsString(nn.Module):
    def forward(self, x):
        return x + 1, "done"


@dataclass
class Output:
    y: torch.Tensor


class ReturnsDataclass(nn.Module):
    def forward(self, x):
        return Output(x + 1)


class ReturnsInt(nn.Module):
    def forward(self, x):
        return {"y": x + 1, "n": 3}


class TakesDict(nn.Module):
    def forward(self, d):
        return d["a"] + d["b"]


class ZeroHopStft(nn.Module):
    def forward(self, x):
        return torch.stft(x, n_fft=2, return_complex=True).abs()


# --- how each case fails ------------------------------------------------------------------------------------

X = torch.randn(4, 3)
BATCH = Dim("batch", min=1, max=64)


def dynamo(model, args, out: Path, dynamic_shapes=None, **kwargs) -> None:
    torch.onnx.export(model.eval(), args, out / "model.onnx", dynamo=True, dynamic_shapes=dynamic_shapes, **kwargs)


def torchscript(model, args, out: Path, dynamic_axes=None, **kwargs) -> None:
    torch.onnx.export(model.eval(), args, out / "model.onnx", dynamo=False, dynamic_axes=dynamic_axes, **kwargs)


@dataclass(frozen=True)
class Case:
    """One real failure: ``run(out_dir)`` must raise; the diagnosis must have ``id`` and the given fields."""

    id: str
    run: Callable[[Path], None]
    operator: str | None = None
    module: str | None = None
    location_marker: str | None = None  # the "# <- marker" line the diagnosis must point at


CASES = {
    "branch-dynamo": Case(
        "data_dependent_control_flow",
        lambda out: dynamo(DataDependentBranch(), (X,), out, {"x": {0: BATCH}}),
        location_marker="branch",
    ),
    "branch-torch.export-strict": Case(
        "data_dependent_control_flow",
        lambda out: torch.export.export(DataDependentBranch(), (X,), strict=True),
        location_marker="branch",
    ),
    "median-dynamo": Case(
        "unsupported_aten_op", lambda out: dynamo(MedianNet(), (X,), out), operator="aten.median.dim"
    ),
    "median-torchscript": Case(
        "unsupported_aten_op", lambda out: torchscript(MedianNet(), (X,), out), operator="aten::median"
    ),
    "histc-dynamo": Case(
        "unsupported_aten_op", lambda out: dynamo(Histc(), (X,), out), operator="aten.histc.default"
    ),
    "stable-sort-torchscript": Case(
        "unsupported_aten_op", lambda out: torchscript(StableSort(), (X,), out), operator="Sort"
    ),
    "grid-sample-opset11-torchscript": Case(
        "opset_too_low",
        lambda out: torchscript(GridSample(), (torch.randn(1, 1, 4, 4), torch.rand(1, 2, 2, 2)), out, opset_version=11),
        operator="aten::grid_sampler",
    ),
    "autograd-function-torchscript": Case(
        "custom_autograd_function",
        lambda out: torchscript(UsesAutogradFunction(), (X,), out, autograd_inlining=False),
        operator="ClampTimesThree",
        module="UsesAutogradFunction",
        location_marker="autograd function",
    ),
    "custom-op-dynamo": Case(
        "custom_op", lambda out: dynamo(UsesCustomOp(), (X,), out), operator="onnxgate_test.scale.default"
    ),
    "custom-op-torchscript": Case(
        "custom_op", lambda out: torchscript(UsesCustomOp(), (X,), out), operator="onnxgate_test::scale"
    ),
    "complex-istft-dynamo": Case(
        "complex_tensor", lambda out: dynamo(InverseStft(), (torch.randn(5, 4, dtype=torch.complex64),), out)
    ),
    "dim-dynamic-specialized-dynamo": Case(
        "dynamic_shape_guard", lambda out: dynamo(AssertsBatchOfFour(), (X,), out, {"x": {0: Dim.DYNAMIC}})
    ),
    "dim-specialized-torch.export": Case(
        "dynamic_shape_guard",
        lambda out: torch.export.export(ReshapesToFixedSize(), (X,), dynamic_shapes={"x": {0: BATCH}}, strict=False),
    ),
    "dim-guard-torch.export": Case(
        "dynamic_shape_guard",
        lambda out: torch.export.export(RejectsBatchOfThree(), (X,), dynamic_shapes={"x": {0: BATCH}}, strict=False),
    ),
    "dim-range-excludes-example-dynamo": Case(
        "dim_range_excludes_example",
        lambda out: dynamo(AssertsBatchOfFour(), (X,), out, {"x": {0: Dim("batch", min=1, max=2)}}),
    ),
    "str-input-with-dim-dynamo": Case(
        "non_tensor_input", lambda out: dynamo(TakesMode(), (X, "double"), out, {"x": {0: BATCH}, "mode": {0: BATCH}})
    ),
    "str-list-input-dynamo": Case(
        "non_tensor_input", lambda out: dynamo(TakesTokens(), (X, ["a", "b"]), out, {"x": {0: BATCH}, "tokens": None})
    ),
    "array-input-torchscript": Case(
        "non_tensor_input", lambda out: torchscript(Doubles(), (np.ones((4, 3), dtype=np.float32),), out)
    ),
    "str-output-dynamo": Case("non_tensor_output", lambda out: dynamo(ReturnsString(), (X,), out)),
    "dataclass-output-dynamo": Case("non_tensor_output", lambda out: dynamo(ReturnsDataclass(), (X,), out)),
    "int-output-torchscript": Case("non_tensor_output", lambda out: torchscript(ReturnsInt(), (X,), out)),
    "dict-as-last-arg-dynamo": Case(
        "forward_signature_mismatch", lambda out: dynamo(TakesDict(), ({"a": X, "b": X},), out)
    ),
    "dict-as-last-arg-torchscript": Case(
        "forward_signature_mismatch", lambda out: torchscript(TakesDict(), ({"a": X, "b": X},), out)
    ),
    "zero-hop-stft-dynamo": Case("unknown", lambda out: dynamo(ZeroHopStft(), (X,), out)),
}


class Failures:
    """Each case's exception, raised on first use and kept for the session (an export takes a second or two)."""

    def __init__(self, root: Path):
        self._root = root
        self._raised: dict[str, BaseException] = {}

    def __getitem__(self, name: str) -> BaseException:
        if name not in self._raised:
            out = self._root / name
            out.mkdir()
            with pytest.raises(Exception) as info:
                CASES[name].run(out)
            self._raised[name] = info.value
        return self._raised[name]


@pytest.fixture(scope="module")
def failures(tmp_path_factory) -> Failures:
    return Failures(tmp_path_factory.mktemp("exports"))


def raw_catalogue() -> list[dict]:
    text = resources.files("onnxgate.export").joinpath("diagnoses.json").read_text(encoding="utf-8")
    return json.loads(text)


# --- tests --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_real_export_failure_is_diagnosed(name, failures):
    case = CASES[name]
    d = diagnose(failures[name])
    assert d.id == case.id, d
    assert d.operator == case.operator
    if case.module is not None:
        assert d.module == case.module
    if case.location_marker is not None:
        assert d.location == f"{THIS_FILE}:{line_of(case.location_marker)}"
    assert d.detail and "\n" not in d.detail and len(d.detail) <= diagnose_module.DETAIL_CHARS
    assert "\x1b[" not in d.detail and "{" not in d.cause  # colour codes stripped, placeholders filled


def test_torchscript_dump_names_the_module_and_line(tmp_path, capfd):
    """The torchscript exporter prints the failing node's scope from C++ to fd 1; the ladder passes it along."""
    with pytest.raises(Exception) as info:
        torchscript(MedianNet(), (X,), tmp_path)
    d = diagnose(info.value, output=capfd.readouterr().out)
    assert (d.id, d.operator) == ("unsupported_aten_op", "aten::median")
    assert d.module == "blocks.0.head (MedianHead)"
    assert d.location == f"{THIS_FILE}:{line_of('median')}"


def test_opset_too_low_names_the_opset_that_has_the_operator(failures):
    d = diagnose(failures["grid-sample-opset11-torchscript"])
    assert "opset 16" in d.cause and "--opset 16" in d.fix


def test_wrapped_error_detail_keeps_the_root_cause(failures):
    d = diagnose(failures["histc-dynamo"])
    assert "aten.histc.default" in d.detail and "caused by NotImplementedError" in d.detail


def test_guard_detail_names_the_dimension(failures):
    assert "inputs['x'].shape[0]" in diagnose(failures["dim-dynamic-specialized-dynamo"]).detail
    assert "L['x'].size()[0]" in diagnose(failures["dim-guard-torch.export"]).detail


def test_unknown_error_keeps_the_exporters_words(failures):
    d = diagnose(failures["zero-hop-stft-dynamo"])
    assert d.detail == "RuntimeError: stft expected hop_length > 0 but got hop_length=0"


def test_summarize_prefers_a_known_diagnosis_naming_the_most(failures, tmp_path, capfd):
    unknown = diagnose(failures["zero-hop-stft-dynamo"])
    operator_only = diagnose(failures["median-dynamo"])
    with pytest.raises(Exception) as info:
        torchscript(MedianNet(), (X,), tmp_path)
    with_module = diagnose(info.value, output=capfd.readouterr().out)
    assert summarize([unknown, operator_only, with_module]) is with_module
    assert summarize([unknown, operator_only]) is operator_only
    assert summarize([operator_only, diagnose(failures["median-torchscript"])]) is operator_only  # tie: first
    assert summarize([unknown]) is unknown
    with pytest.raises(ValueError):
        summarize([])


def test_format_message_is_one_paragraph_naming_everything(failures):
    d = diagnose(failures["branch-dynamo"])
    message = format_message(d)
    assert message.startswith("Export failed: forward() makes a Python decision")
    assert f"(at {THIS_FILE}:{line_of('branch')}). Fix: replace the Python `if`" in message
    assert "Exporter said: GuardOnDataDependentSymNode: Could not guard on data-dependent expression" in message
    assert "\n" not in message
    named = dataclasses.replace(d, operator="aten::median", module="blocks.0.head (MedianHead)", location="m.py:7")
    assert "(operator aten::median, in module blocks.0.head (MedianHead), at m.py:7). Fix:" in format_message(named)


def test_diagnosis_round_trips_through_a_dict(failures):
    """The ladder stores ``asdict(diagnosis)`` on each attempt and rebuilds it for ``summarize``."""
    d = diagnose(failures["custom-op-dynamo"])
    assert Diagnosis(**dataclasses.asdict(d)) == d


def test_catalogue_is_valid_and_every_entry_is_tested():
    entries = raw_catalogue()
    ids = [e["id"] for e in entries]
    assert len(ids) == len(set(ids))
    assert (entries[-1]["id"], entries[-1]["patterns"]) == ("unknown", [])  # the fallback comes last
    for entry in entries:
        assert set(entry) == {"id", "cause", "fix", "patterns"}, entry["id"]
        for pattern in entry["patterns"]:
            compiled = re.compile(pattern)
            placeholders = set(re.findall(r"\{(\w+)\}", entry["cause"] + entry["fix"]))
            assert placeholders <= set(compiled.groupindex), (entry["id"], pattern)
    required = {"data_dependent_control_flow", "unsupported_aten_op", "custom_autograd_function",
                "dynamic_shape_guard", "non_tensor_input", "opset_too_low", "unknown"}
    assert required <= set(ids)
    assert {case.id for case in CASES.values()} == set(ids)


def test_every_pattern_matches_a_real_error(failures):
    """No pattern in the catalogue is dead: each one matches at least one exception an exporter really raised."""
    texts = ["\n".join(diagnose_module._chain_texts(failures[name])) for name in CASES]
    for entry in diagnose_module.catalogue():
        for pattern in entry.patterns:
            assert any(pattern.search(text) for text in texts), (entry.id, pattern.pattern)


def test_diagnose_module_does_not_import_torch():
    """The CLI formats recorded diagnoses on machines without the torch extra."""
    tree = ast.parse(Path(diagnose_module.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "torch" not in imported
