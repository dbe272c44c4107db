"""ONNX Runtime Mobile target: ``model.ort`` (the ORT format, optimized at level "all" for ARM: the "Fixed" style
of onnxruntime's own ``convert_onnx_models_to_ort``) and ``model.required_operators_and_types.config``, the
operator/type list a reduced onnxruntime build (``build.sh --include_ops_by_config``) needs. Verified by running the
``.ort`` file in onnxruntime over the claimed shape domain (the format keeps dynamic dims).
"""

from __future__ import annotations

import contextlib
import logging

from .check import Built, Context
from .model import DEFAULTS


def convert(ctx: Context) -> list[Built]:
    import onnxruntime as ort

    from ..runtimes.ort import OrtRunner, convert_to_ort_format

    ctx.note("ort-mobile: converting to the ORT format")
    with quiet_onnxruntime():
        ort_file, config = convert_to_ort_format(ctx.onnx_path, ctx.out_dir / "ort-mobile")
    return [Built("fp32", [ort_file, config], "fp32", "fp32", runtime_text(ort.__version__),
                  lambda: OrtRunner(ort_file, what=f"'{ort_file}'"))]


@contextlib.contextmanager
def quiet_onnxruntime():
    """onnxruntime's own lines stay out of onnxgate's output while the converter runs (issue 27 item 7): its C++
    default logger at ERROR (the converter builds sessions of its own; left there, the level onnxgate's own
    sessions log at: onnxruntime has no getter to restore from), and its Python tool's logger, which says "Created
    config in <the staging folder>" at INFO through a root handler that ``logging.basicConfig`` installed."""
    import onnxruntime as ort
    from onnxruntime.tools.ort_format_model import utils  # noqa: F401  its import creates the logger below

    tool = logging.getLogger("ort_format_model.utils")
    level = tool.level
    ort.set_default_logger_severity(3)
    tool.setLevel(logging.WARNING)
    try:
        yield
    finally:
        tool.setLevel(level)


def runtime_text(version: str) -> str:
    """The row's runtime, with why its latency may trail model.onnx's on this machine (issue 27 item 7: the .ort
    ran 2.3-2.7x slower than model.onnx in the same onnxruntime, with no note)."""
    return (f"onnxruntime {version} CPU {DEFAULTS} (CPUExecutionProvider, default threads, no session option: "
            "the .ort file carries its optimizations, fixed at conversion: level \"all\" for ARM, so without the x86 "
            "NCHWc layout transform; the format is for size and start-up on mobile/reduced builds, and on a desktop "
            "CPU it can run slower than model.onnx, which onnxruntime optimizes for the machine it loads on)")
