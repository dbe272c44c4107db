"""INT8 quantization within an accuracy budget.

``static``: QDQ format (QuantizeLinear/DequantizeLinear around each quantized operator, the format every runtime
reads), activation ranges calibrated on real data (MinMax, Entropy or Percentile), per-channel weights.
``dynamic``: int8 weights, activation ranges computed at run time; for Linear/MatMul-heavy models (transformers,
LSTMs), no calibration data needed.

Both start from onnxruntime's ``quant_pre_process`` (symbolic shape inference and graph cleanup), then quantize,
then measure the budget (see ``budget``; a top-1 drop comes with its 95% interval, exact binomial on the samples
the two models disagree on). The fully quantized model's per-layer error table — each layer's SQNR against FP32 on
the first ``LAYER_SAMPLES`` calibration samples, its ten worst layers — goes in the report. While the budget is
missed, the layer that adds the most quantization noise in that table (see ``sensitivity.layer_errors``) is kept
in float and the model quantized again — one node per step, at most ``max_float_nodes``
steps and never more than half the quantized nodes (a model mostly in float has lost what quantization is for).

A top-1 budget must be able to fail: evaluation data with too few samples for the budget's resolution, or an FP32
model scoring near chance on it, fail the gate with that reason (``budget.AccuracyGate``) — quantized once and
measured, never searched further, never written. Image-folder classes are matched to the model's labels by name
(``verify.inputs.match_classes``). A written file carries its verification contract (``verify/contract.py``): the
error at which its budget held, so ``verify`` and the benchmark judge it as INT8, not with FP32 tolerances.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
import warnings as warnings_module
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from .. import serde
from ..errors import BadInputError
from ..fsutil import check_target
from .budget import AccuracyGate, Budget, Evaluation, accuracy_gate, check, evaluate, output_scales, run_outputs, top1
from .data import DataArg, Dataset, load_data, model_specs, random_dataset
from .equalize import equalize as equalize_pairs
from .large import check_memory, file_bytes, is_large, weight_bytes
from .passes import APPLIED, ROLLED_BACK, TransformRecord, copy_model
from .sensitivity import QDQ_OPS, LayerError, NodeSensitivity, channel_means, layer_errors, layer_table

MODES = ("static", "dynamic")
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
DEFAULT_MAX_FLOAT_NODES = 8
DEFAULT_ACCURACY_DROP = 1.0  # points, when labels are given and no budget is
EQUALIZE_TOLERANCE = 1e-4  # equalization is exact in real arithmetic: float32 rounding only, relative to outputs
LAYER_SAMPLES = 16  # calibration samples the per-layer error table is measured on (every intermediate kept)
WORST_LAYERS = 10  # rows of the per-layer error table in the report
# Not "Attention": onnxruntime's dynamic quantizer rewrites any node of that type into its contrib QAttention,
# which breaks the standard ONNX Attention operator (opset 23) that the dynamo exporter emits.
DYNAMIC_OP_TYPES = ("MatMul", "Gather", "LSTM")
LARGE_NOTE = ("The model is over 2 GB: quantized with onnxruntime's external data format, without quant_pre_process "
              "(it holds the model as one protobuf) and without the per-node search for nodes to keep in float (it "
              "runs the float model with every intermediate exposed, in memory).")


@dataclass
class QuantizeStep:
    float_nodes: list[str]  # nodes kept in float at this step
    evaluations: list[Evaluation]
    miss: str | None  # what misses the budget; None when it holds

    def to_dict(self) -> dict[str, Any]:
        return {"float_nodes": self.float_nodes, "miss": self.miss,
                "evaluations": [e.to_dict() for e in self.evaluations]}


@dataclass
class QuantizeReport:
    source: str
    mode: str
    method: str | None
    per_channel: bool
    budget: Budget
    calibration: str | None
    evaluation: str
    fp32_accuracy: float | None = None
    steps: list[QuantizeStep] = field(default_factory=list)
    float_nodes: list[NodeSensitivity] = field(default_factory=list)  # kept in float, in order, with the reason
    record: TransformRecord | None = None
    output: str | None = None  # set once written (only when the budget holds)
    warnings: list[str] = field(default_factory=list)
    gate: AccuracyGate | None = None  # can the top-1 budget judge anything on this data?
    classes: dict[str, int] | None = None  # image folder -> label index, as matched
    layer_errors: list[LayerError] = field(default_factory=list)  # the worst layers of the fully quantized model
    equalized: TransformRecord | None = None  # cross-layer equalization, when asked for: applied or rolled back

    def layer_table(self) -> list[str]:
        """The per-layer error table (SQNR against FP32 on the calibration data), worst first, as text lines."""
        return layer_table(self.layer_errors, WORST_LAYERS) if self.layer_errors else []

    @property
    def hint(self) -> str | None:
        """The way out when the gate itself could not judge (the judge's default hint is about quantizing)."""
        if self.gate is None or self.gate.problem is None:
            return None
        return ("Evaluate on labelled data that names the model's classes (class folders named after its labels, "
                "or --labels FILE), with enough samples for the budget"
                + (f" (at least {self.gate.required_samples})" if self.gate.required_samples else "")
                + ", on a model with its trained weights; or gate on --max-error instead.")

    @property
    def passed(self) -> bool:
        return bool(self.steps) and self.steps[-1].miss is None

    @property
    def final(self) -> QuantizeStep:
        return self.steps[-1]

    def summary(self) -> str:
        what = f"{self.mode} int8" + (f" ({self.method})" if self.method else "")
        worst = max(self.final.evaluations, key=lambda e: (e.drop or 0.0, e.max_abs_err))
        measured = f"max abs err {worst.max_abs_err:.3g}"
        if worst.accuracy is not None:
            ci = (f", 95% interval {worst.drop_ci[0]:.2f} to {worst.drop_ci[1]:.2f}, exact binomial on "
                  f"{sum(worst.discordant)} discordant samples" if worst.drop_ci is not None else "")
            measured = (f"top-1 {worst.accuracy * 100:.2f}% vs {self.fp32_accuracy * 100:.2f}% FP32 "
                        f"(drop {worst.drop:.2f} points{ci}), " + measured)
        kept = ", ".join(s.node for s in self.float_nodes) or "none"
        if self.passed:
            return f"{what}: {measured}; budget {self.budget}; nodes kept in float: {kept}"
        return (f"{what} misses the budget ({self.budget}): {self.final.miss}; tried keeping in float: {kept}")

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "summary": self.summary(), "source": self.source, "output": self.output,
                "mode": self.mode, "method": self.method, "per_channel": self.per_channel,
                "budget": {"max_accuracy_drop": self.budget.max_accuracy_drop, "max_error": self.budget.max_error,
                           "min_cosine": self.budget.min_cosine},
                "calibration": self.calibration, "evaluation": self.evaluation, "fp32_accuracy": self.fp32_accuracy,
                "float_nodes": [s.to_dict() for s in self.float_nodes], "steps": [s.to_dict() for s in self.steps],
                "record": self.record.to_dict() if self.record else None, "warnings": self.warnings,
                "accuracy_gate": self.gate.to_dict() if self.gate else None, "classes": self.classes,
                "layer_errors": [r.to_dict() for r in self.layer_errors],
                "equalized": self.equalized.to_dict() if self.equalized else None}


