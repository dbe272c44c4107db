"""Issue 27 item 6: a dim declared without a range means "wherever the PyTorch reference runs". A size at which
PyTorch itself raises bounds the verified domain (the edge found by bisection, its reason PyTorch's error) instead
of failing parity; an explicit range the model cannot meet stays exit 4, naming the size and PyTorch's error."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from torch import nn

import onnxgate
from onnxgate.cli.main import main
from onnxgate.errors import ExitCode, ParityError
from onnxgate.spec import Dim, ExportConfig, parse_dim, parse_input
from onnxgate.verify.domain import ProbeOutcome, discover
from onnxgate.verify.shapes import probe_sizes

TOO_SMALL = "Output size is too small"


def found(text, works, by="pytorch"):
    dim = parse_dim(text) if "=" in text else Dim(text, example=128)

    def run(size):
        return ProbeOutcome(True) if works(size) else ProbeOutcome(False, by(size) if callable(by) else by,
                                                                   f"{TOO_SMALL} at {size}")
    return discover(dim, run, required=probe_sizes(dim)[1:], granularities=(2, 4, 8, 16, 32))


# ---------------------------------------------------------------------------------------------- the spec

def test_a_dim_without_a_range_is_told_apart_from_a_declared_one():
    assert not Dim("H").ranged and not parse_dim("H=224").ranged
    assert parse_dim("H=1..").ranged and parse_dim("H=32..512@224").ranged and Dim("H", 32, 512).ranged
    assert parse_dim("H=1..") == Dim("H")  # the same sizes: the flag is not part of equality


# ---------------------------------------------------------------------------------------- discovery, synthetic

def test_without_a_range_the_edge_pytorch_sets_is_found_and_cited():
    domain = found("H", lambda s: s >= 41)
    assert (domain.verified_min, domain.verified_max) == (41, None) and not domain.narrower
    edge = domain.reference_edges()["min"]
    assert edge.size == 40 and edge.by == "pytorch"
    assert "lower edge 41: PyTorch itself fails at 40 (Output size is too small at 40)" in domain.describe()
    assert domain.as_dim() == Dim("H", 41, None, 128) and domain.to_dict()["reference_edges"]["min"]["edge"] == 41


def test_an_upper_edge_pytorch_sets_is_found_too():
    domain = found("S=32", lambda s: s <= 40)  # the off-trace size 48 fails: the edge is bisected
    assert (domain.verified_min, domain.verified_max) == (1, 40) and not domain.narrower
    assert "upper edge 40: PyTorch itself fails at 41" in domain.summary()


def test_an_explicit_range_pytorch_cannot_meet_stays_narrower():
    domain = found("H=32..512@128", lambda s: s >= 41)
    assert domain.narrower and not domain.reference_edges()
    assert "fails at 40 (pytorch: Output size is too small at 40)" in domain.summary()


def test_without_a_range_a_candidate_failure_at_the_edge_is_still_a_failure():
    domain = found("H", lambda s: s >= 48, by=lambda s: "pytorch" if s < 41 else "onnxruntime")
    assert domain.verified_min == 48 and domain.narrower and not domain.reference_edges()


# ------------------------------------------------------------------------------------------- real exports

class Tiny(nn.Module):
    """A small AlexNet-like conv stack: PyTorch itself fails below H = 41 ("Output size is too small")."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 5, stride=2), nn.ReLU(), nn.MaxPool2d(3, 2),
                                      nn.Conv2d(4, 4, 3), nn.ReLU(), nn.MaxPool2d(3, 2), nn.MaxPool2d(3, 2))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


def _config(h: str) -> ExportConfig:
    return ExportConfig(inputs=(parse_input("x:Bx3xHx64:float32"),), dims=(parse_dim(h),), strategy="torchscript")


def test_export_without_a_range_claims_where_pytorch_runs(tmp_path):
    path = tmp_path / "t.onnx"
    result = onnxgate.export(Tiny().eval(), path, config=_config("H=64"))
    domain = result.attempts[result.winner].parity.domains["H"]
    assert domain.verified_min == 41 and not domain.narrower
    assert domain.reference_edges()["min"].size == 40 and TOO_SMALL in domain.reference_edges()["min"].error
    dims = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["onnxgate.dims"])
    assert dims["H"]["min"] == 41 and dims["H"]["max"] is None  # the claim: where the reference runs
    verified = onnxgate.verify(path, Tiny().eval(), config=ExportConfig(inputs=_config("H=64").inputs, dims=(parse_dim("H=64"),)),
                              localize=False)
    assert verified.passed and verified.domains["H"].verified_min == 41


def test_export_with_a_range_pytorch_cannot_meet_exits_4(tmp_path):
    with pytest.raises(ParityError) as info:
        onnxgate.export(Tiny().eval(), tmp_path / "t.onnx", config=_config("H=32..256@64"))
    assert info.value.exit_code == ExitCode.PARITY_FAILED
    assert "fails at 40 (pytorch:" in info.value.message and TOO_SMALL in info.value.message


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = main(["run", "torchvision:alexnet", "--input", "x:Bx3xHxW:float32", *args, "--bench", "none",
                 "--no-optimize"])
    captured = capsys.readouterr()
    return code, " ".join((captured.out + captured.err).split())  # the console wraps long lines


@pytest.mark.slow
def test_alexnet_without_a_range_exits_0_and_names_the_edge(tmp_path, capsys):
    code, out = _run(["-o", str(tmp_path / "out")], capsys)
    assert code == 0, out
    assert "lower edge 63: PyTorch itself fails at 62" in out and TOO_SMALL in out
    dims = json.loads({p.key: p.value for p in onnx.load(str(tmp_path / "out" / "model.onnx"),
                                                         load_external_data=False).metadata_props}["onnxgate.dims"])
    assert dims["H"]["min"] == 63 and dims["W"]["min"] == 63


@pytest.mark.slow
def test_alexnet_with_a_range_it_cannot_meet_exits_4(tmp_path, capsys):
    code, out = _run(["--dim", "H=32..512", "-o", str(tmp_path / "out")], capsys)
    assert code == int(ExitCode.PARITY_FAILED), out
    assert "H: 63..512 (declared 32..512; first working size 63); fails at 62 (pytorch:" in out and TOO_SMALL in out


def test_an_explicit_range_from_1_stays_a_range_through_the_ladder(tmp_path):
    """``H=1..`` without a traced size: the ladder takes it from the model's example (its preparation rebuilds
    the dim), and it is still a declared range."""
    import inspect

    source = tmp_path / "tiny.py"
    source.write_text("import torch\nfrom torch import nn\n\n\n" + inspect.getsource(Tiny)
                      + "\n\ndef build():\n    return Tiny().eval(), {'x': torch.randn(1, 3, 64, 64)}\n")
    with pytest.raises(ParityError) as info:
        onnxgate.export(f"{source}:build", tmp_path / "t.onnx", config=_config("H=1.."))
    assert info.value.exit_code == ExitCode.PARITY_FAILED and "fails at 40 (pytorch:" in info.value.message
