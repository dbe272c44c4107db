"""The optimize/quantize table: for each model, FP32 / optimized / FP16 / INT8 with size, node count, latency and
parity (or accuracy), and — with ``--simplifiers`` — onnxslim against onnxsim on dynamo and TorchScript exports.

    .venv/bin/python benchmarks/transform_table.py [--models digits,resnet18,mobilenet_v3_large,bert]
                                                   [--runs 30] [--simplifiers] [--json FILE]

Latency: onnxruntime CPU, one intra-op thread, default (all) graph optimizations, batch 1, median of ``--runs``
after 5 warm-up runs, the variants of a model measured in interleaved rounds (so load from other processes on a
shared machine hits them alike); "load" is session creation. The torchvision models have random weights with their
BatchNorm statistics re-estimated on random images (with the default statistics mobilenet_v3's activations vanish
to 1e-9 logits, where every precision looks either exact or broken); they are judged on random inputs and their
INT8 rows calibrated on random data, so parity there is max abs error against FP32 and top-1 agreement with FP32,
not accuracy. The digits CNN is trained on real data: its rows show test accuracy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

import onnxgate
from onnxgate.spec import ExportConfig, parse_dim, parse_input
from onnxgate.transform import optimize, quantize, run_passes, to_fp16
from onnxgate.transform.simplify import SIMPLIFIERS, Simplify
from onnxgate.transform.verifier import Verifier
from onnxgate.verify.inputs import random_inputs

HERE = Path(__file__).resolve()
IMAGE, BATCH = ["x:Bx3x224x224:float32"], ["B=1..16"]
TEXT = ["input_ids:BxS:int64:0..30521", "attention_mask:BxS:int64:1..1"]
MODELS = {  # name: (ref, --input, --dim, sizes for latency and evaluation)
    "digits": ("onnxgate.examples.digits:trained_digits_cnn", ["x:Bx1x8x8:float32"], ["B=1..512@4"], {"B": 1}),
    "resnet18": (f"{HERE}:resnet18", IMAGE, BATCH, {"B": 1}),
    "mobilenet_v3_large": (f"{HERE}:mobilenet_v3_large", IMAGE, BATCH, {"B": 1}),
    "bert": (f"{HERE}:bert_encoder", TEXT, ["B=1..8", "S=8..256@128"], {"B": 1, "S": 128}),
}


def torchvision_model(name: str):
    """A torchvision classifier with random weights and BatchNorm statistics averaged over random images."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, 224, 224))
    return model.eval(), {"x": torch.randn(2, 3, 224, 224)}


def resnet18():
    return torchvision_model("resnet18")


def mobilenet_v3_large():
    return torchvision_model("mobilenet_v3_large")


