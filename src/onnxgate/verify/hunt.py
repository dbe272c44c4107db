"""Inputs that hunt for divergence (issue 28 item 2).

A sampled proof judges a candidate on a few random feeds; a bug behind a branch random inputs never take (a
threshold at 3 sigma, a token id above some value, an overflow at large magnitudes) passes it. After the sampled
proof passes, ``hunt`` searches the declared input space for the feed that maximises the candidate-vs-reference
error, within a budget counted in evaluations (one evaluation = the reference and the candidate on one feed):

1. ``random``: a quarter of the budget on seeded random feeds, drawn as the proof draws them
   (``inputs.random_inputs``: standard normal, uniform in a declared ``value_range``, integers in their range);
2. ``edges``: integer and bool inputs at the ends of their range (all low, all high, a random mix of both);
3. ``local``: from the best feeds so far, a (1+1) evolution strategy on the input values — each step changes one
   block (one channel of one row, or one element) by scaling it, adding Gaussian noise, or (integers) moving it to
   an edge or a random value; a step is kept when the error does not drop, and the step size grows while steps
   are kept (1/5th rule), so the search also drifts across plateaus where the error is flat.

Values stay in the declared space: a ``value_range`` when the spec has one, else ``float_bound`` (6: six standard
deviations of the proof's standard-normal feeds). The error of a feed is the engine's "share of the tolerance
used" (``ParityRecord.tolerance_used``: > 1 fails) at the given policy, so outputs of different scales compare.
Everything is seeded: the same seed, budget and models give the same worst feed. ``seconds`` caps the time: the
second and third evaluations are timed (the first warms both sides up) and the budget shrunk to what fits
(``HuntResult.capped``) before the phases are shared out, so a large model gets a shorter hunt of the same shape
rather than a random phase and nothing else; past ``seconds`` no evaluation starts (on a machine slower than its
first evaluations said, fewer run than the shrunk budget). The result holds the worst feed (for the bundle's golden set:
``golden_with``, ``worst_row``) and the error distribution of random vs hunted feeds.
Torch-free: the reference is any runner or callable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..spec import InputSpec
from . import engine
from .inputs import DEFAULT_INT_RANGE, numpy_dtype, random_inputs
from .tolerance import sci

Feed = dict[str, np.ndarray]

DEFAULT_BUDGET = 200  # evaluations (reference + candidate on one feed each)
FLOAT_BOUND = 6.0  # |value| a float input without a declared range is searched within
RANDOM_SHARE = 0.25  # of the budget spent on random feeds before the local search


@dataclass
class HuntResult:
    """The hunt's outcome: the ``worst`` feed found, its ``score`` (share of the tolerance used: > 1 fails) and
    the engine's record on it, the scores of the ``random`` feeds and of the ``hunted`` ones (edges and local
    search), the evaluations spent and the seed."""

    worst: Feed
    score: float
    record: engine.ParityRecord
    random: list[float] = field(default_factory=list)
    hunted: list[float] = field(default_factory=list)
    evaluations: int = 0
    seed: int = 0
    found_by: str = "random"
    budget: int = 0  # the evaluations allowed (the budget given, or what fitted in ``seconds``)
    capped: bool = False  # the budget was shrunk to fit the time cap

    @property
    def passed(self) -> bool:
        """No feed found on which the candidate leaves its tolerance."""
        return self.record.passed

    def distribution(self) -> dict[str, dict[str, float]]:
        """Median, 90th percentile and max of the scores of random and hunted feeds."""
        return {label: _stats(scores) for label, scores in (("random", self.random), ("hunted", self.hunted))}

    def summary(self) -> str:
        d = self.distribution()
        verdict = (f"found a divergence ({self.found_by}): {self.record.reason()}" if not self.passed else
                   "no divergence found")
        return (f"divergence hunt, {self.evaluations} evaluations (seed {self.seed}): {verdict}; tolerance used by "
                f"random feeds median {_num(d['random']['median'])} max {_num(d['random']['max'])}, by hunted "
                f"feeds median {_num(d['hunted']['median'])} max {_num(d['hunted']['max'])}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (an infinite score, a feed the candidate could not run, is null)."""
        return {"passed": self.passed, "score": _finite_or_none(self.score), "evaluations": self.evaluations,
                "budget": self.budget, "capped": self.capped, "seed": self.seed, "found_by": self.found_by,
                "reason": self.record.reason(),
                "distribution": {label: {k: _finite_or_none(v) if isinstance(v, float) else v for k, v in d.items()}
                                 for label, d in self.distribution().items()}}


