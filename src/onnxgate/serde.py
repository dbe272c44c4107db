"""The one door to protobuf: every ONNX file onnxgate reads or writes goes through here.

Keeps four promises in one place: writes are atomic (``fsutil``: temporary file in the same folder, then rename),
an existing file is kept unless ``force``, external-data locations never leave the model's folder (a crafted model could
otherwise make a loader read ``/etc/shadow`` or write outside the output folder), and a model too big for one protobuf
is refused in memory with a clear error (``to_bytes``) and written with external data on disk (``save``).
Runtime sessions are built in ``runtimes/`` (``runtimes.ort.open_session``), which serializes protos through here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx

from .errors import BadInputError, UnsafeInputError
from .fsutil import atomic_file, check_target, staging_dir

# protobuf cannot serialize a message over 2 GiB; stay well clear of it.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
PROTOBUF_LIMIT = 2**31 - 1  # protobuf's hard limit on one serialized message, in bytes


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
    """Every TensorProto of the model that can carry external data: initializers and sparse initializers of the main
    graph and of every subgraph (``If``/``Loop``/``Scan`` bodies, at any depth), tensors in node attributes
    (``Constant``'s value, TENSOR/TENSORS/SPARSE_TENSOR(S) attributes), the nodes of local functions, and the
    graphs of training info — the same places onnx's own external-data loader walks, so none escapes the check."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)
        for attr in function.attribute_proto:
            yield from _attribute_tensors(attr)
    for info in model.training_info:
        yield from _graph_tensors(info.initialization)
        yield from _graph_tensors(info.algorithm)


def _graph_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes):
    for node in nodes:
        for attr in node.attribute:
            yield from _attribute_tensors(attr)


def _attribute_tensors(attr: onnx.AttributeProto):
    if attr.HasField("t"):
        yield attr.t
    yield from attr.tensors
    for sparse in ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []) + list(attr.sparse_tensors):
        yield sparse.values
        yield sparse.indices
    if attr.HasField("g"):
        yield from _graph_tensors(attr.g)
    for graph in attr.graphs:
        yield from _graph_tensors(graph)


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


def save(model: onnx.ModelProto, path: str | Path, *, force: bool = False, external: bool = False) -> Path:
    """Write ``model`` atomically. Models too big for one protobuf (or any, with ``external``) get their weights in
    ``<name>.data`` beside the file (note: onnx then moves the tensors out of the in-memory ``model``)."""
    p = Path(path)
    check_target(p, force=force, kind="model file")
    if not external and fits_in_bytes(model, EXTERNAL_DATA_THRESHOLD):
        with atomic_file(p, force=force) as tmp:
            onnx.save_model(model, str(tmp))
        return p
    data_name = p.name + ".data"
    check_target(p.parent / data_name, force=force, kind="external data file")
    staging = Path(tempfile.mkdtemp(prefix=f".{p.name}.", dir=p.parent))
    try:
        onnx.save_model(model, str(staging / p.name), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
        if (staging / data_name).exists():  # onnx writes none when no tensor is stored as raw bytes over 1 KiB
            os.replace(staging / data_name, p.parent / data_name)
        os.replace(staging / p.name, p)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return p


_ITEMSIZE = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.FLOAT16: 2,
             onnx.TensorProto.BFLOAT16: 2, onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1,
             onnx.TensorProto.INT16: 2, onnx.TensorProto.UINT16: 2, onnx.TensorProto.INT32: 4,
             onnx.TensorProto.UINT32: 4, onnx.TensorProto.INT64: 8, onnx.TensorProto.UINT64: 8,
             onnx.TensorProto.BOOL: 1}


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the weights held *in* the proto (external data not counted), from each tensor's shape and type —
    never ``ByteSize()``, which protobuf refuses (EncodeError) on a message over 2 GiB."""
    total = 0
    for tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue
        if tensor.raw_data:
            total += len(tensor.raw_data)
            continue
        count = 1
        for d in tensor.dims:
            count *= d
        total += count * _ITEMSIZE.get(tensor.data_type, 8)
    return total


def byte_size(model: onnx.ModelProto) -> int:
    """The serialized size of ``model``: protobuf's own figure when it can give one, else (over its 2 GiB limit)
    the weights' bytes, which is what makes the message that large."""
    weights = tensor_bytes(model)
    if weights > EXTERNAL_DATA_THRESHOLD:
        return weights
    try:
        return model.ByteSize()
    except Exception:  # protobuf's EncodeError: the structure alone is over the limit
        return max(weights, PROTOBUF_LIMIT + 1)


def save_moving_external_data(model: onnx.ModelProto, source_dir: str | Path, path: str | Path, *,
                              force: bool = False) -> Path:
    """Write ``model`` — loaded with ``load_external_data=False``, its weights in one data file in ``source_dir`` —
    to ``path``, *moving* that file beside it as ``<name>.data`` (locations rewritten) instead of reading gigabytes
    of weights into memory to write them out again. Models without external data are saved as ``save`` does."""
    locations = external_data_locations(model)
    if not locations:
        return save(model, path, force=force)
    if len(locations) > 1:  # several data files: gather them into one through memory (rare: torch writes one)
        onnx.load_external_data_for_model(model, str(source_dir))
        return save(model, path, force=force)
    p = Path(path)
    check_target(p, force=force, kind="model file")
    data_name = p.name + ".data"
    check_target(p.parent / data_name, force=force, kind="external data file")
    for tensor in _all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = data_name
    shutil.move(str(Path(source_dir) / locations[0]), str(p.parent / data_name))
    with atomic_file(p, force=force) as tmp:
        onnx.save_model(model, str(tmp))
    return p


