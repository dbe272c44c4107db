"""What a model decides from its input *values*, and whether a set of inputs took the other side of each decision.

Tracing (TorchScript) and draft export record one path through ``forward()``: the branch an ``if`` on a tensor took,
the int ``.item()`` gave a size, a loop's bound. Such a rung *assumed* those values, and its graph is right only
where they hold; parity on feeds that happen to take the same path proves nothing about the other side.

``record_path`` runs the PyTorch model eagerly under a ``TorchFunctionMode`` and records its path: every value
decision (a tensor turned into a Python bool, int or float, at the user's source line) and the Python scalars each
torch call made from a user line received (a size computed from a value, a loop's repeated calls).
``exercised(example_path, probe_path, site)`` tells whether a probe took another path at a decision site than the
example did. ``value_sites`` lists the sites where the example's path decided on a value.

Torch is imported lazily (only the ladder and ``verify --against``, which hold a PyTorch model, call this).
"""

from __future__ import annotations

import linecache
import os
import sys
from dataclasses import dataclass
from typing import Any

# Tensor -> Python conversions: the moments forward() decides on a value.
CONVERSIONS = {"__bool__": "bool", "__int__": "int", "__index__": "int", "__float__": "float", "item": "value",
               "tolist": "value"}


@dataclass(frozen=True)
class Event:
    site: str  # "file:line" in the model's code
    kind: str  # "bool" / "int" / "float" (a value decision), or the torch function called from the site
    value: Any  # the bool or int decided; None for a float; a call's Python scalar arguments


def _library_dirs() -> tuple[str, ...]:
    import torch

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the onnxgate package
    return (os.path.dirname(os.path.abspath(torch.__file__)) + os.sep, os.path.dirname(os.__file__) + os.sep,
            here + os.sep)


def _is_library(filename: str, dirs: tuple[str, ...]) -> bool:
    if filename.startswith("<"):
        return True
    path = os.path.abspath(filename)
    if os.sep + "onnxgate" + os.sep + "examples" + os.sep in path:  # onnxgate's example models are model code
        return False
    torch_dir, stdlib, onnxgate = dirs
    if path.startswith((torch_dir, onnxgate)):
        return True
    # the standard library is not the model; packages installed under it (transformers, timm) are
    return path.startswith(stdlib) and not any(p in path for p in ("site-packages", "dist-packages"))


def _site(frame, dirs: tuple[str, ...]) -> str | None:
    while frame is not None:
        if not _is_library(frame.f_code.co_filename, dirs):
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _scalars(value: Any, depth: int = 0) -> Any:
    """The Python scalars of a call's arguments (tensors and other objects become a placeholder)."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, list | tuple) and depth < 3:
        return tuple(_scalars(v, depth + 1) for v in value[:64])
    if isinstance(value, dict) and depth < 3:
        return tuple((k, _scalars(v, depth + 1)) for k, v in list(value.items())[:64])
    return "·"


def record_path(module, args: tuple, kwargs: dict | None = None) -> list[Event]:
    """Run ``module(*args, **kwargs)`` eagerly (no grad) and return the path it took (see the module docstring)."""
    import torch
    from torch.overrides import TorchFunctionMode

    dirs = _library_dirs()
    events: list[Event] = []

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = getattr(func, "__name__", "")
            caller = sys._getframe(1)
            if name in CONVERSIONS:
                site = _site(caller, dirs)
                if site is not None:
                    decided = out if isinstance(out, bool | int) else None
                    kind = CONVERSIONS[name] if CONVERSIONS[name] != "value" else (
                        "bool" if isinstance(out, bool) else "int" if isinstance(out, int) else "float")
                    events.append(Event(site, kind, decided))
            elif not _is_library(caller.f_code.co_filename, dirs):
                events.append(Event(f"{caller.f_code.co_filename}:{caller.f_lineno}", name,
                                    _scalars((args[1:] if args else (), kwargs or {}))))
            return out

    with torch.no_grad(), Recorder():
        module(*args, **(kwargs or {}))
    return events


def is_decision(event: Event) -> bool:
    return event.kind in ("bool", "int", "float")


def value_sites(path: list[Event]) -> list[str]:
    """The sites where ``path`` decided on a tensor's value, in the order first reached."""
    return list(dict.fromkeys(e.site for e in path if is_decision(e)))


def _segments(path: list[Event], site: str) -> list[tuple]:
    """What the decisions at ``site`` decided: a bool or int itself; for a float, the calls it fed (every event up
    to the next decision), since the float is used in Python before it reaches the graph as a size or a constant."""
    out = []
    for i, event in enumerate(path):
        if event.site != site or not is_decision(event):
            continue
        if event.value is not None:
            out.append((event.kind, event.value))
            continue
        fed = []
        for later in path[i + 1:]:
            if is_decision(later):
                break
            fed.append((later.site, later.kind, later.value))
        out.append(("float", tuple(fed)))
    return out


def exercised(example: list[Event], probe: list[Event], site: str) -> bool:
    """Did ``probe`` take another path at ``site`` than ``example`` (another bool or int there, a float there that
    fed other sizes/constants, or the site reached another number of times)?"""
    return _segments(example, site) != _segments(probe, site)


def first_divergence(agreeing: list[Event], failing: list[Event]) -> tuple[str, Any, Any] | None:
    """The first value decision where two paths part: (site, what the first decided, what the second decided)."""
    for site in value_sites(agreeing) + [s for s in value_sites(failing) if s not in value_sites(agreeing)]:
        a, b = _segments(agreeing, site), _segments(failing, site)
        if a != b:
            return site, _shown(a), _shown(b)
    return None


def _shown(segments: list[tuple]) -> str:
    if not segments:
        return "not reached"
    values = [str(v) if kind != "float" else f"a float that fed {len(v)} call(s)" for kind, v in segments]
    text = ", ".join(values[:4]) + (" ..." if len(values) > 4 else "")
    return f"{text} ({len(values)} times)" if len(values) > 1 else text


def describe(site: str) -> str:
    """``file:line (`source`)`` for a site."""
    file, _, line = site.rpartition(":")
    code = linecache.getline(file, int(line)).strip() if line.isdigit() else ""
    return f"{site} (`{code[:120]}`)" if code else site
