"""The benchmark's result: every measured configuration, each side's best, the ratios to PyTorch, the
recommendation. ``to_dict()`` is the JSON that ``docs/schemas/bench.schema.json`` describes (schema version
``SCHEMA_VERSION``); it keeps latency samples (downsampled) and throughput curves for the HTML report to plot.

Ratios are oriented so that > 1 is better for ONNX: ``speedup`` and ``startup_speedup`` are PyTorch's figure over
the side's, ``memory_ratio`` is the side's peak memory over PyTorch's (the target is <= 0.5).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .._version import __version__
from .flops import FlopCount
from .harness import LatencyStats
from .machine import MachineLoad
from .runners import PYTORCH, PYTORCH_SIDE, Config, Variant
from .startup import Startup

SCHEMA_VERSION = "1"


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

    @property
    def p50_ms(self) -> float | None:
        return self.latency.p50_ms if self.latency else None

    def to_dict(self, max_samples: int, speedup: float | None) -> dict:
        return {"id": self.config.id, "side": self.config.side, **asdict(self.config), "batch": self.batch,
                "latency": self.latency.to_dict(max_samples) if self.latency else None, "speedup": speedup,
                "gflops": self.gflops,
                "peak_fraction": self.peak_fraction, "inference_precision": self.inference_precision,
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
            rows.append({
                "side": side, "runtime": runtime, "variant": variant,
                "verified": info.variant.verified if info else None,
                "size_bytes": info.size_bytes if info else self.pytorch_size_bytes,
                "best_config": best.config.id if best else None, "p50_ms": best.p50_ms if best else None,
                "speedup": self.speedup(best) if best else None,
                "startup_s": start.startup_s if start else None,
                "startup_speedup": _ratio(base_start and base_start.startup_s, start and start.startup_s),
                "peak_rss_mb": start.peak_rss_mb if start else None,
                "memory_ratio": _ratio(start and start.peak_rss_mb, base_start and base_start.peak_rss_mb),
            })
        return rows

    def recommendation(self) -> dict | None:
        """The fastest ONNX side whose variant passed verification, or None when no variant did."""
        candidates = [s for s in self.side_summaries()
                      if s["runtime"] != PYTORCH and s["verified"] and s["p50_ms"] is not None]
        if not candidates:
            return None
        pick = min(candidates, key=lambda s: s["p50_ms"])
        best = self.best(pick["side"])
        return {"side": pick["side"], "runtime": pick["runtime"], "variant": pick["variant"],
                "config_id": pick["best_config"], "p50_ms": pick["p50_ms"], "speedup": pick["speedup"],
                "notes": best.notes if best else []}

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
