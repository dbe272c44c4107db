"""Can a given runtime release run this model? (``--target onnxruntime==1.16`` / ``openvino==2024.0`` / ...)

A model that loads on the developer's machine can still be refused by the runtime that ships it: an older
onnxruntime rejects a newer opset or IR version outright, TensorRT's parser has no importer for some operators, and
OpenVINO's frontend lacks converters for others. Those limits are facts about *releases*, so they live as data in
``targets.json`` beside this file, one row per MAJOR.MINOR release, each row naming its sources (release docs,
changelogs, and probes of the released wheels), read by ``target_table.py`` (which also parses target names, without
onnx). This module applies the table to a model:

* ai.onnx opset and IR version against the row's limits (for runtimes that reject what they do not know);
* each operator (subgraphs and model-local functions included) against the row's unsupported list, and against
  ``onnx.defs``: an operator first defined in an opset newer than the row's newest cannot exist in that release;
* operator domains: ``com.microsoft`` ops are onnxruntime's contrib operators, and so on.

For the *installed* onnxruntime no table is needed: loading the model is the authority
(``structure.ort_load_check``). A requested version missing from the table is judged by the nearest older row,
and the result says so: newer releases rarely support less, so that errs towards "unsupported".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import onnx

from .. import serde
from .structure import StructureReport, ort_load_check
from .target_table import (ExportLimits, Row, _cite, _judging_row, _row_for, _table, _version_tuple, export_limits,
                           ort_support, parse_target, runtimes)

_ONNX_DOMAINS = ("", "ai.onnx")


@dataclass
class TargetResult:
    """The verdict for one ``--target``. ``reasons`` say why it cannot run (empty when ``supported``); ``notes`` are
    caveats that do not fail the target (restrictions, partial domains, a version missing from the table)."""

    target: str
    runtime: str
    version: str
    supported: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked_by: str = "table"  # "table" or "loaded into the installed onnxruntime X"
    row: str | None = None  # the table row used, e.g. "1.16"
    unknown_version: str | None = None  # set when the requested version is not in the table
    max_opset: int | None = None
    max_ir: int | None = None
    lacking_ops: list[str] = field(default_factory=list)  # ai.onnx operators (domain::op otherwise) it cannot run

    def to_dict(self) -> dict:
        return asdict(self)


def installed_ort_max_opset() -> int:
    """Newest ai.onnx opset the installed onnxruntime implements: the export ladder exports at it first."""
    import onnxruntime

    return ort_support(onnxruntime.__version__)[0]


# ---------------------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class _Model:
    opset: int | None  # ai.onnx opset import; None when the model imports none
    ir_version: int
    ops: frozenset[tuple[str, str]]  # (domain, op_type), "" for ai.onnx; model-local function calls expanded


def _model_facts(model: onnx.ModelProto) -> _Model:
    """Opset, IR version and every operator the runtime will see: nodes of subgraphs (If/Loop/Scan bodies) count,
    and a call to a model-local function counts as the operators of its body, not as an op of its own domain."""
    functions = {(f.domain, f.name): f for f in model.functions}
    ops: set[tuple[str, str]] = set()
    seen_functions: set[tuple[str, str]] = set()

    def walk(nodes) -> None:
        for node in nodes:
            domain = "" if node.domain in _ONNX_DOMAINS else node.domain
            local = functions.get((node.domain, node.op_type))
            if local is not None:
                if (node.domain, node.op_type) not in seen_functions:
                    seen_functions.add((node.domain, node.op_type))
                    walk(local.node)
            else:
                ops.add((domain, node.op_type))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g.node)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        walk(g.node)

    walk(model.graph.node)
    opset = next((o.version for o in model.opset_import if o.domain in _ONNX_DOMAINS), None)
    # protobuf hands strings that are not valid UTF-8 over as bytes: name them readably (and sortably)
    ops = {tuple(_text(part) for part in op) for op in ops}
    return _Model(opset=opset, ir_version=model.ir_version, ops=frozenset(ops))


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def first_opset(op: str) -> int | None:
    """The ai.onnx opset that first defined ``op`` (per the installed onnx), None for an unknown operator."""
    return _first_versions().get(op)


@lru_cache(maxsize=1)
def _first_versions() -> dict[str, int]:
    """ai.onnx operator -> the opset that first defined it, per the installed onnx's schemas."""
    first: dict[str, int] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain in _ONNX_DOMAINS:
            first[schema.name] = min(first.get(schema.name, schema.since_version), schema.since_version)
    return first


# ---------------------------------------------------------------------------------------------------------- checks


def check_targets(model: str | Path | StructureReport, targets: list[str]) -> list[TargetResult]:
    """Judge the ONNX model (a path, or the ``StructureReport`` of one) against each target, in order.

    Every target is parsed before any work, so a typo in the third fails fast with BadInputError. A target naming
    the installed onnxruntime's release is decided by loading the model; the others by the table."""
    parsed = [(text, *parse_target(text)) for text in targets]
    path = Path(model.path if isinstance(model, StructureReport) else model)
    facts = _model_facts(serde.load(path, load_external_data=False))
    return [_check(text, runtime, version, facts, path) for text, runtime, version in parsed]


