"""The model as the benchmark sees it: the ONNX file (exported first when given a reference), the PyTorch model
if any, one seeded feed at the latency shape, the variants, and their sizes on disk."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError
from ..spec import ExportConfig, InputSpec
from .runners import BASE, EAGER, Variant


@dataclass
class Target:
    """The model as the benchmark sees it: the ONNX file, the PyTorch model (if any), inputs at the latency shape."""

    onnx_path: Path
    loaded: Any  # LoadedModel or None (an .onnx file without --against)
    exported: bool
    specs: list[InputSpec]
    sizes: dict[str, int]  # every dynamic dim at its latency size (batch 1 when the batch dim is dynamic)
    batch_dim: str | None
    batch_max: int | None
    feed: dict[str, np.ndarray]
    variants: list[Variant]

    @property
    def batch(self) -> int:
        """The batch of the latency feed: the batch dim's size, else the first input's leading (static) dim."""
        if self.batch_dim:
            return self.sizes[self.batch_dim]
        first = next(iter(self.feed.values()), None)
        return int(first.shape[0]) if first is not None and first.ndim else 1

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def module(self) -> Any:
        return self.loaded.module if self.loaded is not None else None

    @property
    def paths(self) -> dict[str, str]:
        return {v.name: v.path for v in self.variants}


def prepare_target(model, against, config: ExportConfig, variants: list[Variant], base_verified: bool | None,
                   tmp: Path, note, source: dict) -> Target:
    """Resolve the model and its inputs. ``tmp`` receives the export of a reference; ``source`` holds the
    weights/arch/trust_pickle options of ``load_model``."""
    from ..verify.api import specs_from_model
    from ..verify.inputs import random_inputs
    from ..verify.structure import check_structure

    _check_variants(variants)  # before a possibly long export
    onnx_path, loaded, exported = _resolve(model, against, config, tmp, note, source)
    structure = check_structure(onnx_path, try_ort=False)
    specs, dims = specs_from_model(structure, config)
    batch_dim = _batch_dim(specs)
    sizes = {name: d.example for name, d in dims.items()}
    if batch_dim and dims[batch_dim].contains(1):
        sizes[batch_dim] = 1
    if base_verified is None:
        base_verified = exported or "onnxgate.source" in structure.metadata
    return Target(onnx_path, loaded, exported, specs, sizes, batch_dim, dims[batch_dim].max if batch_dim else None,
                  random_inputs(specs, sizes, seed=0),
                  [Variant(BASE, str(onnx_path), base_verified), *variants])


def _resolve(model, against, config: ExportConfig, tmp: Path, note, source: dict) -> tuple[Path, Any, bool]:
    """(ONNX path, LoadedModel or None, exported here?)."""
    from ..export.ladder import run_ladder
    from ..sources import LoadedModel, load_model

    if isinstance(model, (str, Path)) and str(model).endswith(".onnx"):
        path = Path(model)
        if not path.is_file():
            raise BadInputError(f"The ONNX file '{model}' does not exist.", hint="Check the path.")
        if against is None:
            return path, None, False
        loaded = against if isinstance(against, LoadedModel) else load_model(str(against), **source)
        return path, loaded, False
    loaded = model if isinstance(model, LoadedModel) else load_model(str(model), **source)
    path = tmp / "model.onnx"
    exported = run_ladder(loaded, batch_dynamic_config(loaded, config), path, progress=note)
    if exported.error is not None:  # nothing exported: the ladder's error, as when it raised it
        raise exported.error
    return path, loaded, True


def batch_dynamic_config(loaded, config: ExportConfig) -> ExportConfig:
    """Without ``--input``, export the model's example inputs with axis 0 as a dynamic batch ``B``, so latency is
    taken at batch 1 and throughput at growing batches; other dims stay as in the example. Integer inputs keep
    the example's value range (token ids stay inside the vocabulary)."""
    if config.inputs or not loaded.example_inputs:
        return config
    specs = []
    for name, tensor in loaded.example_inputs.items():
        dtype = str(tensor.dtype).removeprefix("torch.")
        shape = ("B", *(int(d) for d in tensor.shape[1:])) if tensor.dim() else ()
        integer = not tensor.is_floating_point() and dtype != "bool" and tensor.numel()
        specs.append(InputSpec(name, shape, dtype, (int(tensor.min()), int(tensor.max())) if integer else None))
    return replace(config, inputs=tuple(specs))


def _batch_dim(specs: list[InputSpec]) -> str | None:
    """The dynamic dim on axis 0 of the first input that has one: what throughput scales."""
    for spec in specs:
        if spec.shape and isinstance(spec.shape[0], str):
            return spec.shape[0]
    return None


def _check_variants(variants: list[Variant]) -> None:
    names = [v.name for v in variants]
    for v in variants:
        if v.name in (BASE, EAGER) or names.count(v.name) > 1:
            raise BadInputError(f"Variant name '{v.name}' is reserved or used twice.",
                                hint=f"Give each variant its own name other than '{BASE}' and '{EAGER}'.")
        if not Path(v.path).is_file():
            raise BadInputError(f"The ONNX file '{v.path}' of variant '{v.name}' does not exist.",
                                hint="Check the path.")


def size_on_disk(path: str) -> int:
    """The .onnx file plus the external data files its tensors reference (read without loading them; a location
    outside the model's folder is refused, as every read of a model refuses it)."""
    from .. import serde

    locations = serde.external_data_locations(serde.load(path, load_external_data=False))
    folder = Path(path).parent
    return Path(path).stat().st_size + sum((folder / loc).stat().st_size for loc in locations
                                           if (folder / loc).is_file())


def module_bytes(module) -> int | None:
    """Parameters and buffers: what a saved state dict of the PyTorch model holds."""
    try:
        tensors = [*module.parameters(), *module.buffers()]
    except AttributeError:
        return None
    return int(sum(t.numel() * t.element_size() for t in tensors))
