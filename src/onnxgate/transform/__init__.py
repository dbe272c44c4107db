"""Verified transforms: simplify, optimize, FP16 and INT8 quantization, each re-verified, rolled back when it breaks
parity. Torch-free: this package runs where only onnx and onnxruntime are installed (plus the ``optimize`` extra
for the simplifiers). Names load on first use.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "optimize": ".optimize", "to_fp16": ".optimize", "transform": ".optimize", "quantize": ".quantize",
    "QuantizeReport": ".quantize", "run_passes": ".passes", "Pass": ".passes", "PassResult": ".passes",
    "TransformRecord": ".passes", "TransformReport": ".passes", "Budget": ".budget", "Verifier": ".verifier",
})
__all__ = ["optimize", "to_fp16", "quantize", "transform", "run_passes", "Pass", "PassResult", "TransformRecord",
           "TransformReport", "QuantizeReport", "Budget", "Verifier"]
