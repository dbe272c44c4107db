"""The zoo's ledger: ``ledger.jsonl`` in the output folder, one JSON row appended per model as it finishes.

Rows are only ever appended (a rerun of a model appends a newer row; the latest row of a model is its result), each
in one ``write`` of a whole line followed by ``fsync``, so a zoo killed at any moment (``kill -9``, a CI job's
timeout, a lost node) leaves every finished model on disk and at most one torn last line, which reading skips.
That is what resuming rests on: a model whose latest row has the fingerprint of its current options is done and
is not run again (``--retry-failed`` reruns the failed ones); a model whose options changed in the zoo file runs
again.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

LEDGER = "ledger.jsonl"


class Ledger:
    def __init__(self, out: Path):
        self.path = Path(out) / LEDGER
        self._lock = threading.Lock()
        self.torn = 0  # lines that did not parse (a write cut short by a kill)

    def rows(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        rows, self.torn = [], 0
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                self.torn += 1
                continue
            if isinstance(row, dict) and isinstance(row.get("model"), str):
                rows.append(row)
        return rows

    def latest(self) -> dict[str, dict[str, Any]]:
        """The latest row of every model in the ledger."""
        latest: dict[str, dict[str, Any]] = {}
        for row in self.rows():
            latest[row["model"]] = row
        return latest

    def append(self, row: dict[str, Any]) -> None:
        line = (json.dumps(row, default=str, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                if _ends_torn(fd):  # a kill cut the previous write short: start on a line of its own
                    line = b"\n" + line
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)


def _ends_torn(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def pending(models: list, latest: dict[str, dict[str, Any]], *, retry_failed: bool) -> tuple[list, list]:
    """(models to run, models already done): done = a latest row with the model's current fingerprint, and, under
    ``retry_failed``, a passing one."""
    todo, done = [], []
    for model in models:
        row = latest.get(model.name)
        finished = row is not None and row.get("fingerprint") == model.fingerprint
        if finished and not (retry_failed and row.get("verdict") != "pass"):
            done.append(model)
        else:
            todo.append(model)
    return todo, done
