"""FP16: weights and compute in float16, numerically sensitive operators kept in float32.

Uses onnxruntime's converter (``onnxruntime.transformers.float16``; the same code as onnxconverter-common). Graph
inputs and outputs stay float32 by default (``keep_io_types``), so callers and the metadata's input specs are
unchanged; the converter inserts the Casts. The result is verified with float16 tolerances judged against each
output's scale: at 3 significant digits, element-wise rtol is meaningless for logits near zero.

FP16 pays off on GPUs and on CPUs with native float16 arithmetic; on other CPUs onnxruntime falls back to float32
kernels with casts around them, which is slower than FP32.

A converted file carries its verification contract (``verify/contract.py``): the float16 tolerance it was verified
with and the output scales it was measured at, so ``verify model.fp16.onnx`` and the benchmark judge it as float16,
not with float32 tolerances it cannot meet.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import onnx

from ..claim import metadata_entries
from ..metadata import input_specs
from ..verify.tolerance import Tolerance, default_tolerance
from .passes import APPLIED, PassResult, TransformReport

FP16_TOLERANCE: Tolerance = default_tolerance("float16")

# Kept in float32 besides onnxruntime's DEFAULT_OP_BLOCK_LIST (operators without float16 kernels or with index
# arithmetic: Range, CumSum, TopK, NonMaxSuppression, RoiAlign, Upsample, Min/Max, the ML operators):
#   Resize                       coordinates computed in float16 misplace samples on large images
#   Pow, ReduceMean/Sum/L2       variance and norm computations square values (float16 overflows past 65504) and
#                                accumulate long sums in 11 bits of mantissa
SENSITIVE_OPS = ("Resize", "Pow", "ReduceMean", "ReduceSum", "ReduceL2")


@dataclass
class ToFp16:
    keep_io_types: bool = True
    keep_ops: tuple[str, ...] = field(default_factory=tuple)  # more operator types kept in float32
    name: str = "fp16"

    def block_list(self) -> list[str]:
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

        return sorted({*DEFAULT_OP_BLOCK_LIST, *SENSITIVE_OPS, *self.keep_ops})

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        blocked = self.block_list()
        kept = sorted({n.op_type for n in model.graph.node if n.op_type in blocked})
        has_float = any(i.data_type == onnx.TensorProto.FLOAT for i in model.graph.initializer) or any(
            v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in model.graph.input)
        details = {"keep_io_types": self.keep_io_types, "kept_in_float32": kept}
        if not has_float:
            return PassResult(model, False, self.name, {**details, "note": "no float32 tensors to convert"})
        out = convert_float_to_float16(model, keep_io_types=self.keep_io_types, op_block_list=blocked)
        _topological_sort(out)
        if not self.keep_io_types:
            _retype_input_specs(out)
        return PassResult(out, True, self.name, details, tolerance=FP16_TOLERANCE, relative_to_scale=True)


def record_contract(report: TransformReport, name: str = "fp16") -> None:
    """Write the FP16 contract into the report's model when the conversion was applied (see the module doc)."""
    from ..verify.contract import PrecisionTolerance, fp16_contract

    record = next((r for r in report.records if r.name == name), None)
    if record is None or record.status != APPLIED:
        return
    tolerance = PrecisionTolerance(FP16_TOLERANCE.rtol, FP16_TOLERANCE.atol, FP16_TOLERANCE.rtol)
    contract = fp16_contract(report.output_scales, tolerance, max_abs_err=record.error_vs_float,
                             on=report.feeds or "the verification feeds")
    props = {p.key: p.value for p in report.model.metadata_props}
    onnx.helper.set_model_props(report.model, {**props, **contract.metadata()})


def _topological_sort(model: onnx.ModelProto) -> None:
    """The converter appends the Casts it inserts for float32 graph inputs after the nodes that read them; onnxruntime
    runs that, but onnx.checker (and so `inspect`/`verify`) rejects a graph that is not topologically sorted."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    OnnxModel(model).topological_sort()


def _retype_input_specs(model: onnx.ModelProto) -> None:
    """Inputs became float16: say so in the input specs verification reads (written by the claim codec, with the
    recorded dims unchanged)."""
    props = {p.key: p.value for p in model.metadata_props}
    recorded = input_specs(props, model="the model being converted to FP16")
    if recorded is None:
        return
    specs, dims = recorded
    fp16_inputs = {v.name for v in model.graph.input if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16}
    specs = [replace(s, dtype="float16") if s.name in fp16_inputs else s for s in specs]
    onnx.helper.set_model_props(model, {**props, **metadata_entries(specs, dims)})
