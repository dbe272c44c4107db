"""all-MiniLM-L6-v2 INT8 against issue 26's 2x target: latency and cosines of dynamic-INT8 variants of the reference
set's FP32 export (run ``benchmarks/reference_set.py --models minilm --work WORK`` first).

    .venv/bin/python benchmarks/minilm_int8.py --work /tmp/perf/full/minilm

Quantizes the unfused export with onnxruntime's ``quantize_dynamic`` (every MatMul, per-tensor and per-channel
weights) and the fused ``model.opt.onnx`` per-channel, then times each file alone (p50 of 60 runs, batch 1 x 128
tokens, 2 threads, levels 'disable' and 'all'; the ratio: FP32's best level over the file's) beside the FP32 export
and the shipped candidate, and prints the lowest cosine to FP32 on the reference set's 48 real sentences
(``transform.budget.min_cosine``, the recipe search's measure): of ``last_hidden_state`` at every position, at the
real tokens only, of ``pooler_output``, and of the sentence embedding (mean over the real tokens, L2-normalized).
Run it on a quiet machine; it prints ``uptime`` before and after.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fp32_profile import median_ms, session  # noqa: E402
from reference_set import embeddings, sentence_feeds  # noqa: E402

from onnxgate.transform.budget import min_cosine  # noqa: E402


def p50_ms(path: Path, level: str) -> float:
    """p50 of 60 runs (10 warm-up) at batch 1 x 128 tokens, 2 threads."""
    runner = session(path, level, 2)
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(100, 2000, (1, 128)).astype(np.int64),
            "attention_mask": np.ones((1, 128), np.int64)}
    feed = {i.name: feed[i.name] for i in runner.get_inputs()}
    return median_ms(lambda: runner.run(None, feed), 60, warmup=10)


def cosines(path: Path, reference: list[np.ndarray], feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """The lowest per-sentence cosines to FP32 (``transform.budget.min_cosine``: the recipe search's own measure;
    with the mask, over the real tokens only)."""
    runner = session(path, "all", 2)
    out = runner.run(None, {i.name: feeds[i.name] for i in runner.get_inputs()})
    mask = feeds["attention_mask"]
    return {"hidden, all positions": min_cosine(reference[0], out[0]),
            "hidden, real tokens": min_cosine(reference[0], out[0], mask=mask),
            "pooler": min_cosine(reference[1], out[1]) if len(out) > 1 else float("nan"),
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
    reference = session(fp32, "disable", 2).run(None, feeds)
    base = None  # FP32's best level, from its own row (measured first)
    print("| file | p50 ms 'disable' / 'all' | x FP32 (best level each) | lowest cosine: hidden all positions"
          " / real tokens / pooler / embedding |\n| --- | --- | --- | --- |")
    for name, path in files.items():
        ms = {level: p50_ms(path, level) for level in ("disable", "all")}
        base = base or min(ms.values())
        c = cosines(path, reference, feeds)
        print(f"| {name} | {ms['disable']:.2f} / {ms['all']:.2f} | {base / min(ms.values()):.2f}x | "
              + " / ".join(f"{v:.4f}" for v in c.values()) + " |")
    print("uptime after:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
