"""Security: no code runs without consent (issue 10, items 1-3).

* ``.pt2`` archives whose pickled members would run code are refused before torch.export.load touches them,
  through every command that loads a model; a look-alike zip and a ``.pt2`` renamed ``.pt`` too.
* ``verify FILE.onnx`` never imports or runs the source its metadata names unless told to.
* a model calling ``sys.exit(0)`` (or raising KeyboardInterrupt) can never make onnxgate exit 0.

Each payload, if it ran, would create a marker file; every test asserts the marker never appears.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from onnxgate.cli.main import main
from onnxgate.errors import ExitCode
from helpers import Payload, tiny_linear


@pytest.fixture(scope="module")
def good_pt2(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "good.pt2"
    program = torch.export.export(tiny_linear(), (torch.randn(2, 4),))
    torch.export.save(program, path)
    return path


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy zip ``src`` to ``dst``, letting ``edit(name, data)`` return new bytes (or None to drop the member)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


def pickled_weight_pt2(good: Path, folder: Path, marker: Path) -> Path:
    """A real torch.export archive whose first weight is stored with use_pickle=True as a malicious pickle."""
    payload = pickle.dumps(Payload(marker))

    def edit(name, data):
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith("data/weights/weight_0"):
            return payload
        return data

    return _rewrite(good, folder / "pickled_weight.pt2", edit)


def pickled_sample_inputs_pt2(good: Path, folder: Path, marker: Path) -> Path:
    """torch.export.load retries sample inputs with weights_only=False when weights_only refuses them."""
    payload = pickle.dumps(Payload(marker))
    return _rewrite(good, folder / "sample_inputs.pt2",
                    lambda name, data: payload if "sample_inputs" in name else data)


def fake_pt2(folder: Path, marker: Path) -> Path:
    """A zip that merely looks like a .pt2 (archive_format entry) in the pre-2.7 layout torch falls back to."""
    path = folder / "fake.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("fake/archive_format", "pt2")
        archive.writestr("version", "8.0")
        archive.writestr("serialized_exported_program.json", "{}")
        archive.writestr("serialized_state_dict.pt", pickle.dumps(Payload(marker)))
    return path


@pytest.fixture
def evil_archives(tmp_path, good_pt2):
    marker = tmp_path / "PWNED"
    weight = pickled_weight_pt2(good_pt2, tmp_path, marker)
    renamed = tmp_path / "renamed.pt"
    shutil.copy(weight, renamed)
    return marker, {
        "pickled weight": weight,
        "pickled sample inputs": pickled_sample_inputs_pt2(good_pt2, tmp_path, marker),
        "fake .pt2": fake_pt2(tmp_path, marker),
        ".pt2 renamed .pt": renamed,
    }


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_clean_pt2_still_loads(good_pt2):
    from onnxgate.sources import load_model

    loaded = load_model(str(good_pt2))
    assert loaded.kind == "exported_program"
    assert set(loaded.example_inputs) == {"x"}


@pytest.mark.parametrize("command", ["export", "bundle", "run", "bench", "verify --against"])
def test_evil_pt2_refused_by_every_command(capsys, tmp_path, evil_archives, command):
    marker, archives = evil_archives
    onnx_file = tmp_path / "m.onnx"
    helper_model(onnx_file, source=None)
    for label, path in archives.items():
        argv = {
            "export": ["export", path, "-o", tmp_path / f"{label}.onnx"],
            "bundle": ["bundle", path, "-o", tmp_path / f"{label}-bundle"],
            "run": ["run", path, "-o", tmp_path / f"{label}-run", "--bench", "none"],
            "bench": ["bench", path, "--quick"],
            "verify --against": ["verify", onnx_file, "--against", path],
        }[command]
        code, out, err = run_cli(capsys, *argv)
        assert not marker.exists(), f"{label}: the payload ran through {command}"
        assert code == ExitCode.UNSAFE_INPUT, f"{label} via {command}: exit {code}\n{err}"
        assert "Traceback" not in err
        assert "--trust-pickle" in err


def test_a_pickled_plain_tensor_passes(tmp_path, good_pt2):
    """The check refuses code, not pickles: a weight stored with use_pickle that holds a plain tensor loads."""
    from onnxgate.sources import load_model

    saved = tmp_path / "t.pt"
    torch.save(torch.nn.Parameter(torch.zeros(3, 4)), saved)

    def edit(name, data):
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            next(iter(config["config"].values()))["use_pickle"] = True
            return json.dumps(config).encode()
        return saved.read_bytes() if name.endswith("data/weights/weight_0") else data

    loaded = load_model(str(_rewrite(good_pt2, tmp_path / "plain_pickled.pt2", edit)))
    assert loaded.kind == "exported_program"
    assert float(loaded.module.state_dict()["fc.weight"].abs().sum()) == 0.0


def helper_model(path: Path, *, source: str | None, nan: bool = False) -> Path:
    """A one-node ONNX model (y = x * w); with ``nan`` its weight is NaN, so any parity check would fail."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], [float("nan") if nan else 1.5] * 4)
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if source is not None:
        helper.set_model_props(model, {"onnxgate.source": source,
                                       "onnxgate.inputs": json.dumps(["x:2x4:float32"])})
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("source", ["sys:exit", "os:abort", "http.server:test", "{tmp}/evil.py:Net"])
def test_verify_never_runs_a_recorded_source(tmp_path, source):
    marker = tmp_path / "PWNED"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\nNet = None\n")
    path = helper_model(tmp_path / "m.onnx", source=source.replace("{tmp}", str(tmp_path)), nan=True)
    # A subprocess: if os:abort or sys:exit ran, it would take the test process down with it.
    proc = subprocess.run([sys.executable, "-m", "onnxgate.cli.main", "verify", str(path), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr
    envelope = json.loads(proc.stdout)
    assert envelope["ok"] is False and envelope["error"]["exit_code"] == ExitCode.BAD_INPUT
    assert "does not import or run code" in envelope["error"]["message"]
    assert "--against" in envelope["error"]["hint"]
    assert not marker.exists()


def test_verify_runs_a_recorded_source_only_when_trusted(capsys, tmp_path, evil_archives):
    """--trust-source opts in; even then a .pt2 source goes through the pickle policy (exit 7)."""
    marker, archives = evil_archives
    path = helper_model(tmp_path / "m.onnx", source=str(archives["pickled weight"]))
    code, _, err = run_cli(capsys, "verify", path)
    assert code == ExitCode.BAD_INPUT and "--trust-source" in err
    code, _, err = run_cli(capsys, "verify", path, "--trust-source")
    assert code == ExitCode.UNSAFE_INPUT, err
    assert not marker.exists()


def test_registry_sources_are_used_without_opt_in(capsys, tmp_path):
    """torchvision:/timm: names are looked up in the registry, not imported: verify may use them as recorded."""
    from onnxgate.verify.api import recorded_reference

    assert recorded_reference("m.onnx", {"onnxgate.source": "torchvision:resnet18"}, trust_source=False) \
        == "torchvision:resnet18"
    code, _, err = run_cli(capsys, "verify", helper_model(tmp_path / "m.onnx", source="torchvision:not_a_model_x"))
    assert code == ExitCode.BAD_INPUT and "not_a_model_x" in err


EXITING_MODELS = {
    "sys.exit(0) in __init__": """
import sys, torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        sys.exit(0)
""",
    "sys.exit(0) in forward": """
import sys, torch
class Net(torch.nn.Module):
    def forward(self, x):
        sys.exit(0)
def example():
    return Net(), (torch.randn(2, 4),)
""",
    "exit() in forward": """
import torch
class Net(torch.nn.Module):
    def forward(self, x):
        raise SystemExit
def example():
    return Net(), (torch.randn(2, 4),)
""",
    "KeyboardInterrupt in forward": """
import torch
class Net(torch.nn.Module):
    def forward(self, x):
        raise KeyboardInterrupt
def example():
    return Net(), (torch.randn(2, 4),)
""",
    "sys.exit(0) at import": """
import sys
sys.exit(0)
""",
}


@pytest.mark.parametrize("case", list(EXITING_MODELS))
@pytest.mark.parametrize("command", ["export", "run"])
def test_a_model_calling_sys_exit_never_passes(capsys, tmp_path, case, command):
    model_file = tmp_path / "model.py"
    model_file.write_text(EXITING_MODELS[case])
    ref = f"{model_file}:{'Net' if '__init__' in case or 'import' in case else 'example'}"
    out_path = tmp_path / ("m.onnx" if command == "export" else "out")
    argv = [command, ref, "-o", out_path, "--json"] + (["--bench", "none"] if command == "run" else [])
    code, out, err = run_cli(capsys, *argv)
    assert code not in (ExitCode.OK, ExitCode.INTERNAL), f"{case}: exit {code}\n{err}"
    said = json.loads(out)
    said = said.get("reason") or said["error"]["message"]  # run's report or the error envelope
    assert "sys.exit" in said or "KeyboardInterrupt" in said, said
    assert "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


CRASHING_MODELS = {
    "segfault": "import ctypes\n        ctypes.string_at(0)",
    "abort": "import os\n        os.abort()",
}


@pytest.mark.parametrize("crash", list(CRASHING_MODELS))
@pytest.mark.parametrize("command", ["export", "run"])
def test_a_native_crash_in_model_code_is_an_outcome_not_the_tools_death(tmp_path, crash, command):
    """The console script runs model code in a child process: a segfault/abort there is a clean exit 3 with the
    JSON envelope naming the signal, and nothing is written."""
    model_file = tmp_path / "crash.py"
    model_file.write_text(f"""
import torch
class Net(torch.nn.Module):
    def forward(self, x):
        {CRASHING_MODELS[crash]}
        return x
def example():
    return Net(), (torch.randn(2, 4),)
""")
    out = tmp_path / ("m.onnx" if command == "export" else "out")
    argv = [command, f"{model_file}:example", "-o", str(out), "--json"] + (["--bench", "none"] if command == "run" else [])
    proc = subprocess.run([str(Path(sys.executable).parent / "onnxgate"), *argv], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == ExitCode.EXPORT_FAILED, proc.stderr
    envelope = json.loads(proc.stdout)
    assert envelope["ok"] is False and envelope["error"]["exit_code"] == ExitCode.EXPORT_FAILED
    assert {"segfault": "SIGSEGV", "abort": "SIGABRT"}[crash] in envelope["error"]["message"]
    assert "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())  # run creates its (empty) output folder up front


@pytest.mark.parametrize("where", ["model", "--weights", "python file"])
def test_a_fifo_is_refused_without_blocking(tmp_path, where):
    """Issue 22, finding 7: a named pipe given as a model was reported missing, or blocked the reader forever.
    It is a clear exit 2 saying what it is; a subprocess with a timeout, so a reader that blocks fails the test."""
    import os

    fifo = tmp_path / ("model.py" if where == "python file" else "model.pt")
    os.mkfifo(fifo)
    (tmp_path / "net.py").write_text("import torch\nclass Net(torch.nn.Linear):\n    def __init__(self):\n"
                                     "        super().__init__(4, 3)\n")
    ref = {"model": [str(fifo)], "--weights": [f"{tmp_path / 'net.py'}:Net", "--weights", str(fifo)],
           "python file": [f"{fifo}:Net"]}[where]
    proc = subprocess.run([sys.executable, "-m", "onnxgate.cli.main", "export", *ref, "-o", str(tmp_path / "m.onnx"),
                           "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr
    message = json.loads(proc.stdout)["error"]["message"]
    assert "named pipe (FIFO)" in message and "not a regular file" in message, message
    assert "does not exist" not in message
