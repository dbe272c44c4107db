"""`onnxgate inspect MODEL.onnx`: what is in an ONNX file, and whether this machine's onnxruntime loads it."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, emit_json


def inspect(
    model: Path = typer.Argument(..., help="The .onnx file."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Opset and IR version, inputs/outputs with dims, operator histogram, parameters, metadata, onnxruntime load."""
    from ..verify.structure import check_structure
    from .render import structure_tables

    report = check_structure(model)
    if json_out:
        emit_json(report.to_dict())
    else:
        for table in structure_tables(report):
            console.print(table)
    if not report.passed:
        from ..errors import ExitCode

        raise typer.Exit(int(ExitCode.RUNTIME_INCOMPATIBLE if report.checker_ok else ExitCode.BAD_INPUT))


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
