"""Models over 2 GB: transforms that never hold the model as one protobuf, and memory that fits the machine.

A protobuf message cannot exceed 2 GiB, so a model whose weights are larger lives on disk as a small ``.onnx`` file
plus an external data file (``serde.save``). The in-memory passes of ``transform.optimize`` (onnxscript's folding,
onnxslim, the transformer fusions, FP16) all take and return one ``onnx.ModelProto``; for such a model they cannot
run, and are recorded as **skipped** with that reason — never as applied. What does run is onnxruntime's offline
optimization *by path*: onnxruntime reads the weights from the data file and writes the optimized graph with its
initializers in a new data file (``runtimes.ort.optimize_offline(..., external_data=...)``). The result is verified
by path against the original file through the same ``Verifier`` as every other transform (onnxruntime, graph
optimizations off, the same feeds), kept only if it computes what the original computes, and reported in the same
``TransformReport``. The optimized weights' data file is moved beside the output, never read into memory.

INT8 of a large model (``transform.quantize``) runs onnxruntime's quantizer with ``use_external_data_format`` on a
scratch copy of the graph beside the float model's data file, and measures the budget by path (see that module).

Memory: ``check_memory`` estimates a stage's peak from the weights' bytes (``PEAK_FACTORS``, measured, see
``benchmarks/RESULTS.md``) and refuses to start a stage that would not fit in ``MemAvailable`` (``/proc/meminfo``)
with an error naming both figures, instead of being killed by the kernel half-way. ``stage_peak`` measures each
pipeline stage's peak resident memory (the kernel's high-water mark, reset per stage) for the run report.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx

from .. import serde
from ..errors import BadInputError, first_line
from ..fsutil import check_target, staging_dir
from .passes import (APPLIED, FAILED, ROLLED_BACK, SKIPPED, UNCHANGED, TransformRecord, TransformReport,
                     _with_claim_of, output_scales, pass_name)
from .verifier import Verifier, baseline, claim_probes

GB = 1e9

# Why each in-memory pass cannot run on a model over 2 GB (by the prefix of its name).
SKIP_REASONS = {
    "fold-constants": "onnxscript's optimizer holds the model in memory as one protobuf, which cannot exceed 2 GB "
                      "(onnxruntime's offline optimization, which runs by path, folds constants too)",
    "simplify": "the simplifier loads the whole model into memory as one protobuf, which cannot exceed 2 GB",
    "fuse-transformer": "the transformer fusions rewrite the model in memory as one protobuf, which cannot exceed "
                        "2 GB",
}
FP16_REASON = ("not run: FP16 conversion rewrites the model in memory as one protobuf, which cannot exceed 2 GB, so "
               "the float16 model asked for cannot be written")


# ------------------------------------------------------------------------------------------------ sizes


def data_files(path: str | Path, model: onnx.ModelProto | None = None) -> list[Path]:
    """The external data files the ONNX file at ``path`` names (checked to stay in its folder by ``serde``)."""
    model = model if model is not None else serde.load(path, load_external_data=False)
    return [Path(path).parent / location for location in serde.external_data_locations(model)]


def file_bytes(path: str | Path, model: onnx.ModelProto | None = None) -> int:
    """Bytes on disk of the ONNX file at ``path`` and its external data files."""
    return Path(path).stat().st_size + sum(f.stat().st_size for f in data_files(path, model) if f.is_file())


def weight_bytes(path: str | Path, model: onnx.ModelProto | None = None) -> int:
    """Bytes of the weights of the ONNX file at ``path``: those in the protobuf and those in its data files,
    counted without loading any of them."""
    model = model if model is not None else serde.load(path, load_external_data=False)
    return serde.tensor_bytes(model) + sum(f.stat().st_size for f in data_files(path, model) if f.is_file())


def is_large(path: str | Path) -> bool:
    """Whether the model at ``path`` is too big to be held as one protobuf (``serde.EXTERNAL_DATA_THRESHOLD``,
    read at call time): the transforms then take it by path."""
    return weight_bytes(path) > serde.EXTERNAL_DATA_THRESHOLD


# ------------------------------------------------------------------------------------------------ optimize


def optimize_large(model_path: str | Path, out: str | Path, passes: list, *, feeds=None, preprocess: str | None = None,
                   force: bool = False, progress: Callable[[str], None] | None = None) -> TransformReport:
    """``optimize`` for a model over 2 GB (see the module docstring): onnxruntime's offline optimization by path,
    verified by path and rolled back if it breaks parity; the other ``passes`` recorded as skipped. FP16 among
    ``passes`` cannot run, so the report fails and nothing runs or is written. The output gets its own
    ``<name>.data``."""
    from .ort_optimize import OrtOptimize

    note = progress or (lambda _m: None)
    model_path, out = Path(model_path), Path(out)
    check_target(out, force=force, kind="model file")
    check_target(out.with_name(out.name + ".data"), force=force, kind="external data file")
    original = serde.load(model_path, load_external_data=False)
    check_memory("optimize", weight_bytes(model_path, original), what=f"Optimizing '{model_path}'")
    size = file_bytes(model_path, original)
    report = TransformReport([], original, len(original.graph.node), size, source=str(model_path),
                             external_bytes=size - model_path.stat().st_size)
    if any(pass_name(p) == "fp16" for p in passes):  # the float16 model asked for cannot be made: run nothing
        report.records = [_skipped(pass_name(p), original, size, fp16=True) for p in passes]
        report.passed = False
        return report
    verifier, report.claim = claim_probes(original, _verifier(model_path, original, feeds, preprocess))
    note("running the input model (by path, its weights read from its data file)")
    float_outputs, verifier = baseline(model_path, verifier, report.claim)
    report.feeds, report.output_scales = verifier.source, output_scales(float_outputs)
    with staging_dir("ortopt", parent=out.parent) as tmp:  # beside the output: its data file is moved, not copied
        chosen = None
        for p in passes:
            if isinstance(p, OrtOptimize):
                record, candidate = _ort_pass(p, model_path, original, tmp, verifier, float_outputs, note)
                chosen = candidate if record.status in (APPLIED, UNCHANGED) else chosen
            else:
                record = _skipped(pass_name(p), original, size, fp16=False)
            report.records.append(record)
        _write_large(report, original, chosen, model_path, tmp, out, force)
    return report


def _verifier(model_path: Path, model: onnx.ModelProto, feeds, preprocess: str | None) -> Verifier:
    from .data import load_data, model_specs

    specs, dims = model_specs(model_path)
    if feeds is None:
        return Verifier.random(specs, dims)
    data = load_data(feeds, specs, model=model, preprocess=preprocess, what="verification data", labelled=False)
    return Verifier(data.feeds, source=data.source)


def _skipped(name: str, model: onnx.ModelProto, size: int, fp16: bool) -> TransformRecord:
    nodes = len(model.graph.node)
    if name == "fp16":
        return TransformRecord(name, FAILED, nodes, nodes, size, size, message=FP16_REASON)
    reason = next((why for prefix, why in SKIP_REASONS.items() if name.startswith(prefix)),
                  "this pass works on the model in memory as one protobuf, which cannot exceed 2 GB")
    if fp16 and name.startswith("ort-optimize"):
        reason = "not run: the FP16 conversion asked for cannot run on a model over 2 GB, so nothing is written"
    return TransformRecord(name, SKIPPED, nodes, nodes, size, size, message=f"skipped: {reason}",
                           details={"skipped": reason})


def _ort_pass(p, model_path: Path, original: onnx.ModelProto, tmp: Path, verifier: Verifier, float_outputs,
              note: Callable[[str], None]) -> tuple[TransformRecord, Path | None]:
    """onnxruntime's offline optimization of the file at ``model_path`` into ``tmp`` (weights in an external data
    file), then verified by path. Returns the record and the written file (None when it failed)."""
    import onnxruntime as ort

    from ..runtimes.ort import optimize_offline

    name, size, nodes = p.name, file_bytes(model_path, original), len(original.graph.node)
    record = TransformRecord(name, UNCHANGED, nodes, nodes, size, size)
    note(f"{name}: transforming (by path, weights in an external data file)")
    start = time.perf_counter()
    candidate = tmp / "optimized.onnx"
    try:
        optimize_offline(model_path, p.level, candidate, external_data=candidate.name + ".data")
        optimized = serde.load(candidate, load_external_data=False)
    except Exception as exc:  # onnxruntime refused the graph: keep the model we had
        record.status, record.message = FAILED, f"{name} raised {type(exc).__name__}: {first_line(exc, 300)}"
        record.seconds = round(time.perf_counter() - start, 3)
        return record, None
    record.seconds = round(time.perf_counter() - start, 3)
    domains = sorted({n.domain for n in optimized.graph.node if n.domain not in ("", "ai.onnx")})
    record.details = {"level": p.level, "onnxruntime": ort.__version__, "custom_domains": domains,
                      "ort_only": bool(domains), "hardware_specific": "com.microsoft.nchwc" in domains,
                      "by_path": True, "external_data": candidate.name + ".data"}
    record.nodes_after, record.size_after = len(optimized.graph.node), file_bytes(candidate, optimized)
    note(f"{name}: verifying (by path)")  # always: this file, not the original, is what gets written
    start = time.perf_counter()
    verdict = verifier.judge(candidate, float_outputs)
    record.verify_seconds = round(time.perf_counter() - start, 3)
    record.error_vs_previous = record.error_vs_float = verdict.max_abs_err
    if not verdict.passed:
        record.status = ROLLED_BACK
        record.message = f"{name} broke parity, so it was rolled back: {verdict.reason}"
        return record, None
    record.status = APPLIED if _changed(original, optimized) else UNCHANGED
    return record, candidate


def _changed(before: onnx.ModelProto, after: onnx.ModelProto) -> bool:
    """Did the computation change? Compared by nodes (operator, wiring, attributes in any order), initializer names,
    shapes and types, and the opsets the nodes use: onnxruntime's rewrite of an unchanged graph drops node metadata,
    reorders attributes, declares every domain it knows and stores the weights at other offsets."""
    def key(model: onnx.ModelProto):
        nodes = [(n.op_type, n.domain, tuple(n.input), tuple(n.output),
                  tuple(sorted(a.SerializeToString(deterministic=True) for a in n.attribute))) for n in model.graph.node]
        used = {n.domain for n in model.graph.node} | {"", "ai.onnx"}
        return (nodes, sorted((t.name, tuple(t.dims), t.data_type) for t in model.graph.initializer),
                sorted((o.domain, o.version) for o in model.opset_import if o.domain in used))
    return key(before) != key(after)


def _write_large(report: TransformReport, original: onnx.ModelProto, chosen: Path | None, model_path: Path,
                 tmp: Path, out: Path, force: bool) -> None:
    """Write the verified result to ``out`` with its data file moved beside it as ``<out>.data``; when nothing was
    kept, a copy of the original (its data file copied on disk, never through memory)."""
    applied = [r.name for r in report.records if r.status == APPLIED]
    if chosen is not None:
        model = serde.load(chosen, load_external_data=False)
        source_dir = chosen.parent
    else:
        model = serde.load(model_path, load_external_data=False)
        source_dir = tmp / "original"
        source_dir.mkdir()
        for data in data_files(model_path, model):
            copy = source_dir / data.relative_to(model_path.parent)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data, copy)
    model = _with_claim_of(model, original, applied=applied, claim=report.claim)  # re-verified at its probes
    report.output = str(serde.save_moving_external_data(model, source_dir, out, force=force))
    report.model = model
    report.external_bytes = sum(f.stat().st_size for f in data_files(out, model) if f.is_file())
    report.error_vs_float = max((r.error_vs_float or 0.0 for r in report.records if r.status == APPLIED),
                                default=0.0)


# ------------------------------------------------------------------------------------------------ memory

# Peak memory of a stage as a multiple of the model's weight bytes, from measurements (benchmarks/RESULTS.md, "Models
# over 2 GB"), with a margin: export — ViT-H (2.53 GB) peaked at 5.5 GB over the process tree (2.2x: PyTorch's
# weights, the forked exporter's, an onnxruntime session for the checks), the 2.4 GB synthetic model at 5.8 GB in
# the pipeline's process plus its forked worker; optimize — one onnxruntime session at a time, 3.1 GB for 2.4 GB
# (1.3x); INT8 — onnxruntime's quantizer copies the float model (deepcopy + reload for Gemm weights), 14.8 GB for
# 2.4 GB (6.1x).
PEAK_FACTORS = {"export": 3.0, "optimize": 1.5, "quantize": 6.5}
SKIP_ENV = "ONNXGATE_NO_MEMORY_CHECK"


def mem_available() -> tuple[int, int] | None:
    """(MemAvailable, MemTotal) in bytes from /proc/meminfo; None where there is none (not Linux)."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    found = {k: int(v) * 1024 for k, v in re.findall(r"^(MemAvailable|MemTotal):\s+(\d+) kB", text, re.M)}
    if "MemAvailable" not in found or "MemTotal" not in found:
        return None
    return found["MemAvailable"], found["MemTotal"]


