"""Portable bundles: a verified ONNX model that anyone can re-verify on the target machine without PyTorch.

Nothing in this package imports torch, and the verification path does not import onnx either: a production
machine with only numpy, onnxruntime and onnxgate's base install can check a bundle.
"""

from .manifest import FORMAT_VERSION
from .matrix import parse_runtime
from .verify import BundleVerification, OutputComparison, verify_bundle, verify_matrix
from .write import write_bundle


__all__ = ["FORMAT_VERSION", "BundleVerification", "OutputComparison", "parse_runtime", "verify_bundle",
           "verify_matrix", "write_bundle"]
