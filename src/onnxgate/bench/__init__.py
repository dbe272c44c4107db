"""Benchmark an ONNX artifact against PyTorch eager and across runtimes: latency, throughput, start-up, memory,
size and FLOP efficiency, measured side by side in one run. ``bench(...) -> BenchReport``.

Importing this package does not import torch or any runtime; ``bench`` imports what the measured sides need.
"""

from .api import BenchSettings, bench
from .report import BenchReport
from .runners import Variant

__all__ = ["bench", "BenchSettings", "BenchReport", "Variant"]
