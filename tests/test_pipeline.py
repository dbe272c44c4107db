"""The main job end to end: report.json against its published schema, report.html, exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from onnxgate.cli.main import main
from onnxgate.errors import ExitCode

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "docs" / "schemas" / "report.schema.json").read_text())
ONNXGATE = Path(sys.executable).parent / "onnxgate"

FROZEN_MODEL = '''
import torch
from torch import nn


class Flatten(nn.Module):
    def forward(self, x):
        return x.reshape(int(x.shape[0]), -1)  # a Python int: the batch is frozen under tracing


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(6, 6)
        self.flat = Flatten()
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.flat(self.body(x)))
'''


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The README's main-job command, as a user runs it: `onnxgate demo` in a fresh folder."""
    cwd = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([str(ONNXGATE), "demo"], cwd=cwd, capture_output=True, text=True, timeout=900)
    return proc, cwd / "onnxgate-demo"


def test_readme_main_job_passes_and_writes_both_reports(demo_run):
    proc, out = demo_run
    assert proc.returncode == 0, proc.stderr
    assert "verdict: pass" in proc.stderr
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    assert report["verdict"] == "pass" and report["exit_code"] == 0
    acc = report["stages"]["accuracy"]
    assert acc["onnxruntime"]["top1"] > 0.95 and abs(acc["onnxruntime"]["top1"] - acc["pytorch"]["top1"]) < 0.01
    assert report["stages"]["bundle"]["verification"]["passed"]
    html = (out / "report.html").read_text()
    assert "PASS" in html and 'data-plot="max-abs-error-onnxruntime"' in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained


def test_readme_starts_with_the_two_commands():
    lines = [l for l in (REPO / "README.md").read_text().splitlines() if l.strip()]
    block = lines[lines.index("```bash") + 1: lines.index("```bash") + 3]
    assert block[0].startswith("bash scripts/setup.sh && .venv/bin/onnxgate demo")
    assert block[1].startswith("bash scripts/test.sh")
    assert "scripts/test.sh" in (REPO / ".ci" / "run").read_text()


def test_parity_failure_exits_with_parity_code_naming_output_shape_and_layer(tmp_path, capsys):
    model = tmp_path / "frozen.py"
    model.write_text(FROZEN_MODEL)
    out = tmp_path / "out"
    code = main(["run", f"{model}:Net", "--input", "x:Bx6:float32", "--dim", "B=1..8", "-o", str(out),
                 "--no-repair"])  # the strict-capture rung would keep its int(x.shape[0]) symbolic
    assert code == ExitCode.PARITY_FAILED
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    assert report["verdict"] == "fail" and report["exit_code"] == ExitCode.PARITY_FAILED
    reason = report["reason"]
    assert "B (frozen at 2)" in reason  # which dim and traced size
    assert "output" in reason and "B=" in reason  # which output, at which shape
    assert "flat" in reason and "Flatten" in reason  # which layer
    assert not (out / "model.onnx").exists() and (out / "model.rejected.onnx").exists()
    assert "FAIL" in (out / "report.html").read_text()


def test_toml_config_runs_the_same_job(tmp_path, capsys):
    (tmp_path / "onnxgate.toml").write_text(
        'ref = "onnxgate.examples.digits:trained_digits_cnn"\ninput = ["x:Bx1x8x8:float32"]\ndim = ["B=1..16@4"]\n'
        f'output = "{tmp_path / "out"}"\n')
    code = main(["run", str(tmp_path / "onnxgate.toml"), "--no-bundle", "--json"])
    envelope = json.loads(capsys.readouterr().out)
    report = envelope["result"]
    assert code == 0 and envelope["ok"] and envelope["command"] == "run" and report["verdict"] == "pass" and "bundle" not in report["stages"]
    jsonschema.validate(report, SCHEMA)


def test_report_renders_in_notebooks(demo_run):
    from onnxgate.pipeline import PipelineReport

    data = json.loads((demo_run[1] / "report.json").read_text())
    report = PipelineReport(data["ref"], data["out_dir"], data["stages"], data["verdict"], data["exit_code"])
    assert report._repr_html_().startswith("<!DOCTYPE html>")
