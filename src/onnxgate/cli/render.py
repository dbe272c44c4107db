"""Rich renderings of library results. No logic: tables of what the library already decided."""

from __future__ import annotations

from rich.table import Table


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def attempts_table(result) -> Table:
    table = Table(title="export attempts", title_justify="left")
    for col in ("#", "strategy", "opset", "seconds", "peak MB", "outcome", "detail"):
        table.add_column(col, overflow="fold")
    for i, a in enumerate(result.attempts):
        style = "green" if i == result.winner else ("dim" if a.outcome == "skipped" else "red")
        detail = a.error or ""
        if a.diagnosis and a.diagnosis.get("id") not in (None, "unknown"):
            detail = f"[{a.diagnosis['id']}] {detail}"
        opset = str(a.opset) if a.opset_emitted in (None, a.opset) else f"{a.opset}→{a.opset_emitted}"
        table.add_row(str(i + 1), a.label, opset, f"{a.seconds:.1f}", f"{a.peak_mb:.0f}",
                      f"[{style}]{a.outcome}[/]", detail[:160])
    return table


def io_table(structure) -> Table:
    table = Table(title="inputs and outputs", title_justify="left")
    for col in ("kind", "name", "dtype", "shape"):
        table.add_column(col)
    for kind, infos in (("input", structure.inputs), ("output", structure.outputs)):
        for t in infos:
            table.add_row(kind, t.name, t.dtype, "x".join("?" if d is None else str(d) for d in t.shape))
    return table


def structure_tables(s) -> list:
    summary = Table(title=f"{s.path}", title_justify="left", show_header=False)
    summary.add_column("key", style="bold")
    summary.add_column("value", overflow="fold")
    summary.add_row("opset / IR", f"{s.opset} / {s.ir_version}" + (
        f"  (+ {', '.join(f'{d}:{v}' for d, v in s.opsets.items() if d)})" if len(s.opsets) > 1 else ""))
    summary.add_row("producer", s.producer or "-")
    summary.add_row("size", _mb(s.size_bytes) + (f" (external data: {', '.join(s.external_data)})" if s.external_data else ""))
    summary.add_row("parameters", f"{s.parameter_count:,} ({_mb(s.parameter_bytes)})")
    summary.add_row("nodes", str(s.node_count))
    summary.add_row("onnx.checker", "[green]ok[/]" if s.checker_ok else f"[red]{s.checker_error}[/]")
    summary.add_row("shape inference", "[green]ok[/]" if s.shape_inference_ok else f"[red]{s.shape_inference_error}[/]")
    if s.ort_loads is not None:
        summary.add_row(f"onnxruntime {s.ort_version}", "[green]loads[/]" if s.ort_loads else f"[red]{s.ort_error}[/]")
    ops = Table(title="operators", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, n in s.op_histogram.items():
        ops.add_row(op, str(n))
    tables = [summary, io_table(s), ops]
    if s.metadata:
        meta = Table(title="metadata", title_justify="left")
        meta.add_column("key")
        meta.add_column("value", overflow="fold")
        for k, v in s.metadata.items():
            meta.add_row(k, v if len(v) < 300 else v[:300] + " ...")
        tables.append(meta)
    return tables


def parity_table(parity) -> Table:
    """One row per feed and output: the errors that prove (or disprove) parity at each shape."""
    table = Table(title=f"parity: {parity.candidate} vs {parity.reference}", title_justify="left")
    for col in ("feed", "output", "shape", "max abs", "max rel", "outside", "cosine", "top-1", "verdict"):
        table.add_column(col, no_wrap=True)
    for case in parity.cases:
        if case.error:
            table.add_row(case.label, "-", "-", "-", "-", "-", "-", "-", "[red]error[/]")
            continue
        for c in case.comparisons:
            verdict = ("[green]ok[/]" if c.passed else "[red]FAIL[/]") + (" (scale)" if c.scale_relative else "")
            table.add_row(case.label, c.name, "x".join(map(str, c.shape_ref or ())), _e(c.max_abs_err),
                          _e(c.max_rel_err), _pct(c.mismatch_fraction), _f(c.cosine), _pct(c.top1_agreement), verdict)
    return table


def _e(x) -> str:
    return "-" if x is None else f"{x:.1e}"


def _f(x) -> str:
    return "-" if x is None else f"{x:.5f}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"