def _check(text: str, runtime: str, version: str, model: _Model, path: Path) -> TargetResult:
    import onnxruntime

    spec = _table()["runtimes"][runtime]
    wanted = _version_tuple(version)
    installed = onnxruntime.__version__
    if runtime == "onnxruntime" and _version_tuple(installed)[:len(wanted)] == wanted:
        return _check_by_loading(text, version, installed, path)

    row = _judging_row(text, runtime, version)
    exact = wanted[:len(row.key)] == row.key
    who = f"{spec['name']} {version}"
    result = TargetResult(target=text, runtime=runtime, version=version, supported=True, row=row.version,
                          max_opset=row.max_opset, max_ir=row.max_ir)
    if not exact:
        result.unknown_version = (
            f"{who} is not in the compatibility table; judged by the nearest older release, {spec['name']} "
            f"{row.version} (newer releases rarely support less, so this errs towards 'unsupported')")
        result.notes.append(result.unknown_version)
        who = f"{spec['name']} {row.version}"
    _check_versions(result, row, spec, who, model)
    _check_ops(result, row, spec, who, model)
    result.supported = not result.reasons
    return result


def _check_by_loading(text: str, version: str, installed: str, path: Path) -> TargetResult:
    _, loads, error = ort_load_check(path)
    result = TargetResult(target=text, runtime="onnxruntime", version=version, supported=bool(loads),
                          checked_by=f"loaded into the installed onnxruntime {installed}")
    row, exact = _row_for("onnxruntime", _version_tuple(installed))
    if row is not None and exact:
        result.row, result.max_opset, result.max_ir = row.version, row.max_opset, row.max_ir
    if not loads:
        result.reasons.append(f"the installed onnxruntime {installed} cannot load the model: {error}")
    return result


def _check_versions(result: TargetResult, row: Row, spec: dict, who: str, model: _Model) -> None:
    source = _cite(row.version_source)
    strict = spec["opset_policy"] == "reject"
    if row.max_ir is not None and model.ir_version > row.max_ir:
        result.reasons.append(f"IR version {model.ir_version} > {row.max_ir}, the newest that {who} reads "
                              f"(source: {source})")
    if model.opset is None:
        return
    if row.max_opset is not None and model.opset > row.max_opset:
        message = f"model opset {model.opset} > newest opset {row.max_opset} that {who} implements (source: {source})"
        (result.reasons if strict else result.notes).append(message)
    if row.min_opset is not None and model.opset < row.min_opset:
        result.reasons.append(f"model opset {model.opset} < oldest opset {row.min_opset} that {who} supports "
                              f"(source: {source})")
    if not strict and row.max_opset is None:
        result.notes.append(f"{spec['name']}: {spec['opset_policy_about']}")


def _check_ops(result: TargetResult, row: Row, spec: dict, who: str, model: _Model) -> None:
    ops_source = _cite(*row.ops_source) if row.ops_source else None
    first = _first_versions()
    domain_about = _table()["domain_about"]
    flagged_from_list = False
    for domain, op in sorted(model.ops):
        if domain:
            coverage = spec["domains"].get(domain)
            about = f" ({domain_about[domain]})" if domain in domain_about else ""
            if coverage is None:
                result.reasons.append(f"operator {domain}::{op} is in domain '{domain}'{about}, which {who} does not "
                                      "implement")
                result.lacking_ops.append(f"{domain}::{op}")
            elif coverage == "partial":
                result.notes.append(f"operator {domain}::{op}: {who} converts only some operators of domain "
                                    f"'{domain}'{about}; this one is not checked")
            continue
        since = first.get(op)
        if since is None:
            result.notes.append(f"operator {op} is not an ai.onnx operator known to onnx {onnx.__version__}; "
                                "not checked")
            continue
        if op in row.unsupported_ops:
            result.reasons.append(f"operator {op} is not supported by {who} (source: {ops_source})")
            result.lacking_ops.append(op)
            flagged_from_list = True
        elif row.max_opset is not None and since > row.max_opset:
            result.reasons.append(f"operator {op} first appears in opset {since}; {who} implements opsets up to "
                                  f"{row.max_opset} (source: {_cite(row.version_source)})")
            result.lacking_ops.append(op)
        elif row.ops_known_through_opset is not None and since > row.ops_known_through_opset:
            result.notes.append(f"operator {op} (opset {since}) is newer than the operators probed for {who}; "
                                "not checked")
        if op in row.limited_ops:
            result.notes.append(f"operator {op} on {who}: {row.limited_ops[op]} (source: {ops_source})")
    if flagged_from_list and row.note:  # how the row's list was made, shown where the list decided something
        result.notes.append(f"table row {spec['name']} {row.version}: {row.note}")
    if not row.ops_source:
        result.notes.append(f"the table lists no operator coverage for {who}; only opset, IR version, operators "
                            "newer than its opset and domains were checked")


# ---------------------------------------------------------------------------------------------------------- render


def render_targets_table(results: list[TargetResult]):
    """A rich Table: one line per target with its verdict, what decided it, and every reason and note."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="target compatibility", title_justify="left")
    for column in ("target", "verdict", "opset / IR limit", "judged by", "reasons and notes"):
        table.add_column(column, overflow="fold")
    for r in results:
        verdict = "[green]supported[/]" if r.supported else "[red]unsupported[/]"
        limits = f"{'-' if r.max_opset is None else r.max_opset} / {'-' if r.max_ir is None else r.max_ir}"
        judged = r.checked_by if r.checked_by != "table" else f"table row {r.row}"
        lines = [f"[red]✗[/] {escape(x)}" for x in r.reasons] + [f"[dim]• {escape(x)}[/]" for x in r.notes]
        table.add_row(escape(r.target), verdict, limits, escape(judged), "\n".join(lines) or "-")
    return table


# names configuration and the ladder read from here; they live in the onnx-free target_table
__all__ = ["TargetResult", "check_targets", "first_opset", "installed_ort_max_opset", "render_targets_table",
           "ExportLimits", "Row", "export_limits", "ort_support", "parse_target", "runtimes"]
