"""What every command shares: the console, JSON output, error rendering."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

# Human output goes to stderr so `--json` output on stdout stays machine-readable.
# When stderr is not a terminal (CI logs, pipes), rich would assume 80 columns and squeeze the tables.
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def render_error(exc: Exception, *, as_json: bool) -> None:
    from ..errors import OnnxgateError

    code = int(getattr(exc, "exit_code", 1))
    message = getattr(exc, "message", str(exc))
    hint = getattr(exc, "hint", None)
    if as_json:
        emit_json({"ok": False, "error": {"type": type(exc).__name__, "message": message, "hint": hint,
                                          "exit_code": code}})
    text = f"[bold red]error[/]: {_escape(message)}"
    if hint:
        text += f" [yellow]{_escape(hint)}[/]"
    if isinstance(exc, OnnxgateError) and getattr(exc, "result", None) is not None:
        from .render import attempts_table

        console.print(attempts_table(exc.result))
    console.print(text, soft_wrap=True)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
