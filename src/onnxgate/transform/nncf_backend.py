"""NNCF as a quantization backend: the OpenVINO project's post-training quantizer, judged like every INT8 recipe.

``nncf_quantize`` quantizes an ONNX file with ``nncf.quantize`` (or ``nncf.quantize_with_accuracy_control``,
driven by onnxgate's top-1 budget and evaluation data), either

* ``target="onnx"``: NNCF's ONNX backend on the model itself, giving a QDQ ONNX file (MinMax ranges on the
  calibration data, symmetric int8 weights per channel, fast bias correction — NNCF's defaults); or
* ``target="openvino"``: the model converted to OpenVINO (``openvino.convert_model``) and quantized with NNCF's
  OpenVINO backend, which adds what its ONNX backend lacks (channel alignment, the IR's own int8 kernels); the
  result is an OpenVINO IR (``model.xml`` + ``model.bin``), the INT8 variant of the OpenVINO deploy target.

Either way the result is measured against the FP32 model's onnxruntime outputs on the evaluation data (top-1 on
true labels with its interval, max abs error, cosine: ``budget``), and written only when it holds the budget — the
ONNX file with the same verification contract ``quantize`` writes, the IR with its measurements in its
``rt_info`` (``onnxgate/quantization``). A missed budget is a value (``result.passed`` False), not an exception.

NNCF is an optional dependency (the ``openvino`` extra, pinned): imported where it is used, as is OpenVINO.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from .. import serde
from ..errors import BadInputError
from ..fsutil import check_target
from ..runtimes.openvino import run_model
from .budget import (LEVELS, AccuracyGate, Budget, Evaluation, accuracy_gate, check, evaluate, evaluate_outputs,
                     run_outputs, top1)
from .data import DataArg, Dataset, model_specs
from .passes import TransformRecord
from .quantize import (QuantizeReport, QuantizeStep, _calibration_data, _evaluation_data, _record_in_metadata,
                       equalize_verified)

TARGETS = ("onnx", "openvino")
DEFAULT_SUBSET = 300  # calibration samples NNCF uses (its own default)
HINT = "Install it with pip install 'onnxgate[openvino]' (nncf==3.4.0 and openvino)."


@dataclass
class NncfResult:
    """NNCF's INT8 model, measured against FP32 (see the module doc)."""

    source: str
    target: str
    accuracy_control: bool
    budget: Budget
    calibration: str | None = None
    evaluation: str = ""
    fp32_accuracy: float | None = None
    evaluations: list[Evaluation] = field(default_factory=list)
    miss: str | None = "not quantized"
    output: str | None = None
    warnings: list[str] = field(default_factory=list)
    gate: AccuracyGate | None = None
    classes: dict[str, int] | None = None
    quantized_ops: int = 0  # FakeQuantize (IR) or Q/DQ (ONNX) nodes
    equalized: TransformRecord | None = None  # cross-layer equalization, when asked for
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.miss is None and bool(self.evaluations)

    def summary(self) -> str:
        what = f"NNCF int8 ({self.target}{', accuracy control' if self.accuracy_control else ''})"
        if not self.evaluations:
            return f"{what}: {self.miss}"
        worst = max(self.evaluations, key=lambda e: (e.drop or 0.0, e.max_abs_err))
        measured = f"max abs err {worst.max_abs_err:.3g}"
        if worst.accuracy is not None and self.fp32_accuracy is not None:
            ci = (f", 95% interval {worst.drop_ci[0]:.2f} to {worst.drop_ci[1]:.2f}" if worst.drop_ci else "")
            measured = (f"top-1 {worst.accuracy * 100:.2f}% vs {self.fp32_accuracy * 100:.2f}% FP32 (drop "
                        f"{worst.drop:.2f} points{ci}), " + measured)
        return (f"{what}: {measured}; budget {self.budget}" if self.passed
                else f"{what} misses the budget ({self.budget}): {self.miss}")

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "summary": self.summary(), "source": self.source, "target": self.target,
                "accuracy_control": self.accuracy_control, "output": self.output, "miss": self.miss,
                "budget": {"max_accuracy_drop": self.budget.max_accuracy_drop, "max_error": self.budget.max_error,
                           "min_cosine": self.budget.min_cosine},
                "calibration": self.calibration, "evaluation": self.evaluation, "fp32_accuracy": self.fp32_accuracy,
                "evaluations": [e.to_dict() for e in self.evaluations], "warnings": self.warnings,
                "accuracy_gate": self.gate.to_dict() if self.gate else None, "classes": self.classes,
                "quantized_ops": self.quantized_ops, "seconds": self.seconds,
                "equalized": self.equalized.to_dict() if self.equalized else None}