def hunt(reference: Any, candidate: Any, specs: Sequence[InputSpec], sizes: Mapping[str, int], *,
         policy: engine.TolerancePolicy | None = None, budget: int = DEFAULT_BUDGET, seed: int = 0,
         restarts: int = 3, float_bound: float = FLOAT_BOUND, reference_label: str = "PyTorch",
         candidate_label: str = "ONNX", seconds: float | None = None) -> HuntResult:
    """Search the feeds of ``specs`` at ``sizes`` (dim name -> size) for the one where ``candidate`` differs most
    from ``reference`` (runners or callables) at ``policy``, spending at most ``budget`` evaluations (and, with
    ``seconds``, about that much time: the budget shrinks to what the second and third evaluations say
    fits)."""
    specs = list(specs)
    rng = np.random.default_rng(seed)
    state = _Hunter(reference, candidate, policy or engine.TolerancePolicy(), budget, reference_label,
                    candidate_label)
    bounds = {s.name: _bounds(s, float_bound) for s in specs}
    pool: list[tuple[float, int, Feed]] = []  # (score, order, feed) of random feeds, for the restarts
    randoms, i, first = max(1, int(budget * RANDOM_SHARE)), 0, time.perf_counter()
    began = first
    if seconds is not None:
        state.deadline = first + seconds
    while i < randoms and not state.spent():
        feed = random_inputs(specs, dict(sizes), seed=seed * 1_000_003 + i)
        score = state.evaluate(feed, "random")
        pool.append((score, i, feed))
        i += 1
        if i == 1:  # the first evaluation warms both sides up: the next two are timed
            began = time.perf_counter()
        elif seconds is not None and i == 3:
            fits = max(i, 1 + int((seconds - (began - first)) / ((time.perf_counter() - began) / 2)))
            if fits < budget:
                budget = state.budget = fits
                state.capped = True
                randoms = max(i, int(budget * RANDOM_SHARE))
    for feed in _edge_feeds(specs, sizes, bounds, rng):
        if state.spent():
            break
        state.evaluate(feed, "edges")
    starts = [(score, f) for score, _, f in sorted(pool, key=lambda t: (-t[0], t[1]))[:max(1, restarts)]]
    per_start = max(1, (budget - state.evaluations) // max(1, len(starts)))
    for score, start in starts:
        if state.spent():
            break
        _local_search(state, start, score, specs, bounds, rng, min(per_start, budget - state.evaluations))
    return state.result(seed)


# ------------------------------------------------------------------------------------------------ the search


class _Hunter:
    """Evaluations, their scores by phase, and the worst feed so far."""

    def __init__(self, reference, candidate, policy, budget, reference_label, candidate_label):
        self.reference, self.candidate, self.policy, self.budget = reference, candidate, policy, budget
        self.labels = (reference_label, candidate_label)
        self.evaluations = 0
        self.capped = False
        self.deadline: float | None = None  # perf_counter() past which no evaluation starts
        self.scores: dict[str, list[float]] = {"random": [], "hunted": []}
        self.worst: tuple[float, Feed, engine.ParityRecord, str] | None = None

    def spent(self) -> bool:
        if self.evaluations >= self.budget:
            return True
        if self.deadline is not None and self.evaluations and time.perf_counter() > self.deadline:
            self.capped = True
            return True
        return False

    def evaluate(self, feed: Feed, phase: str) -> float:
        """The share of the tolerance ``candidate`` uses on ``feed`` (inf: it fails where the reference runs;
        -inf: the reference itself fails: outside the model's domain, never a divergence)."""
        self.evaluations += 1
        record = engine.check(self.reference, self.candidate, [feed], self.policy, reference_label=self.labels[0],
                              candidate_label=self.labels[1])
        result = record.feeds[0]
        if result.error is not None and result.error.startswith("the reference fails"):
            score = -math.inf
        elif result.error is not None:
            score = math.inf
        else:
            score = record.tolerance_used
        self.scores["random" if phase == "random" else "hunted"].append(score)
        if self.worst is None or score > self.worst[0]:
            self.worst = (score, {k: np.array(v, copy=True) for k, v in feed.items()}, record, phase)
        return score

    def result(self, seed: int) -> HuntResult:
        score, feed, record, phase = self.worst
        return HuntResult(feed, score, record, [s for s in self.scores["random"] if s > -math.inf],
                          [s for s in self.scores["hunted"] if s > -math.inf], self.evaluations, seed, phase,
                          self.budget, self.capped)


def _local_search(state: _Hunter, start: Feed, score: float, specs: list[InputSpec], bounds, rng: np.random.Generator,
                  steps: int) -> None:
    """(1+1)-ES from ``start``: mutate one block, keep it when the score does not drop; the step size follows the
    1/5th success rule (x e^(1/3) on a kept step, x e^(-1/12) on a rejected one: stationary at 1 kept in 5)."""
    current = {k: np.array(v, copy=True) for k, v in start.items()}
    sigma = 0.5
    for _ in range(steps):
        if state.spent():
            return
        trial = _mutate(current, specs, bounds, rng, sigma)
        new = state.evaluate(trial, "local")
        if new >= score and new > -math.inf:
            current, score = trial, new
            sigma = min(sigma * math.exp(1 / 3), 10.0)
        else:
            sigma = max(sigma * math.exp(-1 / 12), 1e-3)


def _mutate(feed: Feed, specs: list[InputSpec], bounds, rng: np.random.Generator, sigma: float) -> Feed:
    trial = {k: np.array(v, copy=True) for k, v in feed.items()}
    spec = specs[int(rng.integers(len(specs)))]
    arr = trial[spec.name]
    if arr.size == 0:
        return trial
    block = _block(arr, rng)
    low, high = bounds[spec.name]
    if arr.dtype == np.bool_:
        arr[block] = ~arr[block]
    elif arr.dtype.kind in "iu":
        move = rng.integers(3)
        if move == 0:
            arr[block] = low if rng.random() < 0.5 else high
        elif move == 1:
            arr[block] = rng.integers(int(low), int(high), size=np.shape(arr[block]), endpoint=True)
        else:
            step = np.round(rng.normal(0, sigma * max(1.0, (high - low) / 4), np.shape(arr[block])))
            arr[block] = np.clip(arr[block].astype(np.int64) + step.astype(np.int64), low, high)
    else:
        values = arr[block].astype(np.float64)
        if rng.random() < 0.5:  # scale the block: reaches magnitudes the proof's feeds rarely have
            values = values * math.exp(rng.normal(0, 1) * sigma)
        else:
            values = values + rng.normal(0, sigma, values.shape)
        arr[block] = np.clip(values, low, high).astype(arr.dtype)
    return trial


def _block(arr: np.ndarray, rng: np.random.Generator):
    """One channel of one row (axis 1 of an array with >= 2 dims), or one element."""
    if arr.ndim >= 2 and rng.random() < 0.5:
        return (int(rng.integers(arr.shape[0])), int(rng.integers(arr.shape[1])))
    return tuple(int(rng.integers(n)) for n in arr.shape)


def _edge_feeds(specs: list[InputSpec], sizes: Mapping[str, int], bounds, rng: np.random.Generator) -> list[Feed]:
    """Integer and bool inputs at the ends of their range: all low, all high, a random mix (float inputs at a
    random feed's values). None when no input is integer or bool."""
    if not any(numpy_dtype(s.dtype).kind in "biu" for s in specs):
        return []
    base = random_inputs(specs, dict(sizes), seed=int(rng.integers(2**31)))
    feeds = []
    for mode in ("low", "high", "mix"):
        feed = dict(base)
        for s in specs:
            arr = base[s.name]
            if arr.dtype.kind not in "biu":
                continue
            low, high = bounds[s.name]
            picks = {"low": np.zeros(arr.shape, bool), "high": np.ones(arr.shape, bool),
                     "mix": rng.random(arr.shape) < 0.5}[mode]
            feed[s.name] = np.where(picks, high, low).astype(arr.dtype)
        feeds.append(feed)
    return feeds


def _bounds(spec: InputSpec, float_bound: float) -> tuple[float, float]:
    kind = numpy_dtype(spec.dtype).kind
    if kind == "b":
        return 0, 1
    if kind in "iu":
        low, high = spec.value_range or DEFAULT_INT_RANGE
        return int(low), int(high)
    return tuple(spec.value_range) if spec.value_range else (-float_bound, float_bound)


# ------------------------------------------------------------------------------------------------ golden set


def golden_with(golden: Feed, found: Feed, batch_axis: int = 0) -> Feed:
    """The golden feed with the hunted feed's rows appended along ``batch_axis`` (every later re-verification of
    the bundle checks them again). The caller checks the new batch size lies in the claimed domain."""
    return {name: np.concatenate([np.asarray(golden[name]), np.asarray(found[name]).astype(golden[name].dtype)],
                                 axis=batch_axis) for name in golden}


def worst_row(reference: Any, candidate: Any, feed: Feed, policy: engine.TolerancePolicy | None = None, *,
              batch_axis: int = 0) -> int | None:
    """The row of ``feed`` (an index along ``batch_axis`` of every input) on which ``candidate`` uses the largest
    share of its tolerance, judged on the outputs that have the same rows (axis 0 of the feed's batch size). None
    when the inputs share no batch axis, no output has it, or either side fails on the feed."""
    sizes = {np.shape(v)[batch_axis] if np.ndim(v) > batch_axis else None for v in feed.values()}
    if len(sizes) != 1 or None in sizes:
        return None
    rows = sizes.pop()
    try:
        ref, got = engine.run_on(reference, feed), engine.run_on(candidate, feed)
    except Exception:
        return None
    names = [n for n, v in ref.items() if np.ndim(v) > 0 and np.shape(v)[0] == rows and n in got
             and np.ndim(got[n]) > 0 and np.shape(got[n])[0] == rows]
    if not names:
        return None
    scores = []
    for i in range(rows):
        r = {n: np.asarray(ref[n])[i:i + 1] for n in names}
        g = {n: np.asarray(got[n])[i:i + 1] for n in names}
        scores.append(engine.check([r], lambda _f, g=g: g, [{}], policy).tolerance_used)
    return int(np.argmax(scores))


def row_of(feed: Feed, row: int, batch_axis: int = 0) -> Feed:
    """One row of ``feed`` (kept as a batch of one)."""
    return {name: np.take(np.asarray(v), [row], axis=batch_axis) for name, v in feed.items()}


def _stats(scores: list[float]) -> dict[str, float]:
    if not scores:
        return {"count": 0, "median": 0.0, "p90": 0.0, "max": 0.0}
    arr = np.asarray(scores, np.float64)
    finite = arr[np.isfinite(arr)]
    top = float(arr.max())
    return {"count": len(scores), "median": float(np.median(finite)) if finite.size else top,
            "p90": float(np.percentile(finite, 90)) if finite.size else top, "max": top}


def _num(x: float) -> str:
    return "inf" if math.isinf(x) else sci(x)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


__all__ = ["DEFAULT_BUDGET", "FLOAT_BOUND", "HuntResult", "hunt", "golden_with", "worst_row", "row_of"]
