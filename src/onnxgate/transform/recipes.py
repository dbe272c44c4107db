"""INT8 that pays: search the quantization recipe by measured latency *and* the accuracy budget, keep the fastest
recipe within budget, and ship FP32 when no INT8 recipe beats it.

Why a search: the settings that make resnet18 3x faster made mobilenet_v3_large slower than FP32 (0.83x: Q/DQ pairs
around depthwise convolutions, squeeze-excitation blocks and hard-swish, which lack fast int8 kernels), and which
settings hold an accuracy budget depends on the model. So every candidate recipe is quantized from one
pre-processed float model (activation ranges calibrated once per calibration method and reused), measured on the
evaluation data as deployed (onnxruntime's default optimizations: the integer kernels that are timed), and, when it
holds the budget, timed side by side with the FP32 model in interleaved rounds (load from other processes on a
shared machine hits them alike; each keeps its fastest round's median). The fastest candidate within budget that
beats FP32 by ``MIN_GAIN`` is then measured as written too (``budget``: the worse of the two counts) and written with
its verification contract; when none beats FP32, nothing is written and the report says to ship FP32.

Candidates: ``STATIC_RECIPES`` (conv nets and other graphs: QDQ vs QOperator, per-channel vs per-tensor,
``reduce_range``, which op types are quantized — convolutions and matrix products only, or everything but depthwise
convolutions, squeeze-excitation blocks and hard-swish — and the calibration method) or ``DYNAMIC_RECIPES``
(transformers, detected by ``transform.fusion.detect``: int8 MatMul weights with ranges computed at run time,
per-tensor or per-channel, with or without the embedding tables). A recipe with ``fallback`` that misses the budget
keeps its most sensitive nodes in float one at a time (``sensitivity``), up to that many. Activations are uint8 and weights int8 (U8S8, the
fast path of onnxruntime's x86 kernels) except in the one S8S8 candidate.

For depthwise nets (MobileNet, EfficientNet: issue 26) three more: per-tensor weights after cross-layer
equalization and with bias correction (``equalize``, ``quantize.correct_bias``; the equalized float model is
verified against the original on the calibration data and a mismatch fails those candidates, which is their
rollback), per-channel weights with bias correction and the first and last layers in float, and NNCF's ONNX
quantizer (``nncf_backend``: its MinMax ranges, symmetric per-channel weights and fast bias correction). Each is
measured and judged like the others; the sensitive-layer fallback ranks layers by their SQNR on the calibration
data (``sensitivity.layer_errors``).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from .. import serde
from ..errors import BadInputError, first_line
from ..fsutil import check_target
from .budget import LEVELS, AccuracyGate, Budget, Evaluation, accuracy_gate, check, evaluate, run_outputs, top1
from .data import DataArg, model_specs
from .nncf_backend import quantize_model as nncf_quantize_model
from .passes import APPLIED, TransformRecord
from .quantize import (METHODS, QuantizeReport, QuantizeStep, _calibration_data, _evaluation_data, _layer_feeds,
                       _Quantizer, _record_in_metadata)
from .sensitivity import QDQ_OPS, layer_errors

MIN_GAIN = 1.05  # an INT8 recipe must be this much faster than FP32 to be worth shipping
DEFAULT_MIN_COSINE = 0.99  # the budget when none is given and the data has no labels
SKIP_FAMILIES = ("depthwise", "se", "hardswish", "first_last")
BACKENDS = ("ort", "nncf")


@dataclass(frozen=True)
class Recipe:
    """One way to quantize: format, weight granularity, weight range, calibration, and what stays in float."""

    name: str
    mode: str = "static"  # static (calibrated activations) or dynamic (activation ranges at run time)
    fmt: str = "qdq"  # qdq or qoperator
    per_channel: bool = True
    reduce_range: bool = False  # 7-bit weights (for CPUs without VNNI)
    method: str = "minmax"  # calibration (static only)
    op_types: tuple[str, ...] | None = None  # None: every type the quantizer handles
    skip: tuple[str, ...] = ()  # families kept in float (SKIP_FAMILIES)
    activation: str = "uint8"  # uint8 (U8S8) or int8 (S8S8)
    fallback: int = 0  # while it misses the budget, keep up to this many of the most sensitive nodes in float
    equalize: bool = False  # cross-layer equalization first (verified; a failed one fails the candidate)
    bias_correction: bool = False  # conv biases corrected for the int8 weights' mean shift, then quantized again
    backend: str = "ort"  # ort (onnxruntime's quantizer) or nncf (NNCF's ONNX backend, with its bias correction)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


STATIC_RECIPES = (
    Recipe("qdq-per-channel", fallback=4),
    Recipe("qdq-per-tensor", per_channel=False),
    Recipe("qdq-conv-matmul-only", op_types=("Conv", "MatMul", "Gemm")),
    Recipe("qdq-skip-depthwise-se-hardswish", skip=("depthwise", "se", "hardswish")),
    Recipe("qdq-reduce-range", reduce_range=True),
    Recipe("qoperator-per-channel", fmt="qoperator"),
    Recipe("qdq-s8s8", activation="int8"),
    Recipe("qdq-percentile", method="percentile"),
    Recipe("qdq-per-tensor-cle-bias-correction", per_channel=False, equalize=True, bias_correction=True),
    Recipe("qdq-per-channel-bias-correction-first-last-float", bias_correction=True, skip=("first_last",),
           fallback=4),
    Recipe("nncf", backend="nncf"),
)
DYNAMIC_RECIPES = (
    Recipe("dynamic-matmul", "dynamic", per_channel=False, op_types=("MatMul",)),
    Recipe("dynamic-matmul-per-channel", "dynamic", op_types=("MatMul",), fallback=4),
    Recipe("dynamic-matmul-gather", "dynamic", per_channel=False, op_types=("MatMul", "Gather")),
)
WITHIN, OVER, FAILED = "within_budget", "over_budget", "failed"


@dataclass
class Candidate:
    """One recipe, measured: its budget evaluation as deployed (plus as written for the one chosen), its latency
    beside FP32's, and what it kept in float."""

    recipe: Recipe
    status: str = FAILED
    evaluations: list[Evaluation] = field(default_factory=list)
    miss: str | None = None
    p50_ms: float | None = None
    speedup: float | None = None  # FP32's p50 over this one's (> 1: faster than FP32)
    float_nodes: list[str] = field(default_factory=list)  # kept in float by the recipe's skip families
    quantized_ops: int = 0  # Q/DQ and integer operators in the quantized graph
    size_bytes: int = 0
    seconds: float = 0.0  # quantizing and evaluating
    error: str | None = None
    path: Path | None = None  # the quantized file while the search runs (not serialized)

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe.to_dict(), "status": self.status, "miss": self.miss, "p50_ms": self.p50_ms,
                "speedup": self.speedup, "float_nodes": self.float_nodes, "quantized_ops": self.quantized_ops,
                "size_bytes": self.size_bytes, "seconds": self.seconds, "error": self.error,
                "evaluations": [e.to_dict() for e in self.evaluations]}


