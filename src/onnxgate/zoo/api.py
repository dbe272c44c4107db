"""``run_zoo``: every model of a zoo through the pipeline, each in its own worker, into one ledger and one dashboard.

The output folder holds ``ledger.jsonl`` (a row per finished model, appended as it finishes), ``models/NAME/``
(each model's report.json, report.html, model.onnx, worker.log), ``zoo.json`` and ``zoo.html``. Running again into
the same folder resumes: models the ledger already holds (with unchanged options) are not run again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import BadInputError
from ..fsutil import atomic_write_text
from .executors import EXECUTORS
from .ledger import Ledger, pending
from .report import ZooReport
from .spec import Zoo, load_zoo, parse_shard, select


def run_zoo(zoo: str | Zoo, out: str | Path | None = None, *, jobs: int = 1, executor: str = "local",
            address: str | None = None, shard: str | None = None, retry_failed: bool = False,
            allow_fail: tuple[str, ...] = (), only: tuple[str, ...] = (),
            progress: Callable[[str], None] | None = None) -> ZooReport:
    """Run ``zoo`` (a ZOO.toml, a built-in zoo's name, or a loaded ``Zoo``) into ``out``; the report's verdict is
    the judge's (``outcome.judge``). ``shard``: "I/N". ``only``: run the models carrying one of these tags."""
    note = progress or (lambda _m: None)
    _check(jobs, executor, address)
    spec = zoo if isinstance(zoo, Zoo) else load_zoo(zoo)
    shard_spec = parse_shard(shard)
    folder = _out_dir(out, spec.name)
    _check_labels(spec, only)
    selected = select(spec.models, shard=shard_spec, only=tuple(only))
    ledger = Ledger(folder)
    todo, done = pending(selected, ledger.latest(), retry_failed=retry_failed)
    note(f"{len(selected)} model(s) of zoo '{spec.name}': {len(done)} already in the ledger, {len(todo)} to run "
         f"({executor}, {jobs} worker(s))")
    start, finished = time.monotonic(), []

    def on_row(row: dict) -> None:
        ledger.append(row)
        finished.append(row["model"])
        what = "pass" if row.get("verdict") == "pass" else f"FAIL, {row.get('failure_class')}"
        note(f"[{len(finished)}/{len(todo)}] {row['model']}: {what} ({row.get('seconds', 0):.1f} s, "
             f"{row.get('peak_mb', 0):.0f} MB)")

    EXECUTORS[executor](todo, folder, jobs=jobs, on_row=on_row, address=address)
    latest = ledger.latest()
    report = ZooReport(spec.name, spec.source, str(folder), [latest[m.name] for m in selected if m.name in latest],
                       executor=executor, jobs=jobs, shard=shard, allow_fail=tuple(allow_fail), stages=spec.stages,
                       ran=len(todo), resumed=len(done), wall_seconds=time.monotonic() - start,
                       notes=_notes(spec, allow_fail, ledger.torn))
    doc = report.to_dict()
    atomic_write_text(folder / "zoo.json", json.dumps(doc, indent=2, default=str, ensure_ascii=False), force=True)
    atomic_write_text(folder / "zoo.html", report.to_html(), force=True)
    return report


def _check(jobs: int, executor: str, address: str | None) -> None:
    if executor not in EXECUTORS:
        raise BadInputError(f"--executor '{executor}' is not an executor onnxgate has.",
                            hint=f"Use {' or '.join(EXECUTORS)}.")
    if not isinstance(jobs, int) or jobs < 1:
        raise BadInputError(f"--jobs {jobs} is not a number of workers: it must be at least 1.",
                            hint="Pass --jobs 1 (one model at a time) or more.")
    if address and executor != "ray":
        raise BadInputError("--address names a Ray cluster, but the executor is local.",
                            hint="Add --executor ray, or drop --address.")


def _check_labels(spec: Zoo, only) -> None:
    """--only that matches no model would make a vacuous pass: bad input, with the closest labels."""
    import difflib

    known = sorted(set().union(*(m.labels() for m in spec.models)))
    for label in only:
        if label not in known:
            close = difflib.get_close_matches(label, known, n=3)
            raise BadInputError(f"--only '{label}' matches no model of zoo '{spec.name}' (by tag, family or name)."
                                + (f" Close: {', '.join(close)}." if close else ""),
                                hint="Tags, families and names of the zoo are listed in its file (or zoo.json).")


def _notes(spec: Zoo, allow_fail, torn: int) -> list[str]:
    known = set().union(*(m.labels() for m in spec.models))
    notes = [f"--allow-fail '{t}' matches no model of the zoo (by tag, family or name)" for t in allow_fail
             if t not in known]
    return notes + ([f"{torn} torn ledger line(s) skipped (a run killed mid-write)"] if torn else [])


def _out_dir(out: str | Path | None, name: str) -> Path:
    folder = Path(out) if out is not None else Path(f"onnxgate-zoo-{name}")
    if not folder.parent.is_dir():
        raise BadInputError(f"Cannot write to '{folder}': the folder '{folder.parent}' does not exist.",
                            hint="Create it first, or choose another output folder with -o.")
    if folder.exists() and not folder.is_dir():
        raise BadInputError(f"The output '{folder}' exists and is not a folder.", hint="Choose a folder with -o.")
    folder.mkdir(exist_ok=True)
    return folder
