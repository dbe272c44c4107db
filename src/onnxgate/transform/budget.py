"""The accuracy budget a quantized model must hold, and its measurement.

A budget is ``max_accuracy_drop`` (top-1 percentage points lost on labelled evaluation data), ``max_error``
(max abs error against the FP32 model's outputs) and/or ``min_cosine`` (the lowest cosine similarity between one
sample's output and the FP32 one, over every float output and sample: what an embedding model's users compare).
It is measured twice: on the graph as written (onnxruntime optimizations off: QuantizeLinear/DequantizeLinear
emulated in float, the reference semantics) and as deployed (onnxruntime's default optimizations, which fuse Q/DQ
pairs into integer kernels). The two differ — integer kernels round differently, and on x86 CPUs without VNNI the
8-bit multiply-add can saturate — and a budget that holds only in emulation would not hold in production, so the
worse of the two counts.

An accuracy budget is only as good as the accuracy it is measured from (``AccuracyGate``). Two cases make it prove
nothing, and the gate fails then with that reason instead of passing:

* **too few samples**: with N labelled samples top-1 moves in steps of 100/N points, so a budget of b points needs
  N >= 100/b samples (a 1-point budget, 100) — below that, a drop of one sample already exceeds the budget, or
  none can be seen at all;
* **an FP32 model near chance**: a model that scores what a guess scores (0% when the labels do not name its
  classes, a random-weight model's constant answer) loses nothing when quantized: "0.00% vs 0.00%" holds every
  budget. Chance is the better of guessing uniformly among the model's classes and always answering the most
  frequent label; "near" is below twice chance, or below a quarter of the way from chance to 100% where twice
  chance would be out of reach (two classes).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

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
    min_cosine: float | None = None  # lowest per-sample cosine similarity to the FP32 outputs

    @property
    def given(self) -> bool:
        return self.max_accuracy_drop is not None or self.max_error is not None or self.min_cosine is not None

    def __str__(self) -> str:
        parts = []
        if self.max_accuracy_drop is not None:
            parts.append(f"top-1 drop <= {self.max_accuracy_drop:g} points")
        if self.max_error is not None:
            parts.append(f"max abs err <= {self.max_error:g}")
        if self.min_cosine is not None:
            parts.append(f"cosine to FP32 >= {self.min_cosine:g}")
        return " and ".join(parts) or "none"


@dataclass
class Evaluation:
    """One model at one onnxruntime level on the evaluation data."""

    level: str
    max_abs_err: float
    accuracy: float | None = None  # top-1, 0..1
    drop: float | None = None  # percentage points lost against FP32
    scaled_err: float | None = None  # worst over outputs of max abs err / max |FP32 output|
    cosine: float | None = None  # lowest per-sample cosine similarity to FP32 over float outputs
    drop_ci: tuple[float, float] | None = None  # 95% interval of ``drop`` (``drop_interval``), points
    discordant: tuple[int, int] | None = None  # samples only FP32 got right, samples only this model got right

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


def correct(outputs: list[list[np.ndarray]], labels: np.ndarray) -> np.ndarray:
    """Per sample, whether the first output's top-1 is its label."""
    return np.concatenate([o[0] for o in outputs]).argmax(axis=1) == labels


def drop_interval(lost: int, gained: int, samples: int, confidence: float = 0.95) -> tuple[float, float]:
    """The ``confidence`` interval of a paired top-1 drop in points: exact binomial on the discordant pairs
    (McNemar's conditioning). Of the ``lost + gained`` samples the two models disagree on, the share FP32 gets right
    is a binomial proportion; its Clopper-Pearson interval maps to the drop ``(lost - gained) / samples``. Samples
    both get right (or wrong) say nothing about the difference. No discordant pair: (0, 0) — the models agree on
    every sample's correctness, which bounds nothing beyond this data."""
    m = lost + gained
    if m == 0 or samples <= 0:
        return (0.0, 0.0)
    alpha = (1 - confidence) / 2
    low = 0.0 if lost == 0 else _binom_quantile(lost, m, alpha, upper=False)
    high = 1.0 if lost == m else _binom_quantile(lost, m, alpha, upper=True)
    return (round(m * (2 * low - 1) / samples * 100, 4), round(m * (2 * high - 1) / samples * 100, 4))