def bert_encoder():
    """A transformers BERT encoder from a config (random weights): hidden 256, 4 layers, 4 heads, sequence 128."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                     intermediate_size=1024, return_dict=False)
    model = transformers.BertModel(config).eval()
    ids = torch.randint(0, config.vocab_size, (2, 128), generator=torch.Generator().manual_seed(0))
    return model, {"input_ids": ids, "attention_mask": torch.ones(2, 128, dtype=torch.int64)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--simplifiers", action="store_true", help="also compare onnxslim and onnxsim")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows, simp_rows = [], []
    with tempfile.TemporaryDirectory(prefix="onnxgate-transform-table-") as tmp:
        for name in args.models.split(","):
            ref, inputs, dims, sizes = MODELS[name]
            folder = Path(tmp) / name
            folder.mkdir()
            fp32 = folder / "fp32.onnx"
            onnxgate.export(ref, fp32, config=ExportConfig(inputs=tuple(map(parse_input, inputs)),
                                                          dims=tuple(map(parse_dim, dims))))
            specs = [parse_input(s) for s in inputs]
            rows += model_rows(name, fp32, specs, sizes, args.runs)
            if args.simplifiers:
                simp_rows += simplifier_rows(name, ref, fp32, specs, sizes, folder)
            for row in rows[-4:]:
                print(json.dumps(row), file=sys.stderr, flush=True)
    console = Console(width=200)
    console.print(variants_table(rows))
    if simp_rows:
        console.print(simplifiers_table(simp_rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"variants": rows, "simplifiers": simp_rows}, indent=2))
    return 0


def model_rows(name: str, fp32: Path, specs, sizes: dict[str, int], runs: int) -> list[dict]:
    """FP32, optimized (onnxslim + onnxruntime extended), FP16 and INT8 variants of one model."""
    folder = fp32.parent
    eval_feeds, labels, calib = evaluation_data(name, specs, sizes)
    variants = {"FP32": (fp32, "")}
    opt = optimize(fp32, folder / "opt.onnx", level="extended")
    variants["optimized"] = (folder / "opt.onnx", "; ".join(opt.applied))
    fp16 = to_fp16(fp32, folder / "fp16.onnx")
    variants["FP16"] = (folder / "fp16.onnx", "FP32 I/O" if fp16.passed else f"rolled back: {fp16.records[0].message}")
    mode = "dynamic" if name == "bert" else "static"
    int8 = quantize(fp32, folder / "int8.onnx", mode=mode, calib=calib, eval_data=eval_feeds, labels=labels)
    variants["INT8"] = (folder / "int8.onnx", mode + ("" if calib or mode == "dynamic" else ", random calibration")
                        + (f", {len(int8.float_nodes)} nodes in float" if int8.float_nodes else ""))
    written = {v: path for v, (path, _) in variants.items() if path.is_file()}
    timings = latencies(written, random_inputs(specs, sizes, seed=7), runs)
    reference = run(fp32, eval_feeds)
    rows = []
    for variant, (path, note) in variants.items():
        row = dict(model=name, variant=variant, note=note, size_mb=None, nodes=None, load_ms=None, latency_ms=None,
                   max_abs_err=None, rel_err=None, top1=None, top1_kind=None)
        if variant in written:
            row.update(size_mb=path.stat().st_size / 1e6, nodes=len(onnx.load(str(path)).graph.node),
                       **timings[variant], **parity(reference, run(path, eval_feeds), labels))
        rows.append(row)
    return rows


def evaluation_data(name: str, specs, sizes: dict[str, int]):
    """(eval feeds, labels or None, calibration feeds or None): the digits splits, else random feeds."""
    if name == "digits":
        from onnxgate.examples.digits import digits_split

        x_train, _, x_test, y_test = digits_split()
        return [{"x": x_test}], y_test, [{"x": x_train[i:i + 128]} for i in range(0, len(x_train), 128)]
    batch = {**sizes, "B": 4}
    return [random_inputs(specs, batch, seed=s) for s in range(4)], None, None


def run(path: Path, feeds) -> list[list[np.ndarray]]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [session.run(None, feed) for feed in feeds]


def latencies(paths: dict[str, Path], feed, runs: int) -> dict[str, dict]:
    """Load time and median latency per model, measured in interleaved rounds of 5 runs each."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sessions, result = {}, {}
    for name, path in paths.items():
        start = time.perf_counter()
        sessions[name] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        result[name] = {"load_ms": (time.perf_counter() - start) * 1e3}
        for _ in range(5):
            sessions[name].run(None, feed)
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(max(1, runs // 5)):
        for name, session in sessions.items():
            for _ in range(5):
                start = time.perf_counter()
                session.run(None, feed)
                times[name].append((time.perf_counter() - start) * 1e3)
    for name in paths:
        result[name]["latency_ms"] = statistics.median(times[name])
    return result


def parity(reference, outputs, labels) -> dict:
    """Max abs error against FP32 (and relative to the largest FP32 magnitude) over every output; top-1 accuracy
    with labels, else top-1 agreement with FP32 for classifier outputs."""
    err = max(float(np.abs(r.astype(np.float64) - o.astype(np.float64)).max())
              for rf, of in zip(reference, outputs) for r, o in zip(rf, of))
    scale = max(float(np.abs(r).max()) for rf in reference for r in rf)
    ref_logits = np.concatenate([rf[0] for rf in reference])
    got_logits = np.concatenate([of[0] for of in outputs]).astype(np.float32)
    top1 = kind = None
    if labels is not None:
        top1, kind = float((got_logits.argmax(1) == labels).mean()), "accuracy"
    elif ref_logits.ndim == 2:
        top1, kind = float((got_logits.argmax(1) == ref_logits.argmax(1)).mean()), "agreement"
    return {"max_abs_err": err, "rel_err": err / scale if scale else err, "top1": top1, "top1_kind": kind}


def simplifier_rows(name: str, ref: str, dynamo_path: Path, specs, sizes: dict[str, int], folder: Path) -> list[dict]:
    """onnxslim vs onnxsim on the dynamo export and on a TorchScript export of the same model."""
    exports = {"dynamo": dynamo_path}
    try:
        exports["torchscript"] = torchscript_export(ref, specs, folder / "ts.onnx")
    except Exception as exc:  # reported as a row, not a crash
        print(f"{name}: TorchScript export failed: {exc}", file=sys.stderr)
    verifier = Verifier([random_inputs(specs, sizes, seed=0), random_inputs(specs, {**sizes, "B": 3}, seed=1)])
    rows = []
    for exporter, path in exports.items():
        model = onnx.load(str(path))
        for tool in SIMPLIFIERS:
            record = run_passes(model, [Simplify(tool)], verifier=verifier).records[0]
            rows.append(dict(model=name, exporter=exporter, tool=tool, nodes_before=record.nodes_before,
                             nodes_after=record.nodes_after, size_before=record.size_before,
                             size_after=record.size_after, seconds=record.seconds, status=record.status,
                             error=record.error_vs_previous, message=record.message))
    return rows


def torchscript_export(ref: str, specs, path: Path) -> Path:
    import torch

    loaded = onnxgate.load_model(ref)
    example = loaded.example_inputs
    dynamic = {s.name: {axis: dim for axis, dim in s.dynamic_axes.items()} for s in specs}
    torch.onnx.export(loaded.module, (), str(path), kwargs=dict(example), dynamo=False, input_names=list(example),
                      dynamic_axes=dynamic, opset_version=17)
    return path


def variants_table(rows: list[dict]) -> Table:
    table = Table(title="FP32 / optimized / FP16 / INT8 (onnxruntime CPU, 1 thread, batch 1, median latency)")
    for col in ("model", "variant", "size MB", "nodes", "latency ms", "load ms", "max abs err", "rel err",
                "top-1", "note"):
        table.add_column(col, justify="left" if col in ("model", "variant", "note") else "right")
    for r in rows:
        top1 = "-" if r["top1"] is None else f"{r['top1'] * 100:.2f}% {r['top1_kind']}"
        cells = [_fmt(r["size_mb"], ".2f"), _fmt(r["nodes"], "d"), _fmt(r["latency_ms"], ".3f"),
                 _fmt(r["load_ms"], ".0f"), _fmt(r["max_abs_err"], ".2e"), _fmt(r["rel_err"], ".2e")]
        table.add_row(r["model"], r["variant"], *cells, top1, r["note"][:120])
    return table


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def simplifiers_table(rows: list[dict]) -> Table:
    table = Table(title="simplifiers (verified on random feeds at two batch sizes)")
    for col in ("model", "exporter", "tool", "nodes", "size MB", "seconds", "status", "max abs err"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["model"], r["exporter"], r["tool"], f"{r['nodes_before']} → {r['nodes_after']}",
                      f"{r['size_before'] / 1e6:.2f} → {r['size_after'] / 1e6:.2f}", f"{r['seconds']:.2f}",
                      r["status"] + (f" ({r['message'][:60]})" if r["message"] else ""),
                      "-" if r["error"] is None else f"{r['error']:.1e}")
    return table


if __name__ == "__main__":
    sys.exit(main())
