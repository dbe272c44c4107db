"""Environment capture and lock files (`onnxgate env`, `onnxgate env --lock DIR`)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib.metadata import version

import pytest

from onnxgate import envinfo
from onnxgate._version import __version__
from onnxgate.cli.main import main
from onnxgate.errors import BadInputError, OutputExistsError


def test_capture_reports_versions_platform_and_cpu_without_importing_torch():
    code = ("import json, sys; from onnxgate.envinfo import capture; c = capture(); "
            "print(json.dumps({'torch_imported': 'torch' in sys.modules, 'capture': c}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    assert result["torch_imported"] is False
    capture = result["capture"]
    assert capture["versions"]["python"] == platform.python_version()
    assert capture["versions"]["onnxgate"] == __version__
    for name in ("onnx", "onnxruntime", "numpy"):
        assert capture["versions"][name] == version(name)
    assert "CPUExecutionProvider" in capture["onnxruntime_providers"]
    assert capture["cpu"]["count"] >= 1 and capture["cpu"]["model"]
    assert capture["cuda"] is None  # only asked for with include_torch=True
    assert "torch" not in capture["threads"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/cpuinfo is Linux-only")
def test_cpu_flags_come_from_proc_cpuinfo():
    flags = envinfo.cpu_info()["flags"]
    assert flags == sorted(flags) and len(flags) > 5


def test_lock_files_pin_exact_versions(tmp_path):
    written = envinfo.write_locks(tmp_path / "locks")
    assert sorted(p.name for p in written) == sorted(envinfo.LOCK_FILES)
    export = (tmp_path / "locks" / "requirements.txt").read_text()
    assert f"numpy=={version('numpy')}" in export.splitlines()
    assert f"onnxgate=={__version__}" in export.splitlines()  # the editable install is pinned, not "-e path"
    assert not any(line.startswith(("-e", "file:")) or " @ " in line for line in export.splitlines())
    runtime = (tmp_path / "locks" / "requirements-runtime.txt").read_text().splitlines()
    for name in ("onnxgate", "numpy", "onnxruntime", "onnx", "typer", "rich"):
        expected = __version__ if name == "onnxgate" else version(name)
        assert f"{name}=={expected}" in runtime
    assert not any(line.lower().startswith("torch") for line in runtime)  # the target side needs no torch
    conda = (tmp_path / "locks" / "environment.yml").read_text()
    assert f"  - python={sys.version_info.major}.{sys.version_info.minor}\n" in conda
    assert "  - pytorch\n  - conda-forge\n" in conda and "  - pip:\n" in conda
    assert f"    - onnxruntime=={version('onnxruntime')}\n" in conda


def test_lock_files_are_not_replaced_without_force(tmp_path):
    envinfo.write_locks(tmp_path)
    (tmp_path / "requirements.txt").write_text("edited\n")
    with pytest.raises(OutputExistsError, match="requirements.txt"):
        envinfo.write_locks(tmp_path)
    assert (tmp_path / "requirements.txt").read_text() == "edited\n"
    envinfo.write_locks(tmp_path, force=True)
    assert (tmp_path / "requirements.txt").read_text() != "edited\n"
    with pytest.raises(BadInputError, match="missing"):
        envinfo.write_locks(tmp_path / "missing" / "locks")


def test_env_command_json_and_lock(tmp_path, capsys):
    assert main(["env", "--no-torch", "--json"]) == 0
    capture = json.loads(capsys.readouterr().out)["result"]
    assert capture["versions"]["onnxruntime"] == version("onnxruntime")
    assert main(["env", "--no-torch"]) == 0
    assert "onnxruntime" in capsys.readouterr().err
    assert main(["env", "--lock", str(tmp_path / "locks"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["result"]["written"]) == 3
    assert main(["env", "--lock", str(tmp_path / "locks")]) == 2
    assert main(["env", "--lock", str(tmp_path / "locks"), "--force"]) == 0
