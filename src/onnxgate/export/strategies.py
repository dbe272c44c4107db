"""The two ways torch can export to ONNX. Each strategy writes an ONNX file and returns what it noticed.

- ``dynamo``: ``torch.onnx.export(dynamo=True)`` with ``dynamic_shapes`` (torch.export.Dim per named dim). Sound
  about control flow (it refuses data-dependent branches instead of baking one in) but may specialize a dim it
  cannot keep symbolic, with only a warning.
- ``torchscript``: ``torch.onnx.export(dynamo=False)`` with ``dynamic_axes``. Traces: works on more legacy code, but
  bakes in the branch taken and Python ints computed from shapes.

The dynamo strategy captures the program itself (``torch.export``) and hands the ``ExportedProgram`` to
``torch.onnx.export``, rather than letting ``torch.onnx.export`` try its capture strategies one after another: a capture
that fails then costs its own seconds and is reported as a capture failure (``CaptureError``), which the ladder knows is
the same at every opset. Capture variants are the ladder's extra rungs (``VARIANTS``): non-strict (the default, what
torch tries first), strict (TorchDynamo bytecode capture, slower), draft export (records what it could not prove
instead of failing) and ``Dim.AUTO`` (torch infers which dims are dynamic and how they relate, instead of failing on
a named Dim it cannot keep).

The TorchScript strategy calls a model that takes its inputs by keyword through ``_positional``: positional tensors
in, the flat outputs out. Its exporter passes keyword inputs positionally, which breaks any forward() with optional
arguments before them (transformers: "got multiple values for argument 'use_cache'"), and traces dict outputs poorly
(``ModelOutput``). Other models are traced as they are, so scope names (the localizer's map) stay the module's own.
"""

from __future__ import annotations

import contextlib
import io
import linecache
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import first_line, user_code
from ..spec import STRATEGIES  # noqa: F401  (re-exported: the ladder's order)
from .guards import recording
from .prepare import Prepared



@dataclass
class StrategyOutput:
    path: Path
    warnings: list[str] = field(default_factory=list)
    # file:line of each place where tracing turned a tensor into a Python bool: the branch taken there is baked
    # into the graph, whatever parity on a few random inputs happens to show.
    traced_branches: list[str] = field(default_factory=list)
    # What the capture assumed instead of proving (``assumption`` dicts: kind, what, location, code): draft export's
    # data-dependent guards and added guards, TorchScript's tensor-to-Python conversions. The graph holds only the
    # side the example took; the ladder must see each one's other side agree with PyTorch before the rung can win.
    assumptions: list[dict] = field(default_factory=list)


def assumption(kind: str, what: str, location: str | None, code: str | None = None) -> dict:
    """One assumption a rung made: ``kind`` (data_dependent, guard_added, fake_kernel, traced_bool, traced_value),
    what was assumed, where in the model's code (file:line) and that line's source."""
    return {"kind": kind, "what": what, "location": location, "code": code}


def describe_assumption(a: dict) -> str:
    where = f" at {a['location']}" if a.get("location") else ""
    code = f" (`{a['code']}`)" if a.get("code") else ""
    return f"{a['what']}{where}{code}"


# Capture variants of the dynamo strategy: the ladder's plain rung uses the first; the others are extra rungs.
VARIANTS = ("nonstrict", "strict", "draft", "auto-dims")
VARIANT_WORDS = {"nonstrict": "non-strict capture", "strict": "strict capture (TorchDynamo)",
                 "draft": "draft export", "auto-dims": "Dim.AUTO capture"}


class CaptureError(Exception):
    """``torch.export`` could not capture the model: the same at every opset, so the ladder skips the rest."""


class SpecializedDims(CaptureError):
    """The capture pinned declared dynamic dims to the example's sizes (``export/guards.py``): the program, and every
    ONNX graph made from it, holds them static, so the rung is frozen there without converting or judging it.
    ``dims``: ``guards.Specialized`` records."""

    def __init__(self, dims: list) -> None:
        super().__init__("; ".join(d.why() for d in dims))
        self.dims = dims


def _dim_names(prepared: Prepared):
    """The dynamic dims by name, in ``dynamic_shapes``' structure: torch.onnx.export names the graph's axes from it
    when it is handed a captured program (otherwise they would read s77)."""
    per_input = [{axis: n for axis, n in s.dynamic_axes.items()} or None for s in prepared.specs]
    if prepared.call_as_kwargs:
        return {s.name: shape for s, shape in zip(prepared.specs, per_input)}
    return tuple(per_input)


