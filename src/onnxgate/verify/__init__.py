"""Judging models: structure, numerical comparison, shape probing, parity, localization, target support.

Torch-free and onnx-free at import (names load on first use): PyTorch is imported only when a reference model has
to run, onnx only by the modules that read graphs.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {"verify": ".api", "VerifyResult": ".api"})
__all__ = ["verify", "VerifyResult"]
