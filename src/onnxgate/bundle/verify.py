"""Re-verify a bundle where it will run: checksums first, then the golden inputs through onnxruntime.

This module imports neither torch nor onnx: it is what a production machine runs with only onnxgate's base
install. With ``runtime="onnxruntime==X.Y.Z"`` the model runs in an isolated virtual environment holding
exactly that release (see ``matrix.py``); otherwise in this process, with the onnxruntime installed here.

Outcomes are values, not exceptions: a tampered file, wrong numbers or a runtime that cannot load the model
each give a failed ``BundleVerification`` with a ``status``, a ``reason`` and an ``exit_code``. Only a path
that is not a bundle at all (no manifest, unreadable manifest) raises.
"""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError, ExitCode, IntegrityError, UnsafeInputError
from ..verify.compare import OutputComparison, Tolerance, compare_outputs
from . import manifest as mf
from .matrix import RunOutcome, run_in_venv

# status → process exit code; "pass" is the only success.
EXIT_CODES = {
    "pass": ExitCode.OK,
    "tampered": ExitCode.INTEGRITY,
    "fail": ExitCode.PARITY_FAILED,
    "incompatible": ExitCode.RUNTIME_INCOMPATIBLE,
    "unavailable": ExitCode.RUNTIME_INCOMPATIBLE,
    "crashed": ExitCode.RUNTIME_INCOMPATIBLE,
}


@dataclass
class BundleVerification:
    """The outcome of verifying one bundle on one runtime.

    ``status``: pass | fail (numbers outside tolerance) | tampered (a file differs from its checksum) |
    incompatible (the runtime cannot load or run the model) | unavailable (that runtime cannot be installed
    here) | crashed (the runtime process died).
    """

    bundle: str
    status: str
    runtime: str  # what was asked for: "onnxruntime" (this process) or "onnxruntime==1.17.3"
    runtime_version: str | None = None  # what actually ran
    files_checked: list[str] = field(default_factory=list)
    outputs: list[OutputComparison] = field(default_factory=list)
    reason: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def exit_code(self) -> ExitCode:
        return EXIT_CODES[self.status]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["outputs"] = [c.to_dict() for c in self.outputs]
        return {"passed": self.passed, **data}


def verify_bundle(path: str | Path, *, runtime: str | None = None) -> BundleVerification:
    """Verify the bundle folder (or ``.tar.gz``) at ``path`` on one runtime.

    ``runtime=None`` uses this process's onnxruntime; ``"onnxruntime==1.17.3"`` an isolated venv with it.
    """
    return verify_matrix(path, [runtime])[0]


def verify_matrix(path: str | Path, runtimes: list[str | None]) -> list[BundleVerification]:
    """Verify one bundle on several runtimes (None = this process's onnxruntime): one result per runtime.

    Checksums are checked once; if any file changed, every cell says "tampered" and nothing is run.
    """
    with opened_bundle(Path(path)) as folder:
        manifest = mf.read_manifest(folder)
        problems = mf.check_files(folder, manifest)
        checked = sorted(manifest["files"])
        if problems:
            reason = "the bundle changed since it was written: " + "; ".join(problems)
            return [BundleVerification(str(path), "tampered", runtime or "onnxruntime", files_checked=checked,
                                       reason=reason) for runtime in runtimes]
        inputs = _load_npz(folder / mf.GOLDEN_INPUTS)
        reference = _load_npz(folder / mf.REFERENCE_OUTPUTS)
        results = []
        for runtime in runtimes:
            run = run_in_venv(folder / mf.MODEL, inputs, runtime) if runtime else run_here(folder / mf.MODEL, inputs)
            result = BundleVerification(str(path), run.status, runtime or "onnxruntime", run.runtime_version,
                                        checked, reason=run.reason)
            if run.outputs is not None:  # it ran; now judge its numbers
                result.outputs = compare_all(manifest, reference, run.outputs)
                failed = [c.name for c in result.outputs if not c.passed]
                if failed:
                    result.status = "fail"
                    result.reason = f"output(s) {', '.join(failed)} differ from the reference beyond tolerance"
            results.append(result)
        return results


def run_here(model: Path, inputs: dict[str, np.ndarray]) -> RunOutcome:
    """Run the model with this process's onnxruntime, the same way the venv worker does."""
    import onnxruntime

    from ._worker import ModelRunError, run_model

    version = onnxruntime.__version__
    try:
        return RunOutcome("pass", version, outputs=run_model(str(model), inputs))
    except ModelRunError as exc:
        return RunOutcome("incompatible", version, reason=f"onnxruntime {version} cannot {exc.stage} the model: "
                                                          f"{exc.message}")


def compare_all(manifest: dict[str, Any], reference: dict[str, np.ndarray],
                got: dict[str, np.ndarray]) -> list[OutputComparison]:
    """Compare every output the manifest lists with its reference, at the manifest's tolerances — with the same
    engine as `onnxgate verify` (scale-relative judging for huge outputs, NaN/Inf placement, exact integers)."""
    names = [spec["name"] for spec in manifest["outputs"]]
    tolerances = {name: Tolerance(tol["rtol"], tol["atol"]) for name, tol in manifest["tolerances"].items()}
    return compare_outputs({n: reference[n] for n in names if n in reference}, got, tolerances=tolerances,
                           reference_label="the reference") + [
        OutputComparison(n, None, None, None, None, tolerances.get(n, Tolerance(0.0, 0.0)),
                         reason="missing from reference_outputs.npz")
        for n in names if n not in reference]


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except ValueError as exc:  # object arrays: would need pickle, which a bundle never contains
        raise UnsafeInputError(f"'{path}' holds pickled arrays, which onnxgate never writes into a bundle.",
                               hint="Re-create the bundle with `onnxgate bundle`.") from exc
    except Exception as exc:  # checksum passed, so the writer itself produced a broken file
        raise IntegrityError(f"'{path}' cannot be read as an npz archive: {exc}",
                             hint="Re-create the bundle with `onnxgate bundle`.") from exc


@contextmanager
def opened_bundle(path: Path) -> Iterator[Path]:
    """The bundle folder at ``path``; a ``.tar.gz`` is unpacked (safely) into a temporary folder first."""
    if path.is_dir():
        yield path
        return
    if not path.is_file():
        raise BadInputError(f"The bundle '{path}' does not exist.",
                            hint="Pass a bundle folder or .tar.gz written by `onnxgate bundle`.")
    if not tarfile.is_tarfile(path):
        raise BadInputError(f"'{path}' is neither a bundle folder nor a tar archive.",
                            hint="Pass a bundle folder or .tar.gz written by `onnxgate bundle`.")
    with tempfile.TemporaryDirectory(prefix="onnxgate-bundle-") as tmp:
        try:
            with tarfile.open(path) as tar:
                tar.extractall(tmp, filter="data")  # refuses absolute paths, '..', links leaving the folder
        except tarfile.FilterError as exc:
            raise UnsafeInputError(f"The archive '{path}' contains an unsafe member: {exc}",
                                   hint="Only unpack bundles written by `onnxgate bundle`.") from exc
        folders = [p for p in Path(tmp).iterdir() if p.is_dir()]
        if len(folders) != 1 or len(list(Path(tmp).iterdir())) != 1:
            raise BadInputError(f"The archive '{path}' does not hold exactly one bundle folder.",
                                hint="Pass a .tar.gz written by `onnxgate bundle --tar`.")
        yield folders[0]
