"""The TFLite converter's environment: onnx2tf and TensorFlow, kept out of onnxgate's own.

onnx2tf pins old releases of onnx, onnxruntime, numpy and protobuf in its metadata (onnx 1.19, numpy 1.26, ...), so
``pip install onnx2tf`` would downgrade the environment onnxgate verifies with. It runs fine on the current ones.
So the converter gets a virtual environment of its own, layered over this one (a ``.pth`` file puts this
environment's site-packages after its own), holding only what this one lacks: ``tensorflow-cpu`` with its
dependencies, and onnx2tf, tf-keras (which would pull the full ``tensorflow``) and their small helpers without
theirs. It is created on first use under ``$XDG_CACHE_HOME/onnxgate/venvs/`` (about 1.5 GB, a minute from a
package mirror) and reused; ``ONNXGATE_TFLITE_PYTHON`` names another interpreter with onnx2tf instead. The
conversion runs there as a subprocess (``_onnx2tf_worker.py``), so TensorFlow never loads next to PyTorch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import site
import subprocess
import sys
from pathlib import Path

from ..errors import MissingExtraError
from ..fsutil import atomic_dir

ONNX2TF = "onnx2tf==1.29.24"
WITH_DEPS = ("tensorflow-cpu==2.21.0", "onnx-graphsurgeon>=0.5", "sng4onnx>=1.0", "sne4onnx>=1.0", "psutil")
WITHOUT_DEPS = (ONNX2TF, "tf-keras==2.21.0")
NAME = "tflite-" + ONNX2TF.replace("==", "-")
READY = ".onnxgate-venv.json"
PIP_TIMEOUT_S = 1800


class ConverterUnavailable(MissingExtraError):
    """The converter environment could not be made (no network, no wheel for this Python): exit 8."""

    def __init__(self, why: str):
        super(MissingExtraError, self).__init__(
            f"The TFLite target needs onnx2tf and TensorFlow in a converter environment, which could not be "
            f"created: {why}",
            hint=f"Check that pip can reach a package index, or point ONNXGATE_TFLITE_PYTHON at a Python holding "
                 f"{ONNX2TF} and {WITH_DEPS[0]} (install onnx2tf and tf-keras with --no-deps).")


def converter_python(note=lambda _m: None) -> str:
    """A Python that can run onnx2tf: $ONNXGATE_TFLITE_PYTHON, this one if it has onnx2tf and TensorFlow, else
    the cached converter venv (created now if missing)."""
    explicit = os.environ.get("ONNXGATE_TFLITE_PYTHON")
    if explicit:
        return explicit
    if importlib.util.find_spec("onnx2tf") and importlib.util.find_spec("tensorflow"):
        return sys.executable
    from ..bundle.matrix import cache_root, venv_python

    final = cache_root() / NAME
    if (final / READY).is_file() and venv_python(final).exists():
        return str(venv_python(final))
    note("tflite: creating the converter environment (onnx2tf, TensorFlow; once, cached)")
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_dir(final, force=final.exists()) as tmp:
            _pip([sys.executable, "-m", "venv", str(tmp)], "creating a virtual environment")
            python = str(venv_python(tmp))
            purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     capture_output=True, text=True, check=True).stdout.strip()
            Path(purelib, "zz_onnxgate_base.pth").write_text("\n".join(site.getsitepackages()) + "\n",
                                                             encoding="utf-8")
            pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q"]
            _pip(pip + list(WITH_DEPS), "pip install " + " ".join(WITH_DEPS))
            _pip(pip + ["--no-deps"] + list(WITHOUT_DEPS), "pip install --no-deps " + " ".join(WITHOUT_DEPS))
            (tmp / READY).write_text(json.dumps({"packages": [*WITH_DEPS, *WITHOUT_DEPS]}) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConverterUnavailable(str(exc)) from exc
    return str(venv_python(final))


def _pip(command: list[str], what: str) -> None:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ConverterUnavailable(f"{what} did not finish within {PIP_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
        raise ConverterUnavailable(f"{what} failed: {(' '.join(errors) or proc.stderr.strip()[-400:])[:600]}")