def fits_in_bytes(model: onnx.ModelProto, limit: int | None = None) -> bool:
    """Whether ``model`` serializes to at most ``limit`` bytes (default: as one protobuf message, see ``to_bytes``).
    Decided from ``size_bound`` when that is under the limit: protobuf's ``ByteSize()`` encodes the whole message to
    count it (a ViT-B: 0.7 s, as long as serializing it), and most models are far from 2 GiB."""
    limit = PROTOBUF_LIMIT if limit is None else limit
    return size_bound(model) <= limit or byte_size(model) <= limit


_ENTRY = 16  # a repeated entry's or a field's tag and length prefix, at most (varints of 2**63 are 10 bytes)
_PACKED = {"float_data": 4, "double_data": 8, "int32_data": 10, "int64_data": 10, "uint64_data": 10}


def size_bound(model: onnx.ModelProto) -> int:
    """An upper bound of ``model``'s serialized size without serializing its weights: each initializer's payload
    counted from its lengths (raw bytes, or the widest encoding of each value), every other part by protobuf's
    ``ByteSize()`` (nodes, their attributes and subgraphs included: small next to the weights)."""
    return _message_bound(model)


def _message_bound(message) -> int:
    total = _ENTRY
    for field, value in message.ListFields():
        if not field.is_repeated:
            total += _ENTRY + (_message_bound(value) if isinstance(value, onnx.GraphProto)
                               else value.ByteSize() if field.message_type is not None
                               else len(value) if isinstance(value, (bytes, str)) else 0)
            continue
        total += _ENTRY * len(value)
        if isinstance(message, onnx.GraphProto) and field.name == "initializer":
            total += sum(_tensor_bound(t) for t in value)
        elif field.message_type is not None:
            total += sum(item.ByteSize() for item in value)
        else:
            total += sum(len(item) if isinstance(item, (bytes, str)) else 10 for item in value)
    return total


def _tensor_bound(tensor: onnx.TensorProto) -> int:
    total = _ENTRY
    for field, value in tensor.ListFields():
        if field.is_repeated:
            per = _PACKED.get(field.name)
            total += _ENTRY * (1 if per else len(value)) + (
                per * len(value) if per
                else sum(len(v) if isinstance(v, (bytes, str)) else v.ByteSize() if hasattr(v, "ByteSize") else 10
                         for v in value))
        else:
            total += _ENTRY + (len(value) if isinstance(value, (bytes, str))
                               else value.ByteSize() if field.message_type is not None else 0)
    return total


def to_bytes(model: onnx.ModelProto) -> bytes:
    """The serialized model, for a runtime to load from memory. A model over protobuf's 2 GiB limit cannot be
    serialized: that is a clear ``BadInputError`` naming the way out (a file with external data), not protobuf's
    ValueError from deep inside a session constructor."""
    if not fits_in_bytes(model):
        raise _too_big(byte_size(model))
    try:
        return model.SerializeToString()
    except ValueError as exc:  # protobuf's own size check, should ByteSize and it ever disagree
        raise _too_big(byte_size(model)) from exc


def _too_big(size: int) -> BadInputError:
    return BadInputError(
        f"The model is {size / 1e9:.2f} GB, over protobuf's 2 GiB limit: it cannot be serialized into memory.",
        hint="Pass a path instead: save it with external data (serde.save does so for large models, "
             "serde.temporary_file for a scratch copy) and give that file to the runtime.")


@contextmanager
def temporary_sibling(model: onnx.ModelProto, folder: str | Path, label: str) -> Iterator[Path]:
    """``model`` (its external data *not* loaded) written as a scratch ``.<label>-<pid>.onnx`` in ``folder``, beside
    the data files its locations name, so a runtime reads the weights where they are; removed when the block ends."""
    path = Path(folder) / f".{label}-{os.getpid()}.onnx"
    check_external_data_paths(model, Path(folder))
    try:
        with atomic_file(path, force=True) as tmp:
            onnx.save_model(model, str(tmp))
        yield path
    finally:
        path.unlink(missing_ok=True)


@contextmanager
def temporary_file(model: onnx.ModelProto, label: str = "model", *, external: bool = False) -> Iterator[Path]:
    """``model`` saved (as ``save`` does: atomically, with external data when large or ``external``) into a private,
    owner-tagged scratch folder (``fsutil.staging_dir``); yields the .onnx path and removes the folder when the block
    ends. ``label`` (1..16 lowercase letters) names the folder. Like ``save``, a large model's tensors are moved out
    of the in-memory ``model``: pass a copy you can spare."""
    with staging_dir(label) as folder:
        yield save(model, folder / "model.onnx", external=external)
