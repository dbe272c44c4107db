"""Files a newcomer reads first stay readable: no function body in the pipeline, verify's entry point or the CLI
runs over 50 lines (a typer command's option list is its signature, not its body)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "onnxgate"
CHECKED = [SRC / "pipeline.py", SRC / "verify" / "api.py", *sorted((SRC / "cli").glob("*.py"))]
MAX_BODY_LINES = 50


def body_lengths(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                body = body[1:] or body  # the docstring is documentation, not logic
            yield node.name, node.lineno, node.end_lineno - body[0].lineno + 1


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(SRC)))
def test_no_long_functions(path):
    long = [f"{name} (line {line}): {n} lines" for name, line, n in body_lengths(path) if n > MAX_BODY_LINES]
    assert not long, f"{path.name}: split these: {', '.join(long)}"
