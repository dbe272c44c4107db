"""Runners: one small protocol for every way to execute a model.

A runner is a context manager with ``run(inputs: dict[str, ndarray]) -> dict[str, ndarray]``. Nothing here imports
torch at module load; the torch runner imports it inside.
"""

from .base import Runner
from .ort import OrtRunner

__all__ = ["Runner", "OrtRunner"]
