"""Where a capture specialized a declared dynamic dim, and whether another capture could have kept it (issue 25).

``torch.export`` turns each dynamic input size into a symbol and adds a *guard* whenever code makes a decision on a
size. When the guards pin a declared dim to the example's size, the captured program holds that dim static, and
every ONNX graph made from it is frozen there: the attempt is ``frozen_dim`` as soon as the capture says so, with no
conversion or parity run needed.

``GuardRecorder`` listens to the ShapeEnv's "guard added" log records during a capture and classifies each guard by
what the model's code was doing when it was added (the live Python stack at that moment; the non-strict capture runs
the model's own frames):

- ``branch``: a Python conditional (``if``, ``and``/``or``, ``not``, ``assert``, a conditional expression) on a
  size comparison: ``SymBool.__bool__`` called by a conditional-jump instruction in the model's frame (timm
  tiny_vit's ``if H == self.window_size and W == self.window_size``). The branch taken depends on the size, and every
  capture evaluates it on the example: TorchDynamo (strict) guards a jump on a symbolic bool the same way, Dim.AUTO
  only declares the dims otherwise (it is allowed to specialize silently), draft export captures non-strict.
- ``conversion``: a size turned into a Python number another way (``int()``, ``range()``, ``max()``, a tensor or a
  numpy value built from sizes, ``bool()`` called explicitly): strict capture keeps some of those symbolic.
- ``op``: added inside a torch operation's shape logic (the model's frame called a torch function), or by the
  capture machinery with no model code on the stack.

``branch_frozen`` decides, soundly, when a specialized dim cannot be kept by the other capture variants: it was pinned
by branch guards on that dim's symbol alone, and nothing in the capture converted a size to a Python number (a
constant in the comparison could otherwise be another dim that strict capture keeps symbolic).

Torch is imported lazily (only the export worker captures).
"""

from __future__ import annotations

import contextlib
import dis
import linecache
import logging
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Iterator

from .assumptions import _is_library, _library_dirs

LOGGER = "torch.fx.experimental.symbolic_shapes"
_SYMBOL = re.compile(r"\b[su]\d+\b")
# The instructions with which Python tests an object's truth for a branch (3.11 .. 3.13 names).
_JUMPS = ("POP_JUMP_FORWARD_IF_FALSE", "POP_JUMP_FORWARD_IF_TRUE", "POP_JUMP_BACKWARD_IF_FALSE",
          "POP_JUMP_BACKWARD_IF_TRUE", "POP_JUMP_IF_FALSE", "POP_JUMP_IF_TRUE", "JUMP_IF_FALSE_OR_POP",
          "JUMP_IF_TRUE_OR_POP", "UNARY_NOT", "TO_BOOL")
# What a model's frame calls to turn a symbolic size into a Python value (besides __bool__ at a jump).
_CONVERSIONS = frozenset({"__bool__", "__int__", "__index__", "__float__", "__trunc__", "__round__", "__floor__",
                          "__ceil__", "__complex__", "__len__", "item", "tolist", "guard_int", "guard_float",
                          "guard_bool", "int_", "float_", "bool_", "expect_true", "guard_or_false", "guard_or_true",
                          "guard_size_oblivious"})


@dataclass
class Guard:
    expr: str
    symbols: list[str]
    kind: str  # "branch", "conversion" or "op"
    site: str | None = None  # file:line of the model's code that made the decision
    code: str | None = None  # that line's source


@dataclass
class Specialized:
    """One declared dim that a capture pinned to the example's size."""

    dim: str
    value: int
    symbol: str | None = None
    guards: list[Guard] = field(default_factory=list)  # the guards on its symbol, in the order added
    branch: bool = False  # pinned by size-comparison branches alone (``branch_frozen``)

    def cause(self) -> Guard | None:
        """The branch guard to name: one that pins the size (an equality) first, else the first branch."""
        branches = [g for g in self.guards if g.kind == "branch" and g.site]
        return next((g for g in branches if g.expr.startswith("Eq(")), branches[0] if branches else None)

    def why(self) -> str:
        guard = self.cause()
        where = (f": a Python branch on a size comparison at {guard.site}"
                 + (f" (`{guard.code[:100]}`)" if guard.code else "")) if guard else ""
        return f"torch.export specialized {self.dim} to {self.value} while capturing{where}"

    def to_dict(self) -> dict:
        return asdict(self)


