"""The export ladder on small real modules: what wins, what is recorded, what is refused."""

import json
import math

import onnx
import pytest
import torch
from torch import nn

import onnxgate
from onnxgate.errors import ExitCode, ParityError
from onnxgate.spec import ExportConfig, parse_dim, parse_input


def cfg(*inputs, dims=(), **kw):
    return ExportConfig(inputs=tuple(parse_input(s) for s in inputs), dims=tuple(parse_dim(d) for d in dims), **kw)


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.head(self.drop(x.mean(dim=(2, 3))))


class DictAndNested(nn.Module):
    def forward(self, x):
        return {"logits": x.sum(-1), "aux": (x * 2, (x - 1, x.mean(-1)))}


class FrozenBatch(nn.Module):
    def forward(self, x):
        return (x + 1).reshape(int(x.shape[0]), -1)  # Python int: traced as a constant


class ScaleByWidth(nn.Module):
    def forward(self, x):
        return x * (1.0 / math.sqrt(x.shape[-1]))  # a Python float under tracing: right only at the traced width


def test_dynamic_batch_wins_with_first_strategy_and_records_attempts(tmp_path):
    out = tmp_path / "net.onnx"
    result = onnxgate.export(SmallNet().eval(), out, config=cfg("x:Bx3x16x16:float32", dims=["B=1..32"]))
    assert result.ok and result.winner == 0 and result.fallbacks == 0
    won = result.attempts[0]
    assert won.strategy == "dynamo" and won.outcome == "ok" and won.seconds > 0 and won.peak_mb >= 0
    assert won.max_abs_err is not None and won.max_abs_err < 1e-4
    assert [a.outcome for a in result.attempts[1:]] == ["skipped"] * (len(result.attempts) - 1)
    assert result.structure.inputs[0].shape == ["B", 3, 16, 16]
    assert "training mode" not in " ".join(result.warnings)


def test_training_mode_is_switched_off_and_named(tmp_path):
    model = SmallNet().train()
    result = onnxgate.export(model, tmp_path / "m.onnx", config=cfg("x:2x3x16x16:float32"))
    warning = " ".join(result.warnings)
    assert "training mode" in warning and "drop" in warning and "bn" in warning
    assert not model.training


def test_dict_and_nested_outputs_get_stable_names(tmp_path):
    result = onnxgate.export(DictAndNested(), tmp_path / "m.onnx", config=cfg("x:2x5:float32"))
    assert result.outputs == ["logits", "aux.0", "aux.1.0", "aux.1.1"]
    assert [o.name for o in result.structure.outputs] == result.outputs


def test_frozen_batch_is_a_parity_failure_naming_the_dim(tmp_path):
    with pytest.raises(ParityError) as info:  # --no-repair: the plain rungs only
        onnxgate.export(FrozenBatch(), tmp_path / "m.onnx", config=cfg("x:Bx4:float32", dims=["B=1..8"], repair=False))
    assert info.value.exit_code == ExitCode.PARITY_FAILED
    assert "B (frozen at 2)" in info.value.message and "--allow-static B" in info.value.hint
    assert not (tmp_path / "m.onnx").exists()
    outcomes = {a.outcome for a in info.value.result.attempts}
    assert outcomes <= {"frozen_dim", "export_error", "runtime_error", "skipped"} and "frozen_dim" in outcomes


def test_strict_capture_rung_keeps_a_python_int_size_symbolic(tmp_path):
    """`reshape(int(x.shape[0]), -1)`: non-strict capture and tracing freeze B; TorchDynamo's strict capture keeps
    the int symbolic. The extra rung wins only after the plain ones failed, and verifies at every batch size."""
    result = onnxgate.export(FrozenBatch(), tmp_path / "m.onnx", config=cfg("x:Bx4:float32", dims=["B=1..8"]))
    won = result.attempts[result.winner]
    assert (won.strategy, won.variant) == ("dynamo", "strict")
    assert {a.outcome for a in result.attempts[:result.winner]} <= {"frozen_dim", "skipped"}
    assert won.parity.passed and not won.frozen_dims
    from onnxgate import serde

    props = {p.key: p.value for p in serde.load(tmp_path / "m.onnx").metadata_props}
    assert props["onnxgate.export_variant"] == "strict"


def test_allow_static_accepts_a_frozen_dim_explicitly(tmp_path):
    result = onnxgate.export(FrozenBatch(), tmp_path / "m.onnx",
                             config=cfg("x:Bx4:float32", dims=["B=1..8"], allow_static=("B",)))
    assert result.ok and "B" in result.attempts[result.winner].frozen_dims


def test_scale_from_traced_width_is_caught(tmp_path):
    """Dynamo keeps the width symbolic and computes the scale in the graph; a tracer bakes 1/sqrt(16) in.
    Either the ladder finds an export right at every width, or it refuses: never a silent pass."""
    try:
        result = onnxgate.export(ScaleByWidth(), tmp_path / "m.onnx", config=cfg("x:2xW:float32", dims=["W=4..64@16"]))
    except ParityError as exc:
        assert "W" in exc.message
        return
    from onnxgate.runtimes.ort import OrtRunner
    import numpy as np

    x = np.random.default_rng(0).standard_normal((2, 36)).astype(np.float32)
    got = OrtRunner(tmp_path / "m.onnx").run({"x": x})["output"]
    np.testing.assert_allclose(got, x / 6.0, rtol=1e-5)
    assert result.ok


def test_pinned_strategy_and_opset(tmp_path):
    result = onnxgate.export(SmallNet(), tmp_path / "m.onnx", config=cfg("x:2x3x8x8:float32", strategy="torchscript", opset=17))
    assert [(a.strategy, a.opset) for a in result.attempts] == [("torchscript", 17)]
    assert result.structure.opset == 17


def test_metadata_round_trip_keeps_non_ascii_labels(tmp_path):
    labels = ("猫", "狗", "鸟", "鱼")
    out = tmp_path / "m.onnx"
    onnxgate.export(SmallNet(), out, config=cfg("x:2x3x8x8:float32", labels=labels, meta={"owner": "视觉组"}))
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["labels"]) == list(labels)
    assert meta["owner"] == "视觉组"
    assert meta["onnxgate.version"] == onnxgate.__version__ and meta["onnxgate.torch_version"] == torch.__version__
    assert json.loads(meta["onnxgate.inputs"]) == [{"name": "x", "shape": [2, 3, 8, 8], "dtype": "float32",
                                                    "value_range": None}]


class Noisy(nn.Module):
    def forward(self, x):
        return x + torch.rand_like(x)


def test_non_deterministic_model_is_flagged(tmp_path):
    from onnxgate.export.prepare import prepare
    from onnxgate.sources import LoadedModel

    prepared = prepare(LoadedModel(Noisy(), "Noisy"), cfg("x:2x3:float32"))
    assert not prepared.deterministic
    assert "not deterministic" in " ".join(prepared.warnings)


def test_winner_is_judged_and_proven_on_sign_and_scale_variants(tmp_path):
    """Issue 23: every rung's quick check and the winner's proof add all-negative, all-positive, zeros, x10 and
    x0.01 feeds, and the proof re-runs the example every rung was judged on."""
    from onnxgate.verify.inputs import VARIANTS

    result = onnxgate.export(nn.Linear(4, 3).eval(), tmp_path / "m.onnx", config=cfg("x:Bx4:float32", dims=["B=1..8"]))
    won = result.attempts[result.winner]
    labels = {c.label for c in won.parity.cases}
    assert set(VARIANTS) <= labels and "example" in labels
    assert all(c.passed for c in won.parity.cases if c.label in VARIANTS)
