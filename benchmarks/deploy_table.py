"""Deploy the reference set to OpenVINO IR, ONNX Runtime Mobile (ORT format) and TFLite, verify every artifact
against PyTorch (onnxgate's deploy stage), then time each runtime at its best thread count, in one run; writes the
per-target table and the latency table into benchmarks/RESULTS.md (between the deploy markers).

    .venv/bin/python benchmarks/deploy_table.py                          # resnet18, mobilenet_v3_large, tiny BERT
    .venv/bin/python benchmarks/deploy_table.py --models resnet18 --output /tmp/r.md

Latency: p50 of single-sample inference at the traced sizes (images 1x3x224x224, BERT 1x16), after warm-up, at 1
and at every core's thread count; the best of the two is reported with its thread count. ONNX Runtime runs
model.onnx at ORT_ENABLE_ALL; OpenVINO runs the FP32 IR pinned to f32 and the FP16 IR at the CPU's default
precision (PERFORMANCE / LATENCY hints); TFLite runs model.tflite in LiteRT (XNNPACK).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = {
    "resnet18": ("torchvision:resnet18", ["x:Bx3x224x224:float32"], ["B=1..8@1"]),
    "mobilenet_v3_large": ("torchvision:mobilenet_v3_large", ["x:Bx3x224x224:float32"], ["B=1..8@1"]),
    "bert_tiny": ("onnxgate.examples.tiny_transformers:bert",
                  ["input_ids:BxS:int64:0..999", "attention_mask:BxS:int64:1..1"], ["B=1..4@1", "S=4..64@16"]),
}
TARGETS = ("openvino", "ort-mobile", "tflite")
BEGIN, END = "<!-- deploy_table:begin -->", "<!-- deploy_table:end -->"


def deploy(name: str, root: Path) -> dict:
    from onnxgate.pipeline import run
    from onnxgate.spec import ExportConfig, parse_dim, parse_input

    ref, inputs, dims = MODELS[name]
    config = ExportConfig(inputs=tuple(map(parse_input, inputs)), dims=tuple(map(parse_dim, dims)))
    start = time.perf_counter()
    report = run(ref, root / name, config=config, bench=None, optimize=False, deploy=TARGETS, force=True,
                 progress=lambda m: print(f"  [{name}] {m}", flush=True))
    return {"report": report.to_dict(), "seconds": round(time.perf_counter() - start, 1)}


def latencies(name: str, root: Path, report: dict) -> dict[str, tuple[float, int] | None]:
    """Best p50 (ms) and its thread count per runtime, on one seeded feed at the traced sizes."""
    from onnxgate.bench.harness import measure
    from onnxgate.runtimes.litert import LiteRtRunner
    from onnxgate.runtimes.openvino import OpenVinoRunner
    from onnxgate.runtimes.ort import OrtRunner
    from onnxgate.spec import parse_dim, parse_input
    from onnxgate.verify.inputs import random_inputs

    _, inputs, dims = MODELS[name]
    sizes = {d.name: d.example for d in map(parse_dim, dims)}
    feed = random_inputs(list(map(parse_input, inputs)), sizes, seed=0)
    targets = root / name / "bundle" / "targets"
    passed = {(a["target"], a["variant"]) for a in report["stages"].get("deploy", {}).get("artifacts", [])
              if a["status"] == "passed"}
    tflite_layouts = _tflite_layouts(report)
    makers = {
        "onnxruntime (model.onnx)": lambda t: OrtRunner(root / name / "model.onnx", intra_op_threads=t),
        "OpenVINO IR fp32 (f32)": lambda t: OpenVinoRunner(targets / "openvino" / "model.xml", threads=t,
                                                           execution_mode="PERFORMANCE", performance_hint="LATENCY",
                                                           precision_hint="f32"),
        "OpenVINO IR fp16 (CPU default)": lambda t: OpenVinoRunner(targets / "openvino" / "model_fp16.xml",
                                                                   threads=t, execution_mode="PERFORMANCE",
                                                                   performance_hint="LATENCY"),
        "ORT Mobile (model.ort)": lambda t: OrtRunner(targets / "ort-mobile" / "model.ort", intra_op_threads=t),
        "TFLite fp32 (LiteRT)": lambda t: LiteRtRunner(targets / "tflite" / "model.tflite", threads=t,
                                                        layouts=tflite_layouts),
    }
    needs = {"OpenVINO IR fp32 (f32)": ("openvino", "fp32"), "OpenVINO IR fp16 (CPU default)": ("openvino", "fp16"),
             "ORT Mobile (model.ort)": ("ort-mobile", "fp32"), "TFLite fp32 (LiteRT)": ("tflite", "fp32")}
    out: dict[str, tuple[float, int] | None] = {}
    for label, make in makers.items():
        if label in needs and needs[label] not in passed:
            out[label] = None  # not verified: not timed
            continue
        best = None
        for threads in sorted({1, os.cpu_count() or 1}):
            runner = make(threads)
            p50 = measure(lambda: runner.run(feed), warmup_runs=5, runs=100, seconds=4.0).p50_ms
            best = (p50, threads) if best is None or p50 < best[0] else best
        out[label] = best
    return out


def _tflite_layouts(report: dict) -> dict[str, tuple[int, ...]]:
    """The permutations the deploy stage found, read back from its layout text ("x: NCHW -> NHWC (transpose
    (0, 2, 3, 1))")."""
    import re

    row = next((a for a in report["stages"].get("deploy", {}).get("artifacts", [])
                if a["target"] == "tflite" and a["variant"] == "fp32"), None)
    found = {}
    for part in (row or {}).get("layout", "").split("; "):
        match = re.match(r"(.+?): .*\(transpose \(([\d, ]+)\)\)", part)
        if match:
            found[match.group(1)] = tuple(int(v) for v in match.group(2).split(","))
    return found


