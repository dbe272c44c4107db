"""Transforms as verified passes: apply one, re-verify, keep it or roll it back.

A pass takes an ``onnx.ModelProto`` and returns a ``PassResult``. ``run_passes`` hands each pass a *copy* of the
last verified model, then runs the result on the verifier's fixed feeds (onnxruntime, graph optimizations off, so
the graph is judged as written) and compares it with the last verified model's outputs. A pass whose result does
not load, does not run, or computes something else is rolled back: the previous model is kept and the record says
why. Comparing with the last verified model (not the float original) keeps each step's tolerance honest — an FP16
step is judged with FP16 tolerances, the exact rewrites before it with FP32 ones — while every record still states
its error against the float model, so drift across steps stays visible.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import onnx

from .. import serde
from ..errors import first_line
from ..verify.engine import output_scales as engine_output_scales
from ..verify.tolerance import Tolerance
from .verifier import ClaimCheck, Verifier, baseline, claim_probes

APPLIED, ROLLED_BACK, FAILED, UNCHANGED = "applied", "rolled_back", "failed", "unchanged"
SKIPPED = "skipped"  # a pass that could not run on this model (a model over 2 GB: see transform/large.py)


@dataclass
class PassResult:
    """What a pass produced. ``tolerance``: how closely the result must match the last verified model (None: the
    default of each output's dtype); ``relative_to_scale``: judge errors against each output's magnitude, for
    reduced precision, whose absolute error grows with the values (element-wise rtol is meaningless for logits
    near zero, and a fixed atol for outputs that are all small)."""

    model: onnx.ModelProto
    changed: bool
    name: str
    details: dict[str, Any] = field(default_factory=dict)
    tolerance: Tolerance | None = None
    relative_to_scale: bool = False


class Pass(Protocol):
    """A transform: a callable taking a model (a copy it may modify) and returning a PassResult. ``name`` names it
    in records even when it raises."""

    name: str

    def __call__(self, model: onnx.ModelProto) -> PassResult: ...


@dataclass
class TransformRecord:
    """One pass: what it changed and what that cost in accuracy. Errors are max abs errors over every output and
    feed; ``error_vs_float`` is against the float model the run started from."""

    name: str
    status: str  # applied / rolled_back / failed / unchanged / skipped
    nodes_before: int
    nodes_after: int
    size_before: int  # serialized bytes
    size_after: int
    error_vs_previous: float | None = None
    error_vs_float: float | None = None
    seconds: float = 0.0  # the transform itself
    verify_seconds: float = 0.0
    message: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TransformReport:
    """Every pass of one run, and the model it ended with (``model``, not serialized by ``to_dict``)."""

    records: list[TransformRecord]
    model: onnx.ModelProto
    nodes_before: int
    size_before: int
    error_vs_float: float = 0.0
    source: str | None = None
    output: str | None = None  # set once the model is written
    passed: bool = True  # False when a transform the caller required was rolled back
    feeds: str | None = None  # where the verification feeds came from
    output_scales: dict[str, float] = field(default_factory=dict)  # max |output| of the input model on the feeds
    # the claim the written file carries: the input's dims, re-verified at every probe size on each kept pass
    claim: ClaimCheck | None = None
    external_bytes: int = 0  # weights ``model`` keeps in external data files (a large model's report), not in it

    @property
    def nodes_after(self) -> int:
        return len(self.model.graph.node)

    @property
    def size_after(self) -> int:
        return serde.byte_size(self.model) + self.external_bytes

    @property
    def applied(self) -> list[str]:
        return [r.name for r in self.records if r.status == APPLIED]

    @property
    def rolled_back(self) -> list[TransformRecord]:
        return [r for r in self.records if r.status in (ROLLED_BACK, FAILED)]

    def summary(self) -> str:
        text = (f"{self.nodes_before} -> {self.nodes_after} nodes, {_mb(self.size_before)} -> {_mb(self.size_after)}, "
                f"max abs err vs float {self.error_vs_float:.2e}")
        if self.rolled_back:
            text += f"; rolled back: {', '.join(r.name for r in self.rolled_back)}"
        if self.claim is not None and self.claim.status == "narrowed":
            text += f"; {self.claim.describe()}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "summary": self.summary(), "source": self.source, "output": self.output,
                "feeds": self.feeds, "nodes_before": self.nodes_before, "nodes_after": self.nodes_after,
                "size_before": self.size_before, "size_after": self.size_after,
                "error_vs_float": self.error_vs_float, "applied": self.applied, "fusion": self.fusion,
                "claim": self.claim.to_dict() if self.claim is not None else None,
                "transforms": [r.to_dict() for r in self.records]}

    @property
    def fusion(self) -> dict[str, Any] | None:
        """What the transformer fusions did (``fusion_summary``); None when none ran."""
        return fusion_summary(self.records)


def fusion_summary(records: list) -> dict[str, Any] | None:
    """What the fusion passes of a transform run did, for the report: applied and verified, rolled back (why), or
    not a transformer. None when no fusion pass ran."""
    fusions = [r for r in records if r.name.startswith("fuse-transformer:")]
    if not fusions:
        return None
    applied = [r for r in fusions if r.status == "applied"]
    detected = next((r.details for r in fusions if r.details.get("model_type")), None)
    summary: dict[str, Any] = {
        "transformer": detected is not None,
        "detected": {k: detected[k] for k in ("model_type", "num_heads", "hidden_size", "evidence")} if detected
        else None,
        "applied": [r.name for r in applied],
        "fused": {op: n for r in applied for op, n in r.details.get("fused", {}).items()},
        "rolled_back": {r.name: r.message for r in fusions if r.status in ("rolled_back", "failed")},
        "skipped": next((r.details["skipped"] for r in fusions if r.details.get("skipped")), None),
    }
    if applied:
        worst = max((r.error_vs_previous or 0.0) for r in applied)
        summary["verdict"] = (f"fused ({', '.join(f'{n} {op}' for op, n in summary['fused'].items()) or 'rewritten'})"
                              f" and verified against the unfused model (max abs err {worst:.2e})")
        if summary["rolled_back"]:
            summary["verdict"] += "; rolled back: " + "; ".join(summary["rolled_back"].values())
    elif summary["rolled_back"]:
        summary["verdict"] = "fusion rolled back: " + "; ".join(f"{k}: {v}" for k, v in summary["rolled_back"].items())
    elif detected is not None:
        summary["verdict"] = "a transformer, but nothing was fused"
    else:
        summary["verdict"] = f"not fused: {summary['skipped']}"
    return summary


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


def pass_name(p: Callable) -> str:
    return getattr(p, "name", None) or getattr(p, "__name__", type(p).__name__)


def graph_changed(before: onnx.ModelProto, after: onnx.ModelProto) -> bool:
    """Did a pass change the computation? Metadata and producer fields do not count."""
    return (before.graph.SerializeToString(deterministic=True) != after.graph.SerializeToString(deterministic=True)
            or list(before.opset_import) != list(after.opset_import))


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    clone = onnx.ModelProto()
    clone.CopyFrom(model)
    return clone


def run_passes(model: onnx.ModelProto, passes: list[Pass], *, verifier: Verifier,
               progress: Callable[[str], None] | None = None) -> TransformReport:
    """Apply ``passes`` in order to ``model`` (not modified), verifying each result against the last verified model
    on ``verifier``'s feeds; a pass that breaks parity or raises is rolled back. The input model must run in
    onnxruntime (else ``RuntimeIncompatibleError``).

    The feeds are extended to every probe size of the claim the input model records (``claim_probes``), so the
    claim the result keeps was re-verified on every pass that was kept — a pass that breaks the model at any
    size the claim was proven at is rolled back like any other; the report's ``claim`` says where it was checked."""
    note = progress or (lambda _m: None)
    verifier, claim = claim_probes(model, verifier)
    float_outputs, verifier = baseline(model, verifier, claim)
    current, current_outputs = model, float_outputs
    report = TransformReport([], model, len(model.graph.node), serde.byte_size(model),
                             output_scales=output_scales(float_outputs), claim=claim)
    for p in passes:
        name = pass_name(p)
        note(f"{name}: transforming")
        record = TransformRecord(name, UNCHANGED, len(current.graph.node), len(current.graph.node),
                                 serde.byte_size(current), serde.byte_size(current))
        start = time.perf_counter()
        try:
            result = p(copy_model(current))
        except Exception as exc:  # a third-party tool crashed on this graph: keep the model we had
            record.status, record.message = FAILED, f"{name} raised {type(exc).__name__}: {first_line(exc, 300)}"
            result = None
        record.seconds = round(time.perf_counter() - start, 3)
        if result is not None:
            record.details = dict(result.details)
            record.nodes_after, record.size_after = len(result.model.graph.node), serde.byte_size(result.model)
        if result is not None and result.changed:
            note(f"{name}: verifying")
            start = time.perf_counter()
            verdict = verifier.judge(result.model, current_outputs, tolerance=result.tolerance,
                                     relative_to_scale=result.relative_to_scale)
            record.verify_seconds = round(time.perf_counter() - start, 3)
            record.error_vs_previous = verdict.max_abs_err
            if verdict.passed:
                record.status = APPLIED
                record.error_vs_float = verifier.max_abs_err(float_outputs, verdict.outputs)
                current, current_outputs = result.model, verdict.outputs
            else:
                record.status = ROLLED_BACK
                record.message = f"{name} broke parity, so it was rolled back: {verdict.reason}"
        report.records.append(record)
    report.model = _with_claim_of(current, model, applied=[r.name for r in report.records if r.status == APPLIED],
                                  claim=claim)
    report.error_vs_float = verifier.max_abs_err(float_outputs, current_outputs)
    return report


def output_scales(outputs: list[dict[str, Any]]) -> dict[str, float]:
    """Max |value| of each float output over every feed (finite elements): the scale a reduced-precision
    contract ties its tolerance to."""
    return engine_output_scales(outputs)


def _with_claim_of(model: onnx.ModelProto, original: onnx.ModelProto, *, applied: list[str],
                   claim: ClaimCheck | None = None) -> onnx.ModelProto:
    """The transformed model with the original's onnxgate metadata. Its claim (input specs, ``onnxgate.dims``) is
    the original's *because* ``run_passes`` re-verified every kept pass at each of the claim's probe sizes (see
    ``verifier.claim_probes``), or the narrowed one ``claim`` says was verified: call this only on a model verified
    that way. Some tools drop the model's metadata; onnxgate's keys must survive every pass. The applied
    transforms are recorded under ``onnxgate.transforms``."""
    import json

    if model is original and ((claim is not None and claim.metadata()) or applied):
        model = copy_model(model)  # the caller's model is never modified
    present = {p.key for p in model.metadata_props}
    for prop in original.metadata_props:
        if prop.key not in present:
            model.metadata_props.add(key=prop.key, value=prop.value)
    if claim is not None and claim.metadata():
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **claim.metadata()})
    if applied:
        previous = next((_recorded_transforms(p.value) for p in model.metadata_props
                         if p.key == "onnxgate.transforms"), [])
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                            "onnxgate.transforms": json.dumps(previous + applied)})
    return model


def _recorded_transforms(text: str) -> list:
    """The ``onnxgate.transforms`` list a model already records; a malformed entry is replaced, not trusted."""
    import json

    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return []
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
