"""Flags and onnxgate.toml become one RunConfig in the library (configure.py); `run` takes what export, verify and
quantize take that a whole job needs, and the toml keys mirror the flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from onnxgate.cli.main import main
from onnxgate.configure import ExportFlags, RunFlags, run_config
from onnxgate.errors import BadInputError, ExitCode
from onnxgate.configure import load_toml
from onnxgate.spec import QuantizeConfig

MODEL = """
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 3)
    def forward(self, x):
        return self.fc(x).relu()
"""


def test_toml_mirrors_the_run_flags(tmp_path):
    toml = tmp_path / "onnxgate.toml"
    toml.write_text('ref = "m.py:Net"\nbench = "none"\noptimize = false\ndata = ["feeds.npz"]\n'
                    '[quantize]\nmode = "dynamic"\nmethod = "entropy"\nmax_error = 0.5\neval = "eval.npz"\n')
    job = load_toml(toml)
    assert job.bench == "none" and job.optimize is False and job.data == ("feeds.npz",)
    assert job.quantize == QuantizeConfig(mode="dynamic", method="entropy", max_error=0.5,
                                          eval_data=str(tmp_path / "eval.npz"))
    # flags win over the file, the file over the defaults
    merged = run_config(None, RunFlags(ExportFlags(config_file=toml), bench="quick", method="percentile"))
    assert merged.ref == "m.py:Net" and merged.bench == "quick" and merged.optimize is False
    assert merged.quantize.method == "percentile" and merged.quantize.mode == "dynamic"


@pytest.mark.parametrize("flags, needle", [
    (RunFlags(bench="fast"), "--bench 'fast'"),
    (RunFlags(quantize="int4"), "--quantize 'int4'"),
    (RunFlags(quantize="static", method="kl"), "--method 'kl'"),
    (RunFlags(ExportFlags(strategy="tracing")), "'tracing'"),
])
def test_bad_run_options_are_refused_before_any_model_loads(flags, needle):
    with pytest.raises(BadInputError, match=needle.replace("(", r"\(")):
        run_config("m.py:Net", flags)


def test_toml_quantize_table_is_strict(tmp_path):
    toml = tmp_path / "onnxgate.toml"
    toml.write_text('ref = "m.py:Net"\n[quantize]\nmethd = "entropy"\n')
    with pytest.raises(BadInputError, match="did you mean 'method'"):
        load_toml(toml)


def test_run_takes_a_state_dict_with_arch(tmp_path, capsys):
    """The state-dict path works through `run`: weights file as the reference, --arch naming the architecture."""
    (tmp_path / "m.py").write_text(MODEL)
    import importlib.util

    spec = importlib.util.spec_from_file_location("m_for_weights", tmp_path / "m.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(3)
    torch.save(module.Net().state_dict(), tmp_path / "weights.pth")
    code = main(["run", str(tmp_path / "weights.pth"), "--arch", f"{tmp_path / 'm.py'}:Net", "--input",
                 "x:Bx6:float32", "--bench", "none", "--no-optimize", "--no-bundle", "-o", str(tmp_path / "out"),
                 "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == ExitCode.OK, doc["reason"]
    assert doc["result"]["verdict"] == "pass" and doc["result"]["ref"].endswith("weights.pth")
    assert Path(tmp_path / "out" / "model.onnx").is_file()