def quantize(model_path: str | Path, out: str | Path, *, mode: str = "static", calib: DataArg = None,
             eval_data: DataArg = None, labels: Any = None, class_names: Sequence[str] | None = None,
             labels_key: str = "labels", preprocess: str | None = None,
             method: str = "minmax", per_channel: bool = True, max_accuracy_drop: float | None = None,
             max_error: float | None = None, max_float_nodes: int = DEFAULT_MAX_FLOAT_NODES, force: bool = False,
             equalize: bool = False, bias_correction: bool = False,
             progress: Callable[[str], None] | None = None) -> QuantizeReport:
    """Quantize the ONNX file at ``model_path`` to int8 and write it to ``out`` if it holds the budget.

    ``calib`` / ``eval_data``: DATA (an .npz, an image folder, ``file.py:fn``) or in-memory feeds; ``labels`` (or
    the data's ``labels_key``) make top-1 accuracy measurable. An image folder's class sub-folders are matched to
    ``class_names`` (``--labels FILE``), else to the model's ``labels`` metadata. Without a budget, labelled
    evaluation data gets
    ``max_accuracy_drop=1.0``; unlabelled data is only measured. A missed budget is a value, not an exception:
    ``report.passed`` is False, nothing is written, and ``report.float_nodes`` lists what was tried.
    ``equalize``: cross-layer equalization first (``transform.equalize``; verified, rolled back on a mismatch:
    ``report.equalized`` says which); ``bias_correction``: each quantization's convolution biases corrected for
    the mean shift their int8 weights cause (``correct_bias``) and quantized again.
    """
    note = progress or (lambda _m: None)
    if mode not in MODES:
        raise BadInputError(f"Quantization mode '{mode}' is not supported.", hint="Use static or dynamic.")
    if method not in METHODS:
        raise BadInputError(f"Calibration method '{method}' is not supported.", hint=f"Use one of: {', '.join(METHODS)}.")
    check_target(Path(out), force=force, kind="model file")
    large = is_large(model_path)  # over 2 GB: kept on disk, run and quantized by path (transform/large.py)
    model = serde.load(model_path, load_external_data=not large)
    if large:
        check_memory("quantize", weight_bytes(model_path, model), what=f"Quantizing '{model_path}'")
    specs, dims = model_specs(model_path)
    report = QuantizeReport(source=str(model_path), mode=mode, method=method if mode == "static" else None,
                            per_channel=per_channel, budget=Budget(max_accuracy_drop, max_error), calibration=None,
                            evaluation="")
    calibration = _calibration_data(calib, specs, dims, model, mode, labels_key, preprocess, report)
    evaluation = _evaluation_data(eval_data, calibration, specs, dims, model, labels, class_names, labels_key,
                                  preprocess, report)

    note("running the FP32 model on the evaluation data")
    reference = run_outputs(str(model_path) if large else model, evaluation)
    if evaluation.labels is not None:
        report.fp32_accuracy = top1(reference, evaluation.labels)
        report.gate = accuracy_gate(report.budget, evaluation.labels, report.fp32_accuracy,
                                    int(reference[0][0].shape[-1]) if reference and reference[0] else None)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="onnxgate-quant-") as tmp, _large_source(model_path, model, large) as src:
        quantizer = _Quantizer(Path(tmp), model, mode, method, per_channel, calibration, source=src,
                               equalize=equalize, bias_correction=bias_correction)
        report.warnings += quantizer.notes
        report.equalized = quantizer.equalized
        layer_data = _layer_feeds(calibration or evaluation)
        quantized = _search(quantizer, evaluation, reference, report, 0 if large else max_float_nodes, note,
                            layer_data)
    if not any(n.op_type in QDQ_OPS for n in quantized.graph.node):
        report.warnings.append(f"Nothing was quantized: the model has no operator that {mode} quantization handles"
                               + (f" ({', '.join(DYNAMIC_OP_TYPES)})." if mode == "dynamic" else "."))
    report.record = TransformRecord(
        f"quantize:{mode}", APPLIED if report.passed else ROLLED_BACK, len(model.graph.node),
        len(quantized.graph.node), file_bytes(model_path) if large else serde.byte_size(model),
        serde.byte_size(quantized),
        error_vs_float=max(e.max_abs_err for e in report.final.evaluations),
        seconds=round(time.perf_counter() - start, 3),
        message=None if report.passed else f"not written: {report.final.miss}")
    if report.passed:
        _record_in_metadata(quantized, model, report, reference, evaluation)
        report.output = str(serde.save(quantized, out, force=force))
    return report


