"""Cold start and peak memory of one runner, measured in the fresh process that runs this file.

Run by path, not as ``-m onnxgate...``, so an ONNX runtime's start-up does not include importing all of onnxgate:
the ONNX probes import numpy, their runtime and onnxgate's thin session layer (``runtimes.ort.open_session`` /
``runtimes.openvino.OpenVinoRunner``, the one place onnxgate builds sessions; neither imports onnx or torch), which
adds a few tens of milliseconds to ``import_s``. The PyTorch probe builds the model from its reference with
onnxgate's loader (a deployment imports its model code too) and calls it as the reference runner does.

Protocol:  python _probe.py SPEC_JSON
SPEC: {"runtime": "pytorch" | "onnxruntime" | "openvino", "threads": N, "model": ONNX path,
       "ort_level": "ORT_ENABLE_ALL", "source": {"ref": ..., "weights": ..., "arch": ..., "trust_pickle": ...},
       "feed": [[input name, .npy path], ...], "runs": N, "precision": OpenVINO's pinned precision or null}
Prints one JSON line: {"ok": true, "import_s", "load_s", "first_run_s", "first_result_at", "peak_rss_bytes"},
or {"ok": false, "error": "..."}. ``first_result_at`` is ``time.monotonic()`` right after the first inference,
which the parent compares with its own clock taken before starting this process (one system-wide clock).
"""

from __future__ import annotations

import json
import resource
import sys
import time

# This folder holds modules (report.py, runners.py, ...) that must not shadow top-level ones for the runtimes.
sys.path.pop(0)


def _pytorch(spec, feed_names):
    import torch

    imported = time.perf_counter()
    torch.set_num_threads(spec["threads"])
    from onnxgate.runtimes.torch_runner import TorchRunner
    from onnxgate.sources import load_model

    source = spec["source"]
    loaded = load_model(source["ref"], weights=source.get("weights"), arch=source.get("arch"),
                        trust_pickle=bool(source.get("trust_pickle")))
    runner = TorchRunner(loaded.module, input_names=feed_names)
    return imported, runner.run


def _onnxruntime(spec, feed_names):
    import onnxruntime  # noqa: F401  (its import is what this phase measures)

    from onnxgate.runtimes.ort import OPT_LEVELS, open_session

    imported = time.perf_counter()
    level = next(name for name, member in OPT_LEVELS.items() if member == spec["ort_level"])
    session = open_session(spec["model"], opt_level=level, intra_op_threads=spec["threads"],
                           providers=["CPUExecutionProvider"])
    return imported, lambda feed: session.run(None, feed)


def _openvino(spec, feed_names):
    import openvino  # noqa: F401  (its import is what this phase measures)

    from onnxgate.runtimes.openvino import OpenVinoRunner

    imported = time.perf_counter()
    # as the benchmark runs it (bench.runners.open_runner): PERFORMANCE mode, LATENCY hint, a fixed thread count
    runner = OpenVinoRunner(spec["model"], "CPU", execution_mode="PERFORMANCE", performance_hint="LATENCY",
                            threads=spec["threads"], precision_hint=spec.get("precision"))
    return imported, runner.run


def main(spec: dict) -> dict:
    start = time.perf_counter()
    import numpy as np

    names = [name for name, _ in spec["feed"]]
    imported, run = {"pytorch": _pytorch, "onnxruntime": _onnxruntime, "openvino": _openvino}[spec["runtime"]](
        spec, names)
    feed = {name: np.load(path, allow_pickle=False) for name, path in spec["feed"]}
    loaded = time.perf_counter()
    run(feed)
    first = time.perf_counter()
    first_result_at = time.monotonic()
    for _ in range(spec["runs"]):  # steady state: some runtimes allocate more on later runs
        run(feed)
    return {"ok": True, "import_s": imported - start, "load_s": loaded - imported, "first_run_s": first - loaded,
            "first_result_at": first_result_at, "peak_rss_bytes": _peak_rss_bytes()}


def _peak_rss_bytes() -> int:
    """This process's peak resident memory. Linux: VmHWM. Not ru_maxrss, which survives fork and exec, so a child
    of a big parent reports the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB elsewhere


if __name__ == "__main__":
    try:
        result = main(json.loads(sys.argv[1]))
    except Exception as exc:  # reported to the parent as a value; a native crash shows as a non-zero exit
        lines = str(getattr(exc, "message", exc)).strip().splitlines()  # onnxgate's errors: without the hint
        result = {"ok": False, "error": f"{type(exc).__name__}: {lines[0][:400] if lines else ''}"}
    print(json.dumps(result), flush=True)
