"""all-MiniLM-L6-v2 INT8 against issue 26's 2x target: latency and cosines of dynamic-INT8 variants of the reference
set's FP32 export (run ``benchmarks/reference_set.py --models minilm --work WORK`` first).

    .venv/bin/python benchmarks/minilm_int8.py --work /tmp/perf/full/minilm

Quantizes the unfused export with onnxruntime's ``quantize_dynamic`` (every MatMul, per-tensor and per-channel
weights) and the fused ``model.opt.onnx`` per-channel, then times each file alone (p50 of 60 runs, batch 1 x 128
tokens, 2 threads, levels 'disable' and 'all') beside the FP32 export and the shipped candidate, and prints the
lowest cosine to FP32 on the reference set's 48 real sentences: of ``last_hidden_state`` at every position, at the
real tokens only, of ``pooler_output`` and of the sentence embedding (mean over the real tokens, L2-normalized).
Run it on a quiet machine; it prints ``uptime`` before and after.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_set import embeddings, sentence_feeds  # noqa: E402


def _session(path: Path, level: str, threads: int = 2):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def p50_ms(path: Path, level: str) -> float:
    session = _session(path, level)
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(100, 2000, (1, 128)).astype(np.int64),
            "attention_mask": np.ones((1, 128), np.int64)}
    feed = {i.name: feed[i.name] for i in session.get_inputs()}
    for _ in range(10):
        session.run(None, feed)
    times = []
    for _ in range(60):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def cosines(path: Path, reference: list[np.ndarray], feeds: dict[str, np.ndarray]) -> dict[str, float]:
    session = _session(path, "all")
    out = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})
    mask = feeds["attention_mask"]

    def lowest(a, b):
        a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
        return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())

    return {"hidden, all positions": lowest(out[0], reference[0]),
            "hidden, real tokens": lowest(out[0] * mask[..., None], reference[0] * mask[..., None]),
            "pooler": lowest(out[1], reference[1]) if len(out) > 1 else float("nan"),
            "embedding": float((embeddings(out[0], mask) * embeddings(reference[0], mask)).sum(1).min())}


def main() -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True, help="reference_set.py's minilm folder")
    args = parser.parse_args()
    print("uptime before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    fp32 = args.work / "model.onnx"
    files = {"FP32": fp32, "shipped": args.work / "model.int8.onnx"}
    for name, source, per_channel in (("every MatMul, per-tensor", fp32, False),
                                      ("every MatMul, per-channel", fp32, True),
                                      ("every MatMul, per-channel, fused graph", args.work / "model.opt.onnx", True)):
        out = args.work / f"probe-{len(files)}.onnx"
        quantize_dynamic(str(source), str(out), op_types_to_quantize=["MatMul"], per_channel=per_channel,
                         weight_type=QuantType.QInt8)
        files[name] = out
    feeds = sentence_feeds()
    reference = _session(fp32, "disable").run(None, feeds)
    base = p50_ms(fp32, "disable")
    print("| file | p50 ms 'disable' / 'all' | x FP32 'disable' (best level) | lowest cosine: hidden all positions"
          " / real tokens / pooler / embedding |\n| --- | --- | --- | --- |")
    for name, path in files.items():
        ms = {level: p50_ms(path, level) for level in ("disable", "all")}
        c = cosines(path, reference, feeds)
        print(f"| {name} | {ms['disable']:.2f} / {ms['all']:.2f} | {base / min(ms.values()):.2f}x | "
              + " / ".join(f"{v:.4f}" for v in c.values()) + " |")
    print("uptime after:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
