"""The one door to protobuf: every ONNX file onnxgate reads or writes goes through here.

Keeps three promises in one place: writes are atomic (``fsutil``: temporary file in the same folder, then rename),
an existing file is kept unless ``force``, and external-data locations never leave the model's folder (a crafted model could
otherwise make a loader read ``/etc/shadow`` or write outside the output folder).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx

from .errors import BadInputError, UnsafeInputError
from .fsutil import atomic_file, check_target

# protobuf cannot serialize a message over 2 GiB; stay well clear of it.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def external_data_locations(model: onnx.ModelProto) -> list[str]:
    """Every external-data ``location`` the model's initializers point to (no data is loaded)."""
    locations = []
    for tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations.append(entry.value)
    return sorted(set(locations))


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t


def check_external_data_paths(model: onnx.ModelProto, base_dir: Path) -> None:
    base = base_dir.resolve()
    for location in external_data_locations(model):
        target = (base / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(base):
            raise UnsafeInputError(
                f"The model refers to external data at '{location}', which lies outside its folder '{base}'. "
                "onnxgate refuses to read it: a model file must not reach files elsewhere on the machine.",
                hint="Keep the .onnx file and its external data files together in one folder, with relative locations.",
            )


def load(path: str | Path, *, load_external_data: bool = True) -> onnx.ModelProto:
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"ONNX model '{path}' does not exist.", hint="Check the path, or export a model first.")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise BadInputError(f"'{path}' is not a readable ONNX model: {exc}.",
                            hint="Give a .onnx file written by an ONNX exporter.") from exc
    check_external_data_paths(model, p.parent)
    if load_external_data and external_data_locations(model):
        onnx.load_external_data_for_model(model, str(p.parent))
    return model


def save(model: onnx.ModelProto, path: str | Path, *, force: bool = False) -> Path:
    """Write ``model`` atomically. Models too big for one protobuf get their weights in ``<name>.data`` beside
    the file (note: onnx then moves the tensors out of the in-memory ``model``)."""
    p = Path(path)
    check_target(p, force=force, kind="model file")
    if model.ByteSize() <= EXTERNAL_DATA_THRESHOLD:
        with atomic_file(p, force=force) as tmp:
            onnx.save_model(model, str(tmp))
        return p
    data_name = p.name + ".data"
    check_target(p.parent / data_name, force=force, kind="external data file")
    staging = Path(tempfile.mkdtemp(prefix=f".{p.name}.", dir=p.parent))
    try:
        onnx.save_model(model, str(staging / p.name), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
        os.replace(staging / data_name, p.parent / data_name)
        os.replace(staging / p.name, p)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return p
