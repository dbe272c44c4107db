"""The reference runner: the PyTorch module itself, with numpy in and out.

torch is imported inside functions only, so importing this module (and the runtimes package) never needs torch.
``flatten_outputs`` lives here because it defines the output names: the exporter names the ONNX outputs with it,
so reference and candidate outputs line up by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import BadInputError, user_code


def flatten_outputs(obj: Any, prefix: str = "out") -> list[tuple[str, Any]]:
    """Name the tensors of a forward() result, in order.

    A single tensor is ``output``; tuple/list items are ``out.0``, ``out.1``, nested ``out.0.1``; dict items
    (Hugging Face ``ModelOutput`` included) take their keys, nested ``key.sub``. None entries are skipped
    (ModelOutput fields a model did not compute). Anything else is an error: ONNX outputs are tensors.
    """
    import torch

    if isinstance(obj, torch.Tensor):
        return [("output", obj)]
    return list(_walk(obj, None, prefix, torch.Tensor))


def _walk(obj: Any, path: str | None, prefix: str, tensor_type: type):
    if obj is None:
        return
    if isinstance(obj, tensor_type):
        yield path, obj
    elif isinstance(obj, Mapping) or (hasattr(obj, "items") and hasattr(obj, "keys")):
        for key, value in obj.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key), prefix, tensor_type)
    elif isinstance(obj, (tuple, list)):
        for i, value in enumerate(obj):
            yield from _walk(value, f"{path or prefix}.{i}", prefix, tensor_type)
    else:
        raise BadInputError(
            f"The model returns a {type(obj).__name__} at '{path or prefix}'; ONNX outputs must be tensors.",
            hint="Return tensors (in a tuple or dict if several), or wrap the model to drop non-tensor outputs.",
        )


class TorchRunner:
    """Runs the PyTorch module as the reference: eval mode, no autograd, numpy in and out.

    Inputs are passed positionally in ``input_names`` order, unless every name is a parameter of ``forward()``,
    in which case they are passed as keywords (robust to models whose optional arguments sit in between).
    Outputs are named by ``flatten_outputs``, or by ``output_names`` in that order when given.
    """

    def __init__(self, module: Any, *, device: str = "cpu", input_names: list[str],
                 output_names: list[str] | None = None):
        import torch

        self.name = "pytorch"
        self.device = torch.device(device)
        try:
            module.eval()
        except NotImplementedError:  # torch.export modules: captured in the mode they were exported in
            pass
        self.module = module.to(self.device) if hasattr(module, "to") else module
        self.input_names = list(input_names)
        self.output_names = list(output_names) if output_names is not None else None
        self.by_keyword = calls_by_keyword(module, self.input_names)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise BadInputError(f"The feed has no value for input(s) {', '.join(missing)}.",
                                hint=f"The model's inputs are: {', '.join(self.input_names)}.")
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self.device) for n in self.input_names]
        with torch.no_grad(), user_code("running the PyTorch reference"):
            if self.by_keyword:
                result = self.module(**dict(zip(self.input_names, args)))
            else:
                result = self.module(*args)
        named = flatten_outputs(result)
        if self.output_names is not None:
            if len(self.output_names) != len(named):
                raise BadInputError(
                    f"The model returns {len(named)} tensors ({', '.join(n for n, _ in named)}) but "
                    f"{len(self.output_names)} output names were given ({', '.join(self.output_names)}).",
                    hint="Give one output name per returned tensor, or none.",
                )
            named = [(name, t) for name, (_, t) in zip(self.output_names, named)]
        return {name: _to_numpy(t) for name, t in named}

    def __enter__(self) -> "TorchRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.module = None


def calls_by_keyword(module: Any, names: list[str]) -> bool:
    """Pass inputs by keyword when every name is a parameter of forward() (robust to optional arguments in
    between); otherwise positionally. The exporter and the reference runner must decide alike."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError, AttributeError):  # TorchScript methods have no Python signature
        return False
    named = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY)}
    return bool(names) and set(names) <= named


def _to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds every bfloat16 value exactly
        t = t.float()
    return t.numpy()


def reinit_degenerate_parameters(module: Any, std: float = 1e-2, seed: int = 0) -> list[str]:
    """Re-initialise all-zero weight parameters with small seeded noise, for verification only.

    A zero-initialised weight (a fresh head, ResNet's zero-init last BatchNorm gamma) makes outputs independent
    of the input, and a comparison of constants proves nothing about the graph. Biases are left alone: zero
    biases are normal and never make an output input-independent. Returns the names of the parameters changed.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    changed = []
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.rsplit(".", 1)[-1] == "bias" or not param.is_floating_point() or param.numel() == 0:
                continue
            if not bool((param == 0).all()):
                continue
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32) * std
            param.copy_(noise.to(device=param.device, dtype=param.dtype))
            changed.append(name)
    return changed
