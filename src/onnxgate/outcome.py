"""The one judge: every stage result (and every onnxgate error) maps to one ``Outcome`` here, and nowhere else.

An ``Outcome`` is the verdict a user gates on: ``passed``, the process ``exit_code``, a one-line ``reason`` and a
``hint`` naming the fix. The CLI, the pipeline and the Python API all ask ``judge(result)``, so the same failure
gives the same exit code whichever door it came through:

    result                       fails when                                   exit
    StructureReport (inspect)    not valid ONNX (checker, unknown dtypes...)   2  bad input
                                 valid, but this onnxruntime cannot load it    6  runtime incompatible
    TargetResult (--target)      the named runtime release cannot run it       6
    VerifyResult                 structure / targets as above; then parity     4  parity failed
    ExportResult                 no attempt won                                3  export failed
    TransformReport (optimize)   a required transform was rolled back          4
    QuantizeReport               the accuracy budget is missed                 5  accuracy budget
    RecipeSearch (INT8 recipes)  no recipe holds the budget (shipping FP32     5
                                 because INT8 is not faster passes)
    BundleVerification           tampered 9, wrong numbers 4, cannot run 6
    DeployReport (deploy)        an artifact differs from the reference 4, a target cannot convert it 6
                                 (skipped and "converted, not numerically verified" targets do not fail)
    PipelineReport (run)         an error that ended it early, else the first   its code (``judge_run``; the
                                 failed stage result in stage order            report records it, and its stage)
    Killed (a process that died  crash, timeout or memory kill: by its stage   3 in load/export, 6 after; an
      without a result)          (``KILLED_CODES``, the one crash table)       onnxgate bug in a worker: 1
    ServeResult (serve)          never: a server that started and shut down    0  (a bundle that fails to verify
                                 never starts: its BundleVerification's code)
    ConfigExport (serve --export-config)  never: written files                 0
    ZooReport (zoo)              a model failed whose tags, family and name    the first such model's code, in
                                 are all outside --allow-fail                  the zoo file's order
    OnnxgateError                always: its own exit code
    anything else raised         a bug in onnxgate                             1

``Outcome.cause`` names the kind of failure inside its exit code (a diagnosis id, "dim frozen", "memory cap"...):
the zoo's failure classes (``failure_class``) are made of the code's name and it, never of reason text.

``envelope(command, ...)`` is the one JSON document every command prints under ``--json`` (schema:
``docs/schemas/envelope.schema.json``). Result types are matched by class name so this module imports nothing
heavy: it is on the torch-free, onnx-free path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ._version import __version__
from . import errors
from .errors import ExitCode, OnnxgateError
from .stages import Ending, Stage

ENVELOPE_VERSION = "1"
# The error class that stands for each exit code: what raise_for raises and what the envelope of a failed result
# names, so a failed result and the exception for the same failure read alike.
ERROR_CLASSES: dict[int, type[OnnxgateError]] = {
    int(ExitCode.BAD_INPUT): errors.BadInputError, int(ExitCode.EXPORT_FAILED): errors.ExportError,
    int(ExitCode.PARITY_FAILED): errors.ParityError, int(ExitCode.ACCURACY_BUDGET): errors.AccuracyBudgetError,
    int(ExitCode.RUNTIME_INCOMPATIBLE): errors.RuntimeIncompatibleError,
    int(ExitCode.UNSAFE_INPUT): errors.UnsafeInputError, int(ExitCode.INTEGRITY): errors.IntegrityError}


@dataclass(frozen=True)
class Outcome:
    passed: bool
    exit_code: int
    reason: str | None = None
    hint: str | None = None
    cause: str | None = None  # the kind of failure within its exit code (see failure_class)
    ending: str | None = None  # a process that died without a result: how (stages.Ending)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def failure_class(self) -> str | None:
        return None if self.passed else failure_class(self.exit_code, self.cause, ending=self.ending)


# What each exit code is called in failure classes and summaries (a test holds it to ExitCode).
EXIT_NAMES: dict[ExitCode, str] = {
    ExitCode.OK: "pass", ExitCode.INTERNAL: "internal error", ExitCode.BAD_INPUT: "bad input",
    ExitCode.EXPORT_FAILED: "export failed", ExitCode.PARITY_FAILED: "parity failed",
    ExitCode.ACCURACY_BUDGET: "accuracy budget missed", ExitCode.RUNTIME_INCOMPATIBLE: "runtime incompatible",
    ExitCode.UNSAFE_INPUT: "unsafe input", ExitCode.MISSING_DEPENDENCY: "missing dependency",
    ExitCode.INTEGRITY: "integrity"}


def failure_class(exit_code: int, cause: str | None = None, *, ending: str | None = None) -> str:
    """A failure's class, for the zoo's counts: the exit code's name and the cause within it. A process that died
    without a result (``ending``) is classed by how it died alone ("crashed (SIGABRT)", "timeout", "memory cap")."""
    if ending is not None and cause:
        return cause
    try:
        name = EXIT_NAMES[ExitCode(exit_code)]
    except ValueError:
        name = f"exit {exit_code}"
    return f"{name}: {cause}" if cause else name


PASSED = Outcome(True, int(ExitCode.OK))


def _fail(code: ExitCode, reason: str, hint: str | None = None, cause: str | None = None) -> Outcome:
    return Outcome(False, int(code), reason, hint, cause)


# ---- a process that died without a result ---------------------------------------------------------------------
# The one crash table: the same crash, timeout or memory kill in a stage gives the same exit code through
# ``onnxgate run`` (cli/isolate.py: the child that died), ``onnxgate zoo`` (a model's worker) and the Python API
# (``judge(Killed(...))``, ``run_zoo``). Until the model is exported, dying means the export failed (3); once there
# is a verified model, a stage that dies met a model its runtime (or the tools after it) cannot run (6). An
# exception onnxgate did not expect is a bug in onnxgate (1), in any stage.
_EXPORTING = (Stage.LOAD, Stage.EXPORT)
KILLED_CODES: dict[tuple[Stage, Ending], ExitCode] = {
    (stage, ending): (ExitCode.INTERNAL if ending is Ending.ERROR else
                      ExitCode.EXPORT_FAILED if stage in _EXPORTING else ExitCode.RUNTIME_INCOMPATIBLE)
    for stage in Stage for ending in Ending}
_KILLED_HINTS = {
    Ending.CRASH: "The model's code or a library under it crashed the process. Run the model alone under "
                  "python -X faulthandler to find the crashing op.",
    Ending.TIMEOUT: "Give it more time, or narrow the --dim ranges.",
    Ending.MEMORY: "Give it more memory, or shrink the dims (batch, image size, sequence length).",
    Ending.ERROR: "This is a bug in onnxgate.",
}


@dataclass(frozen=True)
class Killed:
    """A process that ended without a result while running ``stage``: how (``ending``), the signal that killed it
    (crash, memory), the exception's type (error), and what its watcher saw (``detail``)."""

    stage: Stage
    ending: Ending
    signal: str | None = None
    error_type: str | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"stage": str(self.stage), "ending": str(self.ending), "signal": self.signal,
                "error_type": self.error_type, "detail": self.detail}


