"""One zoo model: what its worker runs (``prove``) and the ledger row made of what came back, or of why nothing did.

``prove`` runs in a forked worker (``onnxgate.worker.run_in_worker``), locally or inside a Ray task: it runs the
pipeline on the model's ``RunConfig`` into ``models/NAME/`` (report.json, report.html, model.onnx, the bundle) and
returns a small JSON-able summary — the ledger never carries the report itself. The worker's stdout and stderr go to
``models/NAME/worker.log`` and every progress step to ``steps.log``, so a worker that crashes, hangs or is stopped
at its memory cap still says how far it got. The stage it was in is the one the pipeline announced last
(``on_stage``, recorded in ``models/NAME/stage``), never read from the progress text: the exit code of a worker that
died is the judge's (``outcome.KILLED_CODES``, the same table ``onnxgate run`` uses), and so is every row's failure
class (``outcome.failure_class``: the exit code's name and the structured cause). The worker runs below a keeper
that owns its whole process tree (``worker.py``): the memory cap sums every process the model's code started (a
``setsid`` daemon included), a tree over it is the model's ``memory`` outcome, and whatever the model left running
is killed when it ends. The keeper dies with the zoo (``PR_SET_PDEATHSIG``) and takes the tree with it: a
``kill -9`` of the zoo leaves no model running on, so a resumed zoo never races an orphan writing the same folder.
"""

from __future__ import annotations

import faulthandler
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

from .. import claim as cl
from ..errors import BadInputError, ExitCode
from ..outcome import Killed, failure_class as class_of, judge
from ..stages import Ending, Stage, StageFile
from ..worker import CRASHED, ERROR, MEMORY, TIMEOUT, WorkerOutcome
from .spec import ZooModel

LOG_FILE, STEPS_FILE, STAGE_FILE = "worker.log", "steps.log", "stage"
_ENDINGS = {CRASHED: Ending.CRASH, TIMEOUT: Ending.TIMEOUT, MEMORY: Ending.MEMORY, ERROR: Ending.ERROR}
_HINTS = {
    CRASHED: "The model's code or a library under it crashed the worker (only this model was lost). Run it alone "
             "(`onnxgate run REF`, or python -X faulthandler) to find the op; its output is in {log}.",
    TIMEOUT: "Raise timeout_s for this model in the zoo file, or narrow its --dim ranges; its last step is in {log}.",
    MEMORY: "Raise memory_mb for this model in the zoo file, or shrink its dims (batch, image size); its last step "
            "is in {log}.",
    ERROR: "This is a bug in onnxgate: the traceback is in the ledger row and in {log}.",
}


def prove(model: ZooModel, out: str) -> dict[str, Any]:
    """In the worker: the pipeline on one model; a summary dict back (expected failures are values here too)."""
    folder = model.folder(Path(out))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("report.json", "report.html", STEPS_FILE, STAGE_FILE):
        (folder / stale).unlink(missing_ok=True)
    _redirect_output(folder / LOG_FILE)
    step, stage = _Steps(folder / STEPS_FILE), StageFile(folder / STAGE_FILE)
    stage(Stage.LOAD)
    step("loading the model")
    from ..errors import OnnxgateError
    from ..pipeline import run_job

    try:
        report = run_job(model.run, out_dir=folder, force=True, progress=step, on_stage=stage).to_dict()
    except OnnxgateError as exc:  # before the stages: the model does not load, an output folder problem
        outcome = judge(exc)
        return {"verdict": "fail", "exit_code": outcome.exit_code, "reason": outcome.reason, "hint": outcome.hint,
                "stage": stage.read().value, "cause": outcome.cause}
    return summarize(report)


def summarize(report: dict) -> dict[str, Any]:
    """The ledger's part of a pipeline report: verdict, stage reached, the export that won, domains, diagnosis."""
    stages = report.get("stages", {})
    export = stages.get("export") or {}
    attempts = export.get("attempts") or []
    winner = export.get("winner")
    won = attempts[winner] if winner is not None and winner < len(attempts) else None
    diagnosis = export.get("diagnosis") or next((a.get("diagnosis") for a in reversed(attempts) if a.get("diagnosis")),
                                                None)
    domain, narrowed = _claimed_domain(stages.get("verify") or {})
    cause = report.get("cause")
    if "cause" not in report and report.get("exit_code") == ExitCode.EXPORT_FAILED and diagnosis:
        cause = diagnosis.get("id")  # a report written before reports recorded their cause
    return {
        "verdict": report.get("verdict"), "exit_code": report.get("exit_code"), "reason": report.get("reason"),
        "hint": report.get("hint"), "stage": report.get("stage") or _reached(stages), "cause": cause,
        "strategy": won.get("strategy") if won else None,
        "opset": (won.get("opset_emitted") or won.get("opset")) if won else None,
        "variant": won.get("variant") if won else None,  # the exporter's capture variant, when not the default
        "repair": ", ".join(won.get("repairs") or {}) or None if won else None,  # repair rungs: what was replaced
        "fallbacks": winner if winner is not None else len(attempts),
        # each export attempt runs in a worker of its own (the ladder's): its memory is not in the row's peak_mb
        "attempt_peak_mb": max((a.get("peak_mb") or 0.0 for a in attempts), default=None),
        "attempts": [f"{a.get('strategy')}@{a.get('opset')}: {a.get('outcome')}" for a in attempts
                     if a.get("outcome") != "skipped"],
        "diagnosis": {k: diagnosis.get(k) for k in ("id", "cause", "fix", "operator") if diagnosis.get(k)}
        if diagnosis else None,
        "domain": domain,
        "narrowed": narrowed,
    }


