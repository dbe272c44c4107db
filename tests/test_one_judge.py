"""One judge: the same failure gives the same exit code and the same JSON envelope from every door
(inspect, verify, export, run, and the Python API through outcome.judge)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

import onnxgate
from onnxgate.cli.main import main
from onnxgate.errors import ExitCode, OnnxgateError
from onnxgate.outcome import judge

ENVELOPE_KEYS = {"envelope", "onnxgate_version", "command", "ok", "exit_code", "reason", "hint", "result", "error"}

FROZEN = ("import torch\nfrom torch import nn\n"
          "class Flat(nn.Module):\n    def forward(self, x):\n        return x.reshape(int(x.shape[0]), -1)\n"
          "def build():\n    torch.manual_seed(0)\n    return nn.Sequential(nn.Linear(6, 6), Flat()).eval()\n")


def tiny(path: Path, *, valid: bool = True, opset: int = 17) -> Path:
    """y = x * w; invalid: the Mul reads a value nothing produces (onnx.checker refuses it)."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [6], [1.0] * 6)
    node = helper.make_node("Mul", ["x", "w" if valid else "nowhere"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 6])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    helper.set_model_props(model, {"onnxgate.inputs": json.dumps([{"name": "x", "shape": ["B", 6],
                                                                    "dtype": "float32", "value_range": None}])})
    onnx.save(model, path)
    return path


def cli(capsys, *argv) -> tuple[int, dict]:
    code = main([str(a) for a in argv] + ["--json"])
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == ENVELOPE_KEYS
    assert doc["exit_code"] == code and doc["ok"] is (code == 0)
    assert (doc["error"] is None) is doc["ok"]
    return code, doc


def api(call) -> int:
    """The Python API's verdict: the judge on the result, or the error it raised at the edge."""
    try:
        return judge(call()).exit_code
    except OnnxgateError as exc:
        return judge(exc).exit_code


@pytest.fixture
def frozen_ref(tmp_path) -> str:
    (tmp_path / "frozen.py").write_text(FROZEN)
    return f"{tmp_path / 'frozen.py'}:build"


def test_checker_failure_is_bad_input_everywhere(capsys, tmp_path, frozen_ref):
    bad = tiny(tmp_path / "bad.onnx", valid=False)
    codes = {
        "inspect": cli(capsys, "inspect", bad)[0],
        "verify": cli(capsys, "verify", bad, "--against", frozen_ref)[0],
        "api inspect": api(lambda: onnxgate.inspect(bad)),
        "api verify": api(lambda: onnxgate.verify(bad, frozen_ref)),
    }
    assert set(codes.values()) == {ExitCode.BAD_INPUT}, codes


def test_parity_failure_is_4_everywhere(capsys, tmp_path, frozen_ref):
    from onnxgate.spec import ExportConfig, parse_dim, parse_input

    # --no-repair: TorchDynamo's strict capture (an extra rung) would keep this int(x.shape[0]) symbolic
    _, exported = cli(capsys, "export", frozen_ref, "-o", tmp_path / "e.onnx", "--input", "x:Bx6:float32",
                      "--dim", "B=1..8@2", "--no-repair")
    _, ran = cli(capsys, "run", frozen_ref, "-o", tmp_path / "run", "--input", "x:Bx6:float32", "--dim", "B=1..8@2",
                 "--bench", "none", "--no-repair")
    rejected = next(tmp_path.glob("e.rejected.onnx"), None) or next((tmp_path / "run").glob("*.rejected.onnx"))
    _, verified = cli(capsys, "verify", rejected, "--against", frozen_ref, "--input", "x:Bx6:float32",
                      "--dim", "B=1..8@2")
    config = ExportConfig(inputs=(parse_input("x:Bx6:float32"),), dims=(parse_dim("B=1..8@2"),), repair=False)
    codes = {"export": exported["exit_code"], "run": ran["exit_code"], "verify": verified["exit_code"],
             "api export": api(lambda: onnxgate.export(frozen_ref, tmp_path / "api.onnx", config=config)),
             "api verify": api(lambda: onnxgate.verify(rejected, frozen_ref, config=config))}
    assert set(codes.values()) == {ExitCode.PARITY_FAILED}, codes
    assert {exported["error"]["type"], ran["error"]["type"], verified["error"]["type"]} == {"ParityError"}
    # the report records the stage the verdict came from and its cause, both the judge's (not the reason's text)
    assert (ran["result"]["stage"], ran["result"]["cause"]) == ("export", "dim frozen"), ran["result"]["reason"]