def _dynamic_shapes(prepared: Prepared, auto: bool = False):
    from torch.export import Dim as TDim

    tdims = {}
    for name, d in prepared.dims.items():
        kwargs = {"min": max(d.min, 1)} if d.min else {}
        if d.max is not None:
            kwargs["max"] = d.max
        tdims[name] = TDim.AUTO if auto else TDim(name, **kwargs)
    per_input = [{axis: tdims[n] for axis, n in s.dynamic_axes.items()} or None for s in prepared.specs]
    if prepared.call_as_kwargs:
        return {s.name: shape for s, shape in zip(prepared.specs, per_input)}
    return tuple(per_input)


def _collect(caught: list[warnings.WarningMessage], noise: str) -> list[str]:
    seen, out = set(), []
    for w in caught:
        text = f"{w.category.__name__}: {str(w.message).strip().splitlines()[0][:300]}"
        if text not in seen and noise not in text:
            seen.add(text)
            out.append(text)
    return out


def draft_assumptions(report) -> list[dict]:
    """The assumptions a ``torch.export.draft_export`` report lists (``DraftExportReport.failures``): a
    data-dependent expression specialized to the example's value, a guard added on a dynamic dim, a custom op's
    missing or mismatched fake kernel. Each with the model's source line where torch recorded one."""
    out = []
    for failure in getattr(report, "failures", None) or []:
        if getattr(failure, "xfail", False):
            continue
        data = getattr(failure, "data", {}) or {}
        kind = str(getattr(failure, "failure_type", "unknown"))
        location, code = _user_frame(data.get("user_stack") or [], _filenames(report))
        if kind == "DATA_DEPENDENT_ERROR":
            out.append(assumption("data_dependent", f"the data-dependent expression {data.get('expr')} was "
                                  f"specialized to {data.get('result')}", location, code))
        elif kind == "GUARD_ADDED":
            out.append(assumption("guard_added", f"the guard {data.get('expr')} was added on a dynamic dim",
                                  location, code))
        elif kind in ("MISSING_FAKE_KERNEL", "MISMATCHED_FAKE_KERNEL"):
            out.append(assumption("fake_kernel", f"the custom op {data.get('op')} ran with a fake kernel made from "
                                  "the example's real outputs", location, code))
        else:
            out.append(assumption(kind.lower(), str(data)[:200], location, code))
    return out


def _filenames(report) -> dict:
    """Interned file number -> name. The report only has the names first interned during its own export (torch
    interns a file name once per process), so the process-wide table fills in the rest."""
    files = dict(getattr(report, "str_to_filename", None) or {})
    try:
        from torch._logging.structured import INTERN_TABLE

        files.update({number: name for name, number in INTERN_TABLE.items() if number not in files})
    except ImportError:  # private table moved: the report's own names only
        pass
    return files


def _user_frame(stack: list[dict], files: dict) -> tuple[str | None, str | None]:
    """The innermost frame of the model's own code in a draft-export user stack: (file:line, source)."""
    for frame in reversed(stack):
        filename = files.get(frame.get("filename"), frame.get("filename"))
        if isinstance(filename, str) and "/torch/" not in filename and not filename.startswith("<"):
            return f"{filename}:{frame.get('line')}", frame.get("loc")
    return None, None


def _dim_sources(prepared: Prepared) -> dict[str, list[str]]:
    """Dim -> how the capture may name its input size (the end of a source text such as ``L['x'].size()[2]``): by
    the input's name, by forward()'s parameter at its position, or by position."""
    import inspect

    try:
        params = [p.name for p in inspect.signature(prepared.module.forward).parameters.values()]
    except (TypeError, ValueError):
        params = []
    out: dict[str, list[str]] = {}
    for i, spec in enumerate(prepared.specs):
        names = [f"['{spec.name}']"] + ([f"['{params[i]}']"] if i < len(params) and not prepared.call_as_kwargs
                                         else []) + [f"[{i}]"]
        for axis, dim in spec.dynamic_axes.items():
            out.setdefault(dim, []).extend(f"{n}.size()[{axis}]" for n in names)
    return out


