"""The runtime compatibility table (``targets.json``) and the names a ``--target`` may use: no onnx, no runtime.

``targets.py`` judges a model against a target with this table; configuration (``spec``, ``configure``) parses
``--target onnxruntime==1.16`` and the export ladder reads the opset/IR limits a set of targets imposes, without
importing onnx. A requested version missing from the table is judged by the nearest older row.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources

from ..errors import BadInputError

TABLE = "targets.json"
_TARGET = re.compile(r"^\s*(?P<runtime>[A-Za-z][\w.-]*)\s*==\s*(?P<version>\d+(?:\.\d+)+)\s*$")


@dataclass(frozen=True)
class Row:
    """One runtime release as the table describes it (see ``targets.json`` for what each field means)."""

    runtime: str
    version: str
    min_opset: int | None
    max_opset: int | None
    max_ir: int | None
    version_source: str
    unsupported_ops: frozenset[str]
    ops_source: tuple[str, ...]
    limited_ops: dict[str, str] = field(default_factory=dict)
    ops_known_through_opset: int | None = None
    note: str | None = None

    @property
    def key(self) -> tuple[int, ...]:
        return _version_tuple(self.version)


# ---------------------------------------------------------------------------------------------------------- table


@lru_cache(maxsize=1)
def _table() -> dict:
    return json.loads(resources.files(__package__).joinpath(TABLE).read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def _rows(runtime: str) -> tuple[Row, ...]:
    rows = [Row(runtime=runtime, version=r["version"], min_opset=r["min_opset"], max_opset=r["max_opset"],
                max_ir=r["max_ir"], version_source=r["version_source"],
                unsupported_ops=frozenset(r["unsupported_ops"]), ops_source=tuple(r["ops_source"]),
                limited_ops=r.get("limited_ops", {}), ops_known_through_opset=r.get("ops_known_through_opset"),
                note=r.get("note"))
            for r in _table()["runtimes"][runtime]["rows"]]
    return tuple(sorted(rows, key=lambda r: r.key))


def runtimes() -> list[str]:
    """The runtime names a target may name, as spelled on the command line."""
    return list(_table()["runtimes"])


def _cite(*keys: str) -> str:
    sources = _table()["sources"]
    return " + ".join(sources[k]["cite"] for k in keys)


def _version_tuple(version: str) -> tuple[int, ...]:
    """Leading numeric components: '1.16.3+cu118' -> (1, 16, 3), '2024.0.0-14509-...' -> (2024, 0, 0)."""
    m = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(p) for p in m.group(0).split(".")) if m else ()


def _row_for(runtime: str, version: tuple[int, ...]) -> tuple[Row | None, bool]:
    """The row whose version is a prefix of ``version`` (1.16 covers 1.16.x), else the nearest older one.
    Returns (row, exact); row is None when the version is older than every row."""
    older = None
    for row in _rows(runtime):
        if version[:len(row.key)] == row.key:
            return row, True
        if row.key < version[:len(row.key)]:
            older = row
    return older, False


def ort_support(version: str) -> tuple[int, int]:
    """(newest ai.onnx opset, newest IR version) the given onnxruntime release implements. Releases newer than the
    table get its newest row (a lower bound), older ones its oldest."""
    row, _ = _row_for("onnxruntime", _version_tuple(version))
    row = row or _rows("onnxruntime")[0]
    return row.max_opset, row.max_ir


@dataclass(frozen=True)
class ExportLimits:
    """What a set of targets lets an export write: the newest ai.onnx opset and IR version that every target
    reads (None: no limit), the oldest opset they all run, and the target that sets each limit (for messages)."""

    max_opset: int | None = None
    max_ir: int | None = None
    min_opset: int | None = None
    opset_by: str | None = None
    ir_by: str | None = None

    @property
    def limited(self) -> bool:
        return self.max_opset is not None or self.max_ir is not None


def export_limits(targets: list[str] | tuple[str, ...]) -> ExportLimits:
    """The opset and IR limits the export ladder must respect for ``targets`` (``--target`` on export/run).

    A runtime that rejects what it does not know (onnxruntime, TensorRT) limits both; OpenVINO's frontend has no
    global limit (its operators are checked one by one). A target naming the installed onnxruntime's release is
    limited by the table row of the installed version, like any other; a BadInputError for a malformed target or
    one older than the table."""
    limits = ExportLimits()
    for text in targets:
        runtime, version = parse_target(text)
        row = _judging_row(text, runtime, version)
        if _table()["runtimes"][runtime]["opset_policy"] != "reject":
            continue
        if row.max_opset is not None and (limits.max_opset is None or row.max_opset < limits.max_opset):
            limits = replace(limits, max_opset=row.max_opset, opset_by=text)
        if row.max_ir is not None and (limits.max_ir is None or row.max_ir < limits.max_ir):
            limits = replace(limits, max_ir=row.max_ir, ir_by=text)
        if row.min_opset is not None and (limits.min_opset is None or row.min_opset > limits.min_opset):
            limits = replace(limits, min_opset=row.min_opset)
    return limits


def _judging_row(text: str, runtime: str, version: str) -> Row:
    """The table row that judges ``runtime==version``: its own, else the nearest older one; BadInputError when the
    version is older than every row."""
    row, _ = _row_for(runtime, _version_tuple(version))
    if row is None:
        spec = _table()["runtimes"][runtime]
        oldest = _rows(runtime)[0].version
        raise BadInputError(
            f"Target '{text}' is older than every {spec['name']} release in onnxgate's compatibility table, which "
            f"starts at {oldest}; there is nothing to judge it by.",
            hint=f"Target {runtime}=={oldest} or newer.")
    return row


# ---------------------------------------------------------------------------------------------------------- parsing


def parse_target(text: str) -> tuple[str, str]:
    """'onnxruntime==1.16' -> ('onnxruntime', '1.16'). Raises BadInputError for anything else."""
    known = runtimes()
    m = _TARGET.match(text or "")
    if m is None or m.group("runtime").lower() not in known:
        why = ("names an unknown runtime" if m else
               "is not of the form RUNTIME==VERSION with a version of at least MAJOR.MINOR")
        raise BadInputError(
            f"Target '{text}' {why}; a target names one of {', '.join(known)} and a release, for example "
            "onnxruntime==1.16, openvino==2024.0 or tensorrt==10.0 (1.16 covers every 1.16.x).",
            hint="Write the target as RUNTIME==MAJOR.MINOR[.PATCH], e.g. --target tensorrt==10.0.")
    return m.group("runtime").lower(), m.group("version")
