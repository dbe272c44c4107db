"""The two ways torch can export to ONNX. Each strategy writes an ONNX file and returns what it noticed.

- ``dynamo``: ``torch.onnx.export(dynamo=True)`` with ``dynamic_shapes`` (torch.export.Dim per named dim). Sound
  about control flow (it refuses data-dependent branches instead of baking one in) but may specialize a dim it
  cannot keep symbolic, with only a warning.
- ``torchscript``: ``torch.onnx.export(dynamo=False)`` with ``dynamic_axes``. Traces: works on more legacy code, but
  bakes in the branch taken and Python ints computed from shapes.
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

from ..errors import user_code
from ..spec import STRATEGIES  # noqa: F401  (re-exported: the ladder's order)
from .prepare import Prepared



@dataclass
class StrategyOutput:
    path: Path
    warnings: list[str] = field(default_factory=list)
    # file:line of each place where tracing turned a tensor into a Python bool: the branch taken there is baked
    # into the graph, whatever parity on a few random inputs happens to show.
    traced_branches: list[str] = field(default_factory=list)


def _dynamic_shapes(prepared: Prepared):
    from torch.export import Dim as TDim

    tdims = {}
    for name, d in prepared.dims.items():
        kwargs = {"min": max(d.min, 1)} if d.min else {}
        if d.max is not None:
            kwargs["max"] = d.max
        tdims[name] = TDim(name, **kwargs)
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


def export_dynamo(prepared: Prepared, opset: int, path: Path) -> StrategyOutput:
    import torch

    args, kwargs = prepared.torch_args()
    dynamic = _dynamic_shapes(prepared) if prepared.dims else None
    stdout = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(stdout):
        warnings.simplefilter("always")
        with user_code("the dynamo exporter traced it"):
            program = torch.onnx.export(
                prepared.module, args, kwargs=kwargs or None, dynamo=True, opset_version=opset,
                dynamic_shapes=dynamic, input_names=[s.name for s in prepared.specs],
                output_names=prepared.output_names, external_data=True, verbose=False,
            )
        program.save(str(path), external_data=None)
    return StrategyOutput(path, _collect(caught, "opset_version"))


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


def export_torchscript(prepared: Prepared, opset: int, path: Path) -> StrategyOutput:
    import torch

    args, kwargs = prepared.torch_args()
    dynamic_axes = {s.name: dict(s.dynamic_axes) for s in prepared.specs if s.dynamic_axes}
    dumped: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()), \
                captured_fd1() as dumped, user_code("the TorchScript exporter traced it"):
            warnings.simplefilter("always")
            torch.onnx.export(
                prepared.module, args, str(path), kwargs=kwargs or None, dynamo=False, opset_version=opset,
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
