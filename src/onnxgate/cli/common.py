"""What every command shares: the console, the one JSON envelope, the one way to end a command.

A command parses its flags, calls one library function and ends with ``finish(result, json_out=...)``: under
``--json`` that prints the envelope (``outcome.envelope``), and the exit code is the judge's (``outcome.judge``),
so no command computes a verdict of its own. Errors take the same envelope through ``render_error``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

# Human output goes to stderr so `--json` output on stdout stays machine-readable.
# When stderr is not a terminal (CI logs, pipes), rich would assume 80 columns and squeeze the tables.
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)

# The command being run (set by main() from argv), named in every envelope.
COMMAND = {"name": "onnxgate"}


@contextmanager
def progress(label: str) -> Iterator[Any]:
    """Progress of a long step, as an object with ``update(message)`` (the library's ``progress=`` callback):
    a live spinner on a terminal; on a pipe or a CI log, where a spinner shows nothing, one plain line per step."""
    if console.is_terminal:
        with console.status(label, spinner="dots") as status:
            yield status
    else:
        yield _PlainProgress(label)


class _PlainProgress:
    def __init__(self, label: str):
        self.start, self.last = time.monotonic(), None
        self.update(label)

    def update(self, message: str) -> None:
        if message != self.last:  # a step repeated by the library is one line
            self.last = message
            console.print(f"[{time.monotonic() - self.start:6.1f}s] {escape(message)}", soft_wrap=True)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def finish(result: Any = None, *, json_out: bool, data: Any = None, quiet_failure: bool = False) -> None:
    """End a command: the envelope under ``--json``, the failure line otherwise, and the judge's exit code.

    ``result``: the stage result (or a list of them) the judge rules on; ``data``: facts to print instead of
    ``result.to_dict()``. ``quiet_failure``: the command already printed why it failed."""
    from ..outcome import PASSED, envelope, judge

    outcome = judge(result) if result is not None else PASSED
    if json_out:
        emit_json(envelope(COMMAND["name"], result=result, data=data))
    elif not outcome.passed and not quiet_failure:
        print_error(outcome.reason or "failed", outcome.hint)
    if not outcome.passed:
        raise typer.Exit(outcome.exit_code)


def render_error(exc: Exception, *, as_json: bool) -> None:
    from ..errors import OnnxgateError
    from ..outcome import envelope

    if as_json:
        emit_json(envelope(COMMAND["name"], error=exc))
    if isinstance(exc, OnnxgateError) and hasattr(getattr(exc, "result", None), "attempts"):
        from .render import attempts_table

        console.print(attempts_table(exc.result))  # an export that failed: every attempt and why
    print_error(getattr(exc, "message", str(exc)), getattr(exc, "hint", None))


def print_error(message: str, hint: str | None) -> None:
    """The one-paragraph failure line every command ends with on stderr: what went wrong, then the fix."""
    text = f"[bold red]error[/]: {escape(message)}"
    if hint:
        text += f" [yellow]{escape(hint)}[/]"
    console.print(text, soft_wrap=True)
