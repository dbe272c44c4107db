"""The timing harness: warm-up, then repeated timed runs, then statistics.

Why repeats: on a shared or thermally throttled machine one long measurement hides how unstable it was. The
runs are split into ``repeats`` blocks; the statistics are taken over every sample, and the median of each block
is kept too, so the report can show the spread between blocks (the same 2-thread measurement was seen to range
from 17 to 43 ms across runs on a busy 2-core machine, while 1-thread figures repeated within 1%).

Why the garbage collector is off while timing: a collection that happens to land inside one run adds
milliseconds that belong to no runtime (``timeit`` does the same).

Percentiles use numpy's default linear interpolation; the standard deviation is the sample one (ddof=1).

Why interleaving (``measure_interleaved``, issue 27 item 5): on a busy machine, all repeats of one configuration and
then all of the next compare configurations under different loads (three runs gave three recommendations; one
configuration's repeats ranged 4.7-16.0 ms). Round-robin — one block of every configuration per round, the order
rotated each round — spreads the load over all of them alike.

The confidence interval of a configuration is distribution-free: the order-statistic interval of the median of its
per-round (per-repeat) medians. With n rounds, [k-th smallest, k-th largest] covers the population median with
probability 1 - 2 P(Binomial(n, 1/2) < k); k is the largest one reaching ``CONFIDENCE`` (95%), and the coverage
actually reached is stated (6 rounds: the min..max of the round medians, 96.9%; fewer than 6 cannot reach 95%, and
say so). Round medians, not single runs, are the unit: runs inside one block share their load and are not
independent. Two configurations whose intervals overlap are "within noise" of each other.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

CONFIDENCE = 0.95
INTERVAL_METHOD = "order-statistic (binomial) interval of the median of the per-round medians"


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one configuration, in milliseconds."""

    samples_ms: tuple[float, ...]  # every timed run, in run order
    repeat_medians_ms: tuple[float, ...]  # the median of each repeat block

    @property
    def runs(self) -> int:
        return len(self.samples_ms)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.samples_ms, q))

    @property
    def p50_ms(self) -> float:
        return self.percentile(50)

    @property
    def spread(self) -> float:
        """(max - min) / median of the repeat medians: 0.0 when every block agreed."""
        medians = self.repeat_medians_ms
        return (max(medians) - min(medians)) / float(np.median(medians)) if medians else 0.0

    def interval(self, confidence: float = CONFIDENCE) -> dict:
        """The confidence interval of the median latency (see the module's doc): low_ms, high_ms, the median of
        the round medians, the coverage reached, the number of rounds and the method."""
        low, high, coverage = median_interval(self.repeat_medians_ms, confidence)
        return {"low_ms": low, "high_ms": high, "median_ms": float(np.median(self.repeat_medians_ms)),
                "confidence": coverage, "rounds": len(self.repeat_medians_ms), "method": INTERVAL_METHOD}

    def overlaps(self, other: "LatencyStats") -> bool:
        """Within noise of ``other``: the two confidence intervals overlap."""
        a, b = self.interval(), other.interval()
        return a["low_ms"] <= b["high_ms"] and b["low_ms"] <= a["high_ms"]

    def to_dict(self, max_samples: int) -> dict:
        s = np.asarray(self.samples_ms)
        medians = self.repeat_medians_ms
        return {
            "runs": self.runs,
            "mean_ms": float(s.mean()), "p50_ms": self.p50_ms, "p90_ms": self.percentile(90),
            "p99_ms": self.percentile(99), "std_ms": float(s.std(ddof=1)) if len(s) > 1 else 0.0,
            "min_ms": float(s.min()), "max_ms": float(s.max()),
            "repeats": {"medians_ms": list(medians), "min_ms": min(medians), "median_ms": float(np.median(medians)),
                        "max_ms": max(medians), "spread": self.spread},
            "samples_ms": downsample(self.samples_ms, max_samples),
        }


