"""Calibration, evaluation and verification data for transforms: the same reader verification uses.

A DATA argument is an ``.npz``/``.npy`` file (arrays named after the inputs, labels under ``labels_key``), an image
folder (class sub-folders matched by name to the model's labels), a ``file.py:fn`` / ``pkg.mod:fn`` function
returning feeds (labels under ``labels_key`` in each feed), or feeds already in memory. The reader is
``verify.inputs.load_dataset``; this module adds what a transform knows — the model itself, whose metadata says
how to preprocess images and names its classes, and whose output says how many classes it has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import onnx

from ..spec import Dim, ExportConfig, InputSpec
from ..verify.inputs import DataArg, Dataset, load_dataset

__all__ = ["DataArg", "Dataset", "load_data", "model_specs", "model_classes", "random_dataset"]


def model_specs(path: str | Path) -> tuple[list[InputSpec], dict[str, Dim]]:
    """Input specs and dynamic dims of an ONNX file: from onnxgate's metadata, else from the graph inputs."""
    from ..verify.api import specs_from_model
    from ..verify.structure import check_structure

    return specs_from_model(check_structure(path, try_ort=False), ExportConfig())


def model_classes(model: onnx.ModelProto) -> int | None:
    """The class count of a classifier: the static last dim of its first output when that is [N, C]; else None."""
    if not model.graph.output:
        return None
    dims = model.graph.output[0].type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].HasField("dim_value"):
        return None
    return int(dims[1].dim_value) or None


def load_data(data: DataArg, specs: list[InputSpec], *, model: onnx.ModelProto, labels: Any = None,
              class_names: Sequence[str] | None = None, labels_key: str = "labels", preprocess: str | None = None,
              what: str = "data", labelled: bool = True) -> Dataset:
    """Load ``data`` (see the module docstring) as feeds conformed to ``specs``. ``labels`` given explicitly win
    over labels found in the data; ``class_names`` (``--labels FILE``) win over the model's ``labels`` metadata."""
    meta = {p.key: p.value for p in model.metadata_props}
    return load_dataset(data, specs, meta=meta, labels=labels, class_names=class_names,
                        num_classes=model_classes(model), labels_key=labels_key, preprocess=preprocess, what=what,
                        labelled=labelled)


def random_dataset(specs: list[InputSpec], dims: dict[str, Dim], *, count: int = 8) -> Dataset:
    """Seeded random feeds at the traced sizes: only for when no data is given; results on them say little."""
    from ..verify.inputs import random_inputs

    traced = {n: d.example or 2 for n, d in dims.items()}
    return Dataset([random_inputs(specs, traced, seed=s) for s in range(count)], None, f"random ({count} feeds)")
