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
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import first_line, user_code
from ..spec import STRATEGIES  # noqa: F401  (re-exported: the ladder's order)
from .prepare import Prepared



@dataclass
class StrategyOutput:
    path: Path
    warnings: list[str] = field(default_factory=list)
    # file:line of each place where tracing turned a tensor into a Python bool: the branch taken there is baked
    # into the graph, whatever parity on a few random inputs happens to show.
    traced_branches: list[str] = field(default_factory=list)


# Capture variants of the dynamo strategy: the ladder's plain rung uses the first; the others are extra rungs.
VARIANTS = ("nonstrict", "strict", "draft", "auto-dims")
VARIANT_WORDS = {"nonstrict": "non-strict capture", "strict": "strict capture (TorchDynamo)",
                 "draft": "draft export", "auto-dims": "Dim.AUTO capture"}


class CaptureError(Exception):
    """``torch.export`` could not capture the model: the same at every opset, so the ladder skips the rest."""


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


def _capture(prepared: Prepared, variant: str, dynamic, notes: list[str]):
    """The ExportedProgram of ``prepared.module``; CaptureError when torch.export cannot capture it."""
    import torch

    args, kwargs = prepared.torch_args()
    oblivious = contextlib.nullcontext()
    with contextlib.suppress(Exception):  # what torch.onnx.export sets for 0/1-sized dynamic dims
        oblivious = torch.fx.experimental._config.patch(backed_size_oblivious=True)

    def export(shapes):
        if variant == "draft":
            program = torch.export.draft_export(prepared.module, args, kwargs=kwargs, dynamic_shapes=shapes)
            report = getattr(program, "_report", None)
            if report is not None and not report.successful():
                notes.append(f"draft export recorded problems it could not prove away: {str(report).strip()[:300]}")
            return program
        # As torch.onnx.export's own capture does (its TORCH_ONNX_PREFER_DEFERRED_RUNTIME_ASSERTS_OVER_GUARDS,
        # default on): a guard on a dynamic dim becomes a runtime assert instead of a "Constraints violated" error
        # (a ViT's batch otherwise fails); the verified domain shows whether the graph holds where it claims to.
        return torch.export.export(prepared.module, args, kwargs=kwargs, dynamic_shapes=shapes,
                                   strict=variant == "strict", prefer_deferred_runtime_asserts_over_guards=True)

    try:
        with oblivious, user_code(f"torch.export captured it ({VARIANT_WORDS[variant]})"):
            try:
                return export(dynamic)
            except torch._dynamo.exc.UserError as exc:  # torch suggests dims that hold; verification checks them
                try:
                    refined = torch.export.dynamic_shapes.refine_dynamic_shapes_from_suggested_fixes(exc.msg, dynamic)
                except Exception:
                    raise exc from None
                notes.append(f"torch.export refined the dynamic dims with its suggested fixes: {first_line(exc, 200)}")
                return export(refined)
    except Exception as exc:
        raise CaptureError(f"{type(exc).__name__}: {exc}") from exc


def export_dynamo(prepared: Prepared, opset: int, path: Path, variant: str = "nonstrict") -> StrategyOutput:
    import torch

    dynamic = _dynamic_shapes(prepared, auto=variant == "auto-dims") if prepared.dims else None
    stdout = io.StringIO()
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(stdout):
        warnings.simplefilter("always")
        program = _capture(prepared, variant, dynamic, notes)
        with user_code("the dynamo exporter converted it"):
            onnx_program = torch.onnx.export(
                program, dynamo=True, opset_version=opset, input_names=[s.name for s in prepared.specs],
                dynamic_shapes=_dim_names(prepared) if prepared.dims else None,
                output_names=prepared.output_names, external_data=True, verbose=False,
            )
        onnx_program.save(str(path), external_data=None)
    return StrategyOutput(path, notes + _collect(caught, "opset_version"))


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
    return StrategyOutput(path, _collect(caught, "legacy TorchScript-based ONNX export"), sorted(set(branches)))


EXPORTERS = {"dynamo": export_dynamo, "torchscript": export_torchscript}