def test_incompatible_target_is_6_everywhere(capsys, tmp_path, frozen_ref):
    model = tiny(tmp_path / "m21.onnx", opset=21)
    codes = {
        "inspect": cli(capsys, "inspect", model, "--target", "onnxruntime==1.16")[0],
        "verify": cli(capsys, "verify", model, "--against", frozen_ref, "--target", "onnxruntime==1.16")[0],
        "api verify": api(lambda: onnxgate.verify(model, frozen_ref, targets=("onnxruntime==1.16",))),
    }
    assert set(codes.values()) == {ExitCode.RUNTIME_INCOMPATIBLE}, codes


def test_bad_input_is_2_everywhere(capsys, tmp_path, frozen_ref):
    model = tiny(tmp_path / "m.onnx")
    bad_spec = "x:1x6xx:float32"
    codes = {
        "inspect": cli(capsys, "inspect", tmp_path / "missing.onnx")[0],
        "verify": cli(capsys, "verify", model, "--against", frozen_ref, "--input", bad_spec)[0],
        "export": cli(capsys, "export", frozen_ref, "-o", tmp_path / "x.onnx", "--input", bad_spec)[0],
        "run": cli(capsys, "run", frozen_ref, "-o", tmp_path / "r", "--input", bad_spec)[0],
        "api verify": api(lambda: onnxgate.verify(model, frozen_ref, runtimes=("tensorflow",))),
    }
    assert set(codes.values()) == {ExitCode.BAD_INPUT}, codes


# ---- one judge, completely (issue 24) -----------------------------------------------------------------------------

def _error_classes() -> list[type]:
    import inspect

    from onnxgate import errors

    return [c for _, c in inspect.getmembers(errors, inspect.isclass)
            if issubclass(c, BaseException) and c.__module__ == errors.__name__]


def _instance(cls):
    from onnxgate.errors import MissingExtraError, OnnxgateError

    if cls is MissingExtraError:
        return cls("torch", "torch", "Exporting")
    return cls("failed", hint="fix it") if issubclass(cls, OnnxgateError) else cls("failed")


def test_every_error_class_and_exit_code_has_a_verdict():
    """httpx-style: an error class, an exit code or a stage added without its rule in the judge fails here."""
    from onnxgate.errors import ModelCodeExit
    from onnxgate.outcome import ERROR_CLASSES, EXIT_NAMES, KILLED_CODES
    from onnxgate.stages import Ending, Stage

    classes = _error_classes()
    assert len(classes) >= 10, classes
    for cls in classes:
        outcome = judge(_instance(cls))
        assert not outcome.passed and outcome.exit_code in {int(c) for c in ExitCode}, cls
        if issubclass(cls, OnnxgateError):
            assert outcome.exit_code == cls.exit_code, cls
        else:  # ModelCodeExit is caught where model code runs; one that escapes is onnxgate's bug
            assert cls is ModelCodeExit and outcome.exit_code == ExitCode.INTERNAL
        assert outcome.failure_class
    assert set(EXIT_NAMES) == set(ExitCode), "every exit code is named (failure classes, summaries)"
    for code, cls in ERROR_CLASSES.items():  # the error a failed result raises at the Python API's edge
        assert cls.exit_code == code
    assert set(KILLED_CODES) == {(s, e) for s in Stage for e in Ending}, "the crash table covers every stage"


def _result_classes() -> set[str]:
    """Every class in onnxgate named like a verdict-bearing result (…Result, …Report, …Verification, …Search,
    …Export), found in the source without importing it."""
    import ast

    root = Path(onnxgate.__file__).parent
    names = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name.lstrip("_").endswith(
                    ("Result", "Report", "Verification", "Search", "Export", "Outcome")):
                names.add(node.name)
    return names


# Result-like classes that are parts of a judged result, not results a door returns (with where they are judged).
PARTS = {"ParityReport": "inside VerifyResult / an export attempt (VerifyResult's and ExportResult's rules)",
         "RunOutcome": "one runtime's run inside BundleVerification", "ProbeOutcome": "one probe of a domain",
         "WorkerOutcome": "a worker's end: judged as Killed (zoo/task.py, cli/isolate.py)",
         "Outcome": "the verdict itself", "PassResult": "one transform inside TransformReport",
         "LocalizationReport": "inside VerifyResult (its localization)",
         "ConfigResult": "one measured configuration inside BenchReport (measurements: no verdict)",
         "Verification": "a benchmarked variant's check inside ConfigResult / BenchReport",
         "FeedResult": "one feed's comparison inside verify/engine's ParityRecord (its caller's rules)"}