def markdown(results: dict, command: str) -> str:
    from onnxgate import envinfo
    from onnxgate.deploy.model import TABLE_COLUMNS, table_rows

    env = envinfo.capture()
    lines = [BEGIN, "## Deploy targets: per-target verification and latency", "",
             f"`{command}` — {env.get('cpu', {}).get('model') or env.get('platform')}, {os.cpu_count()} cores, "
             "one run. Every artifact verified against PyTorch by the deploy stage (random weights; max error over "
             "every probed feed; top-1 agreement on random feeds) before it was timed. The per-target table's "
             "latency is the deploy stage's own (default threads, traced batch); the last table times batch 1 at "
             "the best thread count. This machine's 2 cores were shared with other jobs during the run: absolute "
             "figures are inflated and noisy, compare within a row only roughly.", ""]
    for name, res in results.items():
        deploy = res["report"]["stages"].get("deploy")
        lines += [f"### {name} ({res['seconds']} s: export, verification and deploy)", ""]
        if not deploy:
            lines += [f"not deployed: {res['report'].get('reason')}", ""]
            continue
        lines += ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + " --- |" * len(TABLE_COLUMNS)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |"
                  for row in table_rows(deploy["artifacts"])]
        lines += [""] + [f"- {a['target']} {a['variant']}".rstrip() + ": " + "; ".join(
            filter(None, [a.get("runtime"), a.get("layout") and f"layout {a['layout']}",
                          a["status"] != "passed" and f"{a['verdict']}: {_one_line(a.get('reason'))}"]))
            for a in deploy["artifacts"]] + [""]
    lines += ["### Latency at the best thread count (p50, batch 1)", "",
              "| model | " + " | ".join(next(iter(results.values()))["latency"]) + " |",
              "| --- |" + " --- |" * len(next(iter(results.values()))["latency"])]
    for name, res in results.items():
        cells = ["not verified" if v is None else f"{v[0]:.2f} ms ({v[1]} thr)" for v in res["latency"].values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", END])


def _one_line(text: str | None) -> str:
    import re

    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text or "").split())[:600]


def write(section: str, path: Path) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--work", default="/tmp/onnxgate-deploy-table")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    root = Path(args.work)
    root.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.models.split(","):
        res = deploy(name, root)
        res["latency"] = latencies(name, root, res["report"])
        results[name] = res
        print(json.dumps({name: res["latency"]}), flush=True)
    command = "python benchmarks/deploy_table.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    write(markdown(results, command.strip()), Path(args.output))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