def killed_code(stage: Stage | str, ending: Ending | str) -> ExitCode:
    return KILLED_CODES[Stage(stage), Ending(ending)]


def _killed(killed: Killed) -> Outcome:
    stage, ending = Stage(killed.stage), Ending(killed.ending)
    cause = {Ending.CRASH: f"crashed ({killed.signal or 'no result'})", Ending.TIMEOUT: "timeout",
             Ending.MEMORY: "memory cap", Ending.ERROR: f"internal error ({killed.error_type or 'exception'})"}[ending]
    what = killed.detail or {Ending.CRASH: f"the process died from {killed.signal}" if killed.signal
                             else "the process ended without a result", Ending.TIMEOUT: "the process timed out",
                             Ending.MEMORY: "the process was stopped at its memory cap",
                             Ending.ERROR: "the process raised an unexpected exception"}[ending]
    return Outcome(False, int(killed_code(stage, ending)), f"{what} (during {stage})", _KILLED_HINTS[ending], cause,
                   ending.value)


def _structure(report) -> Outcome:
    invalid = ([f"onnx.checker: {report.checker_error}"] if not report.checker_ok else []) + list(
        report.structure_errors) + ([f"shape inference: {report.shape_inference_error}"]
                                    if not report.shape_inference_ok else [])
    if invalid:
        return _fail(ExitCode.BAD_INPUT, f"'{report.path}' is not a valid ONNX model: {'; '.join(invalid)}",
                     "Re-export the model, or check the file is complete (`onnxgate inspect` lists what is wrong).")
    if report.ort_loads is False:
        return _fail(ExitCode.RUNTIME_INCOMPATIBLE,
                     f"onnxruntime {report.ort_version} cannot load '{report.path}': {report.ort_error}",
                     "Export at an opset this onnxruntime supports (--opset, --target), or upgrade onnxruntime.")
    return PASSED


