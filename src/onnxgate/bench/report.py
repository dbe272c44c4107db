"""The benchmark's result: every measured configuration, each side's best, the ratios to PyTorch, the
recommendation. ``to_dict()`` is the JSON that ``docs/schemas/bench.schema.json`` describes (schema version
``SCHEMA_VERSION``); it keeps latency samples (downsampled) and throughput curves for the HTML report to plot.

Ratios are oriented so that > 1 is better for ONNX: ``speedup`` and ``startup_speedup`` are PyTorch's figure over
the side's, ``memory_ratio`` is the side's peak memory over PyTorch's (the target is <= 0.5).

The recommendation is the fastest *configuration* that is verified twice over: its variant file passed verification
(``Variant.verified``), and the configuration itself — this runtime, level, thread count and precision — matched the
reference within the tolerance of its precision (``ConfigResult.verification``, stated in the report). It names the
file it refers to, its verification record, the settings it was verified and timed with (``runners.settings_of``:
the runtime's own names, exactly what was passed), and the faster configurations it passed over and why.

"Fastest" is decided beyond noise (issue 27 item 5): every configuration carries a confidence interval of its median
latency (``LatencyStats.interval``: configurations are timed interleaved, round-robin); the eligible configurations
whose intervals overlap the fastest one's are a tie, broken by ``runners.PREFERENCE`` (fewest moving parts), not by
noise, and the recommendation states the tie (``tie``: with which configurations, broken by what). So is one less
than ``MIN_GAIN`` slower than the fastest: an interval covers the noise within one run, not the drift between runs
on a shared machine (a 9 us model's 1- and 2-thread medians, 5.8% apart with disjoint intervals, swapped places
between consecutive runs), and a few percent is not worth a setting anyway. On a machine measured busy
(``MachineLoad.other_cores``: CPU time other processes used while it ran) the minimum grows with the share of the
machine they took (``min_gain``: + ``BUSY_GAIN`` x that share): beside a busy loop per core, a 2-thread
configuration of a 9 us model ran 5% or 21% slower than the 1-thread one in consecutive runs, depending on how the
scheduler placed the loops; that swing is the load's, not the configurations', and the recommendation says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .._version import __version__
from .flops import FlopCount
from .harness import LatencyStats
from .machine import MachineLoad
from .runners import PREFERENCE, PYTORCH, PYTORCH_SIDE, Config, Variant, preference, settings_of
from .startup import Startup
from .verification import Verification

MIN_GAIN = 0.10  # a configuration must be this much faster than a simpler one to be recommended over it
BUSY_GAIN = 0.5  # ... plus this times the share of the machine other processes used while the benchmark ran
SCHEMA_VERSION = "2"  # 2: configurations carry their precision and verification record; + interval, settings, tie


@dataclass
class ConfigResult:
    config: Config
    batch: int
    latency: LatencyStats | None = None
    gflops: float | None = None  # counted FLOPs / median latency
    peak_fraction: float | None = None  # of the GEMM peak at the same thread count
    inference_precision: str | None = None  # what OpenVINO chose (bf16 on CPUs with bfloat16 support); else None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    verification: Verification | None = None  # None: the PyTorch baseline (the reference itself)

    @property
    def verified(self) -> bool:
        return self.verification is not None and self.verification.passed

    @property
    def p50_ms(self) -> float | None:
        return self.latency.p50_ms if self.latency else None

    def to_dict(self, max_samples: int, speedup: float | None) -> dict:
        return {"id": self.config.id, "side": self.config.side, **asdict(self.config), "batch": self.batch,
                "latency": self.latency.to_dict(max_samples) if self.latency else None,
                "interval": self.latency.interval() if self.latency else None, "speedup": speedup,
                "gflops": self.gflops,
                "peak_fraction": self.peak_fraction, "inference_precision": self.inference_precision,
                "verification": self.verification.to_dict() if self.verification else None,
                "notes": self.notes, "error": self.error}


@dataclass
class ThroughputPoint:
    side: str
    config_id: str
    batch: int
    p50_ms: float
    items_per_s: float
    gflops: float | None = None
    peak_fraction: float | None = None


@dataclass
class VariantInfo:
    variant: Variant
    size_bytes: int
    flops: FlopCount | None  # at the latency shape

    def to_dict(self) -> dict:
        return {**asdict(self.variant), "size_bytes": self.size_bytes,
                "flops": self.flops.to_dict() if self.flops else None}


@dataclass
class BenchReport:
    model: dict  # source, onnx path, exported, inputs, batch_dim, shapes
    settings: dict
    machine: MachineLoad
    peak_gflops: dict[int, float]  # threads -> GEMM GFLOP/s
    variants: list[VariantInfo]
    pytorch_size_bytes: int | None
    configs: list[ConfigResult]
    throughput: list[ThroughputPoint] = field(default_factory=list)
    startups: list[Startup] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    shipped: list[str] | None = None  # the variants the recommendation may name; None: any

    def sides(self) -> list[str]:
        return list(dict.fromkeys(r.config.side for r in self.configs))

    def best(self, side: str) -> ConfigResult | None:
        return best_of(self.configs, side)

    def speedup(self, result: ConfigResult) -> float | None:
        """PyTorch eager's best p50 over this configuration's p50 (None without PyTorch)."""
        baseline = self.best(PYTORCH_SIDE)
        return _ratio(baseline and baseline.p50_ms, result.p50_ms)

    def side_summaries(self) -> list[dict]:
        base_start = self._startup(PYTORCH_SIDE)
        infos = {info.variant.name: info for info in self.variants}
        rows = []
        for side in self.sides():
            runtime, variant = side.split(":", 1)
            best, start = self.best(side), self._startup(side)
            info = infos.get(variant)
            verified_best = best_of([r for r in self.configs if r.verified], side)
            rows.append({
                "side": side, "runtime": runtime, "variant": variant,
                "verified": info.variant.verified if info else None,
                "size_bytes": info.size_bytes if info else self.pytorch_size_bytes,
                "best_config": best.config.id if best else None, "p50_ms": best.p50_ms if best else None,
                "best_verified_config": verified_best.config.id if verified_best else None,
                "speedup": self.speedup(best) if best else None,
                "startup_s": start.startup_s if start else None,
                "startup_speedup": _ratio(base_start and base_start.startup_s, start and start.startup_s),
                "peak_rss_mb": start.peak_rss_mb if start else None,
                "memory_ratio": _ratio(start and start.peak_rss_mb, base_start and base_start.peak_rss_mb),
            })
        return rows

    def recommendation(self) -> dict | None:
        """The fastest ONNX configuration whose variant passed verification and which itself matched the reference
        at its own precision, among the ``shipped`` variants, ties within noise broken by ``PREFERENCE``; None when
        there is none. Faster configurations it passed over are named in ``passed_over`` with the reason."""
        infos = {info.variant.name: info for info in self.variants}
        measured = sorted((r for r in self.configs if r.config.runtime != PYTORCH and r.latency is not None),
                          key=lambda r: r.p50_ms)
        why_not = {id(r): self._why_not(r, infos.get(r.config.variant)) for r in measured}
        eligible = [r for r in measured if why_not[id(r)] is None]
        if not eligible:
            return None
        fastest, min_gain = eligible[0], self.min_gain()
        raised = min_gain > MIN_GAIN + 0.005  # other processes' load raised the bar (and the tie says so)
        tied = [r for r in eligible if r is fastest or r.latency.overlaps(fastest.latency)
                or r.p50_ms <= fastest.p50_ms * (1 + min_gain)]
        chosen = min(tied, key=lambda r: (preference(r.config, self._default_threads()), r.p50_ms))
        passed_over = []
        for r in measured:
            if r is chosen:
                break
            why = why_not[id(r)] or (f"within noise of {chosen.config.id} (confidence intervals overlap, or under "
                                     f"{min_gain:.0%} apart{self._busy_clause() if raised else ''}): the tie is "
                                     "broken by the fewest moving parts")
            passed_over.append(f"{r.config.id} ({r.p50_ms:.2f} ms): {why}")
        settings = settings_of(chosen.config)
        if chosen.inference_precision is not None:
            settings["inference_precision"] = chosen.inference_precision  # what the runtime computed in
        others = [r for r in tied if r is not chosen]
        tie = {"with": [r.config.id for r in others],
               "intervals_ms": {r.config.id: [r.latency.interval()["low_ms"], r.latency.interval()["high_ms"]]
                                for r in tied},
               "broken_by": PREFERENCE, "min_gain": round(min_gain, 3),
               "busy": raised} if others else None
        info = infos[chosen.config.variant]
        return {"side": chosen.config.side, "runtime": chosen.config.runtime, "variant": chosen.config.variant,
                "config_id": chosen.config.id, "p50_ms": chosen.p50_ms, "speedup": self.speedup(chosen),
                "path": info.variant.path, "verification": chosen.verification.to_dict(), "notes": list(chosen.notes),
                "passed_over": passed_over[:6], "restricted_to": self.shipped, "settings": settings,
                "interval": chosen.latency.interval(), "tie": tie}

    def min_gain(self) -> float:
        """How much faster than a simpler configuration one must be to be recommended over it: ``MIN_GAIN``, plus
        ``BUSY_GAIN`` times the share of the machine other processes used while the benchmark ran (none measured:
        none added)."""
        other = self.machine.other_cores or 0.0
        return MIN_GAIN + BUSY_GAIN * min(1.0, other / max(1, self.machine.cores))

    def _busy_clause(self) -> str:
        return (f"; the machine was busy, other processes used {self.machine.other_cores or 0.0:.2f} of "
                f"{self.machine.cores} cores, so a larger gain is needed")

    def _why_not(self, r: ConfigResult, info: VariantInfo | None) -> str | None:
        """Why ``r`` cannot be recommended (None: it can)."""
        if info is None or not info.variant.verified:
            return "its file did not pass verification"
        if not r.verified:
            if r.verification and r.verification.reason and r.verification.max_abs_err is None:
                return f"it was not verified: {r.verification.reason}"
            return f"it missed its tolerance: {r.verification.summary()}" if r.verification else "it was not verified"
        if self.shipped is not None and r.config.variant not in self.shipped:
            return f"its variant '{r.config.variant}' is not in the bundle (which ships {', '.join(self.shipped)})"
        return None

    def _default_threads(self) -> int:
        """The runtime's default thread count: all usable cores, the largest count measured."""
        threads = self.settings.get("threads") or [r.config.threads for r in self.configs]
        return max(threads, default=1)

    def _startup(self, side: str) -> Startup | None:
        return next((s for s in self.startups if s.side == side and s.error is None), None)

    def to_dict(self) -> dict:
        max_samples = int(self.settings.get("max_samples", 200))
        return {
            "schema_version": SCHEMA_VERSION, "onnxgate_version": __version__, "model": self.model,
            "settings": self.settings, "machine": self.machine.to_dict(),
            "peak_gflops": [{"threads": t, "gflops": g} for t, g in sorted(self.peak_gflops.items())],
            "variants": [v.to_dict() for v in self.variants], "pytorch_size_bytes": self.pytorch_size_bytes,
            "configs": [r.to_dict(max_samples, self.speedup(r)) for r in self.configs],
            "throughput": [asdict(p) for p in self.throughput],
            "startup": [s.to_dict() for s in self.startups],
            "sides": self.side_summaries(), "recommendation": self.recommendation(),
            "warnings": self.warnings, "seconds": self.seconds,
        }


def best_of(results: list[ConfigResult], side: str) -> ConfigResult | None:
    """The side's fastest configuration at the latency batch (its best thread count and level)."""
    measured = [r for r in results if r.config.side == side and r.latency is not None]
    return min(measured, key=lambda r: r.p50_ms) if measured else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None