@dataclass
class RecipeSearch:
    """Every candidate measured, the fastest within budget, and what to ship (``shipped``: int8 or fp32)."""

    source: str
    mode: str
    budget: Budget
    calibration: str | None = None
    evaluation: str = ""
    fp32_accuracy: float | None = None
    fp32_p50_ms: float | None = None
    threads: int = 0
    candidates: list[Candidate] = field(default_factory=list)
    best: Candidate | None = None  # the fastest candidate within budget (as deployed and as written)
    shipped: str = "fp32"
    decision: str = ""
    output: str | None = None
    warnings: list[str] = field(default_factory=list)
    gate: AccuracyGate | None = None
    classes: dict[str, int] | None = None
    seconds: float = 0.0
    equalized: TransformRecord | None = None  # the equalized float model the equalize recipes start from

    @property
    def passed(self) -> bool:
        """A decision backed by a recipe within budget (shipping INT8, or FP32 because INT8 did not pay)."""
        return self.best is not None

    @property
    def hint(self) -> str | None:
        if self.gate is not None and self.gate.problem:
            return ("Evaluate on labelled data that names the model's classes, with enough samples for the budget, "
                    "on a model with its trained weights; or gate on an error or cosine budget instead.")
        return "Use more calibration data, a looser budget, or `onnxgate quantize` to keep sensitive nodes in float."

    def summary(self) -> str:
        return self.decision

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "summary": self.summary(), "source": self.source, "mode": self.mode,
                "budget": {"max_accuracy_drop": self.budget.max_accuracy_drop, "max_error": self.budget.max_error,
                           "min_cosine": self.budget.min_cosine},
                "calibration": self.calibration, "evaluation": self.evaluation, "fp32_accuracy": self.fp32_accuracy,
                "fp32_p50_ms": self.fp32_p50_ms, "threads": self.threads, "shipped": self.shipped,
                "decision": self.decision, "output": self.output,
                "best": self.best.recipe.name if self.best else None,
                "candidates": [c.to_dict() for c in self.candidates], "warnings": self.warnings,
                "accuracy_gate": self.gate.to_dict() if self.gate else None, "classes": self.classes,
                "seconds": self.seconds, "equalized": self.equalized.to_dict() if self.equalized else None}


