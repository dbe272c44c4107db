"""Security: TorchScript archives are code (issue 22, finding 2).

``torch.jit.load`` runs no arbitrary Python, but TorchScript can call ``torch.from_file(path, True, N).fill_()``
in ``__setstate__`` (at load) or in ``forward``: that creates or overwrites files with bytes the archive chose,
and a ``.pth`` file in a site folder turns it into Python code at the next interpreter start. So:

* without ``--trust-code`` (or its older name ``--trust-pickle``) a TorchScript archive is refused with exit 7
  before it is loaded, by every command that loads a model;
* with consent, the console script's child process loads and runs it under Linux Landlock: it may write only
  beneath a fresh scratch folder (its HOME and TMPDIR) and the command's output folder. Those tests say which
  mechanism they rely on and skip, naming why, where the kernel lacks it.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import List

import pytest
import torch

from onnxgate.cli.main import main
from onnxgate.errors import ExitCode
from helpers import tiny_linear

ONNXGATE = str(Path(sys.executable).parent / "onnxgate")


class _WritesFiles(torch.nn.Module):
    """Creates ``<target>.load`` when loaded (``__setstate__``) and ``<target>.forward`` when run, through
    ``torch.from_file(..., shared=True)`` — the writes the issue demonstrated, in TorchScript alone."""

    def __init__(self, target: str, at_load: bool = True):
        super().__init__()
        self.target = target
        self.at_load = at_load
        self.written = torch.zeros(16)

    @torch.jit.export
    def __getstate__(self) -> List[str]:
        return [self.target, "1" if self.at_load else "0"]

    @torch.jit.export
    def __setstate__(self, state: List[str]) -> None:
        self.target = state[0]
        self.at_load = state[1] == "1"
        self.training = False
        self.written = torch.zeros(16)
        if self.at_load:  # kept in an attribute: TorchScript drops a result nobody uses
            self.written = torch.from_file(self.target + ".load", True, 16, dtype=torch.uint8).fill_(65).float()

    def forward(self, x):
        written = torch.from_file(self.target + ".forward", True, 16, dtype=torch.uint8).fill_(66)
        return x * 2 + written[0].float() * 0


def save_script(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0 where it has none)."""
    if not sys.platform.startswith("linux"):
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return max(0, libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1)))