def _binom_quantile(k: int, m: int, alpha: float, *, upper: bool) -> float:
    """Clopper-Pearson end for k successes of m: the p with P(X >= k | p) = alpha (lower end) or
    P(X <= k | p) = alpha (upper end), by bisection (numpy and the standard library only: no scipy here)."""
    def tail(p: float) -> float:  # P(X <= k) for the upper end, P(X >= k) for the lower end
        terms = [math.exp(math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1)
                          + (i * math.log(p) if i else 0.0) + ((m - i) * math.log1p(-p) if m - i else 0.0))
                 for i in (range(0, k + 1) if upper else range(k, m + 1))]
        return math.fsum(terms)

    lo, hi = 1e-12, 1 - 1e-12
    for _ in range(80):
        mid = (lo + hi) / 2
        # P(X <= k) falls as p grows; P(X >= k) rises
        if (tail(mid) > alpha) == upper:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def evaluate(model: onnx.ModelProto, data: Dataset, reference: list[list[np.ndarray]],
             reference_accuracy: float | None, *, levels=LEVELS) -> list[Evaluation]:
    """``model`` at each level of ``levels`` (default ``LEVELS``) against the FP32 ``reference`` outputs on
    ``data``."""
    return [evaluate_outputs(name, run_outputs(model, data, opt_level=level), data, reference, reference_accuracy)
            for name, level in levels]


def evaluate_outputs(name: str, outputs: list[list[np.ndarray]], data: Dataset, reference: list[list[np.ndarray]],
                     reference_accuracy: float | None) -> Evaluation:
    """One evaluation (``name``: where it ran) of ``outputs`` — a quantized model's outputs on ``data``, computed
    by any runtime — against the FP32 ``reference`` outputs."""
    scales = output_scales(reference)
    errs = [0.0] * len(scales)
    cosine = None
    for feed, ref_feed, out_feed in zip(data.feeds, reference, outputs):
        for i, (r, o) in enumerate(zip(ref_feed, out_feed)):
            if r.size:
                errs[i] = max(errs[i], float(np.abs(r.astype(np.float64) - o.astype(np.float64)).max()))
            low = min_cosine(r, o, mask=feed.get(MASK_INPUT))
            cosine = low if cosine is None or (low is not None and low < cosine) else cosine
    scaled = [e / s if s > 0 else (0.0 if e == 0 else math.inf) for e, s in zip(errs, scales)]
    ev = Evaluation(name, max(errs, default=0.0), scaled_err=max(scaled, default=0.0), cosine=cosine)
    if data.labels is not None and reference_accuracy is not None:
        ev.accuracy = top1(outputs, data.labels)
        ev.drop = round((reference_accuracy - ev.accuracy) * 100, 6)
        ref_right, got_right = correct(reference, data.labels), correct(outputs, data.labels)
        ev.discordant = (int((ref_right & ~got_right).sum()), int((got_right & ~ref_right).sum()))
        ev.drop_ci = drop_interval(*ev.discordant, len(data.labels))
    return ev


MASK_INPUT = "attention_mask"  # a text model's padding mask: padded positions are left out of the cosine


def min_cosine(ref: np.ndarray, got: np.ndarray, *, mask: np.ndarray | None = None) -> float | None:
    """The lowest cosine similarity between one sample of ``got`` and the same sample of ``ref`` (rows: the first
    axis; a 0-d or 1-d output is one sample); None for non-float outputs. Two all-zero rows count as equal.
    ``mask`` (a text model's ``attention_mask``, ``[batch, sequence]``): an output whose leading dims are the
    mask's is compared on the unmasked positions only — what a padded position computes is never used."""
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.dtype.kind != "f" or ref.shape != got.shape or not ref.size:
        return None
    if mask is not None and ref.ndim >= 2 and ref.shape[:2] == np.shape(mask):
        keep = np.asarray(mask) != 0
        return min(c for c in (min_cosine(ref[i][keep[i]][None], got[i][keep[i]][None]) for i in range(len(ref))
                               if keep[i].any()) if c is not None) if keep.any() else None
    a = ref.reshape(ref.shape[0] if ref.ndim > 1 else 1, -1).astype(np.float64)
    b = got.reshape(a.shape).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = (a * b).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(norms > 0, dots / norms, np.where(np.abs(a - b).sum(axis=1) == 0, 1.0, 0.0))
    return float(np.nan_to_num(cos, nan=0.0).min())


def output_scales(outputs: list[list[np.ndarray]]) -> list[float]:
    """Max |value| of each output (graph order) over every feed: the scale errors are judged against."""
    scales: list[float] = []
    for feed in outputs:
        for i, value in enumerate(feed):
            arr = np.abs(np.asarray(value, dtype=np.float64)) if np.asarray(value).dtype.kind in "fiu" else None
            top = float(arr[np.isfinite(arr)].max()) if arr is not None and arr.size and np.isfinite(arr).any() else 0.0
            if i < len(scales):
                scales[i] = max(scales[i], top)
            else:
                scales.append(top)
    return scales


#: Samples per point of budget: a budget of b points needs ceil(SAMPLES_PER_POINT / b) labelled samples.
SAMPLES_PER_POINT = 100


@dataclass
class AccuracyGate:
    """Whether a top-1 budget can judge anything on this evaluation data (see the module docstring)."""

    samples: int
    classes: int | None  # the model's (its logits' width)
    fp32_accuracy: float
    chance: float
    chance_basis: str
    threshold: float  # FP32 top-1 below this is near chance
    required_samples: int | None
    problems: list[str] = field(default_factory=list)

    @property
    def problem(self) -> str | None:
        return "; ".join(self.problems) or None

    def to_dict(self) -> dict:
        return {**asdict(self), "problem": self.problem}