def measure(fn: Callable[[], object], *, warmup_runs: int = 3, runs: int = 50, seconds: float = 3.0,
            repeats: int = 3, min_runs: int = 3, clock: Callable[[], float] = time.perf_counter) -> LatencyStats:
    """Time ``fn``: ``warmup_runs`` untimed calls, then ``repeats`` blocks, each ending after ``runs`` calls or
    ``seconds / repeats`` seconds, whichever comes first, but never before ``min_runs`` calls.

    ``clock`` is injectable so that the statistics can be tested against an exact, simulated clock.
    """
    for _ in range(warmup_runs):
        fn()
    budget = seconds / repeats
    blocks: list[list[float]] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            block: list[float] = []
            block_start = clock()
            while len(block) < runs and (len(block) < min_runs or clock() - block_start < budget):
                start = clock()
                fn()
                block.append((clock() - start) * 1e3)
            blocks.append(block)
    finally:
        if gc_was_enabled:
            gc.enable()
    return LatencyStats(tuple(x for block in blocks for x in block), tuple(float(np.median(b)) for b in blocks))


def measure_interleaved(fns: Sequence[Callable[[], object]], *, warmup_runs: int = 3, runs: int = 50,
                        seconds: float = 3.0, rounds: int = 6, min_runs: int = 3,
                        setups: Sequence[Callable[[], None] | None] | None = None,
                        clock: Callable[[], float] = time.perf_counter) -> list["LatencyStats | Exception"]:
    """Time several configurations round-robin: every one is warmed up, then each of ``rounds`` rounds runs one
    block of every configuration (ending after ``runs`` calls or ``seconds / rounds`` seconds, never before
    ``min_runs``), starting one configuration later each round. ``setups[i]`` runs before each block of ``fns[i]``
    (a process-wide thread count). Returns, per configuration, its LatencyStats (one repeat median per round) or
    the exception that stopped it (it leaves the rotation; the others go on)."""
    setups = list(setups) if setups is not None else [None] * len(fns)
    results: list[LatencyStats | Exception | None] = [None] * len(fns)
    blocks: list[list[list[float]]] = [[] for _ in fns]
    for i, fn in enumerate(fns):
        try:
            _setup(setups[i])
            for _ in range(warmup_runs):
                fn()
        except Exception as exc:  # a runtime's own error class: the configuration's result, not a crash
            results[i] = exc
    budget = seconds / rounds
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            for i in ((r + k) % len(fns) for k in range(len(fns))):  # rotated: each starts a round in turn
                if results[i] is not None:
                    continue
                try:
                    _setup(setups[i])
                    blocks[i].append(_block(fns[i], runs, min_runs, budget, clock))
                except Exception as exc:
                    results[i] = exc
    finally:
        if gc_was_enabled:
            gc.enable()
    return [res if res is not None else LatencyStats(tuple(x for b in blocks[i] for x in b),
                                                      tuple(float(np.median(b)) for b in blocks[i]))
            for i, res in enumerate(results)]


def _setup(setup: Callable[[], None] | None) -> None:
    if setup is not None:
        setup()


def _block(fn: Callable[[], object], runs: int, min_runs: int, budget: float, clock) -> list[float]:
    block: list[float] = []
    block_start = clock()
    while len(block) < runs and (len(block) < min_runs or clock() - block_start < budget):
        start = clock()
        fn()
        block.append((clock() - start) * 1e3)
    return block


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(low, high, coverage): the order-statistic confidence interval of the median of ``values`` — the k-th
    smallest and k-th largest, k the largest reaching ``confidence`` (else 1, the widest, with the coverage it
    reaches: 0 for a single value)."""
    x = sorted(float(v) for v in values)
    n = len(x)
    if not n:
        return math.nan, math.nan, 0.0

    def coverage(k: int) -> float:
        return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / 2.0 ** n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return x[k - 1], x[n - k], max(0.0, coverage(k))


def downsample(samples: tuple[float, ...] | list[float], limit: int) -> list[float]:
    """At most ``limit`` samples, evenly spaced in run order (first and last kept), so a plot of the JSON still
    shows drift over time and the distribution's shape without storing thousands of numbers."""
    if len(samples) <= limit:
        return list(samples)
    if limit <= 1:
        return list(samples[:limit])
    picks = np.unique(np.linspace(0, len(samples) - 1, limit).round().astype(int))
    return [samples[i] for i in picks]
