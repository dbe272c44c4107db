"""One zoo model: what its worker runs (``prove``) and the ledger row made of what came back, or of why nothing did.

``prove`` runs in a forked worker (``onnxgate.worker.run_in_worker``), locally or inside a Ray task: it runs the
pipeline on the model's ``RunConfig`` into ``models/NAME/`` (report.json, report.html, model.onnx, the bundle) and
returns a small JSON-able summary — the ledger never carries the report itself. The worker's stdout and stderr go to
``models/NAME/worker.log`` and every progress step to ``steps.log``, so a worker that crashes, hangs or is stopped at
its memory cap still says how far it got. The worker runs below a keeper that owns its whole process tree
(``worker.py``): the memory cap sums every process the model's code started (a ``setsid`` daemon included), a tree
over it is the model's ``memory`` outcome, and whatever the model left running is killed when it ends. The keeper
dies with the zoo (``PR_SET_PDEATHSIG``) and takes the tree with it: a ``kill -9`` of the zoo leaves no model running
on, so a resumed zoo never races an orphan writing the same folder.
"""

from __future__ import annotations

import faulthandler
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import ExitCode
from ..worker import CRASHED, ERROR, MEMORY, TIMEOUT, WorkerOutcome
from .spec import ZooModel

LOG_FILE, STEPS_FILE = "worker.log", "steps.log"
REPORTED_STAGES = ("export", "verify", "optimize", "quantize", "bench", "bundle", "deploy")
CODE_NAMES = {0: "pass", 1: "internal error", 2: "bad input", 3: "export failed", 4: "parity failed",
              5: "accuracy budget missed", 6: "runtime incompatible", 7: "unsafe input", 8: "missing dependency",
              9: "integrity"}
_STEP_STAGES = (("loading", "load"), ("verifying", "verify"), ("localizing", "verify"), ("optimizing", "optimize"),
                ("quantizing", "quantize"), ("benchmarking", "bench"), ("writing the bundle", "bundle"),
                ("deploy", "deploy"))
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
    for stale in ("report.json", "report.html", STEPS_FILE):
        (folder / stale).unlink(missing_ok=True)
    _redirect_output(folder / LOG_FILE)
    step = _Steps(folder / STEPS_FILE)
    step("loading the model")
    from ..errors import OnnxgateError
    from ..outcome import judge
    from ..pipeline import run_job

    try:
        report = run_job(model.run, out_dir=folder, force=True, progress=step).to_dict()
    except OnnxgateError as exc:  # before the stages: the model does not load, an output folder problem
        outcome = judge(exc)
        return {"verdict": "fail", "exit_code": outcome.exit_code, "reason": outcome.reason, "hint": outcome.hint,
                "stage": stage_of(step.last)}
    return summarize(report)


def summarize(report: dict) -> dict[str, Any]:
    """The ledger's part of a pipeline report: verdict, stage reached, the export that won, domains, diagnosis."""
    stages = report.get("stages", {})
    export = stages.get("export") or {}
    attempts = export.get("attempts") or []
    winner = export.get("winner")
    won = attempts[winner] if winner is not None and winner < len(attempts) else None
    reached = [s for s in REPORTED_STAGES if stages.get(s)]
    stage = "export" if export and not export.get("ok", True) else (reached or ["load"])[-1]
    diagnosis = export.get("diagnosis") or next((a.get("diagnosis") for a in reversed(attempts) if a.get("diagnosis")),
                                                None)
    domains = (stages.get("verify") or {}).get("domains") or {}
    return {
        "verdict": report.get("verdict"), "exit_code": report.get("exit_code"), "reason": report.get("reason"),
        "hint": report.get("hint"), "stage": stage,
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
        "domain": {n: d.get("summary") for n, d in domains.items()},
        "narrowed": sorted(n for n, d in domains.items() if d.get("narrower")),
    }


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
        stage = "load" if outcome.status == ERROR and last is None else stage_of(last)
        row.update(verdict="fail", stage=stage, last_step=last, error_type=outcome.error_type,
                   exit_code=_killed_code(outcome.status, stage),
                   reason=(outcome.error or outcome.status) + (f" (during {stage}; last step: {last})" if last else ""),
                   hint=_HINTS[outcome.status].format(log=log))
        if outcome.status == ERROR and isinstance(outcome.value, dict):
            row["traceback"] = outcome.value.get("traceback", "")[-2000:]
    row["log"] = log
    row["failure_class"] = failure_class(row)
    row["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return row


def _killed_code(status: str, stage: str) -> int:
    """A worker that gave no result: a bug in onnxgate (1) if it raised; if it was killed or crashed, the export
    failed (3) when it was loading or exporting, the runtime could not run it (6) after that — as cli/isolate.py."""
    if status == ERROR:
        return int(ExitCode.INTERNAL)
    return int(ExitCode.EXPORT_FAILED if stage in ("load", "export") else ExitCode.RUNTIME_INCOMPATIBLE)


def failure_class(row: dict) -> str | None:
    """What kind of failure, for the dashboard's counts: how the worker ended, else the exit code and its cause."""
    if row.get("verdict") == "pass":
        return None
    status = row.get("status")
    if status == CRASHED:
        return f"crashed ({row.get('signal') or 'no result'})"
    if status in (TIMEOUT, MEMORY):
        return {TIMEOUT: "timeout", MEMORY: "memory cap"}[status]
    if status == ERROR:
        return f"internal error ({row.get('error_type') or 'exception'})"
    code = row.get("exit_code")
    name = CODE_NAMES.get(code, f"exit {code}")
    reason = row.get("reason") or ""
    if code == ExitCode.EXPORT_FAILED and row.get("diagnosis"):
        return f"{name}: {row['diagnosis'].get('id')}"
    if code == ExitCode.PARITY_FAILED:
        if "not verifiable" in reason:
            return f"{name}: not verifiable with these weights"
        if row.get("narrowed"):
            return f"{name}: shape domain narrower than declared"
        if "frozen" in reason or "froze" in reason:
            return f"{name}: dim frozen"
    return name


def stage_of(step: str | None) -> str:
    """The stage a progress step belongs to (a worker that never reported one was still loading)."""
    if step is None:
        return "load"
    text = step.lower()
    return next((stage for prefix, stage in _STEP_STAGES if text.startswith(prefix)), "export")


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