def search_int8(model_path: str | Path, out: str | Path, *, mode: str = "auto", calib: DataArg = None,
                eval_data: DataArg = None, labels: Any = None, class_names: Sequence[str] | None = None,
                labels_key: str = "labels", preprocess: str | None = None, max_accuracy_drop: float | None = None,
                max_error: float | None = None, min_cosine: float | None = None,
                recipes: Sequence[Recipe] | None = None, threads: int | None = None, seconds: float = 1.5,
                rounds: int = 3, time_over_budget: bool = False, keep_candidates: str | Path | None = None,
                force: bool = False, progress: Callable[[str], None] | None = None) -> RecipeSearch:
    """Search the INT8 recipe of the ONNX file at ``model_path`` (see the module docstring) and write the chosen one
    to ``out`` — only when it holds the budget and beats FP32.

    ``mode``: auto (dynamic for transformers, else static), static or dynamic; ``recipes`` overrides the candidate
    list. Data and budget as ``quantize`` takes them; without a budget, labelled data gets a 1-point top-1 budget and
    unlabelled data ``min_cosine=0.99``. ``threads``: onnxruntime's intra-op threads for timing (default: all
    usable cores); ``seconds``: timing per model, split over ``rounds`` interleaved rounds. ``time_over_budget``:
    time the candidates that miss the budget too (a report can then say what their speed would have been);
    ``keep_candidates``: a folder to keep every candidate's file in (``candidate.path``), for inspection.
    """
    note = progress or (lambda _m: None)
    started = time.perf_counter()
    check_target(Path(out), force=force, kind="model file")
    model = serde.load(model_path)
    mode = _mode(mode, model)
    recipes = list(recipes or (DYNAMIC_RECIPES if mode == "dynamic" else STATIC_RECIPES))
    _check_recipes(recipes)
    specs, dims = model_specs(model_path)
    search = RecipeSearch(str(model_path), mode, Budget(max_accuracy_drop, max_error, min_cosine))
    calibration = _calibration_data(calib, specs, dims, model, "static" if any(r.mode == "static" for r in recipes)
                                    else "dynamic", labels_key, preprocess, search)
    evaluation = _evaluation_data(eval_data, calibration, specs, dims, model, labels, class_names, labels_key,
                                  preprocess, search)
    if not search.budget.given:
        search.budget = Budget(min_cosine=DEFAULT_MIN_COSINE)
        search.warnings = [w for w in search.warnings if not w.startswith("No budget given")]
        search.warnings.append(f"No budget given and no labels: gated on cosine to FP32 >= {DEFAULT_MIN_COSINE}.")
    note("running the FP32 model on the evaluation data")
    reference = run_outputs(model, evaluation)
    if evaluation.labels is not None:
        search.fp32_accuracy = top1(reference, evaluation.labels)
        search.gate = accuracy_gate(search.budget, evaluation.labels, search.fp32_accuracy,
                                    int(reference[0][0].shape[-1]) if reference and reference[0] else None)
    from ..bench.machine import usable_cores

    search.threads = threads or usable_cores()
    with tempfile.TemporaryDirectory(prefix="onnxgate-recipes-") as tmp:
        quantizer = _Quantizer(Path(tmp), model, mode, "minmax", True, calibration)
        search.warnings += quantizer.notes
        equalized = None
        for recipe in recipes:
            note(f"quantizing and measuring {recipe.name}")
            if recipe.equalize and equalized is None:
                note("equalizing the float model (cross-layer equalization)")
                (Path(tmp) / "equalized").mkdir()
                equalized = _Quantizer(Path(tmp) / "equalized", model, mode, "minmax", True, calibration,
                                       equalize=True)
                search.equalized = equalized.equalized
            search.candidates.append(_candidate(equalized if recipe.equalize else quantizer, recipe, evaluation,
                                                reference, search))
        within = [c for c in search.candidates if c.status == WITHIN]
        timed = [c for c in search.candidates if c.status == WITHIN or (time_over_budget and c.status == OVER)]
        if timed:
            note(f"timing FP32 and {len(timed)} recipes side by side")
            _time_side_by_side(model_path, timed, _latency_feed(evaluation.feeds[0], model), search, seconds,
                               rounds)
        _choose(search, within, evaluation, reference, note)
        if search.shipped == "int8":
            _write(search, quantizer, model, evaluation, reference, out, force)
        if keep_candidates is not None:
            _keep(search.candidates, Path(keep_candidates))
    search.seconds = round(time.perf_counter() - started, 2)
    return search


