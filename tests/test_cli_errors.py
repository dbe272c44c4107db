"""Bad input: one-paragraph error, a documented non-zero exit code, no traceback, nothing half-written."""

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from onnxgate.cli.main import main
from onnxgate.errors import ExitCode


class _WritesMarker:
    """Unpickling this object creates a file: proof that untrusted code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def evil_pickle(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "model.pt"
    with open(path, "wb") as f:
        pickle.dump(_WritesMarker(marker), f)
    return path, marker


@pytest.mark.parametrize("argv, code, needle", [
    (["export", "missing_model.py:Net", "-o", "{tmp}/m.onnx"], ExitCode.BAD_INPUT, "missing_model.py"),
    (["export", "resnet18", "-o", "{tmp}/m.onnx"], ExitCode.BAD_INPUT, "resnet18"),
    (["export", "torchvision:resnet1800", "-o", "{tmp}/m.onnx"], ExitCode.BAD_INPUT, "resnet1800"),
    (["export", "torchvision:resnet18", "-o", "{tmp}/m.onnx", "--input", "x:1x3xx224:float32"], ExitCode.BAD_INPUT, "does not parse"),
    (["export", "torchvision:resnet18", "-o", "{tmp}/no/such/folder/m.onnx"], ExitCode.BAD_INPUT, "does not exist"),
    (["inspect", "{tmp}/nothing.onnx"], ExitCode.BAD_INPUT, "nothing.onnx"),
    (["export", "torchvision:resnet18", "-o", "{tmp}/m.onnx", "--opset", "3"], ExitCode.BAD_INPUT, "--opset 3"),
    (["export", "torchvision:resnet18", "-o", "{tmp}/m.onnx", "--opset", "99"], ExitCode.BAD_INPUT, "--opset 99"),
    (["export", "torchvision:resnet18", "-o", "{tmp}/m.onnx", "--device", "banana"], ExitCode.BAD_INPUT, "banana"),
    (["verify", "{tmp}/nothing.onnx", "--rtol", "-1"], ExitCode.BAD_INPUT, "--rtol -1"),
    (["verify", "{tmp}/nothing.onnx", "--atol", "-1"], ExitCode.BAD_INPUT, "--atol -1"),
])
def test_bad_input_gives_one_paragraph_and_exit_code(capsys, tmp_path, argv, code, needle):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    got, out, err = run_cli(capsys, *argv)
    assert got == code
    assert needle in err
    assert "Traceback" not in err + out
    assert not list(tmp_path.glob("**/*.onnx")), "nothing may be written on bad input"


def test_pickle_refused_without_trust_and_never_unpickled(capsys, tmp_path, evil_pickle):
    path, marker = evil_pickle
    code, out, err = run_cli(capsys, "export", str(path), "-o", str(tmp_path / "m.onnx"))
    assert code == ExitCode.UNSAFE_INPUT
    assert "--trust-pickle" in err
    assert not marker.exists(), "the pickle was unpickled without --trust-pickle"


def test_existing_output_is_kept_without_force(capsys, tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"precious")
    code, _, err = run_cli(capsys, "export", "torchvision:resnet18", "-o", str(target))
    assert code == ExitCode.BAD_INPUT and "--force" in err
    assert target.read_bytes() == b"precious"


def test_json_error_on_stdout(capsys, tmp_path):
    import json

    code, out, _ = run_cli(capsys, "export", "nocolon", "-o", str(tmp_path / "m.onnx"), "--json")
    assert code == ExitCode.BAD_INPUT
    data = json.loads(out)
    assert data["ok"] is False and data["error"]["exit_code"] == ExitCode.BAD_INPUT and data["error"]["hint"]


def test_no_traceback_in_a_real_process(tmp_path):
    """The installed console script, not just main(): an expected failure prints no traceback."""
    exe = Path(sys.executable).parent / "onnxgate"
    proc = subprocess.run([str(exe), "export", "torchvision:not_a_model", "-o", str(tmp_path / "m.onnx")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == ExitCode.BAD_INPUT
    assert "not_a_model" in proc.stderr and "Traceback" not in proc.stderr


def test_usage_error_is_bad_input_without_traceback(capsys):
    code, out, err = run_cli(capsys, "export", "--no-such-flag")
    assert code == ExitCode.BAD_INPUT and "--no-such-flag" in err and "Traceback" not in err


def test_version(capsys):
    from onnxgate import __version__

    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and __version__ in out


@pytest.mark.slow
def test_issue_acceptance_resnet18_export_runs_at_batch_1_and_4(capsys, tmp_path):
    """The foundation issue's first acceptance line, verbatim, then onnxruntime at batch 1 and 4 vs PyTorch."""
    import numpy as np

    import onnxgate
    from onnxgate.runtimes.ort import OrtRunner

    out = tmp_path / "r18.onnx"
    code, _, err = run_cli(capsys, "export", "torchvision:resnet18", "-o", str(out), "--input", "x:Bx3x224x224:float32")
    assert code == 0, err
    model = onnxgate.load_model("torchvision:resnet18").module
    for batch in (1, 4):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        got = OrtRunner(out).run({"x": x})["output"]
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_long_steps_show_plain_progress_lines_when_piped(tmp_path):
    """In a CI log (stderr is a pipe) a spinner shows nothing: each step is one plain, timed line instead."""
    model = tmp_path / "net.py"
    model.write_text("import torch\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                     "        self.fc = torch.nn.Linear(4, 2)\n    def forward(self, x):\n        return self.fc(x)\n")
    proc = subprocess.run([str(Path(sys.executable).parent / "onnxgate"), "export", f"{model}:Net", "-o",
                           str(tmp_path / "m.onnx"), "--input", "x:Bx4:float32"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    steps = [line for line in proc.stderr.splitlines() if line.startswith("[") and "s] " in line]
    assert steps[0].endswith("exporting") and any("attempt 1/" in line for line in steps), proc.stderr


@pytest.mark.parametrize("argv, needle", [
    (["serve", "some-bundle", "--no-such-option", "--json"], "--no-such-option"),
    (["verify", "--json"], "Missing argument"),
    (["deploy", "--json"], "Missing"),
])
def test_usage_errors_under_json_still_print_the_one_envelope(argv, needle):
    """Issue 22 item 7: an unknown option or a missing argument with --json is exit 2 with the envelope on stdout
    (the real console script, so the isolated child's output is what is checked)."""
    import json

    exe = Path(sys.executable).parent / "onnxgate"
    proc = subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr
    doc = json.loads(proc.stdout)  # exactly one JSON document, nothing else on stdout
    assert doc["ok"] is False and doc["exit_code"] == 2 and doc["command"] == argv[0]
    assert doc["error"]["type"] == "BadInputError" and needle in doc["error"]["message"] and doc["error"]["hint"]
    assert "Traceback" not in proc.stderr