def check_memory(stage: str, weights: int, *, resident: int = 0, what: str) -> dict[str, Any]:
    """Refuse to start ``stage`` when its estimated peak (``PEAK_FACTORS[stage]`` x ``weights`` bytes, less the
    ``resident`` bytes already in this process's memory) exceeds the memory available now: a one-paragraph
    BadInputError naming the estimate and the machine's memory, instead of an out-of-memory kill half-way.
    ``what`` names the work ("Exporting 'torchvision:vit_h_14'"). Returns the figures (MB) for the report.
    ``ONNXGATE_NO_MEMORY_CHECK=1`` skips the refusal (the estimate may be pessimistic for a model)."""
    factor = PEAK_FACTORS[stage]
    peak = int(factor * weights)
    needed = max(peak - resident, 0)
    figures = {"stage": stage, "weights_mb": round(weights / 1e6, 1), "estimated_peak_mb": round(peak / 1e6, 1),
               "needed_mb": round(needed / 1e6, 1)}
    memory = mem_available()
    if memory is None:
        return figures
    available, total = memory
    figures["available_mb"] = round(available / 1e6, 1)
    if needed > available and os.environ.get(SKIP_ENV, "") in ("", "0"):
        raise BadInputError(
            f"{what} would need about {needed / GB:.1f} GB more memory at its peak (about {factor:g}x the model's "
            f"{weights / GB:.2f} GB of weights{', less what is already loaded' if resident else ''}), and this "
            f"machine has {available / GB:.1f} GB available (MemAvailable) of {total / GB:.1f} GB: it would be "
            "killed for running out of memory, so it was not started.",
            hint=f"Free memory (stop other jobs) or run on a machine with more; set {SKIP_ENV}=1 to try anyway.")
    return figures


