"""Re-verify a bundle where it will run: checksums first, then the golden inputs through onnxruntime.

This module imports neither torch nor onnx: it is what a production machine runs with only onnxgate's base
install. With ``runtime="onnxruntime==X.Y.Z"`` the model runs in an isolated virtual environment holding
exactly that release (see ``matrix.py``); otherwise in this process, with the onnxruntime installed here.

Outcomes are values, not exceptions: a tampered file, wrong numbers or a runtime that cannot load the model
each give a failed ``BundleVerification`` with a ``status``, a ``reason`` and an ``exit_code``. What raises is
what must stop verification before anything runs: a path that is not a bundle or a malformed manifest
(BadInputError, exit 2), and anything that would make onnxgate or a runtime touch files outside the bundle —
links, special files, external data leaving the folder, tar members that are links or escape, archives beyond
the size caps (UnsafeInputError, exit 7).

Nothing a bundle holds is trusted before it is checked, because the runtime matrix hands the model to old
onnxruntime releases whose own checks are weaker: onnxgate checks containment itself, the same way for every
runtime (see ``manifest.py`` for the files, ``opened.check_external_data`` for what the model references,
``unpack.opened_bundle`` for archives).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import claim as cl
from ..errors import BadInputError
from ..npz import load_npz
from ..runtimes.ort import open_session
from ..verify import engine
from ..verify.compare import OutputComparison
from ..verify.tolerance import Tolerance, default_tolerance, sci
from . import manifest as mf
from .matrix import RunOutcome, run_in_venv
from .opened import VerifiedBundle, check
from .unpack import TarLimits, opened_bundle

# A manifest's tolerances are claims the bundle makes about itself; without a signature they cannot be trusted, but
# they can be held to sense. No precision onnxgate verifies (fp32, fp16, bf16, an INT8 file at its contract) needs an
# output to be allowed an error of a quarter of its own scale, and at rtol >= 1 an all-zero output passes: beyond
# these ceilings a comparison no longer tells the model from a wrong one. The same ceiling refuses golden outputs
# the model misses *by far* (more than that fraction of their scale), whatever the manifest allows.
MAX_RTOL = 0.25
MAX_SCALE_FRACTION = 0.25
_NUMERIC = "biufc"

# status → process exit code; "pass" is the only success.
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
    tolerances: list[dict[str, Any]] = field(default_factory=list)  # per output: rtol, atol, source, ceiling
    signature: str | None = None  # unsigned | signed, not checked | verified with KEY (see signing.py)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def exit_code(self) -> int:
        from ..outcome import judge

        return judge(self).exit_code

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["outputs"] = [c.to_dict() for c in self.outputs]
        return {"passed": self.passed, **data}


def verify_bundle(bundle: str | Path | VerifiedBundle, *, runtime: str | None = None,
                  trust: str | Path | None = None) -> BundleVerification:
    """Verify the bundle folder (or ``.tar.gz``) at ``bundle`` on one runtime.

    ``runtime=None`` uses this process's onnxruntime; ``"onnxruntime==1.17.3"`` an isolated venv with it.
    ``trust``: a public key the bundle must be signed with (``onnxgate sign``); see ``verify_matrix``. A
    ``VerifiedBundle`` (what ``bundle.open`` returns) is not hashed again: its files matched their checksums
    when it was opened, so only the signature (with ``trust``) and the golden run remain.
    """
    if isinstance(bundle, VerifiedBundle):
        return _verify_checked(str(bundle.folder), bundle.folder, bundle.manifest, [runtime], trust)[0]
    return verify_matrix(bundle, [runtime], trust=trust)[0]


def verify_matrix(path: str | Path, runtimes: list[str | None], *,
                  limits: TarLimits | None = None, trust: str | Path | None = None) -> list[BundleVerification]:
    """Verify one bundle on several runtimes (None = this process's onnxruntime): one result per runtime.

    Everything onnxgate can check itself is checked once, before any runtime sees the bundle, by the reader
    ``bundle.open`` uses (``opened.check``): the manifest's shape (exit 2), links and special files (exit 7),
    each file's size and then its checksum (exit 9), and the model's external-data references (exit 7 when one
    leaves the bundle, 9 when it names a file the manifest does not vouch for). So an old onnxruntime in the
    matrix, whose own checks are weaker, is only ever handed a bundle already proven self-contained. ``limits``
    bounds what a tar may unpack to. With ``trust`` (a public key file), the bundle's signature, signed claim
    and signed digests are checked after the files (exit 9 naming which, see ``signing.py``); an unsigned
    bundle then fails too.
    """
    with opened_bundle(Path(path), limits=limits) as folder:
        checked = check(folder)
        if checked.problems:
            return _tampered(path, checked.manifest, runtimes, checked.what, checked.problems, None)
        return _verify_checked(str(path), folder, checked.manifest, runtimes, trust)


def _tampered(path: str | Path, manifest: dict[str, Any], runtimes: list[str | None], what: str,
              problems: list[str], signature: str | None) -> list[BundleVerification]:
    reason = f"{what}: " + "; ".join(problems[:20]) + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")
    return [BundleVerification(str(path), "tampered", runtime or "onnxruntime", files_checked=sorted(manifest["files"]),
                               reason=reason, signature=signature) for runtime in runtimes]


def _verify_checked(path: str, folder: Path, manifest: dict[str, Any], runtimes: list[str | None],
                    trust: str | Path | None) -> list[BundleVerification]:
    """The signature, then the golden inputs on every runtime, for a bundle whose files were checked."""
    signature = _signature(folder, manifest, trust)
    if isinstance(signature, list):
        return _tampered(path, manifest, runtimes, f"the signature check against '{trust}' failed", signature,
                         "invalid")
    checked = sorted(manifest["files"])
    inputs = load_npz(folder / mf.GOLDEN_INPUTS, bundle=True)
    reference = load_npz(folder / mf.REFERENCE_OUTPUTS, bundle=True)
    tolerances = checked_tolerances(manifest, reference, where=f"The bundle '{path}'")  # before anything runs
    results = []
    for runtime in runtimes:
        run = run_in_venv(folder / mf.MODEL, inputs, runtime) if runtime else run_here(folder / mf.MODEL, inputs)
        result = BundleVerification(path, run.status, runtime or "onnxruntime", run.runtime_version,
                                    checked, reason=run.reason, tolerances=tolerances, signature=signature)
        if run.outputs is not None:  # it ran; now judge its numbers
            result.outputs = compare_all(manifest, reference, run.outputs)
            failed = [c for c in result.outputs if not c.passed]
            if failed:
                result.status = "fail"
                far = [c for c in failed if c.reason and c.reason.startswith(_BY_FAR)]
                result.reason = (f"output(s) {', '.join(c.name for c in failed)} differ from the reference beyond "
                                 "tolerance" + (f" ({far[0].name}: {far[0].reason})" if far else ""))
        results.append(result)
    return results


def _signature(folder: Path, manifest: dict[str, Any], trust: str | Path | None) -> str | list[str]:
    """The signature's state without a trusted key; with one, its problems (a list) or 'verified with KEY'."""
    from . import signing

    if trust is None:
        return signing.signature_state(folder)
    problems = signing.check_signature(folder, manifest, Path(trust))
    return problems or f"verified with '{trust}'"


def run_here(model: Path, inputs: dict[str, np.ndarray]) -> RunOutcome:
    """Run the model with this process's onnxruntime, the same way the venv worker does."""
    import onnxruntime

    from ..runtimes.venv_worker import ModelRunError, run_model

    version = onnxruntime.__version__
    try:
        return RunOutcome("pass", version, outputs=run_model(str(model), inputs, session_factory=open_session))
    except ModelRunError as exc:
        return RunOutcome("incompatible", version, reason=f"onnxruntime {version} cannot {exc.stage} the model: "
                                                          f"{exc.message}")


def checked_tolerances(manifest: dict[str, Any], reference: dict[str, np.ndarray], *,
                       where: str = "The bundle") -> list[dict[str, Any]]:
    """The manifest's tolerance of every output, with where it comes from and the ceiling it was held to; a
    BadInputError (exit 2: the manifest claims what onnxgate never writes) for one beyond the ceiling of its
    output (``MAX_RTOL``; atol at most ``MAX_SCALE_FRACTION`` x the reference's scale, or the dtype's default
    atol when that is larger)."""
    table = []
    recorded = _recorded(manifest, where)
    for spec in manifest["outputs"]:
        name = spec["name"]
        tol = recorded.get(name)
        array = np.asarray(reference[name]) if name in reference else None
        dtype = array.dtype.name if array is not None else str(spec.get("dtype"))
        default = default_tolerance(dtype)
        if tol is None:
            table.append({"output": name, "rtol": default.rtol, "atol": default.atol,
                          "source": f"the {dtype} default (the manifest names no tolerance for it)"})
            continue
        if array is None or array.dtype.kind not in _NUMERIC:  # no reference to judge by: its comparison fails
            table.append({"output": name, "rtol": tol.rtol, "atol": tol.atol, "source": "manifest.json"})
            continue
        ceiling = tolerance_ceiling(array, dtype)
        if tol.rtol > ceiling.rtol or tol.atol > ceiling.atol:
            raise BadInputError(
                f"{where} claims a tolerance for output '{name[:200]}' (rtol={sci(tol.rtol)}, "
                f"atol={sci(tol.atol)}) beyond what its {dtype} precision allows (rtol <= {sci(ceiling.rtol)}, "
                f"atol <= {sci(ceiling.atol)}: {MAX_SCALE_FRACTION:g} x the reference's scale, or the {dtype} "
                "default): a comparison at it would pass a wrong model, so the bundle proves nothing. onnxgate "
                "never writes such a manifest; it was edited.",
                hint="Do not use this bundle: re-create it with `onnxgate bundle` (or fetch it again from its source).")
        same = tol.rtol == default.rtol and tol.atol == default.atol
        source = (f"manifest.json, the {dtype} default" if same else
                  f"manifest.json, set when the bundle was written (the {dtype} default is {default})")
        table.append({"output": name, "rtol": tol.rtol, "atol": tol.atol, "source": source,
                      "ceiling": {"rtol": ceiling.rtol, "atol": ceiling.atol}})
    return table


def _recorded(manifest: dict[str, Any], where: str) -> dict[str, Tolerance]:
    """The manifest's tolerance table through the claim codec (``manifest.read_manifest`` checked it already)."""
    return cl.manifest_tolerances(manifest[cl.MANIFEST_TOLERANCES], [o["name"] for o in manifest["outputs"]], where)


def tolerance_ceiling(reference: np.ndarray | None, dtype: str) -> Tolerance:
    """The loosest tolerance a manifest may give an output whose reference is ``reference`` (see ``MAX_RTOL``)."""
    return engine.ceiling(reference, dtype, max_rtol=MAX_RTOL, max_scale_fraction=MAX_SCALE_FRACTION)


_BY_FAR = "misses the reference by far"


def compare_all(manifest: dict[str, Any], reference: dict[str, np.ndarray],
                got: dict[str, np.ndarray]) -> list[OutputComparison]:
    """Compare every output the manifest lists with its reference, at the manifest's tolerances — with the same
    engine as `onnxgate verify` (scale-relative judging for huge outputs, NaN/Inf placement, exact integers).

    The arrays come from the bundle and the runtime, so they are checked before the engine sees them: an
    output whose reference (or result) is not numeric, or a detection group that does not line up, is a failed
    comparison with its reason, never an exception.
    """
    names = [spec["name"] for spec in manifest["outputs"]]
    tolerances = _recorded(manifest, "the manifest")
    failed: dict[str, str] = {}
    for name in names:
        if name not in reference:
            failed[name] = "missing from reference_outputs.npz"
        elif np.asarray(reference[name]).dtype.kind not in _NUMERIC:
            failed[name] = f"the reference has dtype {np.asarray(reference[name]).dtype}, which is not numeric"
        elif name in got and np.asarray(got[name]).dtype.kind not in _NUMERIC:
            failed[name] = f"the runtime returned dtype {np.asarray(got[name]).dtype}, which is not numeric"
    comparable = {n: reference[n] for n in names if n not in failed}
    checked_tolerances(manifest, comparable)  # a tolerance beyond its output's ceiling: BadInputError
    try:
        compared = engine.compare(comparable, got, tolerances=tolerances, reference_label="the reference")
    except (ValueError, TypeError, IndexError) as exc:  # e.g. boxes/scores/labels of different counts
        compared = [engine.not_compared(n, f"cannot be compared: {str(exc)[:300]}", tolerances.get(n))
                    for n in comparable]
    for comp in compared:  # whatever the manifest allows: an output missed by far is not reproduced
        if comp.name not in comparable or any(n.startswith("compared as detections") for n in comp.notes):
            continue  # detections are judged as IoU-matched sets, not element by element
        scale = engine.output_scale(np.asarray(comparable[comp.name]))
        if comp.passed and comp.max_abs_err is not None and scale > 0 and comp.max_abs_err > MAX_SCALE_FRACTION * scale:
            comp.passed = False
            comp.reason = (f"{_BY_FAR}: max abs err {sci(comp.max_abs_err)} is {comp.max_abs_err / scale:.0%} of the "
                           f"output's scale (max |ref| = {sci(scale)}); no precision errs beyond "
                           f"{MAX_SCALE_FRACTION:.0%}, so the golden outputs are not what this model computes")
    return compared + [engine.not_compared(n, why, tolerances.get(n)) for n, why in failed.items()]
