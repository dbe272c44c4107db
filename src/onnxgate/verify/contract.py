"""Verification contracts: the tolerance a reduced-precision model is judged with, carried in its own metadata.

An FP32 model is judged against PyTorch with FP32 tolerances (``compare.default_tolerance``). A float16 or INT8 file
cannot be: float16 keeps 11 significant bits, and an INT8 model's error against float has no universal bound at
all — its accuracy budget, measured on the user's evaluation data, is what proves it. Judged with FP32 tolerances,
every honest INT8 file fails ``verify``; judged with no tolerance, a broken one passes. So the transform that made
the file writes down, under ``onnxgate.contract``, what it proved and how closely the file must keep to it:

    precision      int8 | fp16
    tolerance      rtol, atol and scale_fraction: an output passes where |got - ref| <= atol' + rtol * |ref|,
                   with atol' = max(atol, scale_fraction * max|ref|) (reduced precision errs in proportion to the
                   values' magnitude, so its tolerance is tied to each output's scale)
    output_scales  max |ref| per output where the contract was measured, to turn the fraction into the fixed atol
                   a comparison with per-output tolerances needs (``tolerances()``)
    budget         the accuracy budget the file held (INT8), or null
    measured       what was measured and on what: max abs error, its fraction of the scale, top-1 before and after,
                   the data and its sample count

For INT8 the scale fraction is ``INT8_MARGIN`` x the worst error-to-scale ratio at which the accuracy budget held
(as written and as deployed in onnxruntime): a runtime whose integer kernels compute something else (other rounding,
saturation) is not the model the budget proved. For FP16 it is the float16 tolerance the transform verified with.

The same module names the tolerance of each *runtime* precision (``runtime_tolerance``): OpenVINO's PERFORMANCE mode
computes float32 models in bfloat16 on CPUs that have it, and a benchmark must judge that configuration with a
bfloat16 tolerance, stated, not call it verified because the float32 file was.

Torch-free and numpy-free: ``verify`` and the benchmark read contracts wherever they run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadInputError
from .tolerance import Tolerance, default_tolerance, scaled_tolerance, sci

CONTRACT_KEY = "onnxgate.contract"
CONTRACT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
#: An INT8 file may err this many times the error-to-scale ratio at which its accuracy budget held.
INT8_MARGIN = 1.5
# The names runtimes give their compute precision (OpenVINO's element types) -> onnxgate's.
_ALIASES = {"f32": "fp32", "float32": "fp32", "dynamic": "fp32", "f16": "fp16", "float16": "fp16",
            "bfloat16": "bf16", "i8": "int8", "u8": "int8"}


@dataclass(frozen=True)
class PrecisionTolerance:
    """A tolerance tied to each output's scale: ``atol`` is raised to ``scale_fraction * max|ref|`` per output."""

    rtol: float
    atol: float
    scale_fraction: float = 0.0

    def for_scale(self, scale: float | None) -> Tolerance:
        """The element-wise tolerance for an output whose max |ref| is ``scale``."""
        return scaled_tolerance(self.rtol, self.atol, self.scale_fraction, scale)

    def __str__(self) -> str:
        text = f"rtol={sci(self.rtol)} atol={sci(self.atol)}"
        return text + (f" or {sci(self.scale_fraction)} x max|ref|" if self.scale_fraction else "")

    def to_dict(self) -> dict[str, float]:
        return {"rtol": self.rtol, "atol": self.atol, "scale_fraction": self.scale_fraction}


def _reduced(dtype: str) -> PrecisionTolerance:
    """compare's tolerance of a reduced-precision dtype, with its atol tied to the scale (an absolute atol of 1e-3
    means nothing for logits of 20, and rtol alone nothing for values near zero)."""
    base = default_tolerance(dtype)
    return PrecisionTolerance(base.rtol, base.atol, base.rtol)


def normalize_precision(name: str | None) -> str:
    """onnxgate's name of a precision: ``f32``/``dynamic`` (OpenVINO's names) -> ``fp32``, ``f16`` -> ``fp16``."""
    text = str(name or "fp32").lower()
    return _ALIASES.get(text, text)


def runtime_tolerance(precision: str | None) -> PrecisionTolerance | None:
    """The tolerance of a runtime computing a float32 model in ``precision``. None for fp32: then each output gets
    the default of its dtype, exactly what ``verify`` uses, so an fp32 configuration is held to verification's
    standard. A precision onnxgate has no tolerance for is a BadInputError."""
    precision = normalize_precision(precision)
    if precision == "fp32":
        return None
    if precision == "fp16":
        return _reduced("float16")
    if precision == "bf16":
        return _reduced("bfloat16")
    raise BadInputError(f"onnxgate has no tolerance for a runtime computing in '{precision}'.",
                        hint="Pin the runtime's precision to f32 (OpenVINO: INFERENCE_PRECISION_HINT=f32).")