def _layer_feeds(data: Dataset, samples: int = LAYER_SAMPLES) -> list[dict[str, np.ndarray]]:
    """The first ``samples`` samples of ``data``, in its feeds' batches: what the per-layer error table runs on."""
    feeds, taken = [], 0
    for feed in data.feeds:
        if taken >= samples:
            break
        n = len(next(iter(feed.values())))
        feeds.append({k: v[:samples - taken] for k, v in feed.items()} if n > samples - taken else feed)
        taken += min(n, samples - taken)
    return feeds


def _search(quantizer: "_Quantizer", evaluation: Dataset, reference, report: QuantizeReport, max_float_nodes: int,
            note: Callable[[str], None], layer_data: list[dict[str, np.ndarray]] | None = None) -> onnx.ModelProto:
    """Quantize, measure, and keep the most sensitive node in float until the budget holds (see the module doc).
    The first quantization's per-layer error table (``layer_data``: calibration samples) goes in the report."""
    excluded: list[str] = []
    limit = max_float_nodes
    while True:
        note(f"quantizing ({len(excluded)} nodes kept in float)")
        quantized = quantizer.quantize(excluded)
        evaluations = evaluate(quantized, evaluation, reference, report.fp32_accuracy)
        ranked = None
        if not excluded and layer_data and max_float_nodes:
            note("measuring each layer's error (SQNR) on the calibration data")
            ranked = layer_errors(quantizer.float_model, quantized, layer_data, dynamic=quantizer.dynamic)
            report.layer_errors = ranked[:WORST_LAYERS]
        miss = check(report.budget, evaluations)
        unjudgeable = report.gate.problem if report.gate else None
        if unjudgeable:  # keeping nodes in float cannot make the measurement meaningful: stop here
            miss = "the accuracy gate cannot judge this model: " + unjudgeable + (f"; {miss}" if miss else "")
        report.steps.append(QuantizeStep(list(excluded), evaluations, miss))
        if miss is None or unjudgeable or len(excluded) >= limit:
            return quantized
        if ranked is None:
            note("measuring each layer's error (SQNR)")
            ranked = layer_errors(quantizer.float_model, quantized, layer_data or evaluation.feeds[:1],
                                  dynamic=quantizer.dynamic)
        if not excluded:
            limit = min(max_float_nodes, len(ranked) // 2)
        candidates = [s for s in ranked if s.node not in excluded]
        if not candidates or len(excluded) >= limit:
            return quantized
        excluded.append(candidates[0].node)
        report.float_nodes.append(candidates[0].as_sensitivity())


class _Quantizer:
    """onnxruntime's quantizer on the pre-processed float model; calibrates once and reuses the ranges."""

    def __init__(self, tmp: Path, model: onnx.ModelProto, mode: str, method: str, per_channel: bool,
                 calibration: Dataset | None, *, source: Path | None = None, equalize: bool = False,
                 bias_correction: bool = False):
        """``source``: a model over 2 GB (``model`` then holds its graph without weights) as a file beside its
        data (``_large_source``): quantized as it is, with external data, never serialized as one protobuf.
        ``equalize``: cross-layer equalization of the pre-processed model first (``equalize``), verified against
        it on the calibration data and rolled back (``self.equalized`` None, a note) when it does not match.
        ``bias_correction``: every static quantization is followed by ``correct_bias`` and quantized again."""
        self.tmp, self.method, self.per_channel = tmp, method, per_channel
        self.dynamic = mode == "dynamic"
        self.calibration = calibration
        self.notes: list[str] = [LARGE_NOTE] if source is not None else []
        self.large = source is not None
        self.float_path = source if source is not None else self._pre_process(model)
        self.float_model = serde.load(self.float_path, load_external_data=not self.large)
        self.equalized: TransformRecord | None = None
        if equalize and not self.large:
            self._equalize()
        self.bias_correction = bias_correction and not self.large
        self.count = 0

    def _equalize(self) -> None:
        """Replace the float model by its equalized form when it verifies (``equalize_verified``)."""
        model, record = equalize_verified(self.float_model, self.calibration.feeds[:4] if self.calibration else [])
        self.equalized = record
        if model is None:
            self.notes.append(f"Cross-layer equalization {record.message}.")
            return
        path = self.tmp / "float_equalized.onnx"
        serde.save(model, path, force=True)
        self.float_path, self.float_model = path, model

    def _pre_process(self, model: onnx.ModelProto) -> Path:
        """Shape inference and graph cleanup, which the quantizer needs to place Q/DQ pairs well. onnxruntime's
        symbolic shape inference gives up on some graphs (the opset-23 Attention of dynamo exports); then ONNX's own
        shape inference is used, and a model neither can handle is quantized as it is."""
        from onnxruntime.quantization.shape_inference import quant_pre_process

        original, processed = self.tmp / "float.onnx", self.tmp / "float_pre.onnx"
        # a large model is saved with external data, which moves the tensors out of the proto saved: keep ours
        serde.save(model if serde.byte_size(model) <= serde.EXTERNAL_DATA_THRESHOLD else copy_model(model), original)
        failures = []
        for skip_symbolic in (False, True):
            try:
                with _sandbox(self.tmp):
                    quant_pre_process(str(original), str(processed), skip_symbolic_shape=skip_symbolic)
                return processed
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {str(exc).strip()[:200]}")
        self.notes.append(f"quant_pre_process failed ({'; '.join(failures)}); quantizing the model as it is.")
        return original

    def quantize(self, exclude: list[str], *, dynamic: bool | None = None, fmt: str = "qdq",
                 per_channel: bool | None = None, reduce_range: bool = False, method: str | None = None,
                 op_types: Sequence[str] | None = None, activation: str = "uint8",
                 bias_correction: bool | None = None, source: Path | None = None) -> onnx.ModelProto:
        """The quantized model keeping ``exclude`` in float. The keywords override this quantizer's settings (the
        recipe search tries several on one pre-processed model): ``fmt`` qdq or qoperator, ``op_types`` to quantize
        (None: every type the quantizer handles; dynamic: ``DYNAMIC_OP_TYPES``), ``activation`` uint8 or int8.
        Activation ranges are calibrated once per method and cached (over every op type, so a narrower recipe
        reuses them)."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

        dynamic = self.dynamic if dynamic is None else dynamic
        per_channel = self.per_channel if per_channel is None else per_channel
        method = method or self.method
        settings = dict(dynamic=dynamic, fmt=fmt, per_channel=per_channel, reduce_range=reduce_range, method=method,
                        op_types=op_types, activation=activation)
        if (self.bias_correction if bias_correction is None else bias_correction) and not dynamic and fmt == "qdq":
            first = self.quantize(exclude, **settings, bias_correction=False)
            corrected = correct_bias(self.float_model, first, _layer_feeds(self.calibration))
            if corrected is not None:
                self.count += 1
                path = self.tmp / f"float_bias_corrected_{self.count}.onnx"
                serde.save(corrected, path, force=True)
                return self.quantize(exclude, **settings, bias_correction=False, source=path)
            return first
        self.count += 1
        out = self.tmp / f"quantized_{self.count}.onnx"
        with _sandbox(self.tmp):
            if dynamic:
                quantize_dynamic(str(source or self.float_path), str(out),
                                 op_types_to_quantize=list(op_types or DYNAMIC_OP_TYPES), per_channel=per_channel,
                                 reduce_range=reduce_range, nodes_to_exclude=list(exclude),
                                 use_external_data_format=self.large)
            else:
                cache = self.tmp / f"ranges-{method}.json"
                if op_types is not None and not cache.is_file():  # calibrate every op type's tensors first
                    self.quantize([], dynamic=False, method=method)
                quantize_static(str(source or self.float_path), str(out), _FeedReader(self._calibration_feeds(method)),
                                quant_format=QuantFormat.QOperator if fmt == "qoperator" else QuantFormat.QDQ,
                                per_channel=per_channel, reduce_range=reduce_range,
                                op_types_to_quantize=list(op_types) if op_types is not None else None,
                                # U8S8 (uint8 activations, int8 weights): onnxruntime's fast path on x86 CPUs. With
                                # int8 activations (S8S8, the quantizer's default) resnet18 ran 3x slower here.
                                activation_type=QuantType.QInt8 if activation == "int8" else QuantType.QUInt8,
                                weight_type=QuantType.QInt8,
                                calibrate_method=getattr(CalibrationMethod, METHODS[method]),
                                nodes_to_exclude=list(exclude), calibration_cache_path=str(cache),
                                use_external_data_format=self.large)
        return serde.load(out)

    def _calibration_feeds(self, method: str | None = None) -> list[dict[str, np.ndarray]]:
        """The histogram calibrators (entropy, percentile) stack every batch's activations, so batches of different
        sizes fail inside onnxruntime; they get one sample at a time."""
        method = method or self.method
        feeds = self.calibration.feeds
        shapes = {tuple((k, v.shape) for k, v in f.items()) for f in feeds}
        if method == "minmax" or len(shapes) == 1:
            return feeds
        dynamic_batch = all(i.type.tensor_type.shape.dim[0].dim_param if i.type.tensor_type.shape.dim else False
                            for i in self.float_model.graph.input)
        if not dynamic_batch:
            raise BadInputError(f"The calibration data '{self.calibration.source}' has batches of different shapes, "
                                f"which {method} calibration cannot combine, and the model's batch is fixed.",
                                hint="Give batches of one shape, or use --method minmax.")
        return [{k: v[i:i + 1] for k, v in f.items()} for f in feeds for i in range(len(next(iter(f.values()))))]


def equalize_verified(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]
                      ) -> tuple[onnx.ModelProto | None, TransformRecord]:
    """Cross-layer equalization (``transform.equalize``) of ``model``, verified on ``feeds``: the equalized model
    when its outputs match ``model``'s within ``EQUALIZE_TOLERANCE`` of the largest output, else None (rolled
    back: the record says why). No pair to equalize, or no data to verify on, is a rollback too."""
    start = time.perf_counter()
    done = equalize_pairs(model)
    before = run_outputs(model, Dataset(feeds, None, "calibration")) if feeds and done.pairs else []
    after = run_outputs(done.model, Dataset(feeds, None, "calibration")) if before else []
    scale = max((float(np.abs(r).max()) for f in before for r in f if r.size), default=1.0) or 1.0
    err = max((float(np.abs(a.astype(np.float64) - b).max()) for fa, fb in zip(after, before)
               for a, b in zip(fa, fb) if a.size), default=0.0)
    record = TransformRecord("equalize", APPLIED, len(model.graph.node), len(done.model.graph.node),
                             serde.byte_size(model), serde.byte_size(done.model), error_vs_float=err,
                             seconds=round(time.perf_counter() - start, 3),
                             message=f"{len(done.pairs)} convolution pairs, {done.clips} ReLU6 caps made "
                                     f"per-channel; median weight-range spread {done.spread_before:.3g}x -> "
                                     f"{done.spread_after:.3g}x")
    problem = ("no convolution pair to equalize" if not done.pairs else
               "no calibration data to verify it on" if not feeds else
               f"max abs err {err:.3g} against the model before (tolerance {EQUALIZE_TOLERANCE:g} x {scale:.3g})"
               if err > EQUALIZE_TOLERANCE * scale else None)
    if problem:
        record.status, record.message = ROLLED_BACK, f"rolled back: {problem}"
        return None, record
    return done.model, record


def correct_bias(float_model: onnx.ModelProto, quantized: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]
                 ) -> onnx.ModelProto | None:
    """Bias correction (Nagel et al. 2019, the empirical form): int8 weights shift each convolution's output mean
    by ``(W_q - W) . E[x]``, which the next layers read as a signal. ``float_model`` with each quantized Conv's bias
    minus that shift — ``W_q`` read back from ``quantized``'s int8 weights, ``E[x]`` the per-channel mean of the
    conv's input in ``quantized`` on ``feeds`` — to be quantized again; None when no Conv could be corrected."""
    inits = {i.name: i for i in quantized.graph.initializer}
    dequant = {n.output[0]: n for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    float_inits = {i.name: i for i in float_model.graph.initializer}
    float_convs = {n.name: n for n in float_model.graph.node if n.op_type == "Conv"}
    targets = []
    for node in quantized.graph.node:
        fnode = float_convs.get(node.name)
        dq = dequant.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if fnode is None or dq is None or fnode.input[1] not in float_inits or dq.input[0] not in inits:
            continue
        w_q = _dequantize(dq, inits)
        w = onnx.numpy_helper.to_array(float_inits[fnode.input[1]]).astype(np.float64)
        if w_q is None or w_q.shape != w.shape:
            continue
        targets.append((fnode, node.input[0], w_q - w))
    if not targets or not feeds:
        return None
    means = channel_means(quantized, feeds, [t for _, t, _ in targets])
    out = copy_model(float_model)
    by_name = {i.name: i for i in out.graph.initializer}
    nodes = {n.name: n for n in out.graph.node}
    corrected = 0
    for fnode, tensor, dw in targets:
        mean = means.get(tensor)
        group = next((a.i for a in fnode.attribute if a.name == "group"), 1)
        if mean is None:
            continue
        per_in = dw.reshape(dw.shape[0], dw.shape[1], -1).sum(axis=2)  # [out, in per group]
        if group == 1 and per_in.shape[1] == len(mean):
            shift = per_in @ mean
        elif group == dw.shape[0] and per_in.shape[1] == 1 and len(mean) == dw.shape[0]:
            shift = per_in[:, 0] * mean
        else:
            continue
        node = nodes[fnode.name]
        if len(node.input) > 2 and node.input[2] in by_name:
            bias = by_name[node.input[2]]
            value = onnx.numpy_helper.to_array(bias).astype(np.float64) - shift
            bias.CopyFrom(onnx.numpy_helper.from_array(value.astype(np.float32), bias.name))
        else:
            name = f"{node.name}_corrected_bias"
            out.graph.initializer.append(onnx.numpy_helper.from_array((-shift).astype(np.float32), name))
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = name
        corrected += 1
    return out if corrected else None


def _dequantize(dq: onnx.NodeProto, inits: dict) -> np.ndarray | None:
    """A DequantizeLinear of initializers, computed: (q - zero_point) * scale, per tensor or along ``axis``."""
    if any(name and name not in inits for name in dq.input):
        return None
    q = onnx.numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    scale = onnx.numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    zero = (onnx.numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64)
            if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale))
    if scale.ndim == 0 or scale.size == 1:
        return (q - zero.reshape(())) * scale.reshape(())
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    shape = [1] * q.ndim
    shape[axis] = -1
    return (q - zero.reshape(shape)) * scale.reshape(shape)


