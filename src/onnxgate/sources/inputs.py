"""Turn the example inputs a source provides into the ordered ``name -> tensor`` mapping of ``LoadedModel``.

Factories may return a tensor, a tuple/list of tensors or a dict. The exporter needs names (they become the
ONNX input names, and ``--input``/``--dim`` flags refer to them), so positional inputs are named after the
parameters of ``forward`` — a model with ``forward(self, image, mask)`` gets inputs ``image`` and ``mask`` —
and ``input_0``, ``input_1``... where the signature has no name for them (``*args``, TorchScript without a
schema). The order is the positional order, so the exporter can pass them positionally.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from ..errors import ModelSourceError

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def forward_parameter_names(module: Any) -> list[str]:
    """Names of the positional parameters of ``module.forward``, without ``self``."""
    forward = module.forward
    schema = getattr(forward, "schema", None)  # a TorchScript method has a schema instead of a Python signature
    if schema is not None:
        return [argument.name for argument in schema.arguments[1:]]
    try:
        parameters = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in parameters if p.kind in _POSITIONAL]


def name_example_inputs(module: Any, value: Any, *, where: str) -> dict[str, Any] | None:
    """Normalize ``value`` (tensor, tuple/list of tensors, dict name->tensor or None) to an ordered dict.

    ``where`` names the source of the inputs for the error message, e.g. "factory 'model.py:make'".
    """
    import torch

    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = (value,)
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (tuple, list)):
        names = forward_parameter_names(module)
        items = [(names[i] if i < len(names) else f"input_{i}", tensor) for i, tensor in enumerate(value)]
    else:
        raise ModelSourceError(
            f"The example inputs from {where} are a {type(value).__name__}; expected a tensor, a tuple or list of "
            "tensors, or a dict mapping input names to tensors.",
            hint="Return (module, example_inputs) with example_inputs in one of those forms.",
        )
    for name, tensor in items:
        if not isinstance(name, str):
            raise ModelSourceError(
                f"The example inputs from {where} are a dict with the key {name!r}, which is not a string.",
                hint="Key the dict by input name, e.g. {'x': tensor}.",
            )
        if not isinstance(tensor, torch.Tensor):
            raise ModelSourceError(
                f"The example input '{name}' from {where} is a {type(tensor).__name__}, not a tensor.",
                hint="Give every example input as a torch.Tensor (nested lists, tuples and None are not supported).",
            )
    return dict(items)