def test_every_result_type_and_status_has_a_verdict():
    from onnxgate.outcome import _BUNDLE_CODES, _JUDGES
    from onnxgate.worker import CRASHED, ERROR, MEMORY, OK, TIMEOUT
    from onnxgate.zoo.task import _ENDINGS

    unjudged = sorted(n for n in _result_classes() if n not in _JUDGES and n not in PARTS)
    assert not unjudged, f"result types without a verdict rule in outcome.py (or a line in PARTS): {unjudged}"
    assert {"Killed", "PipelineReport", "ExportResult", "ZooReport"} <= set(_JUDGES)
    # every status a bundle check and a worker can end in
    assert set(_BUNDLE_CODES) == {"pass", "tampered", "fail", "crashed", "incompatible", "unavailable"}
    assert set(_ENDINGS) | {OK} == {OK, ERROR, CRASHED, TIMEOUT, MEMORY}


def test_killed_verdict_is_by_stage_and_ending():
    from onnxgate.outcome import Killed
    from onnxgate.stages import Ending, Stage

    assert judge(Killed(Stage.EXPORT, Ending.CRASH, signal="SIGSEGV")).exit_code == ExitCode.EXPORT_FAILED
    assert judge(Killed(Stage.LOAD, Ending.MEMORY)).exit_code == ExitCode.EXPORT_FAILED
    for stage in (Stage.VERIFY, Stage.OPTIMIZE, Stage.QUANTIZE, Stage.BENCH, Stage.BUNDLE, Stage.DEPLOY):
        for ending in (Ending.CRASH, Ending.TIMEOUT, Ending.MEMORY):
            assert judge(Killed(stage, ending)).exit_code == ExitCode.RUNTIME_INCOMPATIBLE, (stage, ending)
    assert judge(Killed(Stage.OPTIMIZE, Ending.ERROR, error_type="KeyError")).failure_class == "internal error (KeyError)"
    assert judge(Killed(Stage.VERIFY, Ending.MEMORY)).failure_class == "memory cap"


ARMED = '''
import os, signal, time
from pathlib import Path
import torch
from torch import nn

ROOT = Path(__file__).parent.parent  # the test folder: the runs write under it


def in_bundle_stage(tag):
    """The pipeline has announced its bundle stage for this model: in the console script's stage file, or in the
    zoo worker's (``TAG/stage``). Verification runs the model on feeds of its own too (its noise, the hunt), so
    the stage, not a new feed, arms it."""
    files = [Path(os.environ["ONNXGATE_STAGE_FILE"])] if os.environ.get("ONNXGATE_STAGE_FILE") else []
    files += [p for p in ROOT.rglob("stage") if p.parent.name == tag]
    return any(f.is_file() and f.read_text().strip() == "bundle" for f in files)


class Armed(nn.Module):
    """Right through its export and verification; once its own model.onnx is written and the pipeline is in its
    bundle stage, the next forward (the bundle's reference outputs, in-process) does `act`."""

    def __init__(self, tag, act):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 2)
        self.tag, self.act = tag, act

    def forward(self, x):
        if any(p.parent.name == self.tag for p in ROOT.rglob("model.onnx")) and in_bundle_stage(self.tag):
            if self.act == "abort":
                os.abort()
            if self.act == "hang":
                time.sleep(3600)
            if self.act == "hog":
                keep = [torch.ones(32, 1024, 1024) for _ in range(64)]  # 8 GiB, if nothing stopped it
        return self.fc(x)


def bundle_abort(): return Armed("bundle_abort", "abort")
def cli_bundle_abort(): return Armed("cli_bundle_abort", "abort")  # its own folder: the zoo's must not arm it
def bundle_hang(): return Armed("bundle_hang", "hang")
def bundle_hog(): return Armed("bundle_hog", "hog")
def load_kill(): os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's out-of-memory killer sends
def load_hog(): return [bytearray(2**20) for _ in range(8192)]  # 8 GiB, if nothing stopped it
'''

ARMED_ZOO = '''
[zoo]
name = "killed"
memory_mb = 1500
stages = ["export", "verify", "bundle"]

[defaults]
input = ["x:1x4:float32"]
strategy = "torchscript"

[[model]]
ref = "models/armed.py:bundle_abort"
name = "bundle_abort"

[[model]]
ref = "models/armed.py:bundle_hang"
name = "bundle_hang"
timeout_s = 25

[[model]]
ref = "models/armed.py:bundle_hog"
name = "bundle_hog"
memory_mb = 900

[[model]]
ref = "models/armed.py:load_hog"
name = "load_hog"
memory_mb = 300
'''