def skip_nodes(model: onnx.ModelProto, families: Sequence[str]) -> dict[str, list[str]]:
    """Node names of each family in ``model``: ``depthwise`` convolutions (one input channel per group),
    squeeze-excitation blocks (from a global pooling to the Mul that rescales the features, the Mul included),
    ``hardswish`` (HardSwish, and x * HardSigmoid(x) with its HardSigmoid) and ``first_last``: the first and the last
    convolution or matrix product in graph order (the stem sees raw pixels, the classifier writes the logits)."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    found: dict[str, list[str]] = {f: [] for f in families}
    for node in model.graph.node:
        if "depthwise" in found and node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            weight = weights.get(node.input[1], [])
            if group > 1 and len(weight) > 1 and weight[1] == 1:
                found["depthwise"].append(node.name)
        if "hardswish" in found and node.op_type in ("HardSwish", "HardSigmoid"):
            found["hardswish"].append(node.name)
            if node.op_type == "HardSigmoid":
                found["hardswish"] += [c.name for c in consumers.get(node.output[0], [])
                                       if c.op_type == "Mul" and node.input[0] in c.input]
        if "se" in found and node.op_type in ("GlobalAveragePool", "ReduceMean"):
            found["se"] += _se_block(node, consumers)
    if "first_last" in found:
        compute = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose")]
        found["first_last"] += compute[:1] + compute[-1:]
    return {f: sorted(set(names)) for f, names in found.items()}


def _se_block(pool, consumers: dict[str, list]) -> list[str]:
    """The nodes from a global pooling to the Mul that multiplies its gate back into the features (at most six
    steps); [] when the pooling does not start a squeeze-excitation block."""
    block, frontier = [], [pool]
    for _ in range(6):
        following = [c for n in frontier for o in n.output for c in consumers.get(o, [])]
        gate = [c for c in following if c.op_type == "Mul"]
        if gate:
            return [pool.name] + block + [g.name for g in gate]
        frontier = [c for c in following if c.op_type in ("Conv", "Gemm", "MatMul", "Relu", "Sigmoid", "HardSigmoid",
                                                           "Clip", "Add", "Div", "Flatten", "Reshape", "Squeeze",
                                                           "Unsqueeze", "Swish", "SiLU")]
        if not frontier:
            return []
        block += [n.name for n in frontier]
    return []


def _mode(mode: str, model: onnx.ModelProto) -> str:
    if mode == "auto":
        from .fusion import detect

        return "dynamic" if detect(model).graph is not None else "static"
    if mode not in ("static", "dynamic"):
        raise BadInputError(f"Quantization mode '{mode}' is not supported.", hint="Use auto, static or dynamic.")
    return mode


def _check_recipes(recipes: Sequence[Recipe]) -> None:
    for r in recipes:
        problems = ([f"mode '{r.mode}'"] if r.mode not in ("static", "dynamic") else []) + (
            [f"format '{r.fmt}'"] if r.fmt not in ("qdq", "qoperator") else []) + (
            [f"method '{r.method}'"] if r.method not in METHODS else []) + (
            [f"skip '{s}'" for s in r.skip if s not in SKIP_FAMILIES]) + (
            [f"activation '{r.activation}'"] if r.activation not in ("uint8", "int8") else []) + (
            [f"backend '{r.backend}'"] if r.backend not in BACKENDS else [])
        if problems:
            raise BadInputError(f"Recipe '{r.name}' has an unknown {', '.join(problems)}.",
                                hint=f"Modes static/dynamic, formats qdq/qoperator, methods {', '.join(METHODS)}, "
                                     f"skip families {', '.join(SKIP_FAMILIES)}, activations uint8/int8, "
                                     f"backends {', '.join(BACKENDS)}.")


def _candidate(quantizer: _Quantizer, recipe: Recipe, evaluation, reference, search: RecipeSearch) -> Candidate:
    """Quantize with ``recipe`` and measure it as deployed. A recipe the quantizer or onnxruntime cannot handle is a
    failed candidate with its reason, not a crashed search."""
    result = Candidate(recipe)
    start = time.perf_counter()
    try:
        if recipe.equalize and (quantizer.equalized is None or quantizer.equalized.status != APPLIED):
            raise RuntimeError("cross-layer equalization " + (quantizer.equalized.message if quantizer.equalized
                                                              else "was not run"))
        if recipe.skip:
            result.float_nodes = [n for names in skip_nodes(quantizer.float_model, recipe.skip).values()
                                  for n in names]
        quantized = _quantize_and_measure(quantizer, recipe, result, evaluation, reference, search)
        for _ in range(recipe.fallback if result.miss is not None and not _unjudgeable(search) else 0):
            ranked = layer_errors(quantizer.float_model, quantized,
                                  _layer_feeds(quantizer.calibration) if quantizer.calibration
                                  else [_few(evaluation.feeds[0])], dynamic=recipe.mode == "dynamic")
            extra = next((r.node for r in ranked if r.node not in result.float_nodes), None)
            if extra is None:
                break
            result.float_nodes.append(extra)
            quantized = _quantize_and_measure(quantizer, recipe, result, evaluation, reference, search)
            if result.miss is None:
                break
        result.path = quantizer.tmp / f"candidate_{len(search.candidates)}.onnx"
        serde.save(quantized, result.path, force=True)
        result.size_bytes = quantized.ByteSize()
        result.quantized_ops = sum(1 for n in quantized.graph.node
                                   if n.op_type in QDQ_OPS or "Integer" in n.op_type or n.op_type.startswith("QLinear")
                                   or n.op_type.startswith("DynamicQuantize"))
        result.status = WITHIN if result.miss is None else OVER
        if not result.quantized_ops:
            result.status, result.miss = OVER, "nothing was quantized"
    except Exception as exc:  # onnxruntime's quantizer and runtime raise their own classes
        result.status, result.error = FAILED, f"{type(exc).__name__}: {first_line(exc, 300)}"
    result.seconds = round(time.perf_counter() - start, 2)
    return result


def _quantize_and_measure(quantizer: _Quantizer, recipe: Recipe, result: Candidate, evaluation, reference,
                          search: RecipeSearch) -> onnx.ModelProto:
    """Quantize with ``recipe``, keeping ``result.float_nodes`` in float, and measure it as deployed."""
    if recipe.backend == "nncf":
        quantized = nncf_quantize_model(quantizer.float_model, quantizer.calibration, per_channel=recipe.per_channel,
                                        bias_correction="fast", ignored_nodes=result.float_nodes)
    else:
        quantized = quantizer.quantize(result.float_nodes, dynamic=recipe.mode == "dynamic", fmt=recipe.fmt,
                                       per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
                                       method=recipe.method, op_types=recipe.op_types, activation=recipe.activation,
                                       bias_correction=recipe.bias_correction)
    result.evaluations = evaluate(quantized, evaluation, reference, search.fp32_accuracy, levels=LEVELS[1:])
    result.miss = _miss(search, result.evaluations)
    return quantized


def _few(feed: dict[str, np.ndarray], samples: int = 4) -> dict[str, np.ndarray]:
    """The first samples of a feed: sensitivity keeps every intermediate tensor of both models in memory."""
    return {k: v[:samples] if np.ndim(v) else v for k, v in feed.items()}


def _unjudgeable(search: RecipeSearch) -> str | None:
    return search.gate.problem if search.gate else None


def _miss(search: RecipeSearch, evaluations: list[Evaluation]) -> str | None:
    miss = check(search.budget, evaluations)
    unjudgeable = _unjudgeable(search)
    if unjudgeable:
        return "the accuracy gate cannot judge this model: " + unjudgeable + (f"; {miss}" if miss else "")
    return miss


def _latency_feed(feed: dict[str, np.ndarray], model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """One sample when every input's first dim is dynamic (batch-1 latency, as the benchmark measures), else the
    feed as it is (a fixed batch)."""
    dynamic = all(v.type.tensor_type.shape.dim and not v.type.tensor_type.shape.dim[0].HasField("dim_value")
                  for v in model.graph.input)
    return {k: v[:1] for k, v in feed.items()} if dynamic else feed


def _time_side_by_side(model_path, within: list[Candidate], feed, search: RecipeSearch, seconds: float,
                       rounds: int) -> None:
    """FP32 and each candidate in interleaved rounds; each keeps its fastest round's median."""
    from contextlib import ExitStack

    from ..bench.harness import measure
    from ..runtimes.ort import OrtRunner

    paths = [Path(model_path)] + [c.path for c in within]
    best = [float("inf")] * len(paths)
    with ExitStack() as stack:
        runners = [stack.enter_context(OrtRunner(str(p), opt_level="all", intra_op_threads=search.threads))
                   for p in paths]
        for _ in range(max(1, rounds)):
            for i, runner in enumerate(runners):
                stats = measure(lambda r=runner: r.run(feed), warmup_runs=2, runs=1000, seconds=seconds / rounds,
                                repeats=1, min_runs=3)
                best[i] = min(best[i], stats.p50_ms)
    search.fp32_p50_ms = best[0]
    for candidate, p50 in zip(within, best[1:]):
        candidate.p50_ms, candidate.speedup = p50, best[0] / p50