def nncf_quantize(model_path: str | Path, out: str | Path, *, target: str = "onnx", calib: DataArg = None,
                  eval_data: DataArg = None, labels: Any = None, class_names: Sequence[str] | None = None,
                  labels_key: str = "labels", preprocess: str | None = None, max_accuracy_drop: float | None = None,
                  max_error: float | None = None, min_cosine: float | None = None, accuracy_control: bool = False,
                  subset_size: int = DEFAULT_SUBSET, ignored_nodes: Sequence[str] = (), per_channel: bool = True,
                  bias_correction: str = "fast", equalize: bool = False, force: bool = False,
                  progress: Callable[[str], None] | None = None) -> NncfResult:
    """Quantize the ONNX file at ``model_path`` with NNCF for ``target`` (onnx: a QDQ ``.onnx``; openvino: an IR
    ``.xml``) and write it to ``out`` when it holds the budget. Data and budget as ``quantize`` takes them (a
    labelled evaluation set without a budget gets 1 top-1 point). ``accuracy_control``: NNCF's
    ``quantize_with_accuracy_control``, reverting its most harmful quantizers to float until top-1 on the evaluation
    data drops at most ``max_accuracy_drop`` (needs labels); the result is then judged by onnxgate all the same.
    ``ignored_nodes``: node names kept in float; ``per_channel``: int8 weights per output channel (NNCF's default)
    or one range per tensor; ``bias_correction``: fast (NNCF's default), full or none; ``equalize``: onnxgate's
    cross-layer equalization first (``transform.equalize``, verified on the calibration data, rolled back on a
    mismatch: ``result.equalized`` says which; NNCF's own channel alignment exists for its OpenVINO backend only)."""
    note = progress or (lambda _m: None)
    if target not in TARGETS:
        raise BadInputError(f"NNCF target '{target}' is not supported.", hint=f"Use one of: {', '.join(TARGETS)}.")
    nncf = _nncf()
    started = time.perf_counter()
    out = Path(out)
    check_target(out, force=force, kind="model file")
    model = serde.load(model_path)
    specs, dims = model_specs(model_path)
    result = NncfResult(str(model_path), target, accuracy_control, Budget(max_accuracy_drop, max_error, min_cosine))
    calibration = _calibration_data(calib, specs, dims, model, "static", labels_key, preprocess, result)
    evaluation = _evaluation_data(eval_data, calibration, specs, dims, model, labels, class_names, labels_key,
                                  preprocess, result)
    if accuracy_control and (result.budget.max_accuracy_drop is None or evaluation.labels is None):
        raise BadInputError("NNCF's accuracy control needs a top-1 budget and labelled evaluation data.",
                            hint="Give --max-accuracy-drop and labelled --eval data (class folders or a labelled "
                                 "CSV), or quantize without accuracy control.")
    note("running the FP32 model on the evaluation data")
    reference = run_outputs(model, evaluation)
    if evaluation.labels is not None:
        result.fp32_accuracy = top1(reference, evaluation.labels)
        result.gate = accuracy_gate(result.budget, evaluation.labels, result.fp32_accuracy,
                                    int(reference[0][0].shape[-1]) if reference and reference[0] else None)
    if equalize:
        equalized, result.equalized = equalize_verified(model, calibration.feeds[:4])
        model = equalized or model
    samples = _samples(calibration)
    calibration_set = nncf.Dataset(samples)
    options = quantize_options(nncf, per_channel=per_channel, bias_correction=bias_correction)
    ignored = nncf.IgnoredScope(names=list(ignored_nodes), validate=False) if ignored_nodes else None
    subset = min(subset_size, len(samples))
    if target == "onnx":
        note("quantizing with NNCF (ONNX backend)")
        source = _opset13(model)
        if accuracy_control:
            quantized = nncf.quantize_with_accuracy_control(
                source, calibration_set, _validation_set(nncf, evaluation), _onnx_top1,
                max_drop=result.budget.max_accuracy_drop / 100, drop_type=nncf.DropType.ABSOLUTE,
                subset_size=subset, ignored_scope=ignored, fast_bias_correction=options["fast_bias_correction"],
                advanced_quantization_parameters=options["advanced_parameters"])
        else:
            quantized = nncf.quantize(source, calibration_set, subset_size=subset, ignored_scope=ignored, **options)
        note("measuring NNCF's INT8 model as written and as deployed")
        result.evaluations = evaluate(quantized, evaluation, reference, result.fp32_accuracy, levels=LEVELS)
        result.quantized_ops = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear")
                                   for n in quantized.graph.node)
    else:
        import openvino as ov

        note("converting to OpenVINO and quantizing with NNCF (OpenVINO backend)")
        if result.equalized is not None and result.equalized.status == "applied":
            with tempfile.TemporaryDirectory(prefix="onnxgate-nncf-") as tmp:
                ov_model = ov.convert_model(str(serde.save(model, Path(tmp) / "equalized.onnx")))
        else:
            ov_model = ov.convert_model(str(model_path))
        if accuracy_control:
            quantized = nncf.quantize_with_accuracy_control(
                ov_model, calibration_set, _validation_set(nncf, evaluation), _openvino_top1,
                max_drop=result.budget.max_accuracy_drop / 100, drop_type=nncf.DropType.ABSOLUTE,
                subset_size=subset, ignored_scope=ignored, fast_bias_correction=options["fast_bias_correction"],
                advanced_quantization_parameters=options["advanced_parameters"])
        else:
            quantized = nncf.quantize(ov_model, calibration_set, subset_size=subset, ignored_scope=ignored,
                                      **options)
        result.quantized_ops = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
        note("measuring NNCF's INT8 IR in OpenVINO")
        result.evaluations = [evaluate_outputs("openvino CPU", run_model(quantized, evaluation.feeds), evaluation,
                                               reference, result.fp32_accuracy)]
    result.miss = check(result.budget, result.evaluations)
    if result.gate is not None and result.gate.problem:
        result.miss = "the accuracy gate cannot judge this model: " + result.gate.problem + (
            f"; {result.miss}" if result.miss else "")
    if not result.quantized_ops and result.miss is None:
        result.miss = "nothing was quantized"
    if result.passed:
        result.output = (_write_onnx(quantized, model, result, reference, evaluation, out, force)
                         if target == "onnx" else _write_ir(quantized, result, out, force))
    result.seconds = round(time.perf_counter() - started, 2)
    return result


