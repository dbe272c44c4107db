"""`onnxgate inspect MODEL.onnx`: what is in an ONNX file, and whether this machine's onnxruntime loads it."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, emit_json
from .export_cmd import TARGET_HELP


def inspect(
    model: Path = typer.Argument(..., help="The .onnx file."),
    target: list[str] = typer.Option([], "--target", help=TARGET_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Opset and IR version, inputs/outputs with dims, operator histogram, parameters, metadata, onnxruntime load."""
    from ..verify.structure import check_structure
    from .render import structure_tables

    from ..errors import ExitCode
    from ..verify.targets import check_targets, render_targets_table

    report = check_structure(model)
    targets = check_targets(report, list(target)) if target else []
    if json_out:
        emit_json({**report.to_dict(), "targets": [t.to_dict() for t in targets]})
    else:
        for table in structure_tables(report):
            console.print(table)
        if targets:
            console.print(render_targets_table(targets))
    if not report.checker_ok:
        raise typer.Exit(int(ExitCode.BAD_INPUT))
    if not report.passed or not all(t.supported for t in targets):
        raise typer.Exit(int(ExitCode.RUNTIME_INCOMPATIBLE))


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