def _claimed_domain(verify: dict) -> tuple[dict[str, str], list[str]]:
    """Each verified dim's summary and the dims narrower than declared, from the verify stage's claim (``claim``
    codec); a report written before reports held a claim: from its per-runtime domains."""
    if verify.get("claim"):
        try:
            claim = cl.from_report(verify["claim"], where="the verify stage's claim")
        except BadInputError:
            return {}, []
        return ({d.name: d.summary for d in claim.dims if d.summary},
                sorted(d.name for d in claim.dims if d.narrower))
    domains = verify.get("domains") or {}
    return ({n: d.get("summary") for n, d in domains.items()},
            sorted(n for n, d in domains.items() if d.get("narrower")))


def ledger_row(model: ZooModel, outcome: WorkerOutcome, out: Path, *, executor: str) -> dict[str, Any]:
    """The row the ledger appends for ``model``: its summary, or why the worker gave none."""
    folder = model.folder(out)
    log = (folder / LOG_FILE).relative_to(out).as_posix()
    row: dict[str, Any] = {"model": model.name, "ref": model.ref, "family": model.family, "tags": list(model.tags),
                           "fingerprint": model.fingerprint, "status": outcome.status, "signal": outcome.signal,
                           "seconds": outcome.seconds, "peak_mb": outcome.peak_mb, "executor": executor}
    if outcome.ok:
        row.update(outcome.value)
        if (folder / "report.html").is_file():
            row["report"] = (folder / "report.html").relative_to(out).as_posix()
    else:
        last = last_step(folder)
        stage = StageFile(folder / STAGE_FILE).read()  # the stage the pipeline announced last (none yet: load)
        verdict = judge(Killed(stage, _ENDINGS[outcome.status], signal=outcome.signal,
                               error_type=outcome.error_type, detail=outcome.error))
        row.update(verdict="fail", stage=stage.value, last_step=last, error_type=outcome.error_type,
                   exit_code=verdict.exit_code, cause=verdict.cause, ending=verdict.ending,
                   reason=(outcome.error or outcome.status) + (f" (during {stage}; last step: {last})" if last
                                                               else f" (during {stage})"),
                   hint=_HINTS[outcome.status].format(log=log))
        if outcome.status == ERROR and isinstance(outcome.value, dict):
            row["traceback"] = outcome.value.get("traceback", "")[-2000:]
    row["log"] = log
    row["failure_class"] = failure_class(row)
    row["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return row


def failure_class(row: dict) -> str | None:
    """What kind of failure, for the dashboard's counts: the judge's class (``outcome.failure_class``) of the row's
    exit code and cause (how the worker died, when it gave no result)."""
    if row.get("verdict") == "pass":
        return None
    return class_of(row.get("exit_code") or ExitCode.INTERNAL, row.get("cause"), ending=row.get("ending"))


def _reached(stages: dict) -> str:
    """The stage a report without one reached (reports written before they recorded it): a failed export, else the
    last stage with facts."""
    export = stages.get("export") or {}
    if export and not export.get("ok", True):
        return Stage.EXPORT.value
    return next((s.value for s in reversed(Stage) if s is not Stage.ACCURACY and stages.get(s.value)), "load")


def last_step(folder: Path) -> str | None:
    try:
        lines = (folder / STEPS_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    return lines[-1].split("\t", 1)[-1] if lines else None


class _Steps:
    """The pipeline's progress callback in the worker: each step appended (and flushed) to steps.log."""

    def __init__(self, path: Path):
        self.path, self.last, self.start = path, None, time.monotonic()

    def __call__(self, message: str) -> None:
        if message == self.last:
            return
        self.last = message
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{time.monotonic() - self.start:.1f}\t{message.splitlines()[0] if message else ''}\n")


def _redirect_output(log: Path) -> None:
    """The worker's stdout/stderr (Python's and native code's) into the model's log, through fresh stream objects:
    a lock the parent's threads held at fork time must not be inherited by the worker's prints."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    stream = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="replace",
                              write_through=True)
    sys.stdout = sys.stderr = stream
    faulthandler.enable(stream)  # a segfault or abort leaves the Python stack of every thread in the log
