"""Where FP32 time goes, and why onnxruntime does not reach 1.5x PyTorch eager on bert_base, vit_b_16 and
convnext_tiny here (issue 26 item 4). One run, on a quiet machine, each configuration timed alone (batch 1, median
of ``--runs`` after 3 warm-ups), and onnxruntime's own profile at 1 thread by operator type:

    .venv/bin/python benchmarks/fp32_profile.py --work /tmp/perf/full            # the reference set's files
    .venv/bin/python benchmarks/fp32_profile.py --work /tmp/perf/full --write    # and its section of RESULTS.md

``--work`` is a ``benchmarks/reference_set.py --work`` folder (``NAME/model.onnx``: the exported file,
``NAME/model.opt.onnx``: ``onnxgate optimize``'s). Rows: PyTorch eager, onnxruntime at levels 'disable' and 'all',
'all' with the SkipLayerNormalization fusion turned off (``disabled_optimizers``), the optimized file; at 1 and 2
threads. A lone MatMul of each transformer shape at 1 thread, onnxruntime vs ``torch.nn.functional.linear``, shows
how close each side's GEMM is to the other's.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODELS = ("bert_base", "vit_b_16", "convnext_tiny")
SEQ = 128


def feeds(name: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if name == "bert_base":
        return {"input_ids": rng.integers(0, 30000, (1, SEQ)).astype(np.int64),
                "attention_mask": np.ones((1, SEQ), np.int64)}
    return {"x": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}


def median_ms(fn, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def session(path: Path, level: str, threads: int, disabled=(), profile_dir: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if profile_dir:
        options.enable_profiling, options.profile_file_prefix = True, f"{profile_dir}/prof"
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled) or None)


def eager_ms(name: str, threads: int, runs: int) -> float:
    """PyTorch eager at ``threads``, the reference set's model with its seeded random weights (vit_b_16's
    zero-initialized head is left as it is: it does not change the cost)."""
    import torch

    sys.path.insert(0, str(HERE))
    from reference_set import MODELS as SET

    from onnxgate.sources import load_model

    torch.set_num_threads(threads)
    module = load_model(SET[name].ref).module.eval()
    args = [torch.from_numpy(v) for v in feeds(name).values()]
    with torch.inference_mode():
        return median_ms(lambda: module(*args), runs)


def op_shares(path: Path, name: str, runs: int) -> list[tuple[str, float, float, int]]:
    """(op type, ms per run, share, nodes) at 1 thread, level 'disable', from onnxruntime's profiler."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(path, "disable", 1, profile_dir=tmp)
        feed = feeds(name)
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    spent, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            spent[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    total = sum(spent.values())
    return [(op, us / 1e3 / runs, us / total, count[op] // runs) for op, us in spent.most_common(6)]


def gemm_rows() -> list[str]:
    """A lone MatMul of BERT-base's shapes at 1 thread: onnxruntime vs torch's linear, GFLOP/s."""
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    torch.set_num_threads(1)
    rows = []
    for m, k, n in [(128, 768, 768), (128, 768, 3072), (128, 3072, 768)]:
        w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                                  [numpy_helper.from_array(w, "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
        flops = 2 * m * k * n
        ort_ms = median_ms(lambda: sess.run(None, {"x": x}), 200)
        xt, wt = torch.from_numpy(x), torch.from_numpy(w.T.copy())
        with torch.inference_mode():
            torch_ms = median_ms(lambda: torch.nn.functional.linear(xt, wt), 200)
        rows.append(f"| {m}x{k} @ {k}x{n} | {flops / ort_ms / 1e6:.0f} | {flops / torch_ms / 1e6:.0f} |")
    return rows


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="a reference_set.py --work folder")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--write", action="store_true", help="replace this script's section of RESULTS.md")
    args = parser.parse_args()
    before = uptime()
    print(f"uptime before: {before}", flush=True)
    lines = ["| model | configuration | 1 thread ms | 2 threads ms | × eager (1 / 2 threads) |",
             "|---|---|---|---|---|"]
    shares = []
    for name in MODELS:
        base, opt = Path(args.work) / name / "model.onnx", Path(args.work) / name / "model.opt.onnx"
        rows = {"PyTorch eager": [eager_ms(name, t, args.runs) for t in (1, 2)]}
        feed = feeds(name)
        configs = [("onnxruntime 'disable'", base, "disable", ()), ("onnxruntime 'all'", base, "all", ())]
        if name in ("bert_base", "vit_b_16"):  # the transformers: onnxruntime's 'all' fuses SkipLayerNormalization
            configs += [("onnxruntime 'all', SkipLayerNormFusion off", base, "all", ("SkipLayerNormFusion",))]
        if opt.is_file():
            configs += [("optimized file, 'disable'", opt, "disable", ())]
        for label, path, level, disabled in configs:
            rows[label] = [median_ms(lambda s=session(path, level, t, disabled): s.run(None, feed), args.runs)
                           for t in (1, 2)]
            print(name, label, [f"{v:.1f}" for v in rows[label]], flush=True)
        eager = rows["PyTorch eager"]
        for label, (one, two) in rows.items():
            lines.append(f"| {name} | {label} | {one:.1f} | {two:.1f} | {eager[0] / one:.2f} / {eager[1] / two:.2f} |")
        shares.append((name, op_shares(base, name, args.runs)))
    gemm = gemm_rows()
    after = uptime()
    print(f"uptime after: {after}", flush=True)
    text = "\n".join([
        "# FP32 against eager: where the time goes (issue 26 item 4, `benchmarks/fp32_profile.py`)", "",
        f"`.venv/bin/python benchmarks/fp32_profile.py --work {args.work} --write` on {time.strftime('%Y-%m-%d')}, "
        f"nothing else running; uptime before: `{before}`; after: `{after}`. Batch 1, median of {args.runs} runs "
        "after 3 warm-ups, each configuration alone.", "", *lines, "",
        "onnxruntime's profile at 1 thread, level 'disable', by operator type (the six largest):", "",
        "| model | operator | ms per run | share | nodes |", "|---|---|---|---|---|",
        *[f"| {name} | {op} | {ms:.1f} | {share:.0%} | {nodes} |"
          for name, rows in shares for op, ms, share, nodes in rows],
        "", "A lone MatMul at 1 thread (GFLOP/s):", "", "| shape | onnxruntime | torch linear |", "|---|---|---|",
        *gemm, "",
    ])
    print(text)
    if args.write:
        from results_md import replace_section

        replace_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
