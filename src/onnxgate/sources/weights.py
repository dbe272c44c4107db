"""State dicts: recognizing one inside a loaded checkpoint and loading it strictly into an architecture.

Loading is strict on purpose: a non-strict load that silently leaves layers at their random initialization
produces an ONNX file that passes every structural check and computes garbage. A mismatch is reported with
the first few missing, unexpected and wrongly shaped keys, which is usually enough to spot the cause (another
variant, another number of classes, a prefix added by a training wrapper).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelSourceError
from ._text import describe, listing

# DataParallel / DistributedDataParallel save their wrapped model's keys under this prefix.
_DATA_PARALLEL_PREFIX = "module."
# Training checkpoints keep the state dict next to optimizer state, epoch, etc. under one of these keys.
_CHECKPOINT_KEYS = ("state_dict", "model")


@dataclass
class StateDict:
    """Weights read from ``path``, waiting for the architecture they belong to."""

    tensors: dict[str, Any]
    path: Path

    def load_into(self, module: Any) -> None:
        """Load strictly into ``module``; on any mismatch raise ModelSourceError listing the offending keys."""
        expected = module.state_dict()
        tensors = _without_data_parallel_prefix(self.tensors, expected)
        missing = [key for key in expected if key not in tensors]
        unexpected = [key for key in tensors if key not in expected]
        mismatched = [
            f"{key} {tuple(tensors[key].shape)} in the file vs {tuple(value.shape)} in the model"
            for key, value in expected.items()
            if key in tensors and getattr(tensors[key], "shape", None) != getattr(value, "shape", None)
        ]
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys ({listing(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys ({listing(unexpected)})")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches ({listing(mismatched, 3)})")
        if problems:
            raise ModelSourceError(
                f"The weights in '{self.path}' do not fit the architecture {type(module).__name__}: "
                f"{'; '.join(problems)}.",
                hint="Check that the architecture (--arch, or the model reference given with --weights) is the one "
                "these weights were trained with: the same variant and the same number of classes.",
            )
        try:
            module.load_state_dict(tensors, strict=True)
        except Exception as exc:  # e.g. a custom _load_from_state_dict that rejects the values
            raise ModelSourceError(
                f"Loading the weights in '{self.path}' into {type(module).__name__} failed: {describe(exc)}.",
                hint="Check that the weights were saved from this architecture.",
            ) from exc


def extract_state_dict(obj: Any) -> dict[str, Any] | None:
    """The state dict in ``obj``: ``obj`` itself, or what a checkpoint keeps under "state_dict" / "model"."""
    if _is_tensor_mapping(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in _CHECKPOINT_KEYS:
            if _is_tensor_mapping(obj.get(key)):
                return dict(obj[key])
    return None


def _is_tensor_mapping(obj: Any) -> bool:
    import torch

    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in obj.items())
    )


def _without_data_parallel_prefix(tensors: dict[str, Any], expected: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the "module." prefix that (Distributed)DataParallel adds, when every key has it and the model's don't."""
    prefix = _DATA_PARALLEL_PREFIX
    if all(key.startswith(prefix) for key in tensors) and not any(key.startswith(prefix) for key in expected):
        return {key[len(prefix):]: value for key, value in tensors.items()}
    return tensors