def _console(*argv) -> subprocess.Popen:
    """The installed console script (isolation is its job: main() in-process runs in-process)."""
    exe = Path(sys.executable).parent / "onnxgate"
    return subprocess.Popen([str(exe), *map(str, argv), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_the_same_death_in_a_stage_gives_the_same_code_through_run_zoo_and_the_api(tmp_path):
    """A crash and a memory kill in load and in bundle through `onnxgate run` (its child dies), `onnxgate zoo`
    (the model's worker dies; a timeout and the memory cap too) and the Python API (run_zoo; judge on Killed): one
    code per stage, from one table. Before issue 24 a crash after the export was 3 through `run`, 6 through `zoo`."""
    from onnxgate.outcome import Killed
    from onnxgate.stages import Ending, Stage
    from onnxgate.zoo import run_zoo

    models = tmp_path / "models"
    models.mkdir()
    (models / "armed.py").write_text(ARMED)
    (tmp_path / "zoo.toml").write_text(ARMED_ZOO)
    ref = models / "armed.py"
    cli_runs = {"bundle_abort": _console("run", f"{ref}:cli_bundle_abort", "-o", tmp_path / "cli_bundle_abort", "--input",
                                         "x:1x4:float32", "--strategy", "torchscript", "--bench", "none",
                                         "--no-optimize"),
                "load_kill": _console("run", f"{ref}:load_kill", "-o", tmp_path / "load_kill")}
    report = run_zoo(str(tmp_path / "zoo.toml"), tmp_path / "zoo", jobs=2)
    rows = {m["model"]: m for m in report.models}
    cli = {}
    for name, proc in cli_runs.items():
        out, err = proc.communicate(timeout=300)
        doc = json.loads(out)
        assert proc.returncode == doc["exit_code"] and "Traceback" not in err, (name, err)
        cli[name] = (proc.returncode, doc["reason"])

    expected = {  # model: (how its worker ended, stage, ending)
        "bundle_abort": ("crashed", Stage.BUNDLE, Ending.CRASH), "bundle_hang": ("timeout", Stage.BUNDLE, Ending.TIMEOUT),
        "bundle_hog": ("memory", Stage.BUNDLE, Ending.MEMORY), "load_hog": ("memory", Stage.LOAD, Ending.MEMORY)}
    for name, (status, stage, ending) in expected.items():
        row = rows[name]
        api = judge(Killed(stage, ending)).exit_code
        assert (row["status"], row["stage"], row["exit_code"]) == (status, stage.value, api), row
    assert rows["bundle_abort"]["exit_code"] == ExitCode.RUNTIME_INCOMPATIBLE
    assert rows["load_hog"]["exit_code"] == ExitCode.EXPORT_FAILED
    # `onnxgate run`: the same crash in verify, and a memory kill (SIGKILL) in load, give the zoo's codes
    assert cli["bundle_abort"][0] == rows["bundle_abort"]["exit_code"] == ExitCode.RUNTIME_INCOMPATIBLE, cli
    assert "during bundle" in cli["bundle_abort"][1] and "SIGABRT" in cli["bundle_abort"][1], cli
    assert cli["load_kill"][0] == rows["load_hog"]["exit_code"] == ExitCode.EXPORT_FAILED, cli
    assert "during load" in cli["load_kill"][1], cli
    # the Python API: run_zoo's report is judged by the same rule as `onnxgate zoo`'s (the first failing model)
    assert judge(report).exit_code == rows["bundle_abort"]["exit_code"]


def test_a_failed_ladder_is_a_returned_result_the_api_raises(tmp_path, frozen_ref):
    """run_ladder returns its failure like every stage (ExportResult.error); export() raises that same error, and
    the judge classes it from the result, not from its text."""
    from onnxgate.errors import ParityError
    from onnxgate.export.ladder import run_ladder
    from onnxgate.sources import load_model
    from onnxgate.spec import ExportConfig, parse_dim, parse_input

    config = ExportConfig(inputs=(parse_input("x:Bx6:float32"),), dims=(parse_dim("B=1..8@2"),), repair=False,
                          strategy="torchscript")
    result = run_ladder(load_model(frozen_ref), config, tmp_path / "m.onnx")
    assert not result.ok and isinstance(result.error, ParityError) and result.error.result is result
    verdict = judge(result)
    assert (verdict.exit_code, verdict.cause, verdict.failure_class) == (
        ExitCode.PARITY_FAILED, "dim frozen", "parity failed: dim frozen")
    with pytest.raises(ParityError) as raised:
        onnxgate.export(frozen_ref, tmp_path / "api.onnx", config=config)
    assert judge(raised.value).exit_code == verdict.exit_code
