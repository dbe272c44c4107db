"""Batch invariance for served artifacts (issue 28 item 3): a row's output must not depend on what it is batched
with, or dynamic batching changes answers.

For each golden row (at most ``max_rows``), the row is run alone, then inside batches of random companions at every
batch size given (``sizes``: the verified ones; ``batch_sizes`` picks a bounded set from a claimed domain), at a
random position, ``trials`` times per size; its output rows are compared with the row alone through the engine at
``policy`` (a claim's tolerances, or the noise tolerances of ``noise.py``). Where a dim is padded (``Padding``:
sequences padded to the longest in the batch, with a mask input), the row is also padded to its companions' length
and its output cropped back before the comparison. Companions are other golden rows and fresh rows drawn like the
golden ones (floats normal with each input's mean and spread, integers and bools within the values seen or the
declared range): real and random companions both.

The result holds the measured bound (the largest |row in a batch - row alone| per output over every trial), the
largest batch size at which every trial held (``max_batch``: what ``serve --max-batch`` may enable) and, when a
trial failed, why dynamic batching is refused. Torch-free: the model is any runner or callable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BadInputError
from ..spec import Dim
from . import engine
from .tolerance import sci

Feed = dict[str, np.ndarray]

MAX_SIZES = 6  # batch sizes checked at most (``batch_sizes``)
MAX_ROWS = 4  # golden rows checked at most
TRIALS = 2  # random batches per row and size


@dataclass(frozen=True)
class Padding:
    """A padded dim: ``axes`` (input name -> the axis padded, e.g. the sequence axis of ``input_ids``), the pad
    ``values`` (input name -> value; default 0), the ``mask`` input (1 on real positions, 0 on padding; None: no
    mask) and ``outputs`` (output name -> its axis along the padded dim, cropped back before comparing; outputs not
    named have no such axis)."""

    axes: Mapping[str, int]
    values: Mapping[str, float] = field(default_factory=dict)
    mask: str | None = None
    outputs: Mapping[str, int] = field(default_factory=dict)
    extra: tuple[int, ...] = (1, 3)  # positions of padding tried


@dataclass
class BatchInvariance:
    """What was measured: the sizes tried, per output the largest |row in a batch - row alone| (``bound``) and
    how much of its tolerance that used (``used``), the largest size that held at every smaller one too
    (``max_batch``; None: not even the smallest), the trials run, and the failures (row, size, position, why)."""

    sizes: tuple[int, ...]
    bound: dict[str, float]
    used: float
    max_batch: int | None
    trials: int
    failures: list[str] = field(default_factory=list)
    padded: bool = False
    tolerance: str | None = None
    used_by: dict[str, float] = field(default_factory=dict)  # per output: the largest share of its tolerance used

    @property
    def passed(self) -> bool:
        return not self.failures

    def refusal(self) -> str | None:
        """Why dynamic batching is refused (None: it may be enabled up to ``max_batch``)."""
        if self.passed:
            return None
        if not self.bound:  # nothing compared: the batch did not run, or no output followed the batch dim
            return f"dynamic batching refused: {self.failures[0]}"
        ranked = self.used_by or self.bound
        worst = max(ranked, key=ranked.get) if ranked else "?"
        within = f"; batching holds up to {self.max_batch} rows" if self.max_batch and self.max_batch > 1 else ""
        share = self.used_by.get(worst)
        times = f" ({share:.3g}x its tolerance)" if share is not None and math.isfinite(share) else ""
        return (f"dynamic batching refused: a row's output '{worst}' changes by up to {sci(self.bound.get(worst, 0))}"
                f"{times} with its batch companions ({self.failures[0]}){within}")

    def summary(self) -> str:
        bound = ", ".join(f"{n} {sci(v)}" for n, v in self.bound.items())
        if self.passed:
            return (f"batch invariant at sizes {', '.join(map(str, self.sizes))}{' (padded too)' if self.padded else ''}"
                    f": a row's output moves by at most {bound} with its companions ({self.trials} trials)")
        return self.refusal() or ""

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "sizes": list(self.sizes), "bound": dict(self.bound), "used": self.used,
                "max_batch": self.max_batch, "trials": self.trials, "padded": self.padded,
                "tolerance": self.tolerance, "failures": self.failures[:10], "used_by": dict(self.used_by),
                "refusal": self.refusal()}


def batch_sizes(dim: Dim, limit: int = MAX_SIZES) -> list[int]:
    """A bounded set of sizes >= 2 from a claimed batch domain: 2, 3, powers of two, the largest claimed size."""
    top = dim.max if dim.max is not None else 64
    wanted = [2, 3, *(2 ** k for k in range(2, 12)), top]
    sizes = sorted({s for s in wanted if 2 <= s <= top and dim.contains(s)})
    if len(sizes) > limit:  # keep the smallest ones and the largest
        sizes = sizes[:limit - 1] + [sizes[-1]]
    return sizes


def batch_invariance(model: Any, golden: Feed, sizes: Sequence[int], *,
                     policy: engine.TolerancePolicy | None = None, padding: Padding | None = None,
                     value_ranges: Mapping[str, tuple[float, float]] | None = None, max_rows: int = MAX_ROWS,
                     trials: int = TRIALS, seed: int = 0, batch_axis: int = 0,
                     row_budget: int | None = None) -> BatchInvariance:
    """Check that each of the first ``max_rows`` golden rows computes the same alone as inside batches of random
    companions at each of ``sizes`` (and padded, with ``padding``), judged at ``policy``. ``row_budget``: at each
    size, batches stop once they would run more rows than this in all (at least one batch per size is run), so the
    largest sizes of a costly model get one random batch rather than ``max_rows * trials``."""
    policy = policy or engine.TolerancePolicy()
    rng = np.random.default_rng(seed)
    rows = _rows(golden, batch_axis)
    sizes = sorted({int(s) for s in sizes if int(s) >= 2})
    state = _Measure(policy)
    runs = dict.fromkeys(sizes, 0)

    def within(size: int) -> bool:
        if row_budget is not None and runs[size] and (runs[size] + 1) * size > row_budget:
            return False
        runs[size] += 1
        return True

    for r in range(min(rows, max_rows)):
        row = {k: np.take(v, [r], axis=batch_axis) for k, v in golden.items()}
        alone = engine.run_on(model, row)
        for size in sizes:
            for _ in range(trials):
                if not within(size):
                    break
                pos = int(rng.integers(size))
                batch = _batch(row, golden, size, pos, rng, value_ranges or {}, batch_axis)
                state.judge(alone, engine.run_on(model, batch), pos, batch_axis, f"row {r} at {pos} of {size}", size)
            if padding is not None:
                for extra in padding.extra:
                    if not within(size):
                        break
                    pos = int(rng.integers(size))
                    batch = _batch(row, golden, size, pos, rng, value_ranges or {}, batch_axis)
                    batch = _padded(batch, pos, extra, padding, rng, batch_axis)
                    got = _cropped(engine.run_on(model, batch), padding, alone)
                    state.judge(alone, got, pos, batch_axis, f"row {r} at {pos} of {size}, padded by {extra}", size)
    bad = sorted({s for s, ok in state.held.items() if not ok})
    held = [s for s in sizes if not bad or s < bad[0]]
    return BatchInvariance(tuple(sizes), state.bound, state.used, max(held) if held else (1 if sizes else None),
                           state.trials, state.failures, padding is not None, policy.describe() or policy.source,
                           state.used_by)


class _Measure:
    def __init__(self, policy: engine.TolerancePolicy):
        self.policy = policy
        self.bound: dict[str, float] = {}
        self.used = 0.0
        self.trials = 0
        self.failures: list[str] = []
        self.held: dict[int, bool] = {}
        self.used_by: dict[str, float] = {}

    def judge(self, alone, batched, pos: int, axis: int, label: str, size: int) -> None:
        self.trials += 1
        mine = {}
        for name, value in batched.items():
            value = np.asarray(value)
            if value.ndim <= axis or value.shape[axis] != size:
                self.failures.append(f"{label}: output '{name}' does not follow the batch dim "
                                     f"(shape {list(value.shape)})")
                self.held[size] = False
                continue
            mine[name] = np.take(value, [pos], axis=axis)
        comparisons = engine.compare(alone, mine, self.policy, reference_label="the row alone")
        ok = True
        for c in comparisons:
            if c.max_abs_err is not None:
                self.bound[c.name] = max(self.bound.get(c.name, 0.0), c.max_abs_err)
            if c.tolerance_used is not None:
                self.used = max(self.used, c.tolerance_used)
                self.used_by[c.name] = max(self.used_by.get(c.name, 0.0), c.tolerance_used)
            if not c.passed:
                ok = False
                self.failures.append(f"{label}: {c.name}: {c.reason}")
        self.held[size] = self.held.get(size, True) and ok


def _rows(golden: Feed, axis: int) -> int:
    counts = {np.shape(v)[axis] for v in golden.values() if np.ndim(v) > axis}
    if len(counts) != 1:
        raise BadInputError(f"The golden inputs do not share a batch dim on axis {axis}.",
                            hint="Give one feed whose inputs all have the batch dim on the same axis.")
    return counts.pop()


def _batch(row: Feed, golden: Feed, size: int, pos: int, rng: np.random.Generator,
           ranges: Mapping[str, tuple[float, float]], axis: int) -> Feed:
    """``size`` rows: ``row`` at ``pos``, each other one a golden row or a fresh random row (even odds)."""
    n = _rows(golden, axis)
    picks = [int(rng.integers(n)) if rng.random() < 0.5 else -1 for _ in range(size)]
    out = {}
    for name, value in golden.items():
        parts = []
        for i, pick in enumerate(picks):
            if i == pos:
                parts.append(row[name])
            elif pick >= 0:
                parts.append(np.take(value, [pick], axis=axis))
            else:
                parts.append(_fresh(value, row[name].shape, rng, ranges.get(name)))
        out[name] = np.concatenate(parts, axis=axis)
    return out


def _fresh(like: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator, declared) -> np.ndarray:
    """A random row drawn like the golden ones: floats normal with their mean and spread (within a declared range),
    integers uniform within the declared range or the values seen, bools fair coins."""
    like = np.asarray(like)
    if like.dtype == np.bool_:
        return rng.random(shape) < 0.5
    if like.dtype.kind in "iu":
        low, high = declared or (int(like.min()), int(like.max()))
        return rng.integers(int(low), int(high), size=shape, endpoint=True).astype(like.dtype)
    values = rng.normal(float(like.mean()), float(like.std()) or 1.0, shape)
    if declared:
        values = np.clip(values, *declared)
    return values.astype(like.dtype)


def _padded(batch: Feed, pos: int, extra: int, padding: Padding, rng: np.random.Generator, axis: int) -> Feed:
    """Every row extended by ``extra`` positions along the padded axis: the row at ``pos`` with padding (pad value,
    mask 0), its companions with real (random, mask 1) values, as a batch padded to its longest sequence is."""
    out = dict(batch)
    for name, pad_axis in padding.axes.items():
        value = np.asarray(batch[name])
        shape = list(value.shape)
        shape[pad_axis] = extra
        if name == padding.mask:
            tail = np.ones(shape, value.dtype)
        else:
            tail = _fresh(value, tuple(shape), rng, None)
        index = [slice(None)] * value.ndim
        index[axis] = pos
        tail[tuple(index)] = 0 if name == padding.mask else padding.values.get(name, 0)
        out[name] = np.concatenate([value, tail], axis=pad_axis)
    return out


def _cropped(outputs: dict, padding: Padding, alone: dict) -> dict:
    """Outputs along the padded dim cut back to the unpadded length (the row alone's)."""
    out = {}
    for name, value in outputs.items():
        value = np.asarray(value)
        axis = padding.outputs.get(name)
        if axis is not None and name in alone:
            value = np.take(value, range(np.shape(alone[name])[axis]), axis=axis)
        out[name] = value
    return out


# ------------------------------------------------------------------------------- the proof a bundle records

RECORD_VERSION = 1
PROOF_ROWS = 2  # golden rows a bundle's proof checks (each alone, then in batches at every size)
PROOF_TRIALS = 2  # random batches per row and size
PROOF_ROW_BUDGET = 16  # rows run in batches per size (beyond: one batch at that size): bounds a bundle's cost


def leading_batch_dim(inputs: Sequence[Sequence[Any]], outputs: Sequence[Sequence[Any] | None],
                      domains: Mapping[str, Dim]) -> Dim | None:
    """The dim dynamic batching merges along (as ``serve`` finds it): the leading dim every input shape names alike,
    with a claimed domain of more than one size, and a leading dim on every output that is not fixed; None else."""
    leading = {shape[0] if shape else None for shape in inputs}
    if len(leading) != 1:
        return None
    name = leading.pop()
    dim = domains.get(name) if isinstance(name, str) else None
    if dim is None or dim.max == dim.min:
        return None
    if any(not shape or (isinstance(shape[0], int) and not isinstance(shape[0], bool)) for shape in outputs):
        return None
    return dim


def padding_of(inputs: Sequence[tuple[str, Sequence[Any], str, Any]], outputs: Sequence[tuple[str, Any]],
               domains: Mapping[str, Dim], golden: Feed, batch: str) -> Padding | None:
    """The padded dim of a sequence model, when its inputs say so plainly: one integer or bool input named like a
    mask (``attention_mask``) with a claimed dynamic dim besides the batch (the sequence), every output's dims
    fixed, the batch or that dim (so a padded output can be cropped back), and the golden length plus 1 or 3 inside
    the dim's claimed sizes. ``inputs``: (name, shape, dtype, value range); integer inputs pad with 0, or the low
    end of their value range when 0 is outside it. None: no padded dim is checked."""
    masks = [(name, list(shape)) for name, shape, dtype, _ in inputs
             if "mask" in name.lower() and (str(dtype).startswith(("int", "uint")) or dtype == "bool")]
    if len(masks) != 1:
        return None
    mask, mask_shape = masks[0]
    seq = next((d for d in mask_shape[1:] if isinstance(d, str) and d != batch and d in domains), None)
    if seq is None or mask not in golden:
        return None
    axes: dict[str, int] = {}
    for name, shape, _, _ in inputs:
        shape = list(shape)
        if shape[1:].count(seq) > 1:
            return None
        if seq in shape[1:]:
            axes[name] = shape.index(seq, 1)
    out_axes: dict[str, int] = {}
    for name, shape in outputs:
        if shape is None:
            return None
        for axis, d in enumerate(list(shape)[1:], 1):
            if isinstance(d, int) and not isinstance(d, bool):
                continue
            if d != seq or name in out_axes:
                return None  # another dynamic dim (or the sequence twice): it could not be cropped back
            out_axes[name] = axis
    length = int(np.shape(golden[mask])[axes[mask]])
    extra = tuple(e for e in (1, 3) if domains[seq].contains(length + e))
    if not extra:
        return None
    values = {}
    for name, _, dtype, value_range in inputs:
        if name in axes and name != mask and value_range and not value_range[0] <= 0 <= value_range[1]:
            values[name] = value_range[0]
    return Padding(axes, values, mask, out_axes, extra)


def prove(run: Callable[[Feed], Mapping[str, np.ndarray]], golden: Feed, dim: Dim, *,
          tolerances: Mapping[str, Any], sizes: Sequence[int] | None = None,
          value_ranges: Mapping[str, tuple[float, float]] | None = None, runtime: str = "onnxruntime",
          max_rows: int = PROOF_ROWS, trials: int = PROOF_TRIALS, padding: Padding | None = None,
          row_budget: int | None = PROOF_ROW_BUDGET) -> dict[str, Any]:
    """Batch invariance of ``run`` (a session's run on one feed) on the golden rows at ``sizes`` (default:
    ``batch_sizes(dim)``), judged at the per-output ``tolerances`` (``Tolerance``s), within ``row_budget`` rows per
    size, and padded along ``padding`` (``padding_of``): the record ``claim.batching`` holds (``record``). A batch
    the runtime cannot run at all refuses batching with its error."""
    sizes = list(sizes) if sizes is not None else batch_sizes(dim)
    started = time.perf_counter()
    policy = engine.TolerancePolicy(fixed=dict(tolerances))
    try:
        result = batch_invariance(run, golden, sizes, policy=policy, value_ranges=value_ranges, max_rows=max_rows,
                                  trials=trials, row_budget=row_budget, padding=padding)
    except BadInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the runtime's own error (onnxruntime raises its own classes)
        text = " ".join(str(exc).split())[:300]
        result = BatchInvariance(tuple(sorted({int(s) for s in sizes if int(s) >= 2})), {}, math.inf, 1, 0,
                                 [f"a batch of golden and random rows did not run: {type(exc).__name__}: {text}"],
                                 padding is not None)
    tolerance = ", ".join(f"{name} {tol}" for name, tol in tolerances.items())
    doc = record(result, dim, runtime=runtime, seconds=time.perf_counter() - started,
                 rows=min(_rows(golden, 0), max_rows), tolerance=tolerance or None)
    if padding is not None:
        doc["padding"] = {"axes": dict(padding.axes), "mask": padding.mask, "extra": list(padding.extra)}
    return doc


def record(result: BatchInvariance, dim: Dim, *, runtime: str, seconds: float, rows: int,
           tolerance: str | None = None) -> dict[str, Any]:
    """What ``claim.batching`` records: the batch dim and its claimed sizes (``batch_domain``), the sizes tried,
    per output the largest |row in a batch - row alone| (``bound``) and its share of the output's tolerance
    (``used_by``), the largest size that held (``max_batch``), whether dynamic batching is allowed (``allowed``:
    some size >= 2 held) and, when not everywhere, why (``refusal``); the runtime it ran on and the seconds it
    took."""
    doc = result.to_dict()
    doc["used"] = _finite(doc["used"])
    doc["used_by"] = {k: _finite(v) for k, v in doc["used_by"].items()}
    doc["bound"] = {k: _finite(v) for k, v in doc["bound"].items()}
    doc["failures"] = doc["failures"][:5]
    if tolerance:
        doc["tolerance"] = tolerance
    return {"version": RECORD_VERSION, "batch_dim": dim.name,
            "batch_domain": {"min": dim.min, "max": dim.max, "multiple_of": dim.multiple_of},
            **doc, "allowed": bool(result.max_batch and result.max_batch >= 2), "rows": rows,
            "summary": result.summary(), "runtime": runtime, "seconds": round(seconds, 3)}


def _finite(value: float) -> float | None:
    """JSON has no infinity: an output that could not be compared at all records None."""
    return float(value) if value is not None and math.isfinite(value) else None


def read_record(doc: Any) -> dict[str, Any] | None:
    """A recorded ``claim.batching`` in the form this onnxgate writes (None when absent or not in that form: the
    proof is then run again)."""
    if not isinstance(doc, Mapping) or doc.get("version") != RECORD_VERSION:
        return None
    sizes, max_batch = doc.get("sizes"), doc.get("max_batch")
    if not isinstance(doc.get("passed"), bool) or not isinstance(doc.get("allowed"), bool):
        return None
    if not isinstance(sizes, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes):
        return None
    if max_batch is not None and (not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1):
        return None
    if not isinstance(doc.get("bound"), Mapping) or not isinstance(doc.get("batch_dim"), str):
        return None
    return dict(doc)


__all__ = ["BatchInvariance", "Padding", "batch_invariance", "batch_sizes", "leading_batch_dim", "padding_of",
           "prove", "read_record", "record", "MAX_ROWS", "MAX_SIZES", "TRIALS"]
