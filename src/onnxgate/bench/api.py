"""``bench``: one model, side by side in one run — PyTorch eager, ONNX Runtime, OpenVINO, every variant.

Order of work: resolve the model (export a reference into a temporary folder first), build one seeded feed at
the latency shape (batch 1 when the batch dim is dynamic), count FLOPs, measure the machine's GEMM peak, verify every
configuration (each is checked against PyTorch at its own precision by the runner that is timed — see
``verification``; only a verified configuration can be recommended), time them all interleaved with those same
runners (round-robin, so a busy spell slows every configuration alike; each gets a confidence interval, and the
recommendation breaks ties within noise by the fewest moving parts — ``report``), then for each side's best
configuration sweep batch sizes (throughput) and start a fresh process (start-up and peak memory). The machine's
load is watched throughout, and figures taken on a busy machine say so.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import BadInputError
from ..spec import ExportConfig
from .flops import FlopCount, count_flops, gemm_peak_gflops
from .harness import measure, measure_interleaved
from .machine import LoadMonitor, usable_cores
from .report import BenchReport, ConfigResult, ThroughputPoint, VariantInfo, best_of
from .runners import BASE, EAGER, OPENVINO, PYTORCH, RUNTIMES, Config, Variant, open_runner, plan, thread_setup
from .startup import measure_startup, save_feed
from .target import Target, module_bytes, prepare_target, size_on_disk
from .verification import ConfigVerifier, build_verifier

SPREAD_LIMIT = 0.10  # repeat medians further apart than this (relative) are called out
OPEN_BYTES = 2 * 2**30  # runners open at once while interleaving, at about 4x their file's size each


@dataclass(frozen=True)
class BenchSettings:
    """How long and how wide to measure. The defaults keep ``onnxgate bench torchvision:resnet18`` under three
    minutes on 2 cores; ``quick()`` under one minute, for CI."""

    runtimes: tuple[str, ...] = RUNTIMES
    threads: tuple[int, ...] = ()  # empty: 1 and all usable cores
    opt_levels: tuple[str, ...] = ("disable", "basic", "extended", "all")
    warmup_runs: int = 5
    runs: int = 300  # per repeat, at most
    seconds: float = 3.0  # per configuration, at most (all repeats together)
    repeats: int = 6  # rounds of the interleaved timing; 6 gives a 96.9% interval of the median (harness)
    max_batch: int = 8
    throughput_seconds: float = 1.0  # per batch size
    startup_repeats: int = 2  # fresh processes per side; 0 skips start-up and memory
    peak_seconds: float = 1.0
    max_samples: int = 200  # latency samples kept per configuration in the JSON

    @classmethod
    def quick(cls, **overrides) -> "BenchSettings":
        return replace(cls(opt_levels=("disable", "all"), warmup_runs=2, seconds=0.8, max_batch=4,
                           throughput_seconds=0.3, startup_repeats=1, peak_seconds=0.3), **overrides)

    def thread_counts(self) -> tuple[int, ...]:
        return self.threads or tuple(sorted({1, usable_cores()}))


def bench(model: Any, *, against: Any = None, variants: Sequence[Variant] = (), config: ExportConfig | None = None,
          settings: BenchSettings | None = None, base_verified: bool | None = None, weights: str | None = None,
          arch: str | None = None, trust_pickle: bool = False, data: list[dict] | None = None,
          shipped: Sequence[str] | None = None, progress: Callable[[str], None] | None = None) -> BenchReport:
    """Benchmark ``model``: an ``.onnx`` path, or a model reference / ``LoadedModel`` (exported first).

    ``against``: the PyTorch model of an ``.onnx`` path (a reference or ``LoadedModel``); without it PyTorch eager is
    not measured. ``variants``: further ONNX files (optimized, FP16, INT8), each with its ``verified`` flag.
    ``base_verified``: whether the base ONNX file passed verification; by default true when onnxgate exported it
    (here, or earlier: its ``onnxgate.source`` metadata is written only to a file the export ladder proved).
    ``data``: real feeds every configuration is verified on besides two seeded random ones (the first few).
    ``shipped``: the variant names the recommendation may name (the pipeline passes what its bundle ships); None:
    any verified variant.
    """
    settings = settings or BenchSettings()
    unknown = sorted(set(settings.runtimes) - set(RUNTIMES))
    if unknown:
        raise BadInputError(f"Unknown runtime(s) {', '.join(unknown)}.", hint=f"Use {', '.join(RUNTIMES)}.")
    note = progress or (lambda _msg: None)
    source = {"weights": weights, "arch": arch, "trust_pickle": trust_pickle}
    monitor = LoadMonitor()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="onnxgate-bench-") as tmp:
        target = prepare_target(model, against, config or ExportConfig(), list(variants), base_verified, Path(tmp),
                                note, source)
        report = _measure(target, settings, note, monitor, Path(tmp), source, data)
    report.shipped = list(shipped) if shipped is not None else None
    report.seconds = time.perf_counter() - started
    return report


def _measure(target: Target, settings: BenchSettings, note, monitor: LoadMonitor, tmp: Path,
             source: dict, data: list[dict] | None = None) -> BenchReport:
    runtimes = tuple(r for r in settings.runtimes if r != PYTORCH or target.loaded is not None)
    threads = settings.thread_counts()
    note("counting FLOPs and measuring the GEMM peak")
    shapes = {name: tuple(a.shape) for name, a in target.feed.items()}
    infos = [VariantInfo(v, size_on_disk(v.path), _flops_or_none(v.path, shapes)) for v in target.variants]
    flops = {info.variant.name: info.flops for info in infos}
    flops[EAGER] = flops[BASE]  # the same computation, counted on the exported graph
    peak = {t: gemm_peak_gflops(t, seconds=settings.peak_seconds) for t in threads}

    verifier = build_verifier(target, data)
    precisions: tuple[str | None, ...] = (None,)
    if OPENVINO in runtimes:
        from ..runtimes.openvino import OpenVinoRunner

        if OpenVinoRunner.default_precision() not in (None, "f32"):  # PERFORMANCE mode computes in bf16 here
            precisions = (None, "f32")
    configs = plan(target.variants, runtimes=runtimes, threads=threads, opt_levels=settings.opt_levels,
                   openvino_precisions=precisions)
    results = []
    for group in _groups(configs, target):
        results += _time_interleaved(group, target, settings, flops, peak, verifier, note)
    bests = [b for b in (best_of(results, side) for side in dict.fromkeys(r.config.side for r in results)) if b]
    throughput, problems = [], []
    for best in bests if target.batch_dim else []:
        note(f"throughput of {best.config.side}")
        points, problem = _throughput(best.config, target, settings, peak)
        throughput += points
        problems += [problem] if problem else []
    startups = []
    if settings.startup_repeats:
        feed_files = save_feed(target.feed, tmp / "feed")
        probe_source = {"ref": target.loaded.ref, **source} if target.loaded is not None else None
        for best in bests:
            note(f"start-up and memory of {best.config.side} in a fresh process")
            startups.append(measure_startup(best.config, feed_files=feed_files, source=probe_source,
                                            model_path=target.paths.get(best.config.variant),
                                            repeats=settings.startup_repeats))
    report = BenchReport(
        model={"source": target.loaded.ref if target.loaded is not None else None,
               "onnx": None if target.exported else str(target.onnx_path), "exported": target.exported,
               "inputs": [str(s) for s in target.specs], "batch_dim": target.batch_dim,
               "shapes": {name: list(s) for name, s in shapes.items()}},
        settings={**{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
                  "threads": list(threads)}, machine=monitor.stop(), peak_gflops=peak,
        variants=infos, pytorch_size_bytes=module_bytes(target.module) if target.loaded is not None else None,
        configs=results, throughput=throughput, startups=startups)
    report.warnings = _warnings(report) + problems
    return report


def _groups(configs: list[Config], target: Target) -> list[list[Config]]:
    """The configurations, in groups whose runners can be open together (interleaving keeps every runner of a
    group alive): as many as fit OPEN_BYTES at about four times the largest variant's size each (weights, pre-packed
    copies, arena); a model too large for two at once is timed alone, as before."""
    largest = max((size_on_disk(v.path) for v in target.variants), default=0)
    per_group = max(1, int(OPEN_BYTES // max(1, 4 * largest)))
    return [configs[i:i + per_group] for i in range(0, len(configs), per_group)]


def _time_interleaved(configs: list[Config], target: Target, settings: BenchSettings, flops, peak,
                      verifier: ConfigVerifier | None, note) -> list[ConfigResult]:
    """Verification of each configuration with its runner, then the latency of all of them interleaved
    (``measure_interleaved``: round-robin, ``settings.repeats`` rounds), with the same runners. A runtime that
    cannot load or run a variant (an INT8 operator it lacks) is a result, not a crash: the error is recorded and
    the benchmark goes on."""
    results = [ConfigResult(cfg, target.batch) for cfg in configs]
    live: list[tuple[ConfigResult, object]] = []
    with ExitStack() as stack:
        for result in results:
            cfg = result.config
            note(f"verifying {cfg.id}")
            try:
                runner = stack.enter_context(open_runner(cfg, model_path=target.paths.get(cfg.variant),
                                                         module=target.module, input_names=target.input_names))
                if cfg.runtime == OPENVINO:
                    result.inference_precision = runner.inference_precision
                    if runner.inference_precision not in ("f32", None):
                        result.notes.append(f"OpenVINO computes in {runner.inference_precision} here (PERFORMANCE "
                                            "mode); verified with that precision's tolerance")
                if verifier is not None and cfg.runtime != PYTORCH:
                    result.verification = verifier.check(cfg.variant, runner, result.inference_precision)
            except Exception as exc:  # onnxruntime and openvino raise their own classes, not RuntimeError's
                result.error = _first_line(exc)
                continue
            live.append((result, runner))
        note(f"timing {len(live)} configurations interleaved, {settings.repeats} rounds")
        timed = measure_interleaved([lambda runner=runner: runner.run(target.feed) for _, runner in live],
                                    warmup_runs=settings.warmup_runs, runs=settings.runs, seconds=settings.seconds,
                                    rounds=settings.repeats, setups=[thread_setup(r.config) for r, _ in live])
    for (result, _), stats in zip(live, timed):
        if isinstance(stats, Exception):
            result.error = _first_line(stats)
            continue
        result.latency = stats
        result.gflops, result.peak_fraction = _achieved(flops.get(result.config.variant), stats.p50_ms,
                                                        peak[result.config.threads])
    return results


def _throughput(cfg: Config, target: Target, settings: BenchSettings,
                peak) -> tuple[list[ThroughputPoint], str | None]:
    """Items per second at batch 1, 2, 4, ... up to the limit. A batch size the runtime cannot run ends the
    sweep: the points so far stand and the problem is returned for the warnings."""
    from ..verify.inputs import random_inputs

    points: list[ThroughputPoint] = []
    flops_path = target.paths.get(cfg.variant, target.paths[BASE])  # PyTorch's FLOPs: counted on the base graph
    limit = min(settings.max_batch, target.batch_max or settings.max_batch)
    try:
        with open_runner(cfg, model_path=target.paths.get(cfg.variant), module=target.module,
                         input_names=target.input_names) as runner:
            for b in (2 ** i for i in range(limit.bit_length()) if 2 ** i <= limit):
                feed = random_inputs(target.specs, {**target.sizes, target.batch_dim: b}, seed=0)
                stats = measure(lambda: runner.run(feed), warmup_runs=1, runs=settings.runs,
                                seconds=settings.throughput_seconds, repeats=1, min_runs=2)
                flops = _flops_or_none(flops_path, {name: tuple(a.shape) for name, a in feed.items()})
                gflops, fraction = _achieved(flops, stats.p50_ms, peak[cfg.threads])
                points.append(ThroughputPoint(cfg.side, cfg.id, b, stats.p50_ms, b * 1e3 / stats.p50_ms, gflops,
                                              fraction))
    except Exception as exc:  # onnxruntime and openvino raise their own classes
        return points, f"Throughput of {cfg.id} stopped after {len(points)} batch sizes: {_first_line(exc)}"
    return points, None


def _achieved(flops: FlopCount | None, p50_ms: float, peak: float) -> tuple[float | None, float | None]:
    if not flops or not flops.total:
        return None, None
    gflops = flops.total / (p50_ms * 1e-3) / 1e9
    return gflops, gflops / peak


def _flops_or_none(path: str, shapes: dict[str, tuple[int, ...]]) -> FlopCount | None:
    try:
        return count_flops(path, shapes)
    except Exception:  # an unreadable graph has no FLOP count; the timings still stand
        return None


def _warnings(report: BenchReport) -> list[str]:
    found = [f"Figures may not be trustworthy: {w}." for w in report.machine.warnings()]
    unstable = [r for r in report.configs if r.latency and r.latency.spread > SPREAD_LIMIT]
    if unstable:
        listed = ", ".join(f"{r.config.id} ({min(r.latency.repeat_medians_ms):.1f}-"
                           f"{max(r.latency.repeat_medians_ms):.1f} ms)" for r in unstable[:6])
        found.append(f"Repeated runs disagree by more than {SPREAD_LIMIT:.0%} for {listed}"
                     f"{' ...' if len(unstable) > 6 else ''}.")
    found += [f"{r.config.id} failed: {r.error}" for r in report.configs if r.error]
    found += [f"Start-up of {s.side} not measured: {s.error}" for s in report.startups if s.error]
    return found


def _first_line(exc: BaseException) -> str:
    from ..errors import first_line

    return f"{type(exc).__name__}: {first_line(exc)}"
