"""`onnxgate optimize MODEL.onnx -o OUT.onnx` (verified simplification, onnxruntime optimization, FP16) and
`onnxgate quantize MODEL.onnx -o OUT.onnx --calib DATA --eval DATA` (INT8 within an accuracy budget)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from .common import console, finish, progress

DATA_HELP = ("An .npz/.npy (arrays named after the inputs; labels under --labels-key), an image folder (class "
             "sub-folders named after the model's labels or their index give labels) or file.py:fn returning feeds.")
PREPROCESS_HELP = ("For image folders: resize=256,crop=224,mean=a/b/c,std=a/b/c,order=RGB (default: the model's "
                   "metadata).")


def optimize(
    model: Path = typer.Argument(..., help="The .onnx file to optimize."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the optimized .onnx file."),
    level: str = typer.Option("basic", help="onnxruntime offline optimization: none, basic (portable), extended or "
                                            "layout (both onnxruntime-only; layout also CPU-specific)."),
    simplifier: str = typer.Option("onnxslim", help="Graph simplifier: onnxslim, onnxsim or none."),
    fold: bool = typer.Option(True, "--fold/--no-fold", help="Constant folding with the onnxscript optimizer."),
    fp16: bool = typer.Option(False, "--fp16", help="Convert to float16 (sensitive operators stay float32)."),
    fp16_io: bool = typer.Option(False, "--fp16-io", help="With --fp16: float16 inputs and outputs too (default: float32)."),
    fp16_keep: list[str] = typer.Option([], "--fp16-keep", help="With --fp16: another operator type to keep in float32. Repeatable."),
    data: str = typer.Option(None, "--data", help=f"Verification inputs (default: seeded random). {DATA_HELP}"),
    preprocess: str = typer.Option(None, help=PREPROCESS_HELP),
    force: bool = typer.Option(False, "--force", help="Overwrite the output if it exists."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Simplify and optimize an ONNX model, verifying every step; a step that breaks parity is rolled back."""
    from ..transform import optimize as do_optimize

    with progress("optimizing") as status:
        report = do_optimize(model, output, level=level, simplifier=simplifier, fold=fold, fp16=fp16,
                             keep_io_types=not fp16_io, fp16_keep_ops=tuple(fp16_keep), feeds=data,
                             preprocess=preprocess, force=force,
                             progress=status.update)
    if not json_out:
        console.print(records_table([r.to_dict() for r in report.records], title=f"transforms of {model}"))
        for record in report.records:
            if record.message:
                console.print(f"[yellow]rolled back[/]: {escape(record.message)}")
            if record.status == "applied" and record.details.get("note"):
                console.print(f"[yellow]note[/]: {record.name} {escape(record.details['note'])}")
    if not json_out and report.passed:
        console.print(f"[green]wrote[/] {output}: {escape(report.summary())} (verified on {report.feeds})")
    finish(report, json_out=json_out)


