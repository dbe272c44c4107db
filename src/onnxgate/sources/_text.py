"""Small text helpers for the one-paragraph error messages of the model sources."""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from pathlib import Path


def listing(names: Sequence[str], limit: int = 5) -> str:
    """``a, b, c`` or ``a, b, c and 7 more``: keeps a message to one readable line however long the list."""
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


def describe(exc: BaseException, user_file: str | Path | None = None) -> str:
    """``TypeError: first line of the message``, plus `` (at model.py:12)`` when raised inside ``user_file``.

    The CLI shows no traceback for errors the user must fix, so the message carries the line of the user's own
    code that failed; frames inside torch or other libraries would only be noise.
    """
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    if user_file is not None and not isinstance(exc, SyntaxError):  # a SyntaxError names its file and line already
        target = Path(user_file).resolve()
        own = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == target]
        if own:
            text += f" (at {user_file}:{own[-1].lineno})"
    return text