def _targets(targets) -> Outcome:
    failed = [t for t in targets if not t.supported]
    if failed:
        return _fail(ExitCode.RUNTIME_INCOMPATIBLE,
                     "; ".join(f"{t.target}: {'; '.join(t.reasons)}" for t in failed),
                     "Export for that target (--target on export/run, or --opset), or upgrade the runtime.")
    return PASSED


def _verify(result) -> Outcome:
    for outcome in (_structure(result.structure), _targets(result.targets)):
        if not outcome.passed:
            return outcome
    failed = [p for p in result.parities if not p.passed]
    if failed:
        where = f" Localizer: {result.localization['summary']}" if result.localization else ""
        return _fail(ExitCode.PARITY_FAILED, "; ".join(f"{p.candidate}: {p.summary()}" for p in failed) + where,
                     _parity_hint(failed), _parity_cause(failed))
    proof = getattr(result, "preprocessing", None)
    if proof and proof.get("passed") is False:  # the served preprocessing is not torchvision's (onnxgate.preprocess.prove)
        return _fail(ExitCode.PARITY_FAILED, f"preprocessing {proof['spec']}: max pixel error "
                     f"{proof['max_pixel_error']:.3g} (bound {proof['pixel_bound']:g}), top-1 agreement "
                     f"{proof['top1_agree']}/{proof['images']} (at most {proof['max_top1_disagreements']} may differ)",
                     "Record the preprocessing the model was trained with (--meta preprocess=...), "
                     "interpolation included.", "preprocessing differs")
    return PASSED


def _parity_cause(failed) -> str | None:
    """Why parity failed, from the parity reports: a dim frozen at its traced size, a domain narrower than
    declared, weights that cannot tell right from wrong, or an error within the default tolerance but beyond the
    model's own float32 noise (issue 28); None for plain wrong numbers."""
    if any([d for d in getattr(p, "frozen", None) or () if d not in (getattr(p, "allowed_static", None) or ())]
           for p in failed):
        return "dim frozen"
    if any(getattr(p, "narrowed", None) and not getattr(p, "accept_domain", False) for p in failed):
        return "shape domain narrower than declared"
    if any(getattr(p, "degenerate", None) for p in failed):
        return "not verifiable with these weights"
    if all(getattr(p, "noise", None) is not None and not p.noise.passed and p.first_failure is None for p in failed):
        return "above the model's own float32 noise"  # every sampled case within the default, not within the noise
    return None


