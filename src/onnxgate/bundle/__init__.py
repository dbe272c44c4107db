"""Portable bundles: a verified ONNX model that anyone can re-verify on the target machine without PyTorch.

Nothing in this package imports torch, and the verification path does not import onnx either: a production
machine with only numpy, onnxruntime and onnxgate's base install can check a bundle. Names load on first use.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "FORMAT_VERSION": ".manifest", "open": ".opened", "opened": ".opened", "VerifiedBundle": ".opened",
    "parse_runtime": ".matrix", "TarLimits": ".unpack", "BundleVerification": ".verify", "OutputComparison": ".verify", "verify_bundle": ".verify", "verify_matrix": ".verify", "write_bundle": ".write",
})
__all__ = ["FORMAT_VERSION", "open", "opened", "VerifiedBundle", "BundleVerification", "OutputComparison",
           "parse_runtime", "TarLimits", "verify_bundle", "verify_matrix", "write_bundle"]
