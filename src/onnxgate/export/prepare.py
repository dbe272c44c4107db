"""Pre-export checks: make the model and its inputs ready, and record what had to change.

- eval mode, warning when the model was in training mode (naming the Dropout and BatchNorm modules affected:
  exported in training mode, Dropout stays random and BatchNorm uses batch statistics);
- parameters and inputs on one device (CPU unless ``--device``);
- input specs resolved into concrete example tensors (user flags first, then the model's own example inputs);
- a non-deterministic model detected (two forward passes differ), since parity can then never be exact;
- outputs flattened into stable names (dict keys kept, nested tuples as ``out.0.1``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import BadInputError, ModelCodeExit, first_line, user_code
from ..spec import BATCH_NAMES, Dim, ExportConfig, InputSpec



@dataclass
class Prepared:
    module: Any
    specs: list[InputSpec]  # resolved: every input named, typed, with static or named-dynamic dims
    dims: dict[str, Dim]  # every dynamic dim, with its example size filled in
    example: dict[str, np.ndarray]  # concrete inputs the export traces with
    output_names: list[str]
    reference: dict[str, np.ndarray]  # PyTorch outputs on ``example``
    call_as_kwargs: bool
    warnings: list[str] = field(default_factory=list)
    deterministic: bool = True
    # Each float32 output's parity tolerance at the model's own float32 noise (``verify.api.noise_tolerances``),
    # measured once, and only after an attempt missed the dtype default in its numbers alone (issue 28).
    noise: dict | None = None
    # SHA-256 of the state dict before the first forward pass (verify/identity.py): recorded in the metadata, so
    # verify can tell a rebuilt reference with other (re-initialized) weights from a wrong export.
    weights_sha256: str | None = None
    # PyTorch's outputs per feed, shared by every rung's quick check and the winner's proof (``reference_runs``).
    _reference_runs: Any = field(default=None, init=False, repr=False, compare=False)

    # What the rungs' judges and the proof may keep of PyTorch's outputs: a ViT-B's whole proof keeps under 1 MB.
    REFERENCE_BYTES = 64 * 2**20

    def reference_runs(self):
        """PyTorch on this model, each feed run once for the whole ladder (``verify.parity.ReferenceRuns``): every
        rung judges the same example, seeds and sign/scale variants, and the winner's proof starts from them
        (issue 25). The module's weights never change while the ladder runs (a repair rung changes its worker's
        copy), so a feed's digest is key enough. No threads are kept: safe across the attempt workers' forks."""
        if self._reference_runs is None:
            from ..runtimes.torch_runner import TorchRunner
            from ..verify.parity import ReferenceRuns

            runner = TorchRunner(self.module, input_names=[s.name for s in self.specs], output_names=self.output_names)
            self._reference_runs = ReferenceRuns(runner, self.REFERENCE_BYTES)
        return self._reference_runs

    def torch_args(self, inputs: dict[str, np.ndarray] | None = None):
        """(args, kwargs) to call the module with numpy ``inputs`` (default: the example)."""
        import torch

        inputs = self.example if inputs is None else inputs
        tensors = [torch.from_numpy(np.ascontiguousarray(inputs[s.name])) for s in self.specs]
        if self.call_as_kwargs:
            return (), {s.name: t for s, t in zip(self.specs, tensors)}
        return tuple(tensors), {}


def training_modules(module) -> list[str]:
    """Names of Dropout and BatchNorm modules that behave differently in training mode."""
    import torch

    kinds = (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._BatchNorm)
    return [name or type(m).__name__ for name, m in module.named_modules() if isinstance(m, kinds) and m.training]


def resolve_specs(config: ExportConfig, model_example: dict[str, Any] | None, module) -> tuple[list[InputSpec], dict[str, Dim]]:
    """Decide every input's name, dtype and dims, and every dynamic dim's example size."""
    examples = dict(model_example or {})
    if config.inputs:
        specs = list(config.inputs)
    elif examples:  # the model's own example inputs, with static shapes
        specs = [InputSpec(name, tuple(int(d) for d in t.shape), str(t.dtype).removeprefix("torch."))
                 for name, t in examples.items()]
    else:
        raise BadInputError(
            "The model gives no example inputs, so onnxgate cannot know what to feed it.",
            hint="Describe each input with --input NAME:SHAPE:DTYPE, e.g. --input x:Bx3x224x224:float32.",
        )
    example_list = list(examples.values())
    dims: dict[str, Dim] = {}
    for i, spec in enumerate(specs):
        model_t = examples.get(spec.name, example_list[i] if i < len(example_list) else None)
        for axis, name in spec.dynamic_axes.items():
            dim = dims.get(name) or config.dim(name)
            if dim.example is None:
                size = None
                if model_t is not None and axis < len(model_t.shape):
                    size = int(model_t.shape[axis])
                if size is None or size == 1:
                    # The dynamo exporter specializes a dim traced at size 0 or 1 to a constant: trace at >= 2.
                    size = 2 if (size == 1 or name.lower() in BATCH_NAMES) else None
                if size is None:
                    raise BadInputError(
                        f"--input '{spec}': the dynamic dim '{name}' has no example size and the model gives none.",
                        hint=f"Give one with --dim {name}=SIZE or --dim {name}=MIN..MAX@SIZE.",
                    )
                size = max(dim.min, size) if dim.max is None else min(max(dim.min, size), dim.max)
                dim = replace(dim, example=size)
            dims[name] = dim
    unknown = sorted({d.name for d in config.dims} - set(dims))
    if unknown:
        raise BadInputError(f"--dim names {', '.join(unknown)}, which no --input uses.",
                            hint="Use the dim's name inside an --input shape, e.g. --input x:Bx3x224x224:float32.")
    return specs, dims


def example_inputs(specs: list[InputSpec], dims: dict[str, Dim], model_example: dict[str, Any] | None,
                   *, seed: int = 0) -> dict[str, np.ndarray]:
    """Concrete inputs: the model's own example tensor where shape and dtype agree, else seeded random data."""
    from ..verify.inputs import concrete_shape, random_inputs

    sizes = {name: d.example for name, d in dims.items()}
    generated = random_inputs(specs, sizes, seed=seed)
    examples = dict(model_example or {})
    example_list = list(examples.values())
    out = {}
    for i, spec in enumerate(specs):
        t = examples.get(spec.name, example_list[i] if i < len(example_list) else None)
        if t is not None and tuple(t.shape) == concrete_shape(spec, sizes) and spec.value_range is None:
            arr = t.detach().cpu().numpy()
            if str(arr.dtype) == spec.dtype or (spec.dtype == "bool" and arr.dtype == np.bool_):
                out[spec.name] = arr
                continue
        out[spec.name] = generated[spec.name]
    return out