def _large_source(model_path, model: onnx.ModelProto, large: bool):
    """For a model over 2 GB, a scratch copy of its graph beside its data file (``serde.temporary_sibling``): the
    quantizer writes its own scratch files beside the model it reads (``<name>-inferred.onnx``), which must not
    clash with the user's files, and onnx refuses a hard-linked or copied-by-link data file elsewhere."""
    if not large:
        return contextlib.nullcontext(None)
    return serde.temporary_sibling(model, Path(model_path).parent, "onnxgate-quant")


class _FeedReader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = feeds
        self._iter = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)


@contextlib.contextmanager
def _sandbox(folder: Path):
    """Run onnxruntime's quantization tools inside ``folder``: they print progress to stdout (which would corrupt
    ``--json`` output), log advice onnxgate already follows, and its symbolic shape inference drops debug files
    into the working directory when it gives up."""
    with contextlib.chdir(folder), contextlib.redirect_stdout(io.StringIO()), warnings_module.catch_warnings():
        warnings_module.simplefilter("ignore")
        yield


def _calibration_data(calib: DataArg, specs, dims, model, mode, labels_key, preprocess, report) -> Dataset | None:
    if mode == "dynamic":
        if calib is not None:
            report.warnings.append("Dynamic quantization computes activation ranges at run time; the calibration "
                                   "data is not used.")
        return None
    if calib is None:
        data = random_dataset(specs, dims)
        report.warnings.append("No calibration data given: calibrated on random inputs, so activation ranges (and "
                               "accuracy) on real data are unknown. Pass --calib with real samples.")
    else:
        data = load_data(calib, specs, model=model, labels_key=labels_key, preprocess=preprocess,
                         what="calibration data", labelled=False)
    report.calibration = f"{data.source} ({data.samples} samples)"
    return data


