"""The Open Inference Protocol v2 (KServe / NVIDIA Triton HTTP) on the wire: tensors in and out of JSON, and the
binary-tensor extension.

A request body is a JSON object, optionally followed by raw tensor bytes: then the ``Inference-Header-Content-Length``
header gives the JSON part's length, and each input carrying ``"parameters": {"binary_data_size": N}`` takes the
next N bytes, in the order the inputs are listed (row-major, little-endian). Responses mirror it: outputs asked for
with ``"binary_data": true`` (or all of them, with the request parameter ``"binary_data_output": true``, which is what
``tritonclient`` sends when no outputs are named) follow the JSON header as raw bytes.

Everything here judges the *form* of a request (is it JSON, are the sizes consistent, does a tensor hold as many
numbers as its shape says); whether a tensor is one the model was proven on is ``contract.py``'s question. Every
problem is a ``RequestError`` with an HTTP status, never an exception from a parser.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

# OIP datatype <-> numpy dtype name (BYTES, for string tensors, is not served: onnxgate verifies numeric models).
DATATYPES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
             "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
             "FP32": "float32", "FP64": "float64"}
NUMPY_TO_DATATYPE = {v: k for k, v in DATATYPES.items()}
HEADER_LENGTH = "inference-header-content-length"
MAX_JSON_DEPTH = 64  # a tensor of rank 64 nests 64 lists; anything deeper is not a tensor


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx), a message naming the input, and the allowed values."""

    def __init__(self, status: int, message: str, *, input: str | None = None, allowed: Any = None):
        super().__init__(message)
        self.status, self.message, self.input, self.allowed = status, message, input, allowed

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.input is not None:
            body["input"] = self.input
        if self.allowed is not None:
            body["allowed"] = json_safe(self.allowed)
        return body


class NonFiniteOutput(Exception):
    """The model produced NaN or Inf in an output whose reference is finite (it left the domain it was verified
    on), or in an output asked for as JSON, which has no token for them: a 500 with an id, never a 200."""

    def __init__(self, output: str, count: int, size: int, *, as_json: bool = False):
        super().__init__(output)
        self.output, self.count, self.size, self.as_json = output, count, size, as_json

    @property
    def message(self) -> str:
        if self.as_json:
            return (f"The output '{self.output}' holds {self.count:,} NaN/Inf value(s) of {self.size:,}, which JSON "
                    "cannot carry; ask for it as binary data (\"parameters\": {\"binary_data\": true}).")
        return (f"The model produced {self.count:,} NaN/Inf value(s) of {self.size:,} in output '{self.output}', "
                "whose verified reference is finite: this input lies outside the domain the bundle proves.")


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its name as a string, so strict JSON can carry it."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps_strict(doc: Any) -> bytes:
    """JSON every parser accepts: no NaN/Infinity tokens, and ASCII escapes (a lone surrogate in a client's id
    cannot make it invalid UTF-8)."""
    return json.dumps(doc, allow_nan=False, separators=(",", ":")).encode("ascii")


def datatype_of(dtype: str) -> str:
    """The OIP datatype of a numpy dtype name ("float32" -> "FP32"); the name itself when OIP has none."""
    return NUMPY_TO_DATATYPE.get(dtype, dtype.upper())


@dataclass
class TensorIn:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray


@dataclass
class InferRequest:
    id: str | None
    inputs: list[TensorIn]
    outputs: list[str] | None  # None: every output
    binary_outputs: set[str] = field(default_factory=set)


def loads_strict(data: bytes, what: str) -> Any:
    """JSON that is UTF-8, without NaN/Infinity and not nested beyond any tensor's depth; RequestError otherwise."""
    def no_constant(name: str):
        raise ValueError(f"{name} is not a JSON number")

    try:
        value = json.loads(data.decode("utf-8"), parse_constant=no_constant)
    except UnicodeDecodeError:
        raise RequestError(400, f"The {what} is not UTF-8 text.") from None
    except RecursionError:
        raise RequestError(400, f"The {what} nests too deeply to be a request.") from None
    except ValueError as exc:
        raise RequestError(400, f"The {what} is not valid JSON: {str(exc).splitlines()[0][:200]}.") from None
    return value


def parse_infer(body: bytes, header_length: str | None,
                check: Callable[[str, str, tuple[int, ...]], None] | None = None) -> InferRequest:
    """An OIP inference request (JSON, with binary tensors when ``header_length`` is given), its form checked.
    ``check(name, datatype, shape)`` judges each input as declared, before its data is decoded."""
    json_part, binary = _split(body, header_length)
    doc = loads_strict(json_part, "request's JSON")
    if not isinstance(doc, dict):
        raise RequestError(400, "The request must be a JSON object with an 'inputs' list.")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise RequestError(400, "The request has no 'inputs' list (one tensor object per model input).")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError(400, "The request's 'parameters' must be a JSON object.")
    offset, inputs, seen = 0, [], set()
    for index, raw in enumerate(raw_inputs):
        tensor, used = _tensor(raw, index, binary, offset, check)
        if tensor.name in seen:
            raise RequestError(400, f"The input '{tensor.name}' is given twice.", input=tensor.name)
        seen.add(tensor.name)
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise RequestError(400, f"The request carries {len(binary):,} bytes of binary tensor data, but its inputs' "
                                f"binary_data_size add up to {offset:,}.")
    outputs, binary_outputs = _requested_outputs(doc.get("outputs"), params.get("binary_data_output") is True)
    request_id = doc.get("id")
    return InferRequest(request_id if isinstance(request_id, str) else None, inputs, outputs, binary_outputs)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    text = header_length.strip()
    if not text.isdigit() or len(text) > 18:
        raise RequestError(400, f"The Inference-Header-Content-Length header '{text[:40]}' is not a whole number.")
    length = int(text)
    if not 0 < length <= len(body):
        raise RequestError(400, f"The Inference-Header-Content-Length header says {length:,} bytes of JSON, but the "
                                f"body holds {len(body):,} bytes.")
    return body[:length], body[length:]