def module_bytes(module: Any) -> int:
    """Bytes of a PyTorch module's parameters and buffers (each storage counted once; no torch import here)."""
    seen, total = set(), 0
    if not (hasattr(module, "parameters") and hasattr(module, "buffers")):
        return 0
    tensors = list(module.parameters()) + list(module.buffers())
    for tensor in tensors:
        key = (tensor.data_ptr(), tensor.numel())
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


def _status_kb(field: str) -> int | None:
    """A memory figure of this process from /proc/self/status (VmHWM: peak resident, VmRSS: resident now)."""
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_hwm() -> bool:
    """Reset this process's peak-RSS mark (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@contextmanager
def stage_peak() -> Iterator[dict[str, Any]]:
    """Measure the body's peak memory: ``peak_rss_mb``, this process's resident high-water mark during the body
    (reset at its start; the process's lifetime peak where the reset is not allowed, said by ``since_start``);
    ``start_rss_mb``, what was resident when it began (what earlier stages left, e.g. the PyTorch model), so the
    difference is the stage's own; and ``children_peak_mb``, the peak resident memory of the largest child process
    that ended during the body (the export's forked attempt workers: copy-on-write pages shared with this process
    included), when one set a new peak; and the body's wall ``seconds``. Costs a few /proc reads."""
    start, began = _status_kb("VmRSS"), time.perf_counter()
    reset = _reset_hwm()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    figures: dict[str, Any] = {}
    try:
        yield figures
    finally:
        figures["seconds"] = round(time.perf_counter() - began, 2)
        hwm = _status_kb("VmHWM")
        if start is not None:
            figures["start_rss_mb"] = round(start / 1024, 1)
        peak_kb = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        figures["peak_rss_mb"] = round(peak_kb / 1024, 1)
        if not reset:
            figures["since_start"] = True
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if after > children:
            figures["children_peak_mb"] = round(after / 1024, 1)
