"""Tolerances: the ``Tolerance`` value, the per-dtype default, and how reports print them. Plain Python, so the
configuration (``spec.VerifyConfig``) can hold one without importing numpy or the comparison code."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float

    def __str__(self) -> str:
        return f"rtol={sci(self.rtol)} atol={sci(self.atol)}"


def default_tolerance(dtype: str) -> Tolerance:
    """The tolerance an output of ``dtype`` gets unless the user sets one: loose enough for kernel and
    summation-order differences at that precision, tight enough to catch a wrong operator."""
    dtype = str(dtype)
    if dtype in ("float16", "bfloat16"):
        return Tolerance(1e-2, 1e-3)
    if dtype == "float64":
        return Tolerance(1e-7, 1e-9)
    if dtype.startswith("float"):
        return Tolerance(1e-3, 1e-4)
    return Tolerance(0.0, 0.0)  # integers and bool must match exactly


def sci(x: float) -> str:
    """Compact scientific notation for reports: 0.001 -> '1e-3', 0.0312 -> '3.1e-2', 0 -> '0'."""
    if x == 0 or not math.isfinite(x):
        return str(0 if x == 0 else x)
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def user_tolerance(rtol: float | None, atol: float | None, dtype: str = "float32") -> Tolerance:
    """The user's override (--rtol/--atol), each part not given falling back to ``dtype``'s default: the one
    place the FP32 default meets an override (``spec.VerifyConfig`` and the engine's policy read it)."""
    base = default_tolerance(dtype)
    return Tolerance(base.rtol if rtol is None else float(rtol), base.atol if atol is None else float(atol))


def scaled_tolerance(rtol: float, atol: float, scale_fraction: float, scale: float | None) -> Tolerance:
    """Reduced precision's rule: an output whose max |ref| is ``scale`` gets ``atol`` raised to
    ``scale_fraction * scale`` (its error grows with the values' magnitude). The one place that rule lives."""
    scaled = scale_fraction * scale if scale and math.isfinite(scale) and scale > 0 else 0.0
    return Tolerance(rtol, max(atol, scaled))


def tied_to_scale(tol: Tolerance, scale: float) -> Tolerance:
    """``tol`` with its atol lowered to ``rtol * scale``: the comparer's guard against outputs that vanished below
    atol (any candidate within atol would pass them)."""
    return Tolerance(tol.rtol, tol.rtol * scale)


def looser(a: Tolerance, b: Tolerance) -> Tolerance:
    """Each part the larger of the two: what passes either passes this (the parity's tolerance where a measured
    noise tolerance meets the dtype default, ``verify.api``)."""
    return Tolerance(max(a.rtol, b.rtol), max(a.atol, b.atol))


def zero_tolerance() -> Tolerance:
    """Bit-exact: what an output that could not be compared is listed with."""
    return Tolerance(0.0, 0.0)
