"""`onnxgate inspect MODEL.onnx`: what is in an ONNX file, and whether this machine's onnxruntime loads it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
    with json_envelope_on_crash(json_out):
        _inspect(model, target, json_out)


def _inspect(model: Path, target: list[str], json_out: bool) -> None:
    from ..errors import ExitCode
    from ..verify.structure import check_structure
    from ..verify.targets import check_targets, render_targets_table
    from .render import structure_tables

    report = check_structure(model)
    targets = check_targets(report, list(target)) if target else []
    if json_out:
        emit_json({**report.to_dict(), "targets": [t.to_dict() for t in targets]})
    else:
        for table in structure_tables(report):
            console.print(table)
        if targets:
            console.print(render_targets_table(targets))
        for problem in report.structure_errors:
            console.print(f"[red]structure[/]: {_escape(problem)}")
        for problem in report.metadata_problems:
            console.print(f"[yellow]metadata[/]: {_escape(problem)} (verify needs --input/--dim for this file)")
    if not report.checker_ok or report.structure_errors:
        raise typer.Exit(int(ExitCode.BAD_INPUT))  # a malformed file, whatever a runtime makes of it
    if not report.passed or not all(t.supported for t in targets):
        raise typer.Exit(int(ExitCode.RUNTIME_INCOMPATIBLE))


@contextlib.contextmanager
def json_envelope_on_crash(as_json: bool) -> Iterator[None]:
    """Under ``--json``, stdout carries a JSON document whatever happens: an exception that is not an onnxgate
    error (a bug, exit 1 with its traceback on stderr) still leaves the error envelope on stdout first."""
    try:
        yield
    except Exception as exc:
        if as_json and not _expected(exc):
            from ..outcome import envelope
            from .common import COMMAND

            emit_json(envelope(COMMAND["name"], error=exc))  # exit_code 1: the judge's verdict on a bug
        raise


def _expected(exc: Exception) -> bool:
    from ..errors import OnnxgateError

    try:  # typer >= 0.20 vendors click as typer._click
        from typer._click.exceptions import ClickException
    except ImportError:  # pragma: no cover
        from click.exceptions import ClickException
    return isinstance(exc, (OnnxgateError, typer.Exit, typer.Abort, ClickException))


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