def quantize_options(nncf, *, per_channel: bool = True, bias_correction: str = "fast") -> dict[str, Any]:
    """``nncf.quantize`` keywords for onnxgate's settings."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    if bias_correction not in ("fast", "full", "none"):
        raise BadInputError(f"Bias correction '{bias_correction}' is not one NNCF has.", hint="Use fast, full or none.")
    advanced = AdvancedQuantizationParameters(
        weights_quantization_params=None if per_channel else QuantizationParameters(per_channel=False),
        disable_bias_correction=bias_correction == "none")
    return {"fast_bias_correction": bias_correction != "full", "advanced_parameters": advanced}


def quantize_model(model: onnx.ModelProto, calibration: Dataset, *, per_channel: bool = True,
                   bias_correction: str = "fast", ignored_nodes: Sequence[str] = (),
                   subset_size: int = DEFAULT_SUBSET) -> onnx.ModelProto:
    """NNCF's QDQ model of ``model`` (ONNX backend), unmeasured: for the recipe search, which measures it."""
    nncf = _nncf()
    samples = _samples(calibration)
    ignored = nncf.IgnoredScope(names=list(ignored_nodes), validate=False) if ignored_nodes else None
    return nncf.quantize(_opset13(model), nncf.Dataset(samples), subset_size=min(subset_size, len(samples)),
                         ignored_scope=ignored, **quantize_options(nncf, per_channel=per_channel,
                                                                   bias_correction=bias_correction))


def _nncf():
    try:
        import nncf
    except ImportError as exc:
        raise BadInputError(f"NNCF is not installed ({exc}).", hint=HINT) from None
    return nncf


def _samples(data: Dataset) -> list[dict[str, np.ndarray]]:
    """One sample per item (NNCF counts its ``subset_size`` in items)."""
    return [{k: v[i:i + 1] for k, v in feed.items()} for feed in data.feeds
            for i in range(len(next(iter(feed.values()))))]


def _validation_set(nncf, data: Dataset):
    """(feed, labels) per batch: the validation functions below score them; NNCF hands the items over as they are."""
    labels, start, items = data.labels, 0, []
    for feed in data.feeds:
        n = len(next(iter(feed.values())))
        items.append((feed, labels[start:start + n]))
        start += n
    return nncf.Dataset(items, lambda item: item[0])


def _onnx_top1(model: onnx.ModelProto, items) -> float:
    from .verifier import session_for

    session = session_for(model, what="NNCF's candidate model", opt_level="all")
    names = {i.name for i in session.get_inputs()}
    right = total = 0
    for feed, labels in items:
        logits = session.run(None, {k: v for k, v in feed.items() if k in names})[0]
        right += int((logits.argmax(axis=1) == labels).sum())
        total += len(labels)
    return right / max(total, 1)


def _openvino_top1(compiled, items) -> float:
    right = total = 0
    for feed, labels in items:
        logits = np.asarray(compiled(feed)[0])
        right += int((logits.argmax(axis=1) == labels).sum())
        total += len(labels)
    return right / max(total, 1)


