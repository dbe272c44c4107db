"""Which sizes to verify a dynamic dim at.

Most silent export failures hide at shapes other than the traced one (a batch frozen into a Reshape, a scale
computed from the traced width), so every dynamic dim is verified at its declared minimum, its maximum, the traced
(example) size and at least one size that is none of these. Torch-free.
"""

from __future__ import annotations

import math

from ..spec import Dim


def off_trace_sizes(dim: Dim) -> list[int]:
    """Sizes that are neither the traced size nor (where possible) a range end: for batch 2 → 3, 1, 7;
    for a 224 trace → 160, 288; for a 16-token trace → 8, 24."""
    ex = dim.example or 2
    if ex <= 8:
        candidates = [ex + 1, 1, 7]
    else:
        step = 2 ** int(math.floor(math.log2(ex))) // 4
        candidates = [ex - 2 * step, ex + 2 * step]
    seen, sizes = {ex}, []
    for size in candidates:
        if dim.contains(size) and size not in seen:
            seen.add(size)
            sizes.append(size)
    return sizes


def probe_sizes(dim: Dim) -> list[int]:
    """Every size the full verification checks, traced size first."""
    ex = dim.example or 2
    sizes = [ex]
    for size in [dim.min if dim.min >= 1 else 1, *( [dim.max] if dim.max is not None else [] ), *off_trace_sizes(dim)]:
        if dim.contains(size) and size not in sizes:
            sizes.append(size)
    return sizes


def first_off_trace_size(dim: Dim) -> int | None:
    """The one extra size the export ladder tries, to tell a working dynamic export from a frozen one."""
    sizes = off_trace_sizes(dim)
    return sizes[0] if sizes else None