def quantize(
    model: Path = typer.Argument(..., help="The float .onnx file to quantize."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the int8 .onnx file."),
    calib: str = typer.Option(None, "--calib", help=f"Calibration data (static mode). {DATA_HELP}"),
    eval_data: str = typer.Option(None, "--eval", help=f"Evaluation data the budget is measured on. {DATA_HELP}"),
    labels_key: str = typer.Option("labels", "--labels-key", help="Name of the labels array in .npz files and feeds."),
    labels: Path = typer.Option(None, "--labels", help="The model's class labels (UTF-8, one a line, in class order): "
                                "image folders' class sub-folders are matched to them (default: the labels the "
                                "model's metadata records)."),
    preprocess: str = typer.Option(None, help=PREPROCESS_HELP),
    mode: str = typer.Option("static", help="static (QDQ, calibrated activations) or dynamic (int8 weights; for "
                                            "Linear/MatMul-heavy models)."),
    method: str = typer.Option("minmax", help="Calibration: minmax, entropy or percentile."),
    per_channel: bool = typer.Option(True, "--per-channel/--per-tensor", help="Weight scales per output channel."),
    max_accuracy_drop: float = typer.Option(None, "--max-accuracy-drop", help="Top-1 points the int8 model may lose "
                                            "(needs labels; default 1.0 when labels are given)."),
    max_error: float = typer.Option(None, "--max-error", help="Largest abs error allowed against the FP32 outputs."),
    max_float_nodes: int = typer.Option(8, "--max-float-nodes", help="At most this many sensitive nodes are kept in float to meet the budget."),
    force: bool = typer.Option(False, "--force", help="Overwrite the output if it exists."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Quantize to INT8 within an accuracy budget, keeping the most sensitive nodes in float until it holds."""
    from ..spec import read_labels
    from ..transform.quantize import quantize as do_quantize

    class_names = read_labels(labels) if labels is not None else None
    with progress("quantizing") as status:
        report = do_quantize(model, output, mode=mode, calib=calib, eval_data=eval_data, class_names=class_names,
                             labels_key=labels_key,
                             preprocess=preprocess, method=method, per_channel=per_channel,
                             max_accuracy_drop=max_accuracy_drop, max_error=max_error,
                             max_float_nodes=max_float_nodes, force=force, progress=status.update)
    if not json_out:
        for warning in report.warnings:
            console.print(f"[yellow]warning[/]: {escape(warning)}")
        console.print(records_table([report.record.to_dict()], title=f"quantization of {model}"))
        console.print(steps_table(report))
        if report.layer_errors:
            console.print(layer_errors_table(report.layer_errors))
    if not json_out and report.passed:
        console.print(f"[green]wrote[/] {output}: {escape(report.summary())}")
    finish(report, json_out=json_out)


def records_table(records: list[dict], *, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("transform", "status", "nodes", "size MB", "err vs previous", "err vs float", "seconds"):
        table.add_column(col, justify="left" if col in ("transform", "status") else "right")
    colours = {"applied": "green", "unchanged": "dim", "rolled_back": "red", "failed": "red", "skipped": "yellow"}
    for r in records:
        table.add_row(r["name"], f"[{colours[r['status']]}]{r['status']}[/]", f"{r['nodes_before']} → {r['nodes_after']}",
                      f"{r['size_before'] / 1e6:.2f} → {r['size_after'] / 1e6:.2f}", _err(r["error_vs_previous"]),
                      _err(r["error_vs_float"]), f"{r['seconds']:.2f}")
    return table


def steps_table(report) -> Table:
    table = Table(title=f"budget: {report.budget}", title_justify="left")
    for col in ("kept in float", "runtime", "top-1", "drop (points)", "max abs err", "verdict"):
        table.add_column(col)
    for step in report.steps:
        for i, ev in enumerate(step.evaluations):
            kept = (", ".join(step.float_nodes) or "-") if i == 0 else ""
            verdict = "[green]holds[/]" if step.miss is None else "[red]misses[/]"
            table.add_row(escape(kept), ev.level, "-" if ev.accuracy is None else f"{ev.accuracy * 100:.2f}%",
                          "-" if ev.drop is None else f"{ev.drop:.2f}", _err(ev.max_abs_err), verdict if i == 0 else "")
    for s in report.float_nodes:
        table.caption = (table.caption or "") + (f"{s.node} ({s.op_type}) kept in float: adds {s.added_error:.3g} "
                                                  f"relative error (output error {s.output_error:.3g}). ")
    return table


def layer_errors_table(rows) -> Table:
    """The layers that add the most quantization noise (``sensitivity.layer_errors``), worst first."""
    table = Table(title="layers adding the most quantization noise", title_justify="left",
                  caption="SQNR against FP32 on the calibration data (dB, higher is better), worst layer first",
                  caption_justify="left")
    for col in ("layer", "op", "SQNR dB", "input SQNR dB", "noise added"):
        table.add_column(col, justify="left" if col in ("layer", "op") else "right")
    for r in rows:
        table.add_row(escape(r.node), r.op_type, f"{r.sqnr_db:.1f}", f"{r.input_sqnr_db:.1f}", f"{r.added_noise:.3g}")
    return table


def _err(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def register(app: typer.Typer) -> None:
    app.command("optimize")(optimize)
    app.command("quantize")(quantize)
