"""Which sizes to verify a dynamic dim at.

Most silent export failures hide at shapes other than the traced one (a batch frozen into a Reshape, a scale
computed from the traced width), so every dynamic dim is verified at its declared minimum, its maximum, the traced
(example) size and at least one size that is none of these. A dim declared with a granularity (``H=64..1024%64``)
is probed on that lattice only. The full verification probes more (sizes of different divisibility, seeded draws,
bisection of the range's ends: ``domain.py``). Torch-free.
"""

from __future__ import annotations

import math

from ..spec import Dim


def off_trace_sizes(dim: Dim) -> list[int]:
    """Sizes that are neither the traced size nor (where possible) a range end: for batch 2 → 3, 1, 7;
    for a 224 trace → 160, 288; for a 16-token trace → 8, 24. With ``multiple_of`` m, the same in units of m."""
    unit = dim.multiple_of or 1
    ex = (dim.example or 2 * unit) // unit
    if ex <= 8:
        candidates = [ex + 1, 1, 7]
    else:
        step = 2 ** int(math.floor(math.log2(ex))) // 4
        candidates = [ex - 2 * step, ex + 2 * step]
    seen, sizes = {ex * unit}, []
    for size in (c * unit for c in candidates):
        if dim.contains(size) and size not in seen:
            seen.add(size)
            sizes.append(size)
    return sizes


def range_ends(dim: Dim) -> list[int]:
    """The smallest and (when bounded) the largest size the declaration allows."""
    unit = dim.multiple_of or 1
    ends = [max(unit, -(-max(dim.min, 1) // unit) * unit)]
    if dim.max is not None:
        ends.append(dim.max // unit * unit)
    return [s for s in ends if dim.contains(s)]


def probe_sizes(dim: Dim) -> list[int]:
    """Every size the full verification always checks, traced size first."""
    ex = dim.example or 2
    sizes = [ex]
    for size in [*range_ends(dim), *off_trace_sizes(dim)]:
        if dim.contains(size) and size not in sizes:
            sizes.append(size)
    return sizes


def first_off_trace_size(dim: Dim) -> int | None:
    """The one extra size the export ladder tries, to tell a working dynamic export from a frozen one."""
    sizes = off_trace_sizes(dim)
    return sizes[0] if sizes else None
