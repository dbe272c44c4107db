"""``optimize`` and ``to_fp16``: an ONNX file through verified passes into a new ONNX file."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .. import serde
from ..errors import BadInputError
from ..fsutil import check_target
from .data import DataArg, load_data, model_specs
from .fp16 import ToFp16, record_contract
from .fusion import fusion_passes
from .large import is_large, optimize_large
from .ort_optimize import DEFAULT_LEVEL, OrtOptimize
from .passes import APPLIED, Pass, TransformReport, run_passes
from .simplify import DEFAULT_SIMPLIFIER, FoldConstants, Simplify
from .verifier import Verifier


def optimize(model_path: str | Path, out: str | Path, *, level: str | None = DEFAULT_LEVEL,
             simplifier: str | None = DEFAULT_SIMPLIFIER, fold: bool = True, fuse: bool = True, fp16: bool = False,
             keep_io_types: bool = True, fp16_keep_ops: tuple[str, ...] = (), feeds: DataArg = None,
             preprocess: str | None = None, force: bool = False,
             progress: Callable[[str], None] | None = None) -> TransformReport:
    """Constant folding, simplification (``simplifier``: onnxslim, onnxsim or None), transformer fusions when the
    graph is a transformer (``fuse``; see ``transform.fusion``: onnxruntime's transformer optimizer, then
    onnxscript's fusions), onnxruntime's offline optimization at ``level`` (basic, extended, layout or None) and,
    with ``fp16``, float16 conversion — each verified against the model before it on ``feeds`` (default: seeded
    random inputs, at the traced size and another size of every dynamic dim; or DATA as ``quantize`` reads it, with
    ``preprocess`` for image folders) and rolled back if it breaks parity.

    The model is written to ``out`` only when ``report.passed``: that is False when FP16 was asked for and had to be
    rolled back (the caller asked for a float16 model and would silently get a float32 one).
    """
    passes: list[Pass] = []
    if fold:
        passes.append(FoldConstants())
    if fuse:  # before the simplifier, which rewrites MatMul + Add into Reshape + Gemm, hiding the bias fusions
        passes += fusion_passes(model_path)
    if simplifier and simplifier != "none":
        passes.append(Simplify(simplifier))
    if level and level != "none":
        passes.append(OrtOptimize(level))
    if fp16:
        passes.append(ToFp16(keep_io_types=keep_io_types, keep_ops=tuple(fp16_keep_ops)))
    if is_large(model_path):  # over 2 GB: onnxruntime by path; the in-memory passes are recorded as skipped
        return optimize_large(model_path, out, passes, feeds=feeds, preprocess=preprocess, force=force,
                              progress=progress)
    report = transform(model_path, out, passes, feeds=feeds, preprocess=preprocess, force=force, progress=progress)
    if fp16:
        report.passed = report.records[-1].status == APPLIED
        record_contract(report)
    return _write(report, out, force)


def to_fp16(model_path: str | Path, out: str | Path, *, keep_io_types: bool = True, keep_ops: tuple[str, ...] = (),
            feeds: DataArg = None, preprocess: str | None = None, force: bool = False) -> TransformReport:
    """Convert to float16 (see ``transform.fp16``), verified with float16 tolerances; written only if it passes."""
    report = transform(model_path, out, [ToFp16(keep_io_types=keep_io_types, keep_ops=tuple(keep_ops))],
                       feeds=feeds, preprocess=preprocess, force=force)
    report.passed = report.records[-1].status == APPLIED
    record_contract(report)
    return _write(report, out, force)


def transform(model_path: str | Path, out: str | Path, passes: list[Pass], *, feeds: DataArg = None,
              preprocess: str | None = None, force: bool = False,
              progress: Callable[[str], None] | None = None) -> TransformReport:
    """Run ``passes`` on the model at ``model_path`` with verification (see ``run_passes``); nothing is written."""
    check_target(Path(out), force=force, kind="model file")  # fail before the work, not after
    if is_large(model_path):  # decided from the tensors' sizes, before gigabytes are read into memory
        raise BadInputError(f"'{model_path}' is over {serde.EXTERNAL_DATA_THRESHOLD / 1e9:.1f} GB; these "
                            "transforms keep the model in memory as one protobuf, which cannot exceed 2 GB.",
                            hint="`onnxgate optimize` takes such a model through onnxruntime by path (without "
                                 "--fp16); FP16 needs a model under 2 GB.")
    model = serde.load(model_path)
    specs, dims = model_specs(model_path)
    if feeds is None:
        verifier = Verifier.random(specs, dims)
    else:
        data = load_data(feeds, specs, model=model, preprocess=preprocess, what="verification data", labelled=False)
        verifier = Verifier(data.feeds, source=data.source)
    report = run_passes(model, passes, verifier=verifier, progress=progress)
    report.source, report.feeds = str(model_path), verifier.source
    return report


def _write(report: TransformReport, out: str | Path, force: bool) -> TransformReport:
    if report.passed:
        report.output = str(serde.save(report.model, out, force=force))
    return report
