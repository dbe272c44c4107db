"""Judging models: structure, numerical comparison, shape probing, parity, localization, target support.

Torch-free at import: PyTorch is imported only when a reference model has to run.
"""

from .api import VerifyResult, verify

__all__ = ["verify", "VerifyResult"]