def _opset13(model: onnx.ModelProto) -> onnx.ModelProto:
    """NNCF's ONNX backend needs opset >= 13 (per-channel QuantizeLinear); older models are converted first."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset >= 13:
        return model
    from onnx import version_converter

    return version_converter.convert_version(model, 13)


def _write_onnx(quantized: onnx.ModelProto, original: onnx.ModelProto, result: NncfResult, reference,
                evaluation: Dataset, out: Path, force: bool) -> str:
    """The QDQ model with the input's metadata and the INT8 verification contract (as ``quantize`` writes them)."""
    report = QuantizeReport(result.source, "static", "nncf", True, result.budget, result.calibration,
                            result.evaluation, fp32_accuracy=result.fp32_accuracy,
                            steps=[QuantizeStep([], result.evaluations, None)])
    _record_in_metadata(quantized, original, report, reference, evaluation)
    props = {p.key: p.value for p in quantized.metadata_props}
    props["onnxgate.quantization"] = json.dumps({"mode": "static", "backend": "nncf", "target": "onnx",
                                                 "accuracy_control": result.accuracy_control,
                                                 "budget": str(result.budget)})
    onnx.helper.set_model_props(quantized, props)
    return str(serde.save(quantized, out, force=force))


def _write_ir(quantized, result: NncfResult, out: Path, force: bool) -> str:
    """The INT8 IR (``out`` .xml + .bin beside it), weights kept as they are (no fp16 compression), with what was
    measured in its ``rt_info``."""
    import openvino as ov

    if out.suffix != ".xml":
        raise BadInputError(f"An OpenVINO IR is written as a .xml file (and its .bin); '{out}' is not one.",
                            hint="Name the output model.xml.")
    check_target(out.with_suffix(".bin"), force=force, kind="model weights")
    quantized.set_rt_info(json.dumps(ir_record(result)), ["onnxgate", "quantization"])
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return str(out)


def ir_record(result: NncfResult) -> dict[str, Any]:
    """What an INT8 IR carries about its verification: source, budget, FP32 and INT8 top-1, the worst error."""
    worst = max(result.evaluations, key=lambda e: (e.drop or 0.0, e.max_abs_err))
    return {"backend": "nncf", "source": result.source, "budget": str(result.budget),
            "evaluation": result.evaluation, "fp32_top1": result.fp32_accuracy, "top1": worst.accuracy,
            "drop": worst.drop, "drop_ci": worst.drop_ci, "max_abs_err": worst.max_abs_err,
            "scaled_err": worst.scaled_err, "accuracy_control": result.accuracy_control}


def verify_ir(ir_path: str | Path, model_path: str | Path, data: DataArg, *, labels: Any = None,
              class_names: Sequence[str] | None = None, preprocess: str | None = None,
              budget: Budget | None = None) -> tuple[list[Evaluation], str | None]:
    """Re-check a written INT8 IR against its FP32 ONNX model on ``data``: (evaluations, miss). The budget defaults
    to the one recorded in the IR's quantization; for a deploy target's check that the shipped IR still holds."""
    import openvino as ov

    from .data import load_data

    model = serde.load(model_path)
    specs, _ = model_specs(model_path)
    dataset = load_data(data, specs, model=model, labels=labels, class_names=class_names, preprocess=preprocess,
                        what="verification data")
    reference = run_outputs(model, dataset)
    ref_acc = top1(reference, dataset.labels) if dataset.labels is not None else None
    core = ov.Core()
    ir = core.read_model(str(ir_path))
    if budget is None:
        recorded = json.loads(ir.get_rt_info(["onnxgate", "quantization"]).astype(str)) \
            if ir.has_rt_info(["onnxgate", "quantization"]) else {}
        budget = _parse_budget(recorded.get("budget", ""))
    evaluations = [evaluate_outputs("openvino CPU", run_model(ir, dataset.feeds), dataset, reference, ref_acc)]
    return evaluations, check(budget, evaluations)


def _parse_budget(text: str) -> Budget:
    """A ``Budget`` back from its ``str`` ("top-1 drop <= 1 points and max abs err <= 0.5")."""
    drop = error = cosine = None
    for part in text.split(" and "):
        value = part.rsplit(" ", 1)[-1] if "<=" in part or ">=" in part else None
        if part.startswith("top-1 drop"):
            drop = float(part.split("<=")[1].split()[0])
        elif part.startswith("max abs err") and value:
            error = float(value)
        elif part.startswith("cosine") and value:
            cosine = float(value)
    return Budget(drop, error, cosine)


__all__ = ["NncfResult", "nncf_quantize", "quantize_model", "verify_ir", "ir_record", "TARGETS"]