def _evaluation_data(eval_data: DataArg, calibration: Dataset | None, specs, dims, model, labels, class_names,
                     labels_key, preprocess, report: QuantizeReport) -> Dataset:
    if eval_data is not None:
        data = load_data(eval_data, specs, model=model, labels=labels, class_names=class_names, labels_key=labels_key,
                         preprocess=preprocess, what="evaluation data")
        report.warnings += data.notes
        report.classes = data.classes
    elif calibration is not None and not calibration.source.startswith("random"):
        data = calibration
        report.warnings.append("No evaluation data given: the budget is measured on the calibration data, which "
                               "flatters the result. Pass --eval with held-out samples.")
    else:
        data = random_dataset(specs, dims)
        report.warnings.append("No evaluation data given: the error is measured on random inputs.")
    if report.budget.max_accuracy_drop is not None and data.labels is None:
        raise BadInputError(f"--max-accuracy-drop needs labels, and the evaluation data '{data.source}' has none.",
                            hint=f"Put labels in the .npz under '{labels_key}' (or --labels-key), use class "
                                 "sub-folders for images, or give --max-error instead.")
    if not report.budget.given:
        if data.labels is not None:
            report.budget = Budget(max_accuracy_drop=DEFAULT_ACCURACY_DROP)
        else:
            report.warnings.append("No budget given and no labels: the error is reported, not gated.")
    report.evaluation = f"{data.source} ({data.samples} samples)"
    return data


