"""Run a bundle on an exact onnxruntime release, in an isolated virtual environment, for a runtime matrix.

"Does this model still load on the onnxruntime 1.17 our production image pins?" can only be answered by
that release itself. So for ``onnxruntime==1.17.3`` onnxgate creates a venv holding exactly that release
(and a numpy it was built for), cached under ``$XDG_CACHE_HOME/onnxgate/venvs/onnxruntime-1.17.3``
(default ``~/.cache``), and runs ``runtimes/venv_worker.py`` there by path. The worker is a separate process so that a
native crash in an old runtime shows up as a "crashed" cell, not as the death of onnxgate; outputs come
back as an npz and are compared in the parent with the manifest's tolerances.

An old release is not trusted to contain the bundle: older onnxruntime releases check external-data
locations (``../../etc/shadow``, absolute paths, links) less strictly than onnxgate, or not at all. So
``verify.py`` checks links, sizes, checksums and every external-data reference itself before any cell runs,
and each release here is handed a model already proven to read only the bundle's own, checksummed files.
The worker's scratch folder is owner-tagged (``fsutil.staging_dir``): a killed run's is swept by the next.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError, OutputExistsError
from ..fsutil import atomic_dir, staging_dir
from ..npz import load_npz
from ..runtimes.venv_worker import save_npz

WORKER = Path(__file__).parent.parent / "runtimes" / "venv_worker.py"
READY_MARKER = ".onnxgate-venv.json"  # written last: a venv without it is incomplete
PIP_TIMEOUT_S = 1800
WORKER_TIMEOUT_S = 900
_VERSION_LIST = re.compile(r"\(from versions: ([^)]*)\)")
_RUNTIME_SPEC = re.compile(r"^(?:(onnxruntime(?:-[a-z0-9]+)*)==)?(\d+(?:\.\d+)*(?:[a-z0-9.+!-]*))$", re.IGNORECASE)


@dataclass
class RunOutcome:
    """One runtime's attempt to run a model: status "pass" (it ran; the caller judges the numbers),
    "incompatible", "unavailable" or "crashed"."""

    status: str
    runtime_version: str | None
    outputs: dict[str, np.ndarray] | None = None
    reason: str | None = None


class RuntimeUnavailable(Exception):
    """The requested runtime cannot be installed here (no such release, no wheel for this Python...)."""


def parse_runtime(spec: str) -> tuple[str, str]:
    """``"onnxruntime==1.17.3"`` or ``"1.17.3"`` → ``("onnxruntime", "1.17.3")``."""
    match = _RUNTIME_SPEC.match(spec.strip())
    if not match:
        raise BadInputError(
            f"--runtime '{spec}' does not parse: expected an exact onnxruntime release.",
            hint="Write it as onnxruntime==1.17.3 (or onnxruntime-gpu==1.17.3, or just 1.17.3).",
        )
    return (match.group(1) or "onnxruntime").lower(), match.group(2)


def numpy_requirement(version: str) -> str:
    """The numpy an onnxruntime release works with: releases before 1.19 were built against numpy 1.x."""
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    return "numpy<2" if numbers < (1, 19) else "numpy"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "onnxgate" / "venvs"


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv(package: str, version: str) -> Path:
    """The cached venv holding exactly ``package==version``, created on first use.

    Built in a temporary sibling folder and renamed into place when complete, so a concurrent onnxgate or
    an interrupted install never leaves a half-built venv under the cached name.
    """
    final = cache_root() / f"{package}-{version}"
    if _ready(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    numpy_req = numpy_requirement(version)
    try:
        with atomic_dir(final, force=final.exists()) as tmp:  # an existing folder here is a broken venv
            _run([sys.executable, "-m", "venv", str(tmp)], what="creating a virtual environment")
            _run([str(venv_python(tmp)), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                  f"--only-binary={package},numpy", f"{package}=={version}", numpy_req],
                 what=f"pip install {package}=={version}")
            marker = {"package": package, "version": version, "numpy": numpy_req, "python": sys.version.split()[0]}
            (tmp / READY_MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
    except OutputExistsError:  # another process finished the same venv first
        if not _ready(final):
            raise
    return final


def _ready(venv: Path) -> bool:
    return (venv / READY_MARKER).is_file() and venv_python(venv).exists()


def _run(command: list[str], *, what: str) -> None:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeUnavailable(f"{what} did not finish within {PIP_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        errors = [line.removeprefix("ERROR: ") for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
        detail = " ".join(errors) or (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise RuntimeUnavailable(f"{what} failed: {_VERSION_LIST.sub(_shorten_versions, detail)[:600]}")


def _shorten_versions(match: re.Match) -> str:
    """pip lists every release it found; the range and the count say the same in one line."""
    found = [v.strip() for v in match.group(1).split(",") if v.strip()]
    if len(found) <= 4:
        return match.group(0)
    return f"(from versions: {found[0]} ... {found[-1]}, {len(found)} in all)"


def run_in_venv(model: Path, inputs: dict[str, np.ndarray], runtime: str) -> RunOutcome:
    """Run ``model`` on ``inputs`` with the exact runtime ``runtime`` names, in its own venv and process."""
    package, version = parse_runtime(runtime)
    try:
        venv = ensure_venv(package, version)
    except RuntimeUnavailable as exc:
        return RunOutcome("unavailable", None, reason=str(exc))
    with staging_dir("run") as tmp:  # owner-tagged: swept by the next run if this one is killed
        inputs_path, outputs_path = Path(tmp, "inputs.npz"), Path(tmp, "outputs.npz")
        save_npz(inputs_path, inputs)
        command = [str(venv_python(venv)), "-I", str(WORKER), str(model), str(inputs_path), str(outputs_path)]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return RunOutcome("crashed", version, reason=f"the run did not finish within {WORKER_TIMEOUT_S} s")
        report = _report(proc)
        if report is None:
            return RunOutcome("crashed", version, reason=_crash_reason(proc))
        used = report.get("onnxruntime", version)
        if not report.get("ok"):
            reason = f"onnxruntime {used} cannot {report.get('stage')} the model: {report.get('error')}"
            return RunOutcome("incompatible", used, reason=reason)
        return RunOutcome("pass", used, outputs=load_npz(outputs_path, what="The runtime worker's outputs"))


def _report(proc: subprocess.CompletedProcess) -> dict | None:
    """The worker's JSON line, or None when the process did not complete the protocol."""
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return None
    try:
        return json.loads(lines[-1])
    except ValueError:
        return None


def _crash_reason(proc: subprocess.CompletedProcess) -> str:
    if proc.returncode < 0:
        try:
            how = f"was killed by {signal.Signals(-proc.returncode).name}"
        except ValueError:
            how = f"was killed by signal {-proc.returncode}"
    else:
        how = f"exited with status {proc.returncode}"
    last = (proc.stderr.strip().splitlines() or ["no error output"])[-1]
    return f"the runtime process {how}: {last[:400]}"