def _parity_hint(failed) -> str:
    """The way out of a failed parity: a wrong export, a shape domain narrower than declared, or a reference
    whose outputs cannot tell right from wrong (a failed verdict too: nothing was proven)."""
    wrong = any(p.frozen or any(c.dim is None and not c.passed for c in p.cases) for p in failed)
    if not wrong:
        hints = []
        if any(getattr(p, "narrowed", None) for p in failed):
            hints.append("The model holds only on part of the declared shapes: accept the verified domain with "
                         "--accept-domain (the metadata, bundle and report then claim it), or declare it with "
                         "--dim NAME=MIN..MAX%MULTIPLE.")
        if any(getattr(p, "degenerate", None) for p in failed):
            hints.append("Not verifiable with these weights: re-initialize all-zero weights with "
                         "--reinit-degenerate, load real weights (--weights), or verify on real data (--data).")
        if hints:
            return " ".join(hints)
    return "The ONNX model computes something else than PyTorch: see the failing cases and the localizer."


def _export(result) -> Outcome:
    if result.ok:
        return PASSED
    error = getattr(result, "error", None)
    outcome = judge(error) if isinstance(error, OnnxgateError) else _fail(
        ExitCode.EXPORT_FAILED, "every export attempt failed", "See the attempts and their diagnoses.")
    return Outcome(False, outcome.exit_code, outcome.reason, outcome.hint, _export_cause(result))


def _export_cause(result) -> str | None:
    """The diagnosis of a failed ladder, or why the exports that ran were refused (the winner's own proof)."""
    if getattr(result, "diagnosis", None) and result.diagnosis.get("id"):
        return result.diagnosis["id"]
    if any(a.outcome == "frozen_dim" for a in result.attempts):
        return "dim frozen"
    winner = result.attempts[result.winner] if result.winner is not None else None
    proof = getattr(winner, "parity", None)
    return _parity_cause([proof]) if proof is not None and not proof.passed else None


def _transform(report) -> Outcome:
    if report.passed:
        return PASSED
    failed = report.rolled_back
    what = "; ".join(f"{r.name}: {r.message}" for r in failed) or "a required transform did not verify"
    return _fail(ExitCode.PARITY_FAILED, f"{what}. The output was not written.",
                 "Keep more operators in float32 with --fp16-keep OP, or run without --fp16.")


def _recipe_search(search) -> Outcome:
    if search.passed:
        return PASSED
    return _fail(ExitCode.ACCURACY_BUDGET, f"{search.decision}. Nothing was written.", search.hint)


def _quantize(report) -> Outcome:
    if report.passed:
        return PASSED
    tried = ", ".join(s.node for s in report.float_nodes) or "none (no node could be kept in float)"
    return _fail(ExitCode.ACCURACY_BUDGET,
                 f"the int8 model misses the accuracy budget ({report.budget}): {report.final.miss}. Nodes tried in "
                 f"float: {tried}. The output was not written.",
                 getattr(report, "hint", None) or  # the gate could not judge: the way out is better data, not tuning
                 "Try --method entropy or percentile, more calibration data, --max-float-nodes, --mode dynamic, or "
                 "a looser budget.")


def _nncf(result) -> Outcome:
    """NNCF's INT8 model (``transform.nncf_backend``): written only within the budget, like every INT8 recipe."""
    if result.passed:
        return PASSED
    return _fail(ExitCode.ACCURACY_BUDGET, f"{result.summary()}. The output was not written.",
                 "Try accuracy_control=True with labelled evaluation data, more calibration data, per-channel "
                 "weights, or a looser budget.")


def _hunt(result) -> Outcome:
    """The divergence hunt (``verify.hunt``): a feed on which the candidate leaves its tolerance is a parity failure."""
    if result.passed:
        return PASSED
    return _fail(ExitCode.PARITY_FAILED, f"the divergence hunt found a failing feed ({result.found_by}, seed "
                 f"{result.seed}): {result.record.reason()}",
                 "The export differs from PyTorch on inputs the sampled proof did not draw; see the hunted feed.")


