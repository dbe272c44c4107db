"""Reference identity (issue 12, Build 6): the exported weights' fingerprint is recorded, and verify says so — exit 2,
not a parity table — when the reference it rebuilds holds other weights; a state-dict source's recorded
architecture is used like a recorded source."""

from __future__ import annotations

import textwrap

import onnx
import pytest
import torch
from torch import nn

from onnxgate.cli.main import main
from onnxgate.errors import BadInputError, ModelSourceError
from onnxgate.spec import ExportConfig, VerifyConfig, parse_input
from onnxgate.verify.identity import reference_arch, weights_fingerprint

MODELS = textwrap.dedent("""
    import torch
    from torch import nn


    class Net(nn.Module):  # random weights on every build: no seed
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(x)


    class Seeded(Net):
        def __init__(self):
            torch.manual_seed(0)
            super().__init__()
""")


@pytest.fixture
def models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models.py").write_text(MODELS)
    return tmp_path


def save_linear(path) -> None:
    torch.save({f"fc.{k}": v for k, v in nn.Linear(6, 3).state_dict().items()}, path)


def metadata(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_fingerprint_covers_names_shapes_dtypes_and_bytes():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    b = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    b.load_state_dict(a.state_dict())
    assert weights_fingerprint(a) == weights_fingerprint(b)
    with torch.no_grad():
        b[0].bias[1] += 1e-7
    assert weights_fingerprint(a) != weights_fingerprint(b)
    assert weights_fingerprint(a.to(torch.bfloat16)) != weights_fingerprint(a.float())  # dtype and raw bytes
    assert weights_fingerprint(nn.ReLU()) == weights_fingerprint(nn.Tanh())  # no state: the empty digest
    assert weights_fingerprint(object()) is None


def test_a_class_that_initializes_randomly_fails_verify_as_bad_input_naming_the_cause(models, capsys):
    assert main(["export", "models.py:Net", "-o", "net.onnx", "--input", "x:Bx6:float32"]) == 0
    assert len(metadata(models / "net.onnx")["onnxgate.weights_sha256"]) == 64
    capsys.readouterr()
    assert main(["verify", "net.onnx", "--against", "models.py:Net"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "the reference was re-initialized randomly" in err.lower() and "seed it" in err.lower()
    assert "parity" not in err.lower().replace("a parity table would only", "")  # no parity table, no blame


def test_a_seeded_class_rebuilds_the_same_weights_and_verifies(models):
    assert main(["export", "models.py:Seeded", "-o", "seeded.onnx", "--input", "x:Bx6:float32"]) == 0
    assert main(["verify", "seeded.onnx", "--against", "models.py:Seeded"]) == 0


def test_a_state_dict_source_records_its_arch_and_weights_and_verify_uses_them(models, capsys):
    torch.manual_seed(1)
    save_linear(models / "w.pth")
    assert main(["export", "w.pth", "--arch", "models.py:Seeded", "-o", "sd.onnx", "--input", "x:Bx6:float32"]) == 0
    meta = metadata(models / "sd.onnx")
    assert meta["onnxgate.source"] == "w.pth" and meta["onnxgate.arch"] == "models.py:Seeded"
    # A recorded architecture that is code is used only with --trust-source, like a recorded source.
    assert main(["verify", "sd.onnx", "--against", "w.pth"]) == 2
    assert "--arch" in capsys.readouterr().err
    assert main(["verify", "sd.onnx", "--trust-source"]) == 0
    # Other weights for the same architecture: the weights differ, said as such.
    torch.manual_seed(2)
    save_linear(models / "other.pth")
    capsys.readouterr()
    assert main(["verify", "sd.onnx", "--against", "models.py:Seeded", "--weights", "other.pth"]) == 2
    assert "not the exported ones" in " ".join(capsys.readouterr().err.split())


def test_a_recorded_registry_arch_is_used_without_trust_and_code_is_not(models):
    (models / "w.pth").write_bytes(b"")
    (models / "other.pth").write_bytes(b"")
    meta = {"onnxgate.source": "w.pth", "onnxgate.arch": "torchvision:resnet18"}
    assert reference_arch("w.pth", meta, None, trust_source=False) == "torchvision:resnet18"
    assert reference_arch("w.pth", meta, "timm:resnet18", trust_source=False) == "timm:resnet18"  # --arch wins
    assert reference_arch("other.pth", meta, None, trust_source=False) is None  # not the recorded source
    code = {"onnxgate.source": "w.pth", "onnxgate.arch": "evil.py:Net"}
    assert reference_arch("w.pth", code, None, trust_source=False) is None
    assert reference_arch("w.pth", code, None, trust_source=True) == "evil.py:Net"


def test_python_api_raises_bad_input_for_other_weights(models):
    from onnxgate import export, verify

    export("models.py:Net", models / "n.onnx", config=ExportConfig(inputs=(parse_input("x:Bx6:float32"),)))
    with pytest.raises(BadInputError, match="holds other weights") as caught:
        verify(models / "n.onnx", "models.py:Net", settings=VerifyConfig())
    assert not isinstance(caught.value, ModelSourceError) and caught.value.exit_code == 2
