"""onnxgate in your own test suite.

    from onnxgate.testing import assert_exports

    def test_my_model_exports(tmp_path):
        assert_exports(MyModel().eval(), {"x": torch.randn(2, 3, 64, 64)}, dims={"x": {0: "B"}}, tmp_path=tmp_path)

``assert_exports`` runs the whole ladder and full parity verification (every declared-dynamic dim at its min, max
and off-trace sizes) and fails the test with onnxgate's one-paragraph diagnosis — the failing operator or module,
the frozen dim, the first diverging layer — instead of a stack trace from deep inside torch.onnx.

As a pytest plugin (``-p onnxgate.testing``, or ``pytest_plugins = ["onnxgate.testing"]`` in a conftest.py), it
also provides the fixture ``onnx_export``: the same check, with the temporary folder filled in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .errors import OnnxgateError
from .spec import Dim, ExportConfig, InputSpec


def _config(example_inputs: dict[str, Any], dims: dict[str, dict[int, str]] | None,
            ranges: dict[str, tuple[int, int]] | None, allow_static: tuple[str, ...]) -> ExportConfig:
    dims = dims or {}
    specs = []
    for name, tensor in example_inputs.items():
        shape = [dims.get(name, {}).get(axis, size) for axis, size in enumerate(tensor.shape)]
        specs.append(InputSpec(name, tuple(int(d) if not isinstance(d, str) else d for d in shape),
                               str(tensor.dtype).removeprefix("torch.")))
    dim_specs = tuple(Dim(name, lo, hi) for name, (lo, hi) in (ranges or {}).items())
    return ExportConfig(inputs=tuple(specs), dims=dim_specs, allow_static=tuple(allow_static))


def assert_exports(model, example_inputs: dict[str, Any], *, dims: dict[str, dict[int, str]] | None = None,
                   ranges: dict[str, tuple[int, int]] | None = None, tmp_path: str | Path, runtimes=("onnxruntime",),
                   allow_static: tuple[str, ...] = (), repair: bool = True) -> Path:
    """Export ``model`` with ``example_inputs`` (name → tensor), declaring ``dims`` dynamic (input name → {axis:
    dim name}, with optional ``ranges`` dim name → (min, max)), verify it at every claimed shape, and return the
    ONNX path. Fails the test with onnxgate's diagnosis when anything does not hold. ``repair=False``: the plain
    export rungs only (no repair rung, no extra capture variants), to test the model as the exporters take it."""
    import dataclasses

    import onnxgate

    config = dataclasses.replace(_config(example_inputs, dims, ranges, allow_static), repair=repair)
    path = Path(tmp_path) / "model.onnx"
    try:
        onnxgate.export(model, path, config=config, example_inputs=example_inputs, force=True)
        result = onnxgate.verify(path, model, config=config, runtimes=tuple(runtimes))
    except OnnxgateError as exc:
        pytest.fail(f"onnxgate: {exc}", pytrace=False)
    if not result.passed:
        failed = "; ".join(p.summary() for p in result.parities if not p.passed)
        where = f" {result.localization['summary']}." if result.localization else ""
        pytest.fail(f"onnxgate: the export does not match PyTorch: {failed}.{where}", pytrace=False)
    return path


@pytest.fixture
def onnx_export(tmp_path):
    """``onnx_export(model, example_inputs, dims=...)``: assert_exports with the test's temporary folder."""

    def check(model, example_inputs, **kwargs):
        return assert_exports(model, example_inputs, tmp_path=tmp_path, **kwargs)

    return check
