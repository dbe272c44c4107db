"""Verified transforms: simplify, optimize, FP16 and INT8 quantization, each re-verified, rolled back when it breaks
parity. Torch-free: this package runs where only onnx and onnxruntime are installed (plus the ``optimize`` extra
for the simplifiers).
"""

from .budget import Budget
from .optimize import optimize, to_fp16, transform
from .passes import Pass, PassResult, TransformRecord, TransformReport, run_passes
from .quantize import QuantizeReport, quantize
from .recipes import RecipeSearch, search_int8
from .verifier import Verifier

__all__ = ["optimize", "to_fp16", "quantize", "transform", "run_passes", "Pass", "PassResult", "TransformRecord",
           "TransformReport", "QuantizeReport", "Budget", "Verifier", "RecipeSearch", "search_int8"]