@dataclass(frozen=True)
class Contract:
    """What a reduced-precision file was proven at (see the module docstring)."""

    precision: str
    tolerance: PrecisionTolerance
    output_scales: dict[str, float] = field(default_factory=dict)
    budget: dict[str, Any] | None = None
    measured: dict[str, Any] = field(default_factory=dict)

    def tolerance_for(self, scale: float | None) -> Tolerance:
        return self.tolerance.for_scale(scale)

    def tolerances(self) -> dict[str, Tolerance]:
        """Fixed per-output tolerances at the scales the contract was measured at: what ``verify``'s
        ``tolerances=`` takes (its comparison does not rescale per feed)."""
        return {name: self.tolerance.for_scale(scale) for name, scale in self.output_scales.items()}

    @property
    def default(self) -> Tolerance:
        """For an output the contract has no scale for: the largest recorded scale (an INT8 atol of 0 would demand
        bit-exact outputs)."""
        return self.tolerance.for_scale(max(self.output_scales.values(), default=0.0))

    def describe(self) -> str:
        what = f"{self.precision} file judged with its own contract ({self.tolerance}"
        if self.measured.get("on"):
            what += f"; measured on {self.measured['on']}"
        if self.budget:
            held = " and ".join(f"{k} {v:g}" for k, v in self.budget.items() if v is not None)
            what += f"; budget {held}" if held else ""
        return what + "), not float32 tolerances"

    def to_dict(self) -> dict[str, Any]:
        return {"version": CONTRACT_VERSION, "precision": self.precision, "tolerance": self.tolerance.to_dict(),
                "output_scales": dict(self.output_scales), "budget": self.budget, "measured": dict(self.measured)}

    def metadata(self) -> dict[str, str]:
        """The metadata entry that carries this contract."""
        return {CONTRACT_KEY: json.dumps(self.to_dict(), ensure_ascii=False)}


def contract_of(metadata: Mapping[str, Any], *, model: str = "the model") -> Contract | None:
    """The verification contract a model's metadata carries, or None (an FP32 file, or one written before
    contracts existed: judged with FP32 tolerances as before). A contract that is not one onnxgate wrote is a
    BadInputError naming the entry: a file must not loosen its own verification with a malformed entry."""
    from ..metadata import entry, malformed

    text = entry(metadata, CONTRACT_KEY, model=model, limit=1 << 16)
    if text is None:
        return None
    hint = ("Re-create the file with `onnxgate optimize --fp16` / `onnxgate quantize`, or give tolerances yourself "
            "(--rtol/--atol).")
    try:
        doc = json.loads(text)
        tol = doc["tolerance"]
        tolerance = PrecisionTolerance(*(float(tol[k]) for k in ("rtol", "atol", "scale_fraction")))
        scales = {str(k): float(v) for k, v in (doc.get("output_scales") or {}).items()}
        precision = normalize_precision(doc["precision"])
        budget, measured = doc.get("budget"), doc.get("measured") or {}
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise malformed(model, CONTRACT_KEY, f"it does not decode as a contract ({type(exc).__name__})",
                        hint=hint) from None
    numbers = [tolerance.rtol, tolerance.atol, tolerance.scale_fraction, *scales.values()]
    if precision not in PRECISIONS or not all(math.isfinite(v) and v >= 0 for v in numbers) \
            or not isinstance(measured, dict) or not (budget is None or isinstance(budget, dict)):
        raise malformed(model, CONTRACT_KEY, "its precision, tolerance or scales are not what onnxgate writes",
                        hint=hint)
    return Contract(precision, tolerance, scales, budget, measured)


def fp16_contract(output_scales: Mapping[str, float], tolerance: PrecisionTolerance, *,
                  max_abs_err: float | None, on: str) -> Contract:
    """The contract of an FP16 file: the float16 tolerance the conversion was verified with."""
    return Contract("fp16", tolerance, _clean(output_scales), None,
                    {"max_abs_err": max_abs_err, "on": on})


def int8_contract(output_scales: Mapping[str, float], *, scaled_err: float, max_abs_err: float,
                  budget: Mapping[str, Any], on: str, samples: int, fp32_top1: float | None = None,
                  top1: float | None = None) -> Contract:
    """The contract of an INT8 file: ``INT8_MARGIN`` x the error-to-scale ratio at which its budget held, as the
    scale fraction and the rtol (never below FP32's: a model with nothing quantized is held to float32's)."""
    fp32 = default_tolerance("float32")
    if math.isfinite(scaled_err):
        # rtol too: compare never lets atol exceed rtol x the output's scale (a guard against vanished outputs)
        fraction = INT8_MARGIN * float(scaled_err)
        tolerance = PrecisionTolerance(max(fp32.rtol, fraction), fp32.atol, fraction)
    else:  # an output that is all zeros in float erred: no scale to tie to, so the error itself bounds it
        tolerance = PrecisionTolerance(fp32.rtol, max(fp32.atol, INT8_MARGIN * float(max_abs_err)))
        scaled_err = None  # type: ignore[assignment]
    measured = {"max_abs_err": max_abs_err, "scaled_err": scaled_err, "on": on, "samples": samples,
                "fp32_top1": fp32_top1, "top1": top1}
    return Contract("int8", tolerance, _clean(output_scales), dict(budget), measured)


def _clean(scales: Mapping[str, float]) -> dict[str, float]:
    return {str(k): float(v) for k, v in scales.items() if v is not None and math.isfinite(float(v))}