def _tensor(raw: Any, index: int, binary: bytes, offset: int, check) -> tuple[TensorIn, int]:
    if not isinstance(raw, dict):
        raise RequestError(400, f"inputs[{index}] must be a tensor object with name, shape, datatype and data.")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise RequestError(400, f"inputs[{index}] has no 'name'.")
    datatype, shape = raw.get("datatype"), raw.get("shape")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise RequestError(400, f"The input '{name}' has datatype {json.dumps(datatype)[:40]}, which is not a numeric "
                                "Open Inference Protocol datatype.", input=name, allowed=sorted(DATATYPES))
    if not isinstance(shape, list) or len(shape) > MAX_JSON_DEPTH or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape):
        raise RequestError(400, f"The input '{name}' needs a 'shape': a list of non-negative whole numbers.",
                           input=name)
    if check is not None:
        check(name, datatype, tuple(shape))
    dtype = np.dtype(DATATYPES[datatype])
    count = math.prod(shape)
    size = (raw.get("parameters") or {}).get("binary_data_size") if isinstance(raw.get("parameters"), dict) else None
    if size is not None:
        if "data" in raw:
            raise RequestError(400, f"The input '{name}' has both 'data' and binary_data_size.", input=name)
        if not isinstance(size, int) or isinstance(size, bool) or size != count * dtype.itemsize:
            raise RequestError(400, f"The input '{name}' declares binary_data_size {json.dumps(size)[:40]}, but shape "
                                    f"{shape} of {datatype} takes {count * dtype.itemsize:,} bytes.", input=name)
        if offset + size > len(binary):
            raise RequestError(400, f"The binary data of input '{name}' is truncated: {size:,} bytes declared, "
                                    f"{max(0, len(binary) - offset):,} present.", input=name)
        array = np.frombuffer(binary, dtype=dtype.newbyteorder("<"), count=count, offset=offset)
        return TensorIn(name, datatype, tuple(shape), array.astype(dtype, copy=False).reshape(shape)), size
    if "data" not in raw:
        raise RequestError(400, f"The input '{name}' has neither 'data' nor binary_data_size.", input=name)
    return TensorIn(name, datatype, tuple(shape), _json_data(raw["data"], name, datatype, dtype, shape, count)), 0


def _json_data(data: Any, name: str, datatype: str, dtype: np.dtype, shape: list[int], count: int) -> np.ndarray:
    """JSON tensor data, flat or nested row-major, as an array of ``dtype``; refused when a value does not fit."""
    if not isinstance(data, list):
        data = [data]
    try:
        values = np.asarray(data)
    except (ValueError, TypeError):
        raise RequestError(400, f"The data of input '{name}' is ragged: nested lists of different lengths.",
                           input=name) from None
    if values.size != count:
        raise RequestError(400, f"The input '{name}' holds {values.size:,} values, but shape {shape} needs {count:,}.",
                           input=name)
    kinds = {"BOOL": "b"}.get(datatype, "biu" if dtype.kind in "iu" else "biuf")
    if values.size and (values.dtype.kind not in kinds or (dtype.kind != "b" and values.dtype.kind == "b")):
        raise RequestError(400, f"The data of input '{name}' holds {_kind(values)}, not {datatype} values.",
                           input=name, allowed=datatype)
    if dtype.kind in "iu" and values.size:
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise RequestError(400, f"The data of input '{name}' holds values outside {datatype}'s range "
                                    f"{info.min}..{info.max}.", input=name)
    with np.errstate(over="ignore", invalid="ignore"):  # a number beyond the dtype's range becomes Inf: contract's call
        return values.astype(dtype).reshape(shape)


def _kind(values: np.ndarray) -> str:
    return {"b": "booleans", "f": "fractional numbers", "U": "strings", "O": "mixed values"}.get(
        values.dtype.kind, f"{values.dtype.name} values")


def _requested_outputs(raw: Any, all_binary: bool) -> tuple[list[str] | None, set[str]]:
    if raw is None:
        return None, {"*"} if all_binary else set()
    if not isinstance(raw, list):
        raise RequestError(400, "The request's 'outputs' must be a list of {\"name\": ...} objects.")
    names, binary = [], set()
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise RequestError(400, f"outputs[{index}] must be an object with a 'name'.")
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise RequestError(400, f"outputs[{index}].parameters must be a JSON object.")
        names.append(item["name"])
        if params.get("binary_data", all_binary) is True:
            binary.add(item["name"])
    return names, binary


def encode_response(model: str, version: str, request_id: str | None, outputs: dict[str, np.ndarray],
                    binary: set[str]) -> tuple[bytes, int | None]:
    """The response body and, when some outputs travel as binary, the JSON header's length."""
    tensors, blobs = [], []
    for name, array in outputs.items():
        array = np.ascontiguousarray(array)
        tensor: dict[str, Any] = {"name": name, "datatype": datatype_of(array.dtype.name), "shape": list(array.shape)}
        if name in binary or "*" in binary:
            blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            if array.dtype.kind in "fc" and array.size and not np.isfinite(array).all():
                raise NonFiniteOutput(name, int(array.size - np.isfinite(array).sum()), int(array.size), as_json=True)
            tensor["data"] = array.reshape(-1).tolist()
        tensors.append(tensor)
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if request_id is not None:
        doc["id"] = request_id
    header = dumps_strict(doc)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
