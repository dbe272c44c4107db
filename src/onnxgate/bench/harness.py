"""The timing harness: warm-up, then repeated timed runs, then statistics.

Why repeats: on a shared or thermally throttled machine one long measurement hides how unstable it was. The
runs are split into ``repeats`` blocks; the statistics are taken over every sample, and the median of each block
is kept too, so the report can show the spread between blocks (the same 2-thread measurement was seen to range
from 17 to 43 ms across runs on a busy 2-core machine, while 1-thread figures repeated within 1%).

Why the garbage collector is off while timing: a collection that happens to land inside one run adds
milliseconds that belong to no runtime (``timeit`` does the same).

Percentiles use numpy's default linear interpolation; the standard deviation is the sample one (ddof=1).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


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


def downsample(samples: tuple[float, ...] | list[float], limit: int) -> list[float]:
    """At most ``limit`` samples, evenly spaced in run order (first and last kept), so a plot of the JSON still
    shows drift over time and the distribution's shape without storing thousands of numbers."""
    if len(samples) <= limit:
        return list(samples)
    if limit <= 1:
        return list(samples[:limit])
    picks = np.unique(np.linspace(0, len(samples) - 1, limit).round().astype(int))
    return [samples[i] for i in picks]
