"""The docs' CI example (docs/ci-example.yml) passes: its onnxgate commands, read from the file itself, run on a
small model in the layout it names, and its production job re-verifies the bundle in a fresh venv holding only
what its pip line installs (onnxgate from this checkout, without torch) at the onnxruntime release it pins."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from onnxgate.cli.main import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "ci-example.yml"

# The model the example names (models/net.py:build), as a small CNN with dynamic batch, height and width.
NET = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
'''


def steps() -> list[list[str]]:
    """Every `- run:` command of the example, split like a shell would."""
    return [shlex.split(m.group(1)) for m in re.finditer(r"^\s*- run: (.+)$", EXAMPLE.read_text(), re.MULTILINE)]


def test_the_example_names_a_target_and_the_runtime_it_deploys():
    commands = steps()
    run = next(c for c in commands if c[:2] == ["onnxgate", "run"])
    target = run[run.index("--target") + 1]
    pins = [a for c in commands if c[:2] == ["pip", "install"] for a in c if a.startswith("onnxruntime==")]
    assert target.startswith("onnxruntime==") and pins and pins[0].startswith(target)
    assert ["onnxgate", "verify", "out/bundle"] in commands


@pytest.mark.slow
def test_the_ci_example_passes(tmp_path, monkeypatch):
    commands = steps()
    run = next(c for c in commands if c[:2] == ["onnxgate", "run"])
    model_file = run[2].split(":")[0]
    (tmp_path / model_file).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / model_file).write_text(NET)
    monkeypatch.chdir(tmp_path)
    assert main(run[1:]) == 0  # job 1: export, verify at every declared shape, optimize, bench, bundle

    # job 2: the production side, in a fresh venv with what the example installs there (no torch)
    pip_line = next(c for c in commands if c[:2] == ["pip", "install"] and any(a.startswith("onnxruntime==")
                                                                               for a in c))
    from helpers import onnxgate_source

    source = onnxgate_source(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    requirements = [str(source) if a == "onnxgate" else a for a in pip_line[2:]]
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                          *requirements], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-3000:]
    for command in (c for c in commands if c[0] == "onnxgate" and c[:2] != ["onnxgate", "run"]):
        proc = subprocess.run([str(venv / "bin" / "onnxgate"), *command[1:]], cwd=tmp_path, capture_output=True,
                              text=True)
        assert proc.returncode == 0, (command, proc.stderr[-3000:])
    probe = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import importlib.util as u, onnxruntime; print(onnxruntime.__version__, "
                            "u.find_spec('torch') is None)"], capture_output=True, text=True, check=True)
    pinned = next(a for a in pip_line if a.startswith("onnxruntime==")).split("==")[1]
    assert probe.stdout.split() == [pinned, "True"]
