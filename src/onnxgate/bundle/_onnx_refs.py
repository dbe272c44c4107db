"""The external-data references of an ONNX file, read straight from the protobuf wire format.

Bundle verification must not import onnx (production machines have only numpy and onnxruntime), yet it has
to know which files a model will make the runtime open: an old onnxruntime in the runtime matrix follows an
external-data ``location`` of ``../../etc/shadow`` or ``/proc/self/environ`` without asking. So this module
walks just enough of the ONNX schema to find every ``TensorProto`` that can carry external data (initializers,
sparse initializers, node attributes, subgraphs, functions, training graphs) and returns its
``external_data`` entries; the caller judges them. Raw tensor bytes are skipped by length, never copied.

Standard library only and self-contained, like ``runtimes/venv_worker.py``. Fail closed: anything it cannot parse (a
truncated field, a group, nesting deeper than protobuf's own limit) raises :class:`ProtoError` rather than
being skipped, so no reference can hide in a part of the file this reader did not understand.

Field numbers are those of onnx.proto (IR version 10); tests compare the result with the onnx package's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_DEPTH = 100  # protobuf's default recursion limit: a deeper model does not load in onnxruntime either

# Message kinds, and for each the fields (number -> kind) that lead towards tensors. Everything else is skipped.
_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _SPARSE, _TRAINING, _FUNCTION, _TENSOR = range(8)
_CHILDREN = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},  # graph, training_info, functions
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},  # node, initializer, sparse_initializer
    _NODE: {5: _ATTRIBUTE},  # attribute
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},  # t g tensors graphs ...
    _SPARSE: {1: _TENSOR, 2: _TENSOR},  # values, indices
    _TRAINING: {1: _GRAPH, 2: _GRAPH},  # initialization, algorithm
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},  # node, attribute_proto
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class ProtoError(ValueError):
    """The bytes are not a protobuf message this reader can vouch for."""


@dataclass
class ExternalRef:
    """One tensor's external-data entries, as raw bytes (key, value) in file order."""

    tensor: bytes
    entries: list[tuple[bytes, bytes]] = field(default_factory=list)
    external: bool = False  # data_location == EXTERNAL; the entries are checked either way

    def values(self, key: bytes) -> list[bytes]:
        return [value for k, value in self.entries if k == key]


def external_data_refs(data: bytes | bytearray | memoryview) -> list[ExternalRef]:
    """Every tensor of the model ``data`` (a serialized ModelProto) with external_data entries or an
    EXTERNAL data location, in file order."""
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    refs: list[ExternalRef] = []
    stack = [(_MODEL, 0, len(view), 0)]
    while stack:
        kind, start, end, depth = stack.pop()
        if kind == _TENSOR:
            ref = _tensor(view, start, end)
            if ref.entries or ref.external:
                refs.append(ref)
            continue
        children = _CHILDREN[kind]
        found = []
        for number, wire, value_start, value_end in _fields(view, start, end):
            child = children.get(number)
            if child is not None and wire == 2:
                if depth + 1 > MAX_DEPTH:
                    raise ProtoError(f"messages nested deeper than {MAX_DEPTH} levels")
                found.append((child, value_start, value_end, depth + 1))
        stack.extend(reversed(found))  # depth first, in file order
    return refs


def _tensor(view: memoryview, start: int, end: int) -> ExternalRef:
    ref = ExternalRef(b"")
    for number, wire, value_start, value_end in _fields(view, start, end):
        if number == _TENSOR_NAME and wire == 2:
            ref.tensor = bytes(view[value_start:value_end])
        elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
            key = value = b""
            for sub, sub_wire, sub_start, sub_end in _fields(view, value_start, value_end):
                if sub == 1 and sub_wire == 2:
                    key = bytes(view[sub_start:sub_end])
                elif sub == 2 and sub_wire == 2:
                    value = bytes(view[sub_start:sub_end])
            ref.entries.append((key, value))
        elif number == _TENSOR_DATA_LOCATION and wire == 0:
            ref.external = value_start == _EXTERNAL  # for varints _fields yields the value itself
    return ref


def _fields(view: memoryview, pos: int, end: int):
    """(field number, wire type, start, end) of each field in ``view[pos:end]``; for varints (wire type 0)
    start is the decoded value and end the position after it."""
    while pos < end:
        key, pos = _varint(view, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtoError(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(view, pos, end)
            yield number, wire, value, pos
        elif wire == 1:
            if pos + 8 > end:
                raise ProtoError("truncated 64-bit field")
            yield number, wire, pos, pos + 8
            pos += 8
        elif wire == 2:
            length, pos = _varint(view, pos, end)
            if length > end - pos:
                raise ProtoError(f"a field of {length} bytes runs past the end of its message at byte {pos}")
            yield number, wire, pos, pos + length
            pos += length
        elif wire == 5:
            if pos + 4 > end:
                raise ProtoError("truncated 32-bit field")
            yield number, wire, pos, pos + 4
            pos += 4
        else:  # 3/4: groups (not used by ONNX), 6/7: invalid
            raise ProtoError(f"wire type {wire} at byte {pos}, which ONNX files do not use")


def _varint(view: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise ProtoError("truncated varint")
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtoError(f"varint longer than 10 bytes at byte {pos}")
