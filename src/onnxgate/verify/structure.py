"""Structural checks of an ONNX file: the checker, shape inference, versions, operators, I/O, metadata, and
whether the installed onnxruntime loads it. Torch-free: this is what `onnxgate inspect` runs on a production box.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from .. import metadata as md
from .. import serde
from ..errors import BadInputError, OnnxgateError, RuntimeIncompatibleError, first_line

_ELEM_TYPES = {v: k.lower() for k, v in onnx.TensorProto.DataType.items()}
_DTYPE_NAMES = {"float": "float32", "double": "float64"}


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: list[int | str | None]  # int = static, str = symbolic dim name, None = unknown

    def __str__(self) -> str:
        dims = "x".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}:{dims}:{self.dtype}"


@dataclass
class StructureReport:
    path: str
    size_bytes: int
    ir_version: int
    opsets: dict[str, int]
    producer: str
    checker_ok: bool
    checker_error: str | None
    shape_inference_ok: bool
    shape_inference_error: str | None
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    op_histogram: dict[str, int]
    node_count: int
    parameter_count: int
    parameter_bytes: int
    metadata: dict[str, str]
    external_data: list[str] = field(default_factory=list)
    ort_version: str | None = None
    ort_loads: bool | None = None
    ort_error: str | None = None
    # What the checker lets through but no runtime can honour: negative dims, tensors of an unknown data type,
    # names that are not UTF-8. Any entry fails the structure.
    structure_errors: list[str] = field(default_factory=list)
    # Metadata keys whose key or value is not valid UTF-8 (shown with U+FFFD in ``metadata``; refused when read).
    metadata_invalid_utf8: list[str] = field(default_factory=list)
    # Malformed onnxgate.* entries (``onnxgate.metadata.problems``): verification refuses them unless --input is
    # given; the model itself may still be fine, so they do not fail the structure.
    metadata_problems: list[str] = field(default_factory=list)

    @property
    def opset(self) -> int:
        return self.opsets.get("", self.opsets.get("ai.onnx", 0))

    @property
    def passed(self) -> bool:
        return (self.checker_ok and self.shape_inference_ok and self.ort_loads is not False
                and not self.structure_errors)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["opset"] = self.opset
        data["passed"] = self.passed
        data["inputs"] = [asdict(t) for t in self.inputs]
        data["outputs"] = [asdict(t) for t in self.outputs]
        return data


def _dtype(elem_type: int) -> str:
    name = _ELEM_TYPES.get(elem_type, str(elem_type))
    return _DTYPE_NAMES.get(name, name)


class _Texts:
    """Protobuf strings as text. The upb backend hands a string field that is not valid UTF-8 back as ``bytes``
    (other backends raise): such text is shown with U+FFFD and recorded as a structural error."""

    def __init__(self):
        self.invalid: list[str] = []

    def __call__(self, value, what: str) -> str:
        if isinstance(value, (bytes, bytearray)):
            text = bytes(value).decode("utf-8", "replace")
            self.invalid.append(f"{what} '{text[:60]}' is not valid UTF-8")
            return text
        return value


def tensor_infos(values, texts: _Texts | None = None, *, kind: str = "tensor",
                 errors: list[str] | None = None) -> list[TensorInfo]:
    texts = texts or _Texts()
    infos = []
    for v in values:
        name = texts(v.name, f"{kind} name")
        t = v.type.tensor_type
        shape: list[int | str | None] = []
        if t.HasField("shape"):
            for axis, d in enumerate(t.shape.dim):
                if d.HasField("dim_value"):
                    shape.append(d.dim_value)
                    if d.dim_value < 0 and errors is not None:
                        errors.append(f"{kind} '{name}' has the negative size {d.dim_value} at axis {axis}")
                else:
                    shape.append(texts(d.dim_param, f"{kind} '{name}' dim name") or None)
        infos.append(TensorInfo(name, _dtype(t.elem_type), shape))
    return infos


def _load(p: Path) -> onnx.ModelProto:
    """serde.load, with whatever else onnx/protobuf/pathlib raise on a malformed file turned into BadInputError."""
    try:
        return serde.load(p, load_external_data=False)
    except OnnxgateError:
        raise
    except (Exception, RecursionError) as exc:  # e.g. a NUL byte in an external-data location
        raise BadInputError(f"'{p}' is not a readable ONNX model: {first_line(exc, 200)}.",
                            hint="Give a .onnx file written by an ONNX exporter.") from exc


def _file_size(p: Path, externals: list[str]) -> int:
    size = p.stat().st_size
    for loc in externals:
        with contextlib.suppress(OSError, ValueError):
            target = p.parent / loc
            if target.is_file():
                size += target.stat().st_size
    return size


def _parameters(model: onnx.ModelProto, errors: list[str], texts: _Texts) -> tuple[int, int]:
    """Parameter count and bytes of the initializers. A tensor of an unknown data type or with a negative dim is
    a structural error (and counts no bytes), never a KeyError."""
    params, param_bytes = 0, 0
    for init in model.graph.initializer:
        name = texts(init.name, "initializer name")
        dims = list(init.dims)
        if any(d < 0 for d in dims):
            errors.append(f"initializer '{name}' has a negative dim: {dims}")
            continue
        n = math.prod(dims)
        if n > 2**62:
            errors.append(f"initializer '{name}' claims {n:.3g} elements ({dims}), more than any runtime holds")
            continue
        params += n
        try:
            np_dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        except (KeyError, ValueError, TypeError):
            errors.append(f"initializer '{name}' has the unknown data type {init.data_type}")
            continue
        if init.data_type != onnx.TensorProto.STRING:
            param_bytes += n * np_dtype.itemsize
    return params, param_bytes


def check_structure(path: str | Path, *, try_ort: bool = True) -> StructureReport:
    """Run every structural check on the ONNX file at ``path`` and return what was found (never raises for a
    model that fails a check: the failure is in the report; a file that is not an ONNX model at all is a
    BadInputError)."""
    p = Path(path)
    model = _load(p)
    externals = serde.external_data_locations(model)
    size = _file_size(p, externals)

    checker_ok, checker_error = True, None
    try:  # by path: the checker reads external data itself and handles models over 2 GB
        onnx.checker.check_model(str(p), full_check=True)
    except Exception as exc:
        checker_ok, checker_error = False, first_line(exc)

    inferred = model
    shape_ok, shape_error = True, None
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        shape_ok, shape_error = False, first_line(exc)

    errors: list[str] = []
    texts = _Texts()
    try:
        params, param_bytes = _parameters(model, errors, texts)
        inputs = tensor_infos(inferred.graph.input, texts, kind="input", errors=errors)
        outputs = tensor_infos(inferred.graph.output, texts, kind="output", errors=errors)
        histogram = Counter()
        for n in model.graph.node:
            op_type, domain = texts(n.op_type, "operator type"), texts(n.domain, "operator domain")
            histogram[f"{domain}::{op_type}" if domain not in ("", "ai.onnx") else op_type] += 1
        opsets = {texts(o.domain, "opset domain") or "": o.version for o in model.opset_import}
        producer = f"{texts(model.producer_name, 'producer name')} {texts(model.producer_version, 'producer version')}"
        metadata, invalid_meta = {}, []
        for m in model.metadata_props:
            key_texts = _Texts()
            key = key_texts(m.key, "metadata key")
            value = key_texts(m.value, f"metadata '{key}'")
            if key_texts.invalid:
                invalid_meta.append(key)
            metadata[key] = value
    except UnicodeDecodeError as exc:  # protobuf backends other than upb raise where upb returns bytes
        raise BadInputError(f"'{p}' holds text that is not valid UTF-8 ({exc.reason} at byte {exc.start}).",
                            hint="The file is damaged or was not written by an ONNX exporter.") from None
    errors += texts.invalid
    report = StructureReport(
        path=str(p), size_bytes=size, ir_version=model.ir_version,
        opsets=opsets, producer=producer.strip(),
        checker_ok=checker_ok, checker_error=checker_error,
        shape_inference_ok=shape_ok, shape_inference_error=shape_error,
        inputs=inputs, outputs=outputs,
        op_histogram=dict(histogram.most_common()), node_count=len(model.graph.node),
        parameter_count=params, parameter_bytes=param_bytes,
        metadata=metadata, external_data=externals, structure_errors=errors,
        metadata_invalid_utf8=invalid_meta,
    )
    report.metadata_problems = md.problems(metadata, model=p, invalid_utf8=invalid_meta)
    if try_ort:
        report.ort_version, report.ort_loads, report.ort_error = ort_load_check(p)
    return report


def ort_load_check(path: Path) -> tuple[str | None, bool | None, str | None]:
    """Does the installed onnxruntime load the model? Loading is the authority on what it supports."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None, None, "onnxruntime is not installed"
    from ..runtimes.ort import open_session

    try:
        open_session(path)  # keeps onnxruntime's "EP Error ... Falling back" banner off stdout (--json)
        return ort.__version__, True, None
    except RuntimeIncompatibleError as exc:
        return ort.__version__, False, first_line(exc.__cause__ or exc)
