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
