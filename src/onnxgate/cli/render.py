"""Rich renderings of library results. No logic: tables and lines of what the library already decided. The
``print_*`` functions take the console to print on (``common.console``), so this module imports no command."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from ..deploy.model import TABLE_COLUMNS, reasons, table_rows

_STYLES = {"passed": "green", "failed": "red", "not converted": "red", "skipped": "dim",
           "converted, not numerically verified": "yellow"}


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


def print_pipeline(console, report) -> None:
    """What each stage of a pipeline report decided, one line each (the deploy table in full), then the verdict."""
    export = report.stages.get("export")
    if export and export.get("winner") is not None:
        won = export["attempts"][export["winner"]]
        console.print(f"export: {won['strategy']} exporter, opset {won.get('opset_emitted') or won['opset']}, "
                      f"after {export['winner']} failed attempt(s)")
    verify = report.stages.get("verify")
    for p in (verify or {}).get("parity", []):
        console.print(f"parity ({p['candidate']}): {p['summary']}")
    if verify and verify.get("localization"):
        console.print(f"localizer: {verify['localization']['summary']}")
    acc = report.stages.get("accuracy")
    if acc:
        console.print(escape(accuracy_line(acc)), soft_wrap=True)
    if report.stages.get("optimize"):
        console.print(f"optimize: {report.stages['optimize']['summary']}")
    if report.stages.get("quantize"):
        console.print(f"quantize: {report.stages['quantize']['summary']}")
    rec = (report.stages.get("bench") or {}).get("recommendation")
    if rec:
        console.print(f"bench: recommended {rec['config_id']}: p50 {rec['p50_ms']:.2f} ms"
                      + (f", {rec['speedup']:.2f}x PyTorch eager" if rec.get("speedup") else "")
                      + (" (a tie within noise, broken by the fewest moving parts)" if rec.get("tie") else ""))
    if report.stages.get("bundle"):
        console.print(f"bundle: {report.stages['bundle']['path']}")
    if report.stages.get("deploy"):
        print_targets(console, report.stages["deploy"])
    colour = "green" if report.verdict == "pass" else "red"
    console.print(f"[{colour}]verdict: {report.verdict}[/]" + (f" — {report.reason}" if report.reason else ""))
    console.print(f"report: {Path(report.out_dir) / 'report.html'} (and report.json)")


def accuracy_line(acc: dict) -> str:
    """``accuracy: pytorch top-1 97.2% top-5 99.7%, onnxruntime ... (on DATA, N samples, true labels)``; without
    labels, each ONNX model's agreement with PyTorch's top-1 class."""
    parts, basis = [], None
    for name, m in acc.items():
        top1, top5 = m.get("top1"), m.get("top5")
        agree = m.get("against") == "pytorch"
        text = f"{name} {'agrees with PyTorch top-1' if agree else 'top-1'} " + ("-" if top1 is None else f"{top1:.2%}")
        if top5 is not None:
            text += f" ({'in top-5' if agree else 'top-5'} {top5:.2%})" if agree else f" top-5 {top5:.2%}"
        parts.append(text)
        if m.get("against"):
            basis = (f"on {m.get('data')}, {m.get('samples')} samples, "
                     + ("no labels: agreement with PyTorch" if agree else "true labels"))
    return "accuracy: " + ", ".join(parts) + (f" ({basis})" if basis else "")


def print_targets(console, deploy: dict) -> None:
    """The per-target table: artifact, size, precision, shapes, max error, top-1 agreement, latency, verdict."""
    table = Table(title=f"deploy targets (reference: {escape(deploy.get('reference') or '?')})")
    for header in TABLE_COLUMNS:
        table.add_column(header, overflow="fold")
    for artifact, row in zip(deploy.get("artifacts", []), table_rows(deploy.get("artifacts", []))):
        style = _STYLES.get(artifact.get("verdict"), "")
        row[-1] = f"[{style}]{escape(row[-1])}[/]" if style else escape(row[-1])
        table.add_row(*[escape(c) for c in row[:-1]], row[-1])
    console.print(table)
    for line in reasons(deploy.get("artifacts", [])):
        console.print(f"  {escape(line)}", soft_wrap=True)
    for artifact in deploy.get("artifacts", []):
        if artifact.get("runtime"):
            extra = f"; layout: {artifact['layout']}" if artifact.get("layout") else ""
            console.print(f"  {escape(artifact['target'])} {escape(artifact.get('variant') or '')}: "
                          f"{escape(artifact['runtime'])}{escape(extra)}", soft_wrap=True)
    for note in deploy.get("notes", []):
        console.print(f"  note: {escape(note)}", soft_wrap=True)
    if deploy.get("out_dir"):
        console.print(f"targets: {escape(deploy['out_dir'])}")
