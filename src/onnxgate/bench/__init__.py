"""Benchmark an ONNX artifact against PyTorch eager and across runtimes: latency, throughput, start-up, memory,
size and FLOP efficiency, measured side by side in one run. ``bench(...) -> BenchReport``.

Importing this package does not import torch, onnx or any runtime; names load on first use.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {"bench": ".api", "BenchSettings": ".api", "BenchReport": ".report",
                                               "Variant": ".runners"})
__all__ = ["bench", "BenchSettings", "BenchReport", "Variant"]