def prepare(loaded, config: ExportConfig) -> Prepared:
    """Everything the exporters need, plus the PyTorch reference outputs on the example inputs."""
    import torch

    from ..runtimes.torch_runner import calls_by_keyword, flatten_outputs

    module = loaded.module
    warnings: list[str] = []
    if isinstance(module, torch.nn.Module):
        if module.training:
            affected = training_modules(module)
            detail = f" Affected: {', '.join(affected[:8])}{' ...' if len(affected) > 8 else ''}." if affected else ""
            warnings.append("The model was in training mode; onnxgate switched it to eval mode for export "
                            f"(Dropout would stay random and BatchNorm would use batch statistics).{detail}")
        try:
            module.eval()
        except NotImplementedError:  # a torch.export module: captured in the mode it was exported in
            pass
        if config.device != "cpu" or any(p.device.type != "cpu" for p in module.parameters()):
            module = module.to(config.device)

    if config.reinit_degenerate:
        from ..runtimes.torch_runner import reinit_degenerate_parameters

        prepared_reinit = reinit_degenerate_parameters(module)
        if prepared_reinit:
            warnings.append(f"Re-initialized all-zero weights with small seeded noise (--reinit-degenerate): "
                            f"{', '.join(prepared_reinit[:6])}{' ...' if len(prepared_reinit) > 6 else ''}.")
    specs, dims = resolve_specs(config, loaded.example_inputs, module)
    example = example_inputs(specs, dims, loaded.example_inputs)
    call_as_kwargs = calls_by_keyword(module, [s.name for s in specs])
    prepared = Prepared(module, specs, dims, example, [], {}, call_as_kwargs, warnings)
    from ..verify.identity import weights_fingerprint

    prepared.weights_sha256 = weights_fingerprint(module)  # before forward(): a model may update its own buffers

    def forward():
        args, kwargs = prepared.torch_args()
        if config.device != "cpu":
            args = tuple(a.to(config.device) for a in args)
            kwargs = {k: v.to(config.device) for k, v in kwargs.items()}
        with torch.no_grad(), user_code("running forward() on the example inputs"):
            return flatten_outputs(module(*args, **kwargs))

    try:
        first = forward()
    except ModelCodeExit as exc:
        raise BadInputError(f"The model cannot be run: {exc}.",
                            hint="Remove the sys.exit()/exit()/KeyboardInterrupt from the model's forward().") from exc
    except Exception as exc:
        raise BadInputError(
            f"The model fails on the example inputs ({', '.join(str(s) for s in specs)}): "
            f"{type(exc).__name__}: {first_line(exc, 300)}",
            hint="Check the --input shapes and dtypes against what the model's forward() expects.",
        ) from exc
    if not first:
        raise BadInputError("The model returns no tensors, so there is nothing to export.",
                            hint="Make forward() return a tensor, a tuple/list or a dict of tensors.")
    prepared.output_names = [name for name, _ in first]
    prepared.reference = {name: t.detach().cpu().numpy() for name, t in first}
    if config.check_determinism:
        second = {name: t.detach().cpu().numpy() for name, t in forward()}
        differing = [n for n in prepared.output_names
                     if not np.array_equal(prepared.reference[n], second[n], equal_nan=True)]
        if differing:
            prepared.deterministic = False
            warnings.append(f"The model is not deterministic: two forward passes on the same input differ in "
                            f"{', '.join(differing)}. Parity can only be approximate; look for random ops "
                            "(dropout in functional form, torch.rand) in forward().")
    return prepared