# Bundle verification statuses (bundle/verify.py). When several runtimes fail, the worst is reported: a tampered
# bundle, then wrong numbers, then a runtime that cannot run it.
_BUNDLE_CODES = {"pass": ExitCode.OK, "tampered": ExitCode.INTEGRITY, "fail": ExitCode.PARITY_FAILED,
                 "crashed": ExitCode.RUNTIME_INCOMPATIBLE, "incompatible": ExitCode.RUNTIME_INCOMPATIBLE,
                 "unavailable": ExitCode.RUNTIME_INCOMPATIBLE}
BUNDLE_SEVERITY = ("tampered", "fail", "crashed", "incompatible", "unavailable")
_BUNDLE_HINTS = {
    "tampered": "Do not use this bundle: re-create it, or fetch it again from its source.",
    "fail": "This runtime computes different numbers (see the per-output errors): pin a runtime that passes "
            "(requirements-runtime.txt pins the verified one), or re-export.",
    "incompatible": "Use a runtime that passes, or re-export at an opset this runtime supports (--opset).",
}


def _bundle(result) -> Outcome:
    code = _BUNDLE_CODES.get(result.status, ExitCode.RUNTIME_INCOMPATIBLE)
    if code == ExitCode.OK:
        return PASSED
    return _fail(code, f"Bundle verification failed on {result.runtime}: {result.status}: {result.reason}",
                 _BUNDLE_HINTS.get(result.status, _BUNDLE_HINTS["incompatible"]))


def _deploy(report) -> Outcome:
    if report.failed:
        return _fail(ExitCode.PARITY_FAILED,
                     "; ".join(f"deploy target {a.label}: {a.reason}" for a in report.failed),
                     "The converted artifact computes something else than the ONNX model's reference: see its "
                     "failing feeds; deploy the other targets, or report the converter's failure upstream.")
    if report.not_converted:
        return _fail(ExitCode.RUNTIME_INCOMPATIBLE,
                     "; ".join(f"deploy target {a.label}: {a.reason}" for a in report.not_converted),
                     "Export at an opset the target supports (--opset), simplify the model (onnxgate optimize), "
                     "or deploy the other targets.")
    return PASSED


def judge_run(ended: tuple[Stage, Outcome] | None, results: dict[Stage, Any]) -> tuple[Outcome, Stage | None]:
    """The verdict of one pipeline run and the stage it came from: the error that ended the run early (in the
    stage it ended), else the first failed stage result in stage order (verification, the INT8 budget, the deploy
    targets...). ``results``: each stage's typed result, None where the stage did not run."""
    if ended is not None and not ended[1].passed:
        return ended[1], ended[0]
    for stage in Stage:
        result = results.get(stage)
        if result is not None:
            outcome = judge(result)
            if not outcome.passed:
                return outcome, stage
    return PASSED, None


def _pipeline(report) -> Outcome:
    """A run's report records the verdict ``judge_run`` gave (a report read back from report.json has no typed
    results left to judge)."""
    if report.verdict == "pass":
        return PASSED
    return Outcome(False, int(report.exit_code), report.reason, getattr(report, "hint", None),
                   getattr(report, "cause", None))


def _zoo(report) -> Outcome:
    """Every model passed, or each failure is allowed (--allow-fail TAG); else the exit code of the first failing
    model in the zoo file's order (deterministic whatever order the workers finished in)."""
    blocking = [m for m in report.models if m.get("verdict") != "pass" and not report.allowed(m)]
    if not blocking:
        return PASSED
    named = "; ".join(f"{m['model']} ({m.get('failure_class') or 'failed'})" for m in blocking[:8])
    more = f"; and {len(blocking) - 8} more" if len(blocking) > 8 else ""
    return Outcome(False, int(blocking[0].get("exit_code") or ExitCode.INTERNAL),
                   f"{len(blocking)} of {len(report.models)} models failed: {named}{more}",
                   f"See {report.out_dir}/zoo.html (each model's report and worker.log); rerun only the failed ones "
                   "with --retry-failed, or accept known failures with --allow-fail TAG.")


