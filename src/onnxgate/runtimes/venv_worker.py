"""Run a bundle's golden inputs through onnxruntime: the only step of bundle verification that executes it.

Self-contained on purpose: it imports nothing but numpy and onnxruntime, so ``matrix.py`` can run this file
by path with the Python of an isolated virtual environment holding one exact onnxruntime release (old ones
included: numpy 1.x, onnxruntime from 1.15 on). ``verify.py`` imports the same ``run_model`` for the
in-process case, so every runtime in a matrix executes the model the same way.

Script protocol:  python venv_worker.py MODEL GOLDEN_INPUTS_NPZ OUTPUTS_NPZ
prints one JSON line on stdout: {"ok": true, "onnxruntime": "1.17.3", "numpy": "1.26.4"} with the outputs
written to OUTPUTS_NPZ, or {"ok": false, "stage": "load" | "run", "error": "...", ...}. Exit status 0 in
both cases; anything else means the process itself failed (a native crash), which the parent reports.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort

# onnxruntime wraps its messages in a status prefix and the C++ source location with the function signature:
#   "[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:/onnxruntime_src/onnxruntime/core/graph/
#    model.cc:149 onnxruntime::Model::Model(...) Unsupported model IR version: 10, max supported IR version: 9"
_STATUS_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_SOURCE_LOCATION = re.compile(r"(?:/|[A-Za-z]:\\)[^\s:]*\.(?:cc|cpp|h):\d+ .*?\)\s+(?=[A-Z])")


class ModelRunError(Exception):
    """onnxruntime could not load (``stage="load"``) or run (``stage="run"``) the model."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage
        self.message = message


def clean_message(exc: BaseException) -> str:
    """onnxruntime's error text without C++ source locations, on one line."""
    text = _SOURCE_LOCATION.sub(" ", _STATUS_PREFIX.sub("", str(exc).strip()))
    return " ".join(text.split())


def cpu_session(model_path: str):
    """The worker's own session, for when it runs by path in an isolated venv (where nothing of onnxgate can be
    imported): CPU only, so that the result does not depend on which accelerators the verifying machine has;
    errors only in the log. In-process callers pass ``runtimes.ort.open_session`` instead (``run_model``)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; warnings would interleave with the JSON protocol
    # When a session fails to build, onnxruntime's Python wrapper print()s an "EP Error ... Falling back"
    # banner to stdout and retries: that would corrupt `--json` output (and this script's protocol line).
    with contextlib.redirect_stdout(io.StringIO()):
        return ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])


def run_model(model_path: str, inputs: dict[str, np.ndarray], *,
              session_factory: Callable[[str], Any] = cpu_session) -> dict[str, np.ndarray]:
    """Outputs of the model on ``inputs``, keyed by output name. ``session_factory`` builds the session from the
    path: ``cpu_session`` in the isolated venv, ``runtimes.ort.open_session`` in onnxgate's own process (every
    session onnxgate builds goes through it); a factory that wraps onnxruntime's error is reported by its cause."""
    try:
        session = session_factory(model_path)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented classes
        raise ModelRunError("load", clean_message(exc.__cause__ or exc)) from exc
    names = [o.name for o in session.get_outputs()]
    expected = [i.name for i in session.get_inputs()]
    missing = [name for name in expected if name not in inputs]
    if missing:
        raise ModelRunError("run", f"the golden inputs lack the model input(s) {', '.join(missing)}")
    try:
        outputs = session.run(names, {name: inputs[name] for name in expected})
    except Exception as exc:
        raise ModelRunError("run", clean_message(exc)) from exc
    return dict(zip(names, outputs, strict=True))


def save_npz(path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` for any array names (its keyword arguments clash with names like ``file``),
    with fixed timestamps so equal arrays give equal bytes. Refuses object arrays: an npz must not pickle.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asarray(array), allow_pickle=False)


def main(argv: list[str]) -> int:
    model_path, inputs_path, outputs_path = argv
    report = {"onnxruntime": ort.__version__, "numpy": np.__version__}
    with np.load(inputs_path, allow_pickle=False) as data:
        inputs = {name: data[name] for name in data.files}
    try:
        outputs = run_model(model_path, inputs)
    except ModelRunError as exc:
        report.update(ok=False, stage=exc.stage, error=exc.message)
    else:
        save_npz(outputs_path, outputs)
        report.update(ok=True)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