class GuardRecorder(logging.Handler):
    """Collects the guards (and the symbol -> input source of each dynamic size) a capture adds."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.guards: list[Guard] = []
        self.sources: dict[str, str] = {}  # symbol -> "L['x'].size()[2]"
        self._dirs = _library_dirs()
        self._jumps: dict[object, set[int]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg, args = record.msg, record.args or ()
            if not isinstance(msg, str) or not isinstance(args, tuple):
                return
            if msg.startswith("create_symbol %s = %s for %s") and len(args) >= 3:
                self.sources[str(args[0])] = str(args[2])
            elif "[guard added]" in msg and len(args) >= 2 and str(args[0]).startswith(("eval", "runtime_assert")):
                expr = str(args[1])
                if not any(g.expr == expr for g in self.guards):
                    self.guards.append(self._classify(expr))
        except Exception:  # noqa: BLE001  a record the recorder cannot read leaves no guard: never a branch
            self.guards.append(Guard("?", [], "conversion"))

    def _classify(self, expr: str) -> Guard:
        symbols = sorted(set(_SYMBOL.findall(expr)))
        frame, callee = sys._getframe(1), None
        while frame is not None and _is_library(frame.f_code.co_filename, self._dirs):
            frame, callee = frame.f_back, frame
        if frame is None or callee is None:  # no model code on the stack: the capture machinery's own guard
            return Guard(expr, symbols, "op")
        site = f"{frame.f_code.co_filename}:{frame.f_lineno}"
        code = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip() or None
        name = callee.f_code.co_name
        if name == "__bool__" and frame.f_lasti in self._jump_offsets(frame.f_code):
            kind = "branch"
        elif name in _CONVERSIONS:
            kind = "conversion"
        else:
            kind = "op"
        return Guard(expr, symbols, kind, site, code)

    def _jump_offsets(self, code) -> set[int]:
        if code not in self._jumps:
            self._jumps[code] = {i.offset for i in dis.get_instructions(code) if i.opname in _JUMPS}
        return self._jumps[code]

    def specialized(self, pinned: dict[str, int], sources: dict[str, list[str]]) -> list[Specialized]:
        """``pinned``: dim -> the size the capture fixed; ``sources``: dim -> how its input size may be named in
        the capture (``['x'].size()[2]``: the end of a source text such as ``L['x'].size()[2]``)."""
        convert = any(g.kind == "conversion" for g in self.guards)
        out = []
        for dim, value in pinned.items():
            ends = tuple(sources.get(dim) or ())
            symbol = next((sym for sym, src in self.sources.items() if ends and src.endswith(ends)), None)
            on = [g for g in self.guards if symbol is not None and symbol in g.symbols]
            branch = (symbol is not None and not convert and any(g.kind == "branch" for g in on)
                      and all(g.symbols == [symbol] for g in on if g.kind == "branch"))
            out.append(Specialized(dim, int(value), symbol, on[:12], branch))
        return out


@contextlib.contextmanager
def recording() -> Iterator[GuardRecorder]:
    """Record the guards of the captures run inside the block. Torch's own log output is unchanged: the handlers
    already there (torch's, and its parents' while records propagate) drop the records this level lets through."""
    log = logging.getLogger(LOGGER)
    recorder = GuardRecorder()
    level, shown = log.level, log.getEffectiveLevel()

    class Quiet(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return record.levelno >= shown

    quiet, handlers, node = Quiet(), [], log
    while node is not None:
        handlers += node.handlers
        node = node.parent if node.propagate else None
    for handler in handlers:
        handler.addFilter(quiet)
    log.addHandler(recorder)
    log.setLevel(min(shown, logging.INFO))
    try:
        yield recorder
    finally:
        log.removeHandler(recorder)
        log.setLevel(level)
        for handler in handlers:
            handler.removeFilter(quiet)


def branch_frozen(specialized: list[dict]) -> dict | None:
    """The first specialized dim (``Specialized.to_dict()``) pinned by size-comparison branches alone, if any."""
    return next((s for s in specialized or [] if s.get("branch")), None)
