"""The runners agree on one tiny conv net; output naming; torch-free imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from onnxgate.errors import BadInputError  # noqa: E402
from onnxgate.runtimes.base import Runner  # noqa: E402
from onnxgate.runtimes.ort import OrtRunner  # noqa: E402
from onnxgate.runtimes.torch_runner import TorchRunner, flatten_outputs, reinit_degenerate_parameters  # noqa: E402
from onnxgate.verify.compare import check_input_sensitivity, compare_outputs  # noqa: E402


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        features = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.head(features), features


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = TinyNet().eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, 16, 16),), str(path), dynamo=False, input_names=["x"],
                      output_names=["logits", "features"], dynamic_axes={"x": {0: "B", 2: "H", 3: "W"}})
    return model, path


def test_torch_ort_and_openvino_agree(tiny):
    model, path = tiny
    x = np.random.default_rng(0).standard_normal((3, 3, 20, 24)).astype(np.float32)  # not the export shape
    with TorchRunner(model, input_names=["x"], output_names=["logits", "features"]) as ref_runner:
        reference = ref_runner.run({"x": x})
    assert list(reference) == ["logits", "features"] and reference["logits"].shape == (3, 10)
    from onnxgate.runtimes.openvino import OpenVinoRunner

    assert isinstance(ref_runner, Runner)
    candidates = [OrtRunner(path)]
    if _has("openvino"):
        candidates.append(OpenVinoRunner(path))
    for runner in candidates:
        assert isinstance(runner, Runner)
        with runner:
            got = runner.run({"x": x})
            again = runner.run({"x": x[:1]})  # a second shape in the same session
        assert list(got) == ["logits", "features"] and again["logits"].shape == (1, 10)
        comps = compare_outputs(reference, got)
        assert all(c.passed for c in comps), [(runner.name, c.reason) for c in comps]


def test_openvino_static_only_path_reshapes_per_shape(tiny):
    pytest.importorskip("openvino")
    from onnxgate.runtimes.openvino import OpenVinoRunner

    runner = OpenVinoRunner(tiny[1])
    runner._static_only = True  # what a device without dynamic-shape support gets
    for batch in (1, 2, 1):
        assert runner.run({"x": np.zeros((batch, 3, 8, 8), np.float32)})["logits"].shape == (batch, 10)
    assert len(runner._compiled) == 3  # the dynamic compile plus two shape sets
    with pytest.raises(BadInputError, match="no value for input"):
        runner.run({"y": np.zeros(1)})


def test_openvino_runner_as_the_benchmark_configures_it(tiny):
    """One OpenVINO runner: ACCURACY for verification; the benchmark's PERFORMANCE mode, LATENCY hint and thread
    count through the same class, with the precision OpenVINO chose on record."""
    pytest.importorskip("openvino")
    from onnxgate.bench.runners import Config, open_runner
    from onnxgate.runtimes.openvino import OpenVinoRunner

    model, path = tiny
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    y = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    accurate = OpenVinoRunner(path)
    assert accurate._config == {"EXECUTION_MODE_HINT": "ACCURACY"}
    assert accurate.inference_precision in {"dynamic", "f32"}  # "dynamic": each op at the model's own precision
    expected = accurate.run({"x": x})
    with open_runner(Config("openvino", "base", 1), model_path=path) as runner:
        assert isinstance(runner, OpenVinoRunner) and isinstance(runner, Runner)
        assert runner._config == {"EXECUTION_MODE_HINT": "PERFORMANCE", "PERFORMANCE_HINT": "LATENCY",
                                  "INFERENCE_NUM_THREADS": 1}
        compiled = runner._compiled[()]
        assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
        assert runner.inference_precision in {"f32", "bf16", "f16"}
        got = runner.run({"x": x})
        before = got["logits"].copy()
        runner.run({"x": y})  # the reused infer request overwrites its buffers; the caller's arrays stay
        np.testing.assert_array_equal(got["logits"], before)
    tol = 1e-4 if runner.inference_precision == "f32" else 5e-2  # bf16 on CPUs that have it: OpenVINO's choice
    np.testing.assert_allclose(got["logits"], expected["logits"], rtol=tol, atol=tol)


def test_missing_openvino_raises_missing_extra(monkeypatch, tmp_path):
    from onnxgate.errors import MissingExtraError
    from onnxgate.runtimes.openvino import OpenVinoRunner

    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingExtraError, match="onnxgate\\[openvino\\]"):
        OpenVinoRunner(tmp_path / "m.onnx")


def test_unreadable_model_is_runtime_incompatible(tmp_path):
    pytest.importorskip("openvino")
    from onnxgate.errors import RuntimeIncompatibleError
    from onnxgate.runtimes.openvino import OpenVinoRunner

    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(RuntimeIncompatibleError, match="OpenVINO"):
        OpenVinoRunner(tmp_path / "junk.onnx")


def test_flatten_outputs_names():
    t = torch.zeros(1)
    assert [n for n, _ in flatten_outputs(t)] == ["output"]
    assert [n for n, _ in flatten_outputs((t, [t, (t, None)]))] == ["out.0", "out.1.0", "out.1.1.0"]
    assert [n for n, _ in flatten_outputs({"logits": t, "aux": {"a": t, "b": [t, t]}, "loss": None})] == [
        "logits", "aux.a", "aux.b.0", "aux.b.1"]
    assert [n for n, _ in flatten_outputs([{"k": t}], prefix="y")] == ["y.0.k"]
    with pytest.raises(BadInputError, match="returns a str at 'out.1'"):
        flatten_outputs((t, "text"))


def test_flatten_outputs_hf_style_model_output():
    from collections import OrderedDict

    class ModelOutput(OrderedDict):  # what transformers' ModelOutput is: a dict without its None fields
        pass

    out = ModelOutput(last_hidden_state=torch.zeros(1), hidden_states=(torch.zeros(1), torch.zeros(1)))
    assert [n for n, _ in flatten_outputs(out)] == ["last_hidden_state", "hidden_states.0", "hidden_states.1"]


class KeywordNet(nn.Module):
    def forward(self, input_ids, attention_mask=None, scale=None):
        return {"y": input_ids.float() * (1 if scale is None else scale) + attention_mask.float()}


def test_torch_runner_passes_keywords_when_names_match_forward():
    runner = TorchRunner(KeywordNet(), input_names=["attention_mask", "input_ids"])  # not forward()'s order
    assert runner.by_keyword
    out = runner.run({"input_ids": np.array([2]), "attention_mask": np.array([1])})
    assert out == {"y": np.array([3.0], np.float32)}
    positional = TorchRunner(KeywordNet(), input_names=["ids", "mask"])
    assert not positional.by_keyword
    assert positional.run({"ids": np.array([2]), "mask": np.array([1])})["y"][0] == 3.0
    with pytest.raises(BadInputError, match="no value for input"):
        positional.run({"ids": np.array([2])})
    with pytest.raises(BadInputError, match="output names"):
        TorchRunner(KeywordNet(), input_names=["ids", "mask"], output_names=["a", "b"]).run(
            {"ids": np.array([2]), "mask": np.array([1])})


def test_torch_runner_returns_float32_for_bfloat16():
    class Half(nn.Module):
        def forward(self, x):
            return x.to(torch.bfloat16)

    out = TorchRunner(Half(), input_names=["x"]).run({"x": np.array([1.5], np.float32)})
    assert out["output"].dtype == np.float32 and out["output"][0] == 1.5


def test_reinit_degenerate_parameters_restores_input_sensitivity():
    torch.manual_seed(0)
    model = TinyNet().eval()
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    runner = TorchRunner(model, input_names=["x"])
    rng = np.random.default_rng(0)
    xa, xb = (rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(2))
    assert check_input_sensitivity(runner.run({"x": xa}), runner.run({"x": xb})) == ["out.0"]
    assert reinit_degenerate_parameters(model) == ["head.weight"]  # biases are left alone
    assert model.head.weight.abs().max() > 0 and model.head.bias.abs().max() == 0
    assert check_input_sensitivity(runner.run({"x": xa}), runner.run({"x": xb})) == []
    assert reinit_degenerate_parameters(model) == []


def test_verification_modules_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None; "
            "import onnxgate.verify.compare, onnxgate.verify.inputs, onnxgate.runtimes.ort, "
            "onnxgate.runtimes.openvino, onnxgate.runtimes.torch_runner; "
            "assert sys.modules['torch'] is None")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