_JUDGES: dict[str, Callable[[Any], Outcome]] = {
    "StructureReport": _structure, "TargetResult": lambda t: _targets([t]), "VerifyResult": _verify,
    "ExportResult": _export, "TransformReport": _transform, "QuantizeReport": _quantize, "RecipeSearch": _recipe_search,
    "NncfResult": _nncf, "HuntResult": _hunt,
    "BundleVerification": _bundle, "PipelineReport": _pipeline, "DeployReport": _deploy,
    "BenchReport": lambda _r: PASSED,  # measurements: a benchmark has no verdict of its own
    "ServeResult": lambda _r: PASSED, "ConfigExport": lambda _r: PASSED,  # serve: failures raise before it starts
    "ZooReport": _zoo, "Killed": _killed,
}


def judge(result: Any) -> Outcome:
    """The verdict of a stage result, a list of them (the worst wins), or an exception."""
    if isinstance(result, OnnxgateError):
        return _fail(result.exit_code, result.message, result.hint)
    if isinstance(result, BaseException):
        return _fail(ExitCode.INTERNAL, f"{type(result).__name__}: {result}", "This is a bug in onnxgate.")
    if isinstance(result, (list, tuple)):
        if result and type(result[0]).__name__ == "BundleVerification":  # a runtime matrix: the worst cell
            result = sorted(result, key=lambda r: BUNDLE_SEVERITY.index(r.status)
                            if r.status in BUNDLE_SEVERITY else len(BUNDLE_SEVERITY))
        outcomes = [judge(r) for r in result]
        return next((o for o in outcomes if not o.passed), PASSED)
    try:
        return _JUDGES[type(result).__name__](result)
    except KeyError:
        raise TypeError(f"onnxgate has no verdict rule for {type(result).__name__}") from None


def raise_for(result: Any) -> None:
    """At the edge of the Python API: raise the failed verdict of ``result`` as the matching onnxgate error."""
    outcome = judge(result)
    if outcome.passed:
        return
    error = getattr(result, "error", None)
    if isinstance(error, OnnxgateError):  # a failed result that carries its error (a failed ladder): the same one
        raise error
    raise ERROR_CLASSES.get(outcome.exit_code, OnnxgateError)(outcome.reason or "failed", hint=outcome.hint,
                                                              result=result)


def envelope(command: str, *, result: Any = None, error: BaseException | None = None,
             data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document every command prints under ``--json``: the verdict on top, the facts under ``result``.

    ``result``: a stage result (judged, and serialized with its ``to_dict()``); ``data``: the facts to print when
    they are not one result object (several bundle runtimes); ``error``: an exception that ended the command."""
    outcome = judge(error if error is not None else result) if (error is not None or result is not None) else PASSED
    if data is None and result is not None:
        data = [r.to_dict() for r in result] if isinstance(result, (list, tuple)) else result.to_dict()
    doc: dict[str, Any] = {"envelope": ENVELOPE_VERSION, "onnxgate_version": __version__, "command": command,
                           "ok": outcome.passed, "exit_code": outcome.exit_code, "reason": outcome.reason,
                           "hint": outcome.hint, "result": data, "error": None}
    if error is not None:
        doc["error"] = {"type": type(error).__name__, "message": getattr(error, "message", str(error)),
                        "hint": getattr(error, "hint", None), "exit_code": outcome.exit_code}
    elif not outcome.passed:  # a failed result: the same error object an exception would have given
        doc["error"] = {"type": ERROR_CLASSES.get(outcome.exit_code, OnnxgateError).__name__, "message": outcome.reason,
                        "hint": outcome.hint, "exit_code": outcome.exit_code}
    return doc
