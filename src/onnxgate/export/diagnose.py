"""Turn an exporter exception into one actionable diagnosis: what failed, where, why, and how to fix it.

The export ladder records one ``Diagnosis`` per failed attempt (``diagnose``) and, when every attempt failed,
reduces them to the single message the user sees (``summarize`` + ``format_message``). Known failures live in
one data-driven catalogue, ``diagnoses.json`` next to this file: an ordered list of entries whose regexes are
matched against each exception of the chain (``"TypeQualname: message"``). The first entry that matches wins,
so specific entries come before general ones (``custom_op`` and ``opset_too_low`` before
``unsupported_aten_op``). Named groups in an entry's patterns fill the diagnosis: ``operator`` names the
failing operator, any other group (e.g. ``min_opset``) fills the ``{placeholder}`` of the same name in the
entry's cause and fix. The last entry, ``unknown``, has no patterns and is the fallback.

This module imports no torch: it reads exception text only, so the CLI can format a recorded diagnosis on a
machine without the export extras.

What torch 2.14.1 really does with the hard cases (probed with ``dynamo=True, dynamic_shapes=`` named
``torch.export.Dim``s and ``dynamo=False, dynamic_axes=``; "OK" means an ONNX file was written)::

    model construct                          dynamo exporter                       torchscript exporter
    ---------------------------------------  ------------------------------------  -----------------------------------
    `if x.sum() > 0:` (data-dependent)       TorchExportError <- GuardOnData-      OK + TracerWarning: traced branch
                                             DependentSymNode                      baked in (SILENTLY WRONG)
    int(x.sum()) used as a size              TorchExportError <- GuardOnData-      OK: int baked in (SILENTLY WRONG)
                                             DependentSymNode
    torch.median(x, dim) / kthvalue / mode   ConversionError <- DispatchError      UnsupportedOperatorError
      / cummax / searchsorted / linalg.eig   "No ONNX function found for           "Exporting the operator 'aten::X'
                                             <OpOverload(op='aten.X' ...)>"        to ONNX opset version N ..."
    torch.histc                              ConversionError <- NotImplemented-    UnsupportedOperatorError
                                             Error (aten_histc min == max)
    torch.sort(stable=True)                  ConversionError <- DispatchError      OnnxExporterError "Unsupported:
                                                                                   ONNX export of operator Sort"
    torch.cdist                              ConversionError (_cdist_forward)      OK
    bincount, interpolate(antialias=True)    OK                                    UnsupportedOperatorError
    max_unpool2d                             OK                                    TypeError "cond must be a bool"
    bucketize, unique(return_counts),        OK                                    OK
      grid_sample (opset 18), x.view(2, -1)
    grid_sample at opset 11                  OK but SILENTLY opset 18: the         UnsupportedOperatorError "... added
                                             version converter fails, logs it      in version 16" (opset_too_low)
    istft (complex input)                    ConversionError <- DispatchError      UnsupportedOperatorError
                                             "complex-valued input"                (aten::istft)
    torch.library custom op, no translation  ConversionError <- DispatchError      UnsupportedOperatorError
                                             (op='NS.OP')                          "unrecognized namespace NS::OP"
    autograd.Function, torch ops inside      OK (traced through)                   OK (inlined: autograd_inlining=True);
                                                                                   RuntimeError "Couldn't export Python
                                                                                   operator" only with inlining off
    autograd.Function, numpy inside          OK (strict capture translates         OK but the output is a Constant
                                             numpy to torch)                       (SILENTLY WRONG)
    x.numpy() in forward                     ConversionError (aten.sort.stable)    OK, Constant output (SILENTLY WRONG)
    `assert x.shape[0] == 4`, named Dim      OK but dim SILENTLY static (4): the   OK + TracerWarning, assert dropped
                                             exporter re-exports with torch's
                                             suggested fix; Dim.DYNAMIC instead:
                                             TorchExportError <- ValueError
                                             "tracing inferred a static shape"
    `if x.shape[0] > 2:`, named Dim          OK, range SILENTLY narrowed to the    OK, branch baked in
                                             traced branch (min=3): batch 1 runs   (SILENTLY WRONG)
                                             the other branch's maths (WRONG)
    example size outside the Dim range       TorchExportError <- Constraint-       (no ranges)
                                             ViolationError "4 not in range"
    str / bool input, no dynamic spec        OK, value baked in as a constant      OK, value baked in
    str input given a Dim                    TorchExportError <- UserError         OK, value baked in
                                             "non-tensor type <class 'str'>"
    list[str] input, spec None               TorchExportError <- UserError         OK, value baked in
                                             "Detected mismatch ... structure"
    numpy array input                        TorchExportError <- UserError         RuntimeError "Only tuples, lists
                                                                                   and Variables are supported"
    returns (tensor, "str")                  ConversionError <- AttributeError     OK, the str is dropped
                                             ("translating node return (...)")
    returns {"y": tensor, "n": 3}            ConversionError (node return)         RuntimeError "did not have
                                                                                   observable data dependence"
    returns a dataclass                      TorchExportError <- RuntimeError      RuntimeError "Only tuples, ..."
                                             "Found <class ...> in output"         (says "input" for the output)
    returns (tensor, None)                   OK                                    OK
    in-place op on an input (x.add_(1))      OK                                    OK + warning "Removing mutation
                                                                                   ... changes graph semantics"
    dict as the last positional arg          TorchExportError <- TypeError         TypeError "missing 1 required
                                             "missing a required argument"         positional argument"; both OK when
                                                                                   args end with an extra {}

Notes for the ladder: the dynamo exporter raises only the *first* capture failure (``strict=False``); the
``strict=True`` retry's error is dropped. Silently-wrong exports are caught later by parity checks at other
sizes/values and by comparing the ONNX inputs' dims with the requested dynamic dims and ``opset_import`` with
the requested opset. The torchscript exporter prints "Torch IR graph at exception" (with the failing node's
module scope and source line) from C++ straight to file descriptor 1, past ``contextlib.redirect_stdout``;
capture the descriptor and pass the text as ``diagnose(exc, output=...)`` to name the module.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

CATALOGUE = "diagnoses.json"
FALLBACK_ID = "unknown"
DETAIL_CHARS = 300

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# "<class 'torch...GuardOnDataDependentSymNode'>: " prefixes of the dynamo exporter's "Exception summary" lines.
_CLASS_PREFIX = re.compile(r"<class '[\w.]+'>: ")
_BOILERPLATE = re.compile(r"\s*See the stack trace for more information\.")
# Frames of the exporters and of onnxgate itself are never the user's code; the location we report must be.
_LIBRARY_PATH = re.compile(
    r"(?:site|dist)-packages[/\\](?:torch|functorch|onnx|onnxscript|onnxruntime|onnxgate)[/\\]"
    r"|[/\\]src[/\\]onnxgate[/\\]"
)
# Python-traceback frames, outermost first: 'File "/m/model.py", line 7, in forward'.
_PY_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>[\w<>]+)')
# TorchScript "Defined at:" frames, innermost first: "/m/model.py(15): forward".
_TS_FRAME = re.compile(r"^\s*(?P<file>\S+\.py)\((?P<line>\d+)\): (?P<func>[\w<>]+)", re.MULTILINE)
# A TorchScript graph node's source comment: "... scope: __main__.Net::/x.Head::head # /m/model.py:78:0".
_TS_NODE_SOURCE = re.compile(r"# (?P<file>\S+\.py):(?P<line>\d+):\d+\s*$")
_TS_SCOPE = re.compile(r"scope: (?P<scope>\S+)")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass
class Diagnosis:
    """Why one export attempt failed. ``operator``, ``module`` and ``location`` are None when unknown.

    ``module`` is the submodule path with its class, e.g. ``blocks.0.head (Head)``, or the class alone for the
    root module; ``location`` is the user's source line as ``file:line``; ``detail`` is the exporter's own
    line that led to this diagnosis.
    """

    id: str
    cause: str
    fix: str
    operator: str | None
    module: str | None
    detail: str
    location: str | None = None


@dataclass(frozen=True)
class _Entry:
    id: str
    cause: str
    fix: str
    patterns: tuple[re.Pattern[str], ...]


@cache
def catalogue() -> tuple[_Entry, ...]:
    """The known failures, in matching order, ending with the fallback entry."""
    raw = json.loads(resources.files(__package__).joinpath(CATALOGUE).read_text(encoding="utf-8"))
    entries = tuple(
        _Entry(e["id"], e["cause"], e["fix"], tuple(re.compile(p, re.MULTILINE) for p in e["patterns"]))
        for e in raw
    )
    if entries[-1].id != FALLBACK_ID or entries[-1].patterns:
        raise ValueError(f"{CATALOGUE}: the last entry must be '{FALLBACK_ID}' with no patterns")
    return entries


def diagnose(exc: BaseException, output: str = "") -> Diagnosis:
    """Diagnose one failed export from its exception chain.

    ``output`` is optional text the exporter printed while failing; the torchscript exporter's "Torch IR graph
    at exception" dump there names the module and source line of a failing operator that its exception omits.
    """
    texts = _chain_texts(exc)  # innermost (the root cause) first
    entry, detail = _classify(texts)
    groups = _named_groups(entry, texts)
    operator = groups.get("operator")
    module, location = _locate(texts, output, operator)
    return Diagnosis(
        id=entry.id,
        cause=_fill(entry.cause, groups),
        fix=_fill(entry.fix, groups),
        operator=operator,
        module=module,
        detail=detail,
        location=location,
    )


def known(entry_id: str, *, detail: str, location: str | None = None) -> Diagnosis:
    """The catalogue's diagnosis ``entry_id`` for a failure found without an exception (e.g. a TracerWarning
    showing that tracing baked in a data-dependent branch)."""
    entry = next(e for e in catalogue() if e.id == entry_id)
    return Diagnosis(entry.id, _fill(entry.cause, {}), _fill(entry.fix, {}), None, None, detail, location)


def summarize(diagnoses: list[Diagnosis]) -> Diagnosis:
    """The one diagnosis to show when every attempt failed: a recognised one over ``unknown``, then the one
    naming the most of operator/module/location; ties go to the earliest attempt (the ladder's preferred one).
    """
    if not diagnoses:
        raise ValueError("summarize() needs at least one diagnosis")

    def specificity(d: Diagnosis) -> tuple[bool, int]:
        return d.id != FALLBACK_ID, sum(v is not None for v in (d.operator, d.module, d.location))

    return max(diagnoses, key=specificity)  # max() keeps the first of equal keys


def format_message(d: Diagnosis) -> str:
    """One paragraph: 'Export failed: <cause> (operator X, in module Y, at file:line). Fix: <fix>. ...'."""
    where = [
        f"operator {d.operator}" if d.operator else "",
        f"in module {d.module}" if d.module else "",
        f"at {d.location}" if d.location else "",
    ]
    where_text = ", ".join(w for w in where if w)
    message = f"Export failed: {d.cause.rstrip('.')}"
    if where_text:
        message += f" ({where_text})"
    message += f". Fix: {d.fix.rstrip('.')}."
    if d.detail:
        message += f" Exporter said: {d.detail}"
    return message


def _chain_texts(exc: BaseException) -> list[str]:
    """'TypeQualname: message' for each exception of the chain, innermost first.

    Follows ``__cause__``, and ``__context__`` unless suppressed (``raise ... from None``), as Python's own
    traceback does: a suppressed context is an error the raiser handled, not part of this failure.
    """
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    texts = []
    for e in reversed(chain):
        kind = type(e)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        texts.append(f"{name}: {_ANSI.sub('', str(e))}")
    return texts


def _classify(texts: list[str]) -> tuple[_Entry, str]:
    """The first catalogue entry matching any exception (innermost first), and the detail line it matched."""
    entries = catalogue()
    for entry in entries[:-1]:
        for depth, text in enumerate(texts):
            for pattern in entry.patterns:
                match = pattern.search(text)
                if match:
                    return entry, _detail(_lines_around(text, match), texts, wrapped=depth > 0)
    return entries[-1], _detail(_root_line(texts), texts, wrapped=False)


def _named_groups(entry: _Entry, texts: list[str]) -> dict[str, str]:
    """Every named group any of the entry's patterns captures anywhere in the chain; the first capture wins."""
    groups: dict[str, str] = {}
    for pattern in entry.patterns:
        for text in texts:
            match = pattern.search(text)
            if match:
                for name, value in match.groupdict().items():
                    if value is not None:
                        groups.setdefault(name, value)
    return groups


def _fill(template: str, groups: dict[str, str]) -> str:
    """Replace each ``{name}`` whose name a pattern captured; other braces (code in a fix) stay as written."""
    return _PLACEHOLDER.sub(lambda m: groups.get(m[1], m[0]), template)


def _lines_around(text: str, match: re.Match[str]) -> str:
    """The whole line(s) a match spans, joined into one."""
    start = text.rfind("\n", 0, match.start()) + 1
    end = text.find("\n", max(match.end() - 1, match.start()))
    line = " ".join((text[start:] if end == -1 else text[start:end]).split())
    if start == 0:  # the first line still carries our "TypeQualname: " prefix; keep only the short name
        name, _, message = line.partition(": ")
        line = f"{name.rsplit('.', 1)[-1]}: {message}"
    return line


def _root_line(texts: list[str]) -> str:
    """The first line of the innermost exception that says anything."""
    for text in texts:
        name, _, message = text.partition(": ")
        first = next((line for line in message.splitlines() if line.strip()), "")
        if first:
            return f"{name.rsplit('.', 1)[-1]}: {first}"
    return ""


def _detail(line: str, texts: list[str], *, wrapped: bool) -> str:
    """Clean ``line`` for display; when it came from an exception ``wrapped`` around the root cause, name the
    root cause too (a dynamo conversion error names the node, its cause says what about it failed)."""
    detail = _BOILERPLATE.sub("", _CLASS_PREFIX.sub("", line)).strip().lstrip("- ").strip()
    if wrapped:
        root = _root_line(texts)
        if root and root.split(": ", 1)[-1] not in detail:
            detail = f"{detail} (caused by {root})"
    return detail if len(detail) <= DETAIL_CHARS else detail[: DETAIL_CHARS - 3] + "..."


def _locate(texts: list[str], output: str, operator: str | None) -> tuple[str | None, str | None]:
    """(module, 'file:line') of the failure in the user's code, from whatever the messages reveal."""
    module = location = None
    if operator:  # a TorchScript graph dump names the failing node's scope and source line
        node_call = re.compile(rf"(?<![\w:.])\^?{re.escape(operator)}[(\[]")  # aten::op( or ^PythonOp[
        for source in [*texts, output]:
            for line in source.splitlines():
                if "scope: " in line and node_call.search(line):
                    module = _module_from_scope(line)
                    node_source = _TS_NODE_SOURCE.search(line)
                    if node_source and not _LIBRARY_PATH.search(node_source["file"]):
                        location = f"{node_source['file']}:{node_source['line']}"
                    break
            if module:
                break
    if location is None:
        location = next(filter(None, (_user_frame(text) for text in texts)), None)
    return module, location


def _module_from_scope(line: str) -> str | None:
    """'scope: __main__.Net::/torch...Sequential::blocks/__main__.Block::blocks.0/__main__.Head::head'
    -> 'blocks.0.head (Head)'; the root scope '__main__.Net::' -> 'Net'."""
    scope = _TS_SCOPE.search(line)
    if not scope:
        return None
    path = ""
    class_name = ""
    for segment in scope["scope"].split("/"):
        qualified_class, _, name = segment.partition("::")
        class_name = qualified_class.rsplit(".", 1)[-1]
        if name:  # names are relative to the parent, except where the tracer already qualified them
            path = name if not path or name.startswith(f"{path}.") else f"{path}.{name}"
    return f"{path} ({class_name})" if path else class_name or None


def _user_frame(text: str) -> str | None:
    """The innermost frame of user code in one message, as 'file:line'."""
    python_frames = [m for m in _PY_FRAME.finditer(text) if _is_user_frame(m)]
    if python_frames:  # tracebacks list the innermost frame last
        return f"{python_frames[-1]['file']}:{python_frames[-1]['line']}"
    for frame in _TS_FRAME.finditer(text):  # "Defined at:" lists it first
        if _is_user_frame(frame):
            return f"{frame['file']}:{frame['line']}"
    return None


def _is_user_frame(frame: re.Match[str]) -> bool:
    return frame["func"] != "<module>" and not _LIBRARY_PATH.search(frame["file"])


__all__ = ["Diagnosis", "catalogue", "diagnose", "format_message", "summarize"]
