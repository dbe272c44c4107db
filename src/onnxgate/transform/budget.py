"""The accuracy budget a quantized model must hold, and its measurement.

A budget is ``max_accuracy_drop`` (top-1 percentage points lost on labelled evaluation data) and/or ``max_error``
(max abs error against the FP32 model's outputs). It is measured twice: on the graph as written (onnxruntime
optimizations off: QuantizeLinear/DequantizeLinear emulated in float, the reference semantics) and as deployed
(onnxruntime's default optimizations, which fuse Q/DQ pairs into integer kernels). The two differ — integer kernels
round differently, and on x86 CPUs without VNNI the 8-bit multiply-add can saturate — and a budget that holds only
in emulation would not hold in production, so the worse of the two counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx

from ..errors import BadInputError
from .data import Dataset
from .verifier import session_for

#: (name in reports, onnxruntime optimization level)
LEVELS = (("as written", "disable"), ("as deployed", "all"))


@dataclass(frozen=True)
class Budget:
    max_accuracy_drop: float | None = None  # top-1 percentage points
    max_error: float | None = None  # max abs error vs the FP32 outputs

    @property
    def given(self) -> bool:
        return self.max_accuracy_drop is not None or self.max_error is not None

    def __str__(self) -> str:
        parts = []
        if self.max_accuracy_drop is not None:
            parts.append(f"top-1 drop <= {self.max_accuracy_drop:g} points")
        if self.max_error is not None:
            parts.append(f"max abs err <= {self.max_error:g}")
        return " and ".join(parts) or "none"


@dataclass
class Evaluation:
    """One model at one onnxruntime level on the evaluation data."""

    level: str
    max_abs_err: float
    accuracy: float | None = None  # top-1, 0..1
    drop: float | None = None  # percentage points lost against FP32

    def to_dict(self) -> dict:
        return asdict(self)


def run_outputs(model: onnx.ModelProto, data: Dataset, *, opt_level: str = "disable") -> list[list[np.ndarray]]:
    """Every output of ``model`` on every feed of ``data`` (outputs in graph order)."""
    session = session_for(model, what="the quantized model", opt_level=opt_level)
    names = {i.name for i in session.get_inputs()}
    return [session.run(None, {k: v for k, v in feed.items() if k in names}) for feed in data.feeds]


def top1(outputs: list[list[np.ndarray]], labels: np.ndarray) -> float:
    """Top-1 accuracy of the first output (logits ``[N, classes]``) across feeds."""
    logits = np.concatenate([o[0] for o in outputs])
    if logits.ndim != 2 or len(logits) != len(labels):
        raise BadInputError(f"Top-1 accuracy needs the model's first output to be logits [samples, classes] with one "
                            f"row per label; it is {list(logits.shape)} for {len(labels)} labels.",
                            hint="Give an error budget (--max-error) for models that are not classifiers.")
    return float((logits.argmax(axis=1) == labels).mean())


def evaluate(model: onnx.ModelProto, data: Dataset, reference: list[list[np.ndarray]],
             reference_accuracy: float | None) -> list[Evaluation]:
    """``model`` at each level of ``LEVELS`` against the FP32 ``reference`` outputs on ``data``."""
    evaluations = []
    for name, level in LEVELS:
        outputs = run_outputs(model, data, opt_level=level)
        err = max((float(np.abs(r.astype(np.float64) - o.astype(np.float64)).max())
                   for ref_feed, out_feed in zip(reference, outputs) for r, o in zip(ref_feed, out_feed) if r.size),
                  default=0.0)
        ev = Evaluation(name, err)
        if data.labels is not None and reference_accuracy is not None:
            ev.accuracy = top1(outputs, data.labels)
            ev.drop = round((reference_accuracy - ev.accuracy) * 100, 6)
        evaluations.append(ev)
    return evaluations


def check(budget: Budget, evaluations: list[Evaluation]) -> str | None:
    """None when every evaluation holds the budget, else what misses it."""
    misses = []
    for ev in evaluations:
        if budget.max_accuracy_drop is not None and ev.drop is not None and ev.drop > budget.max_accuracy_drop:
            misses.append(f"{ev.level}: top-1 drops {ev.drop:.2f} points (budget {budget.max_accuracy_drop:g})")
        if budget.max_error is not None and ev.max_abs_err > budget.max_error:
            misses.append(f"{ev.level}: max abs err {ev.max_abs_err:.3g} (budget {budget.max_error:g})")
    return "; ".join(misses) or None