def _record_in_metadata(model: onnx.ModelProto, original: onnx.ModelProto, report: QuantizeReport, reference,
                        evaluation: Dataset) -> None:
    """Keep the input's metadata (onnxgate's input specs above all), record how the model was quantized, and write
    its verification contract: the worst error-to-scale ratio at which the budget held (see verify/contract.py)."""
    from ..verify.contract import int8_contract

    props = {p.key: p.value for p in original.metadata_props} | {p.key: p.value for p in model.metadata_props}
    props["onnxgate.quantization"] = json.dumps({
        "mode": report.mode, "method": report.method, "per_channel": report.per_channel,
        "float_nodes": [s.node for s in report.float_nodes], "budget": str(report.budget)})
    worst = report.final.evaluations
    accuracy = min((e.accuracy for e in worst if e.accuracy is not None), default=None)
    contract = int8_contract(
        dict(zip([o.name for o in original.graph.output], output_scales(reference))),
        scaled_err=max((e.scaled_err or 0.0 for e in worst), default=0.0),
        max_abs_err=max((e.max_abs_err for e in worst), default=0.0),
        budget={"max_accuracy_drop": report.budget.max_accuracy_drop, "max_error": report.budget.max_error},
        on=report.evaluation, samples=evaluation.samples, fp32_top1=report.fp32_accuracy, top1=accuracy)
    onnx.helper.set_model_props(model, {**props, **contract.metadata()})