def required_samples(max_accuracy_drop: float) -> int | None:
    """Labelled samples a budget of ``max_accuracy_drop`` points needs (None for a budget of 0: no count
    resolves it, and any measured drop fails it anyway)."""
    return math.ceil(SAMPLES_PER_POINT / max_accuracy_drop - 1e-9) if max_accuracy_drop > 0 else None


def accuracy_gate(budget: Budget, labels: np.ndarray | None, fp32_accuracy: float | None,
                  classes: int | None) -> AccuracyGate | None:
    """The gate on the FP32 accuracy a top-1 budget is measured from; None when no top-1 budget applies."""
    if budget.max_accuracy_drop is None or labels is None or fp32_accuracy is None or not len(labels):
        return None
    labels = np.asarray(labels).reshape(-1)
    n = int(len(labels))
    values, counts = np.unique(labels, return_counts=True)
    majority, share = values[counts.argmax()], float(counts.max()) / n
    uniform = 1.0 / classes if classes else 0.0
    if share >= uniform:
        tied = len(values) > 1 and counts.min() == counts.max()
        chance, basis = share, (f"always answering any one label ({int(counts.max())} of {n} samples each)" if tied
                                else f"always answering {majority}, the most frequent label ({int(counts.max())} "
                                     f"of {n} samples)")
    else:
        chance, basis = uniform, f"guessing among the model's {classes} classes"
    threshold = chance + min(chance, (1.0 - chance) / 4)
    gate = AccuracyGate(n, classes, fp32_accuracy, chance, basis, threshold,
                        required_samples(budget.max_accuracy_drop))
    if gate.required_samples is not None and n < gate.required_samples:
        gate.problems.append(f"{n} labelled samples measure top-1 in steps of {100 / n:.3g} points, too coarse for a "
                             f"{budget.max_accuracy_drop:g}-point budget (it needs at least {gate.required_samples})")
    if len(values) == 1:
        gate.problems.append(f"every evaluation sample has the label {majority}: a model answering only that "
                             "scores 100%, so top-1 on this data says nothing about the model")
    elif fp32_accuracy < threshold:
        gate.problems.append(f"the FP32 model's top-1 is {fp32_accuracy * 100:.2f}%, near chance ({chance * 100:.2f}%, "
                             f"{basis}): a drop measured from there proves nothing — check that the labels name the "
                             "model's classes and that the model has its trained weights")
    return gate


def check(budget: Budget, evaluations: list[Evaluation]) -> str | None:
    """None when every evaluation holds the budget, else what misses it."""
    misses = []
    for ev in evaluations:
        if budget.max_accuracy_drop is not None and ev.drop is not None and ev.drop > budget.max_accuracy_drop:
            misses.append(f"{ev.level}: top-1 drops {ev.drop:.2f} points (budget {budget.max_accuracy_drop:g})")
        if budget.max_error is not None and ev.max_abs_err > budget.max_error:
            misses.append(f"{ev.level}: max abs err {ev.max_abs_err:.3g} (budget {budget.max_error:g})")
        if budget.min_cosine is not None and (ev.cosine is None or ev.cosine < budget.min_cosine):
            found = "no float output to compare" if ev.cosine is None else f"{ev.cosine:.4f}"
            misses.append(f"{ev.level}: cosine to FP32 {found} (budget >= {budget.min_cosine:g})")
    return "; ".join(misses) or None


def class_logits(outputs: list[np.ndarray], samples: int, *, what: str = "the model") -> np.ndarray:
    """One model's first output over every feed, as logits ``[samples, classes]``; exit 2 when it is not that (top-k
    accuracy of a model that is not a classifier means nothing)."""
    logits = np.concatenate([np.asarray(o) for o in outputs]) if outputs else np.zeros((0, 0))
    if logits.ndim != 2 or len(logits) != samples or not logits.shape[1]:
        raise BadInputError(f"Top-1 accuracy needs {what}'s first output to be logits [samples, classes] with one "
                            f"row per sample; it is {list(logits.shape)} for {samples} samples.",
                            hint="Leave --eval out for models that are not classifiers: verification already "
                                 "compares every output with PyTorch (give real inputs with --data).")
    return logits


def topk_accuracy(logits: np.ndarray, targets: np.ndarray, k: int) -> float | None:
    """The share of rows whose target class is among the ``k`` highest logits (ties: the lowest class index first,
    as ``argmax``); None when the model has fewer than ``k + 1`` classes (top-k of k classes is always 100%)."""
    logits, targets = np.asarray(logits), np.asarray(targets).reshape(-1)
    if k > 1 and logits.shape[1] <= k:
        return None
    if k == 1:
        return float((logits.argmax(axis=1) == targets).mean())
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float((top == targets[:, None]).any(axis=1).mean())