def _pinned_in_shapes(prepared: Prepared, shapes) -> dict[str, int]:
    """Declared dims that ``shapes`` (dynamic_shapes, as refined by torch's suggested fixes) holds as a plain int."""
    per_input = list(shapes.values()) if isinstance(shapes, dict) else list(shapes or ())
    pinned = {}
    for spec, axes in zip(prepared.specs, per_input):
        for axis, dim in spec.dynamic_axes.items():
            value = (axes or {}).get(axis) if isinstance(axes, dict) else None
            if isinstance(value, int) and not isinstance(value, bool):
                pinned.setdefault(dim, value)
    return pinned


def _pinned_in_program(prepared: Prepared, program) -> dict[str, int]:
    """Declared dims the captured program's inputs hold as a plain int (Dim.AUTO specializes without an error).
    Nothing when the user inputs cannot be matched to the specs one to one."""
    user = set(program.graph_signature.user_inputs)
    vals = [n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder" and n.name in user]
    if len(vals) != len(prepared.specs):
        return {}
    pinned = {}
    for spec, val in zip(prepared.specs, vals):
        shape = getattr(val, "shape", None)
        if shape is None or len(shape) != len(spec.shape):
            return {}
        for axis, dim in spec.dynamic_axes.items():
            if type(shape[axis]) is int:
                pinned.setdefault(dim, shape[axis])
    return pinned


def _check_pinned(prepared: Prepared, pinned: dict[str, int], recorder, allow_static: tuple[str, ...]) -> None:
    """SpecializedDims when the capture pinned a declared dim the user did not allow static."""
    pinned = {d: v for d, v in pinned.items() if d in prepared.dims and d not in allow_static}
    if pinned:
        raise SpecializedDims(recorder.specialized(pinned, _dim_sources(prepared)))


def _capture(prepared: Prepared, variant: str, dynamic, notes: list[str], assumed: list[dict] | None = None,
             allow_static: tuple[str, ...] = ()):
    """The ExportedProgram of ``prepared.module``; CaptureError when torch.export cannot capture it, its subclass
    SpecializedDims (the guards that pinned each dim, ``export/guards.py``) as soon as a declared dim not in
    ``allow_static`` is pinned to the example's size. A draft export's assumptions are appended to ``assumed``."""
    assumed = [] if assumed is None else assumed
    import torch

    args, kwargs = prepared.torch_args()
    oblivious = contextlib.nullcontext()
    with contextlib.suppress(Exception):  # what torch.onnx.export sets for 0/1-sized dynamic dims
        oblivious = torch.fx.experimental._config.patch(backed_size_oblivious=True)

    def export(shapes):
        if variant == "draft":
            program = torch.export.draft_export(prepared.module, args, kwargs=kwargs, dynamic_shapes=shapes)
            report = getattr(program, "_report", None)
            found = draft_assumptions(report)
            if found:
                assumed.extend(found)
                notes.append("draft export assumed what it could not prove: "
                             + "; ".join(describe_assumption(a) for a in found)[:600])
            return program
        # As torch.onnx.export's own capture does (its TORCH_ONNX_PREFER_DEFERRED_RUNTIME_ASSERTS_OVER_GUARDS,
        # default on): a guard on a dynamic dim becomes a runtime assert instead of a "Constraints violated" error
        # (a ViT's batch otherwise fails); the verified domain shows whether the graph holds where it claims to.
        return torch.export.export(prepared.module, args, kwargs=kwargs, dynamic_shapes=shapes,
                                   strict=variant == "strict", prefer_deferred_runtime_asserts_over_guards=True)

    try:
        with oblivious, recording() as recorder, user_code(f"torch.export captured it ({VARIANT_WORDS[variant]})"):
            try:
                program = export(dynamic)
            except torch._dynamo.exc.UserError as exc:  # torch suggests dims that hold; verification checks them
                try:
                    refined = torch.export.dynamic_shapes.refine_dynamic_shapes_from_suggested_fixes(exc.msg, dynamic)
                except Exception:
                    raise exc from None
                # A dim the fixes pin to a size is frozen whatever the rest of the export does: stop here.
                _check_pinned(prepared, _pinned_in_shapes(prepared, refined), recorder, allow_static)
                notes.append(f"torch.export refined the dynamic dims with its suggested fixes: {first_line(exc, 200)}")
                program = export(refined)
            if dynamic is not None:
                _check_pinned(prepared, _pinned_in_program(prepared, program), recorder, allow_static)
            return program
    except SpecializedDims:
        raise
    except Exception as exc:
        raise CaptureError(f"{type(exc).__name__}: {exc}") from exc


def export_dynamo(prepared: Prepared, opset: int, path: Path, variant: str = "nonstrict",
                  allow_static: tuple[str, ...] = ()) -> StrategyOutput:
    """Raises SpecializedDims when the capture pins a declared dim outside ``allow_static`` (the rung is frozen)."""
    import torch

    dynamic = _dynamic_shapes(prepared, auto=variant == "auto-dims") if prepared.dims else None
    stdout = io.StringIO()
    notes: list[str] = []
    assumed: list[dict] = []
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(stdout):
        warnings.simplefilter("always")
        program = _capture(prepared, variant, dynamic, notes, assumed, allow_static)
        with user_code("the dynamo exporter converted it"):
            onnx_program = torch.onnx.export(
                program, dynamo=True, opset_version=opset, input_names=[s.name for s in prepared.specs],
                dynamic_shapes=_dim_names(prepared) if prepared.dims else None,
                output_names=prepared.output_names, external_data=True, verbose=False,
            )
        onnx_program.save(str(path), external_data=None)
    return StrategyOutput(path, notes + _collect(caught, "opset_version"), assumptions=assumed)


@contextlib.contextmanager
def captured_fd1():
    """Capture what C++ code writes straight to file descriptor 1 (the TorchScript exporter dumps its failing
    graph there, which names the module and source line). Yields a list that receives the text on exit."""
    sys.stdout.flush()
    saved = os.dup(1)
    text: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield text
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            text.append(sink.read().decode("utf-8", "replace"))


def _positional(prepared: Prepared):
    """The model as the TorchScript exporter needs it: positional tensors in (in the inputs' order), the flat
    outputs out (``flatten_outputs``' order, which is ``prepared.output_names``)."""
    import torch

    from ..runtimes.torch_runner import flatten_outputs

    class Positional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = prepared.module

        def forward(self, *tensors):
            if prepared.call_as_kwargs:
                result = self.model(**{s.name: t for s, t in zip(prepared.specs, tensors)})
            else:
                result = self.model(*tensors)
            return tuple(t for _, t in flatten_outputs(result))

    return Positional().eval()


def export_torchscript(prepared: Prepared, opset: int, path: Path, variant: str | None = None) -> StrategyOutput:
    import torch

    args = tuple(torch.from_numpy(prepared.example[s.name].copy()) for s in prepared.specs)
    dynamic_axes = {s.name: dict(s.dynamic_axes) for s in prepared.specs if s.dynamic_axes}
    dumped: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()), \
                captured_fd1() as dumped, user_code("the TorchScript exporter traced it"):
            warnings.simplefilter("always")
            torch.onnx.export(
                _positional(prepared) if prepared.call_as_kwargs else prepared.module, args, str(path), dynamo=False,
                opset_version=opset,
                input_names=[s.name for s in prepared.specs], output_names=prepared.output_names,
                dynamic_axes=dynamic_axes or None, do_constant_folding=True,
            )
    except Exception as exc:
        exc.exporter_output = "".join(dumped)  # read by the ladder's diagnosis
        raise
    branches = [f"{w.filename}:{w.lineno}" for w in caught
                if w.category.__name__ == "TracerWarning" and "to a Python boolean" in str(w.message)]
    return StrategyOutput(path, _collect(caught, "legacy TorchScript-based ONNX export"), sorted(set(branches)),
                          traced_assumptions(caught))


_CONVERTED = re.compile(r"Converting a tensor to a Python (boolean|integer|float|index|number)")


def traced_assumptions(caught) -> list[dict]:
    """TorchScript's TracerWarnings about a tensor turned into a Python bool, int, float or index: the value the
    example gave is a constant in the trace (a branch taken, a size, a loop bound, a scale)."""
    out, seen = [], set()
    for w in caught:
        match = _CONVERTED.search(str(w.message)) if w.category.__name__ == "TracerWarning" else None
        where = f"{w.filename}:{w.lineno}"
        if match and (where, match[1]) not in seen:
            seen.add((where, match[1]))
            kind = "traced_bool" if match[1] == "boolean" else "traced_value"
            code = linecache.getline(w.filename, w.lineno).strip() or None
            out.append(assumption(kind, f"tracing turned a tensor into a Python {match[1]} (the example's value is "
                                  "a constant in the graph)", where, code))
    return out


EXPORTERS = {"dynamo": export_dynamo, "torchscript": export_torchscript}
