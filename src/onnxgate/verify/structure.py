"""Structural checks of an ONNX file: the checker, shape inference, versions, operators, I/O, metadata, and
whether the installed onnxruntime loads it. Torch-free: this is what `onnxgate inspect` runs on a production box.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .. import serde
from ..errors import first_line

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

    @property
    def opset(self) -> int:
        return self.opsets.get("", self.opsets.get("ai.onnx", 0))

    @property
    def passed(self) -> bool:
        return self.checker_ok and self.shape_inference_ok and self.ort_loads is not False

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


def tensor_infos(values) -> list[TensorInfo]:
    infos = []
    for v in values:
        t = v.type.tensor_type
        shape: list[int | str | None] = []
        if t.HasField("shape"):
            for d in t.shape.dim:
                shape.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        infos.append(TensorInfo(v.name, _dtype(t.elem_type), shape))
    return infos


def check_structure(path: str | Path, *, try_ort: bool = True) -> StructureReport:
    """Run every structural check on the ONNX file at ``path`` and return what was found (never raises for a
    model that fails a check: the failure is in the report)."""
    p = Path(path)
    model = serde.load(p, load_external_data=False)
    externals = serde.external_data_locations(model)
    size = p.stat().st_size + sum((p.parent / loc).stat().st_size for loc in externals if (p.parent / loc).exists())

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

    params, param_bytes = 0, 0
    for init in model.graph.initializer:
        n = int(np.prod(init.dims)) if len(init.dims) else 1
        params += n
        param_bytes += n * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize

    histogram = Counter((f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type)
                        for n in model.graph.node)
    report = StructureReport(
        path=str(p), size_bytes=size, ir_version=model.ir_version,
        opsets={o.domain or "": o.version for o in model.opset_import},
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        checker_ok=checker_ok, checker_error=checker_error,
        shape_inference_ok=shape_ok, shape_inference_error=shape_error,
        inputs=tensor_infos(inferred.graph.input), outputs=tensor_infos(inferred.graph.output),
        op_histogram=dict(histogram.most_common()), node_count=len(model.graph.node),
        parameter_count=params, parameter_bytes=param_bytes,
        metadata={m.key: m.value for m in model.metadata_props}, external_data=externals,
    )
    if try_ort:
        report.ort_version, report.ort_loads, report.ort_error = ort_load_check(p)
    return report


def ort_load_check(path: Path) -> tuple[str | None, bool | None, str | None]:
    """Does the installed onnxruntime load the model? Loading is the authority on what it supports."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None, None, "onnxruntime is not installed"
    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return ort.__version__, True, None
    except Exception as exc:
        return ort.__version__, False, first_line(exc)
