"""The main job end to end: report.json against its published schema, report.html, exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
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


# ------------------------------------------------------------------------------------- the divergence hunt (issue 28)

BAND_MODEL = '''
import torch
from torch import nn


def _exporting():
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_compiling()


class Net(nn.Module):
    """y = Wx, doubled where input channel 2 lies in 3..5: beyond 3 sigma of the proof's N(0,1) feeds, and below
    what their x10 variant reaches (a plain threshold at 3 the sampled proof catches by itself). The graph the
    exporter traces multiplies by EXPORTED instead of 2 there."""

    EXPORTED = 2.5  # wrong: 25% off in the band

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        y = self.linear(x)
        c = x[:, 2:3]
        factor = self.EXPORTED if _exporting() else 2.0
        return torch.where((c > 3.0) & (c < 5.0), y * factor, y)


class Right(Net):
    EXPORTED = 2.0
'''


def _band_run(tmp_path_factory, cls: str, *, static: bool = False, **kw):
    from onnxgate.pipeline import run
    from onnxgate.spec import ExportConfig, parse_dim, parse_input

    folder = tmp_path_factory.mktemp(f"band-{cls}")
    model = folder / "band.py"
    model.write_text(BAND_MODEL)
    config = (ExportConfig(inputs=(parse_input("x:2x4:float32"),)) if static else
              ExportConfig(inputs=(parse_input("x:Bx4:float32"),), dims=(parse_dim("B=1..8@2"),)))
    return run(f"{model}:{cls}", folder / "out", config=config, bench=None, optimize=False, **kw), folder / "out"


@pytest.fixture(scope="module")
def wrong_run(tmp_path_factory):
    return _band_run(tmp_path_factory, "Net")


@pytest.fixture(scope="module")
def right_run(tmp_path_factory):
    return _band_run(tmp_path_factory, "Right")


def test_a_bug_above_3_sigma_passes_the_sampled_proof_and_the_hunt_fails_the_run(wrong_run):
    report, out = wrong_run
    verify = report.stages["verify"]
    assert all(p["passed"] for p in verify["parity"]), "the sampled proof should not reach the band"
    assert report.verdict == "fail" and report.exit_code == ExitCode.PARITY_FAILED and report.stage == "verify"
    assert report.reason.startswith("the divergence hunt found a failing feed") and "output" in report.reason
    assert verify["passed"] is False and "bundle" not in report.stages  # a failed verification: nothing shipped
    hunt = report.stages["hunt"]
    assert not hunt["passed"] and hunt["evaluations"] <= hunt["budget"] <= 200 and hunt["golden"] is None
    d = hunt["distribution"]
    assert d["random"]["max"] <= 1 < d["hunted"]["max"]
    x = np.load(hunt["feed"])["x"]  # the failing feed, kept to reproduce the failure
    assert ((x[:, 2] > 3) & (x[:, 2] < 5)).any()
    on_disk = json.loads((out / "report.json").read_text())
    jsonschema.validate(on_disk, SCHEMA)
    assert on_disk["stages"]["hunt"]["passed"] is False and on_disk["stages"]["verify"]["claim"]["hunt"]
    assert "id='hunt'" in (out / "report.html").read_text()


def test_a_correct_model_passes_the_hunt_and_its_worst_row_joins_the_golden_set(right_run):
    from onnxgate import verify_bundle
    from onnxgate.bundle.manifest import read_manifest
    from onnxgate.spec import parse_input
    from onnxgate.verify.inputs import random_inputs

    report, out = right_run
    assert report.verdict == "pass", report.reason
    hunt = report.stages["hunt"]
    assert hunt["passed"] and hunt["score"] <= 1 and hunt["evaluations"] == hunt["budget"] == 200
    assert hunt["golden"] == {"mode": "appended", "rows": 1, "what": "the worst row", "dim": "B", "golden_size": 3}
    bundle = Path(report.stages["bundle"]["path"])
    golden = np.load(bundle / "golden_inputs.npz")["x"]
    assert golden.shape == (3, 4)  # the random feed at the traced B=2, and the hunted row
    np.testing.assert_array_equal(golden[:2], random_inputs([parse_input("x:Bx4:float32")], {"B": 2}, seed=0)["x"])
    assert verify_bundle(bundle).status == "pass"
    claim = read_manifest(bundle)["claim"]
    assert claim["hunt"]["evaluations"] == 200 and claim["hunt"]["golden"]["rows"] == 1
    html = (out / "report.html").read_text()
    assert "id='hunt'" in html and "random feeds" in html and "joins the bundle's golden set" in html
    jsonschema.validate(json.loads((out / "report.json").read_text()), SCHEMA)


def test_hunt_budget_0_turns_the_hunt_off(tmp_path_factory):
    report, out = _band_run(tmp_path_factory, "Right", hunt_budget=0)
    assert report.verdict == "pass" and "hunt" not in report.stages
    assert np.load(Path(report.stages["bundle"]["path"]) / "golden_inputs.npz")["x"].shape == (2, 4)
    assert "hunt" not in json.loads((out / "report.json").read_text())["stages"]["verify"]["claim"]


def test_with_a_static_batch_the_worst_row_replaces_the_last_random_row(tmp_path_factory):
    from onnxgate import verify_bundle
    from onnxgate.spec import parse_input
    from onnxgate.verify.inputs import random_inputs

    report, out = _band_run(tmp_path_factory, "Right", static=True)
    assert report.verdict == "pass", report.reason
    assert report.stages["hunt"]["golden"]["mode"] == "replaced" and report.stages["hunt"]["golden"]["rows"] == 1
    bundle = Path(report.stages["bundle"]["path"])
    golden = np.load(bundle / "golden_inputs.npz")["x"]
    random = random_inputs([parse_input("x:2x4:float32")], {}, seed=0)["x"]
    assert golden.shape == (2, 4) and (golden[0] == random[0]).all() and not (golden[1] == random[1]).all()
    assert verify_bundle(bundle).status == "pass"
    assert "replaces the last random row" in (out / "report.html").read_text()


def _swapped_bundles(right_run, wrong_run, folder: Path) -> tuple[Path, Path]:
    """The right run's bundle with the wrong export in place of its model (written afresh, so the checksums hold
    and only the numbers can tell): its own golden set, and that set joined by the row the wrong run's hunt found
    (with PyTorch's outputs on it, the bundle's tolerances)."""
    from onnxgate.bundle import write_bundle
    from onnxgate.bundle.manifest import read_manifest
    from onnxgate.runtimes.torch_runner import TorchRunner
    from onnxgate.sources import load_model
    from onnxgate.verify.hunt import golden_with

    bundle = Path(right_run[0].stages["bundle"]["path"])
    golden = dict(np.load(bundle / "golden_inputs.npz"))
    tolerances = {n: (t["rtol"], t["atol"]) for n, t in read_manifest(bundle)["tolerances"].items()}
    wrong_report, wrong_out = wrong_run
    found = np.load(wrong_report.stages["hunt"]["feed"])["x"]
    row = {"x": found[((found[:, 2] > 3) & (found[:, 2] < 5)).argmax()][None]}
    pytorch = TorchRunner(load_model(wrong_report.ref).module, input_names=["x"], output_names=["output"])

    def bundle_of(feed, name):
        return write_bundle(folder / name, model_path=wrong_out / "model.onnx", golden_inputs=feed,
                            reference_outputs=pytorch.run(feed), tolerances=tolerances)

    return bundle_of(golden, "plain"), bundle_of(golden_with(golden, row), "hunted")


def test_the_hunted_row_in_the_golden_set_fails_the_wrong_artifact(right_run, wrong_run, tmp_path):
    """Re-verification of the wrong artifact fails on the hunted row; the bundle's own golden rows let it through."""
    from onnxgate.bundle.verify import verify_bundle

    plain, hunted = _swapped_bundles(right_run, wrong_run, tmp_path)
    assert verify_bundle(plain).status == "pass"
    result = verify_bundle(hunted)
    assert result.status == "fail", result.reason
    assert any(not c.passed for c in result.outputs if c.name == "output")


@pytest.mark.slow
def test_the_hunted_row_fails_the_wrong_artifact_in_a_fresh_venv(right_run, wrong_run, tmp_path):
    """The same, on a production box: a new venv with numpy, onnxruntime and the CLI libraries and onnxgate without
    its dependencies (no torch, no onnx); `onnxgate verify BUNDLE` there fails the hunted bundle with exit 4."""
    from helpers import torchless_venv

    plain, hunted = _swapped_bundles(right_run, wrong_run, tmp_path)
    venv = torchless_venv(tmp_path)

    def verify(bundle):
        proc = subprocess.run([str(venv / "bin" / "onnxgate"), "verify", str(bundle), "--json"], capture_output=True,
                              text=True)
        return proc.returncode, json.loads(proc.stdout)

    assert verify(plain)[0] == 0
    code, doc = verify(hunted)
    assert code == ExitCode.PARITY_FAILED == doc["exit_code"] and doc["result"]["results"][0]["status"] == "fail", doc