needs_landlock = pytest.mark.skipif(landlock_abi() < 1, reason="Linux Landlock is not available on this kernel "
                                    "(landlock_create_ruleset failed), so onnxgate cannot confine model code here")


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def console(*argv, cwd: Path) -> subprocess.CompletedProcess:
    """The console script, which runs the command in a child process (where the confinement applies)."""
    env = {k: v for k, v in os.environ.items() if k != "ONNXGATE_CHILD"}
    return subprocess.run([ONNXGATE, *map(str, argv)], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def test_the_writes_are_real(tmp_path):
    """The premise: loading and running the archive with torch alone creates both files."""
    victim = tmp_path / "victim" / "PWNED"
    victim.parent.mkdir()
    path = save_script(_WritesFiles(str(victim)), tmp_path / "evil.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path))(torch.randn(2, 4))
    assert Path(f"{victim}.load").read_bytes() == b"A" * 16
    assert Path(f"{victim}.forward").read_bytes() == b"B" * 16


@pytest.mark.parametrize("command", ["export", "run", "bench", "verify --against"])
def test_torchscript_needs_consent(capsys, tmp_path, command):
    victim = tmp_path / "victim" / "PWNED"
    victim.parent.mkdir()
    path = save_script(_WritesFiles(str(victim)), tmp_path / "evil.pt")
    onnx_file = tmp_path / "m.onnx"
    if command == "verify --against":
        plain = save_script(tiny_linear(), tmp_path / "plain.pt")
        torch.onnx.export(torch.jit.load(str(plain)), (torch.randn(2, 4),), str(onnx_file), dynamo=False,
                          input_names=["x"])
    argv = {"export": ["export", path, "-o", tmp_path / "out.onnx", "--input", "x:2x4:float32"],
            "run": ["run", path, "-o", tmp_path / "run", "--bench", "none", "--input", "x:2x4:float32"],
            "bench": ["bench", path, "--quick", "--input", "x:2x4:float32"],
            "verify --against": ["verify", onnx_file, "--against", path]}[command]
    code, _, err = run_cli(capsys, *argv)
    assert not list(victim.parent.iterdir()), f"the archive wrote files through {command}"
    assert code == ExitCode.UNSAFE_INPUT, err
    assert "TorchScript" in err and "--trust-code" in err and "Traceback" not in err


@needs_landlock
def test_consented_torchscript_cannot_write_outside_its_scratch_folder(tmp_path):
    """Landlock: the load's from_file outside the scratch and output folders is refused (exit 2, saying why);
    a model that writes only in forward loads, and its writes are refused wherever it runs (export attempts,
    the reference forward): nothing appears outside the output folder."""
    victim = tmp_path / "victim" / "PWNED"
    victim.parent.mkdir()
    (tmp_path / "out").mkdir()
    at_load = save_script(_WritesFiles(str(victim)), tmp_path / "evil.pt")
    proc = console("export", at_load, "-o", tmp_path / "out" / "m.onnx", "--trust-code", "--input", "x:2x4:float32",
                   "--json", cwd=tmp_path)
    assert not list(victim.parent.iterdir()), proc.stderr
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr
    message = json.loads(proc.stdout)["error"]["message"]
    assert "confined (landlock ABI" in message and "tried to write elsewhere" in message, message

    in_forward = save_script(_WritesFiles(str(victim), at_load=False), tmp_path / "evil_forward.pt")
    proc = console("export", in_forward, "-o", tmp_path / "out" / "m.onnx", "--trust-code", "--input",
                   "x:2x4:float32", "--json", cwd=tmp_path)
    assert not list(victim.parent.iterdir()), proc.stderr
    assert proc.returncode not in (ExitCode.OK, ExitCode.INTERNAL), proc.stderr
    assert not (tmp_path / "out" / "m.onnx").exists()


@needs_landlock
@pytest.mark.parametrize("command", ["export", "run", "bench"])
def test_consented_plain_torchscript_works_confined(tmp_path, command):
    """A TorchScript model that writes nothing goes through as before, confined: the output folder and bench's
    temporary folder stay writable; the older flag name still gives consent."""
    path = save_script(tiny_linear(), tmp_path / "plain.pt")
    (tmp_path / "out").mkdir()
    argv = {"export": ["export", path, "-o", tmp_path / "out" / "m.onnx"],
            "run": ["run", path, "-o", tmp_path / "out" / "run", "--bench", "none"],
            "bench": ["bench", path, "--quick"]}[command]
    proc = console(*argv, "--trust-pickle", "--input", "x:2x4:float32", cwd=tmp_path)
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert "Traceback" not in proc.stderr
    assert command == "bench" or any((tmp_path / "out").iterdir())


@needs_landlock
def test_the_confinement_itself(tmp_path):
    """What confine_untrusted_code enforces, in a child process marked as onnxgate's: HOME and TMPDIR inside a
    fresh scratch folder, writes there and in the output folder allowed, anywhere else refused."""
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    script = textwrap.dedent(f"""
        import json, os, sys
        sys.argv = ["onnxgate", "export", "m.pt", "-o", {str(tmp_path / "out" / "m.onnx")!r}]
        from onnxgate.safe_load import confine_untrusted_code
        info = confine_untrusted_code("a test")
        results = {{}}
        for label, path in [("scratch", os.path.join(os.environ["HOME"], "a")), ("tmp", os.path.join(
                os.environ["TMPDIR"], "b")), ("out", {str(tmp_path / "out" / "c")!r}),
                ("elsewhere", {str(tmp_path / "elsewhere" / "d")!r})]:
            try:
                open(path, "w").close()
                results[label] = "written"
            except OSError as exc:
                results[label] = exc.strerror
        print(json.dumps({{"info": info, "results": results, "home": os.environ["HOME"]}}))
    """)
    env = dict(os.environ, ONNXGATE_CHILD="1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    said = json.loads(proc.stdout)
    assert said["info"]["mechanism"].startswith("landlock ABI")
    assert said["home"] == said["info"]["scratch"]
    assert said["results"] == {"scratch": "written", "tmp": "written", "out": "written",
                               "elsewhere": "Permission denied"}, said
    assert not (tmp_path / "elsewhere" / "d").exists()


def test_trust_code_in_config_files(capsys, tmp_path):
    """trust_code = true in onnxgate.toml and in a zoo file gives the same consent as the flag (trust_pickle
    keeps working); without it the TorchScript model is refused."""
    from onnxgate.zoo import load_zoo

    path = save_script(tiny_linear(), tmp_path / "plain.pt")
    for key, expected in (("", ExitCode.UNSAFE_INPUT), ("trust_code = true\n", ExitCode.OK),
                          ("trust_pickle = true\n", ExitCode.OK)):
        config = tmp_path / "onnxgate.toml"
        config.write_text(f'ref = "{path}"\ninput = ["x:2x4:float32"]\n{key}')
        code, _, err = run_cli(capsys, "export", "--config", config, "-o", tmp_path / "m.onnx", "--force")
        assert code == expected, f"{key!r}: {err}"
    zoo = tmp_path / "zoo.toml"
    zoo.write_text(f'[zoo]\nname = "z"\n\n[[model]]\nref = "{path}"\nname = "a"\ntrust_code = true\n\n'
                   f'[[model]]\nref = "{path}"\nname = "b"\n')
    assert [m.run.trust_pickle for m in load_zoo(str(zoo)).models] == [True, False]