def _keep(candidates: list[Candidate], folder: Path) -> None:
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for c in candidates:
        if c.path is not None and c.path.is_file():
            c.path = Path(shutil.copy2(c.path, folder / f"{c.recipe.name}.onnx"))


def _choose(search: RecipeSearch, within: list[Candidate], evaluation, reference, note) -> None:
    """The fastest candidate within budget as deployed that also holds it as written; INT8 if it beats FP32."""
    for candidate in sorted(within, key=lambda c: c.p50_ms):
        note(f"checking {candidate.recipe.name} as written")
        written = evaluate(serde.load(candidate.path), evaluation, reference, search.fp32_accuracy,
                           levels=LEVELS[:1])
        candidate.evaluations = written + candidate.evaluations
        candidate.miss = _miss(search, candidate.evaluations)
        if candidate.miss is not None:
            candidate.status = OVER
            continue
        search.best = candidate
        break
    tried = f"{len(search.candidates)} recipes measured"
    if search.best is None:
        failed = sum(c.status == FAILED for c in search.candidates)
        search.decision = (f"no INT8 recipe holds the budget ({search.budget}); ship FP32 ({tried}"
                           + (f", {failed} could not be quantized or run" if failed else "") + ")")
        return
    best = search.best
    pace = f"{best.p50_ms:.3g} ms vs FP32 {search.fp32_p50_ms:.3g} ms ({best.speedup:.2f}x) at {search.threads} " \
           f"thread{'s' if search.threads > 1 else ''}"
    if best.speedup >= MIN_GAIN:
        search.shipped = "int8"
        search.decision = f"ship INT8 '{best.recipe.name}': {pace}, within budget ({search.budget}); {tried}"
    else:
        search.decision = (f"ship FP32: the fastest INT8 recipe within budget, '{best.recipe.name}', is not faster "
                           f"than FP32 by {MIN_GAIN - 1:.0%} ({pace}); {tried}")


def _write(search: RecipeSearch, quantizer: _Quantizer, model: onnx.ModelProto, evaluation, reference, out,
           force: bool) -> None:
    """The chosen model with its input metadata, its recipe and its verification contract (as ``quantize``
    writes them)."""
    best = search.best
    quantized = serde.load(best.path)
    report = QuantizeReport(search.source, best.recipe.mode, best.recipe.method if best.recipe.mode == "static"
                            else None, best.recipe.per_channel, search.budget, search.calibration, search.evaluation,
                            fp32_accuracy=search.fp32_accuracy,
                            steps=[QuantizeStep(list(best.float_nodes), best.evaluations, None)])
    _record_in_metadata(quantized, model, report, reference, evaluation)
    props = {p.key: p.value for p in quantized.metadata_props}

    props["onnxgate.quantization.recipe"] = json.dumps({**best.recipe.to_dict(), "float_nodes": best.float_nodes,
                                                        "speedup": best.speedup, "decision": search.decision})
    onnx.helper.set_model_props(quantized, props)
    search.output = str(serde.save(quantized, out, force=force))


__all__ = ["Recipe", "Candidate", "RecipeSearch", "STATIC_RECIPES", "DYNAMIC_RECIPES", "search_int8", "skip_nodes"]
