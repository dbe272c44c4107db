"""Typer parameters generated from the option table (``onnxgate.options.OPTIONS``), so a flag, its aliases, its
help and its values are written once, shared with onnxgate.toml and zoo entries.

``@options_of("export")`` on a command function keeps the function's own parameters (its positional arguments)
and appends one typer parameter per option of the table that names the command, by setting the command's
``__signature__`` (typer reads ``inspect.signature``). The function receives its arguments and ``given``: the
options given on the command line, by option name, checked against the table (``options.from_cli``).
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any, Callable

import typer

from ..options import Option, for_command, from_cli

_TYPES = {"str": str, "path": Path, "int": int, "float": float, "bool": bool, "meta": list[str]}


def parameter(opt: Option) -> inspect.Parameter:
    """One table row as the typer parameter its ``inspect.Parameter`` declares."""
    if opt.kind == "list" and not opt.split:
        annotation: Any = list[int] if opt.item is int else list[str]
        default: Any = []
    elif opt.kind == "bool":
        annotation, default = bool, None if opt.negatable else False
    else:
        annotation, default = (str if opt.split else _TYPES[opt.kind]), None
    info = typer.Option(default, *opt.cli_flags, help=opt.help, metavar=opt.metavar)
    return inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def options_of(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command: its own parameters, then the table's options for ``command``; it is called with its
    own parameters and ``given`` (the options set on the command line)."""
    rows = for_command(command)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "given"]
        names = {p.name for p in own}

        @functools.wraps(fn)
        def command_fn(**kwargs: Any) -> Any:
            mine = {k: v for k, v in kwargs.items() if k in names}
            given = from_cli(command, {k: v for k, v in kwargs.items() if k not in names})
            return fn(**mine, given=given)

        command_fn.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + [parameter(o) for o in rows],
            return_annotation=None)
        command_fn.__annotations__ = {}
        del command_fn.__wrapped__  # typer reads __signature__ and the hints of the function it is given
        return command_fn

    return decorate
