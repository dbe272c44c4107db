"""Benchmark the reference set and write benchmarks/RESULTS.md: absolute figures, ratios to PyTorch eager measured
in the same run (each side at its best thread count), the issue's targets as met or missed, and the command.

    .venv/bin/python benchmarks/reference_set.py                      # the whole set (run it on a quiet machine)
    .venv/bin/python benchmarks/reference_set.py --quick --models resnet18

Options: --quick (short runs, batch sweep to 4), --models a,b (a part of the set), --output FILE (default
benchmarks/RESULTS.md), --json FILE (every full report). The BERT encoder is BERT-base sized (12 layers, hidden 768,
sequence 128) with random weights, built from a transformers BertConfig by ``bert_base`` below.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console

from onnxgate import envinfo
from onnxgate.bench import BenchReport, BenchSettings, bench
from onnxgate.bench.runners import PYTORCH_SIDE
from onnxgate.errors import OnnxgateError

HERE = Path(__file__).resolve().parent
MODELS = {
    "resnet18": "torchvision:resnet18",
    "resnet50": "torchvision:resnet50",
    "mobilenet_v3_large": "torchvision:mobilenet_v3_large",
    "efficientnet_b0": "torchvision:efficientnet_b0",
    "convnext_tiny": "torchvision:convnext_tiny",
    "vit_b_16": "torchvision:vit_b_16",
    "bert_base": f"{Path(__file__).resolve()}:bert_base",
}
CONV_NETS = {"resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny"}
ORT, OPENVINO = "onnxruntime:base", "openvino:base"
# The targets, each side at its best thread count.
FP32_SPEEDUP, INT8_SPEEDUP, PEAK_FRACTION, STARTUP_SPEEDUP, MEMORY_RATIO = 2.0, 3.0, 0.8, 2.0, 0.5


def bert_base():
    """A BERT-base encoder (random weights) and example inputs at batch 2, sequence 128."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig()).eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 128), generator=generator)
    return model, {"input_ids": ids, "attention_mask": torch.ones(2, 128, dtype=torch.int64)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; the set is {', '.join(MODELS)}")
    console = Console(stderr=True)
    settings = BenchSettings.quick() if args.quick else BenchSettings()
    results: dict[str, BenchReport | str] = {}
    for name in names:
        start = time.perf_counter()
        with console.status(name) as status:
            try:
                results[name] = bench(MODELS[name], settings=settings,
                                      progress=lambda msg, n=name: status.update(f"{n}: {msg}"))
            except OnnxgateError as exc:
                results[name] = f"{type(exc).__name__}: {exc}"
        console.print(f"{name}: done in {time.perf_counter() - start:.0f} s")
    command = shlex.join([".venv/bin/python", "benchmarks/reference_set.py", *sys.argv[1:]])
    Path(args.output).write_text(render_results(results, command=command, quick=args.quick), encoding="utf-8")
    console.print(f"wrote {args.output}")
    if args.json:
        Path(args.json).write_text(json.dumps({n: r.to_dict() if isinstance(r, BenchReport) else {"error": r}
                                               for n, r in results.items()}, indent=2, default=str))
    return 0 if all(isinstance(r, BenchReport) for r in results.values()) else 1


def render_results(results: dict[str, BenchReport | str], *, command: str, quick: bool) -> str:
    """RESULTS.md: the machine, one row per model, the targets, and the command that produced it."""
    cpu = envinfo.cpu_info()
    versions = {name: envinfo.package_version(name) for name in ("torch", "onnxruntime", "openvino")}
    reports = {n: r for n, r in results.items() if isinstance(r, BenchReport)}
    lines = [
        "# Reference-set benchmark", "",
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d')}"
        f"{' (quick mode: short runs, batch sweep to 4)' if quick else ''}.", "",
        f"Machine: {cpu['model'] or 'unknown CPU'}, {cpu['usable']} usable cores; torch {versions.get('torch')}, "
        f"onnxruntime {versions.get('onnxruntime')}, openvino {versions.get('openvino')}.", "",
        "Every ratio is to PyTorch eager measured in the same run, each side at its best configuration (1 thread or "
        "all cores; for ONNX Runtime also the best graph optimization level). Latency at batch 1, p50. Start-up is "
        "a fresh process to the first result (PyTorch builds the model from its reference); peak memory is that "
        "process's peak RSS. OpenVINO runs in PERFORMANCE mode, which computes in bfloat16 on CPUs that support it "
        "(see the precision column), so the FP32 targets are judged on ONNX Runtime.", "",
        "| model | GFLOP | PyTorch ms | ONNX Runtime ms | speedup | OpenVINO ms (precision) | speedup | "
        "GFLOP/s at largest batch (% peak) | start-up s PyTorch / ORT | peak RSS MB PyTorch / ORT | size MB | "
        "trust |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        lines.append(_row(name, result))
    lines += ["", "GEMM peak measured in each model's run (ONNX Runtime float32 MatMul, GFLOP/s): " + "; ".join(
        f"{n} " + ", ".join(f"{g:.0f} at {t} thread{'s' if t > 1 else ''}" for t, g in sorted(r.peak_gflops.items()))
        for n, r in reports.items()) + "."]
    lines += ["", "## Targets", "", "| target | measured | verdict |", "|---|---|---|", *_targets(reports), ""]
    busy = [n for n, r in reports.items() if r.machine.warnings()]
    if busy:
        lines += [f"**The machine was busy while {', '.join(busy)} ran**: those figures are not trustworthy; rerun "
                  "on a quiet machine.", ""]
    return "\n".join(lines)


def _row(name: str, result: BenchReport | str) -> str:
    if not isinstance(result, BenchReport):
        return "| " + " | ".join([name, result, *["-"] * 10]) + " |"
    sides = {s["side"]: s for s in result.side_summaries()}
    pt, ort, ov = sides.get(PYTORCH_SIDE, {}), sides.get(ORT, {}), sides.get(OPENVINO, {})
    flops = next((v.flops for v in result.variants if v.variant.name == "base"), None)
    ov_best = result.best(OPENVINO)
    point = _largest_batch_point(result, ORT)
    spread = max((r.latency.spread for r in result.configs if r.latency), default=0.0)
    cells = [
        name, f"{flops.total / 1e9:.2f}" if flops else "-", _ms(pt), _ms(ort), _x(ort.get("speedup")),
        f"{_ms(ov)} ({ov_best.inference_precision if ov_best else '-'})", _x(ov.get("speedup")),
        f"{point.gflops:.0f} ({point.peak_fraction:.0%}) at batch {point.batch}" if point and point.gflops else "-",
        f"{_num(pt.get('startup_s'))} / {_num(ort.get('startup_s'))} ({_x(ort.get('startup_speedup'))})",
        f"{_num(pt.get('peak_rss_mb'), 0)} / {_num(ort.get('peak_rss_mb'), 0)} ({_num(ort.get('memory_ratio'))})",
        _num((ort.get("size_bytes") or 0) / 2 ** 20, 1),
        "busy machine" if result.machine.warnings() else f"repeats within {spread:.0%}",
    ]
    return "| " + " | ".join(cells) + " |"


def _targets(reports: dict[str, BenchReport]) -> list[str]:
    rows = []
    fp32 = {n: _side(r, ORT, "speedup") for n, r in reports.items()}
    rows.append(_median_target(f"FP32 ONNX Runtime ≥ {FP32_SPEEDUP:g}× PyTorch eager at batch 1 (median of the set)",
                               fp32, FP32_SPEEDUP, higher_is_better=True))
    rows.append(f"| INT8 ≥ {INT8_SPEEDUP:g}× FP32 ONNX Runtime within its accuracy budget | not measured: no INT8 "
                "variant in this run (the quantize stage produces one; `onnxgate bench --variant int8=PATH` measures it) | - |")
    conv = {n: p.peak_fraction for n, r in reports.items() if n in CONV_NETS
            for p in [_largest_batch_point(r, ORT)] if p and p.peak_fraction}
    if conv:
        missed = {n: f for n, f in conv.items() if f < PEAK_FRACTION}
        figures = ", ".join(f"{n} {f:.0%}" for n, f in conv.items())
        verdict = "met" if not missed else (f"missed by {len(missed)} of {len(conv)}: " + ", ".join(
            f"{n} {PEAK_FRACTION - f:.0%} short" for n, f in missed.items()))
        rows.append(f"| conv nets at batch 8 ≥ {PEAK_FRACTION:.0%} of the GEMM peak (ONNX Runtime, largest batch "
                    f"measured) | {figures} | {verdict} |")
    else:
        rows.append(f"| conv nets at batch 8 ≥ {PEAK_FRACTION:.0%} of the GEMM peak | not measured | - |")
    rows.append(_median_target(f"start-up ≥ {STARTUP_SPEEDUP:g}× faster than PyTorch (ONNX Runtime)",
                               {n: _side(r, ORT, "startup_speedup") for n, r in reports.items()}, STARTUP_SPEEDUP,
                               higher_is_better=True))
    rows.append(_median_target(f"peak memory ≤ {MEMORY_RATIO:g} of PyTorch's (ONNX Runtime)",
                               {n: _side(r, ORT, "memory_ratio") for n, r in reports.items()}, MEMORY_RATIO,
                               higher_is_better=False))
    return rows


def _median_target(label: str, figures: dict[str, float | None], goal: float, *, higher_is_better: bool) -> str:
    known = {n: f for n, f in figures.items() if f}
    if not known:
        return f"| {label} | not measured | - |"
    median = statistics.median(known.values())
    met = median >= goal if higher_is_better else median <= goal
    per_model = ", ".join(f"{n} {f:.2f}" for n, f in known.items())
    verdict = "met" if met else f"missed by {abs(goal - median):.2f} ({abs(goal - median) / goal:.0%} of the target)"
    return f"| {label} | median {median:.2f} ({per_model}) | {verdict} |"


def _largest_batch_point(report: BenchReport, side: str):
    points = [p for p in report.throughput if p.side == side]
    return max(points, key=lambda p: p.batch) if points else None


def _side(report: BenchReport, side: str, key: str) -> float | None:
    return next((s[key] for s in report.side_summaries() if s["side"] == side), None)


def _ms(side: dict) -> str:
    """p50 and the winning configuration, e.g. '31.20 (all/t1)'."""
    if side.get("p50_ms") is None:
        return "-"
    return f"{side['p50_ms']:.2f} ({side['best_config'].split('/', 1)[1]})"


def _x(ratio: float | None) -> str:
    return f"{ratio:.2f}×" if ratio else "-"


def _num(value: float | None, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if value else "-"


if __name__ == "__main__":
    sys.exit(main())
