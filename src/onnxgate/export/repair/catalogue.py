"""The catalogue of repairs: data, plus how each finds its pattern in a model and applies its replacement.

Each entry says what it replaces, when it applies (the model holds the pattern *and* the pattern matters for the
requested dynamic dims), and the exporter failure it removes — the words the report and the diagnosis use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Repair:
    name: str
    replaces: str  # the pattern, in the words of the report
    removes: str  # the exporter failure it removes
    find: Callable[[Any, Any], list[str]]  # (module, prepared) -> qualified names of the modules it applies to
    apply: Callable[[Any, list[str]], Any]  # (module, names) -> a context manager active during the export

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "replaces": self.replaces, "removes": self.removes}


def _spatial_dims_dynamic(prepared) -> bool:
    """Some input has a dynamic dim among its last two axes (the height/width adaptive pooling divides)."""
    return any(axis >= len(s.shape) - 2 and len(s.shape) >= 3 for s in prepared.specs for axis in s.dynamic_axes)


def _find_adaptive(module, prepared) -> list[str]:
    from torch import nn

    if not _spatial_dims_dynamic(prepared):
        return []
    kinds = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    return [name for name, m in module.named_modules()
            if isinstance(m, kinds) and not getattr(m, "return_indices", False)]


@contextlib.contextmanager
def _apply_adaptive(module, names: list[str]) -> Iterator[None]:
    """Swap the named pooling modules for the shape-generic ones, and route functional calls in forward() code
    (``F.adaptive_avg_pool2d``/``F.adaptive_max_pool2d`` without indices) through them while the export runs."""
    from torch import nn
    from torch.nn import functional as F

    from . import modules as generic

    for name in names:
        parent, _, leaf = name.rpartition(".")
        owner = module.get_submodule(parent) if parent else module
        old = getattr(owner, leaf)
        new = generic.AdaptiveAvgPool2d if isinstance(old, nn.AdaptiveAvgPool2d) else generic.AdaptiveMaxPool2d
        setattr(owner, leaf, new(old.output_size))
    avg, mx = F.adaptive_avg_pool2d, F.adaptive_max_pool2d

    def max_pool(x, output_size, return_indices=False):
        return mx(x, output_size, return_indices) if return_indices else generic.adaptive_max_pool2d(x, output_size)

    F.adaptive_avg_pool2d, F.adaptive_max_pool2d = generic.adaptive_avg_pool2d, max_pool
    try:
        yield
    finally:
        F.adaptive_avg_pool2d, F.adaptive_max_pool2d = avg, mx


CATALOGUE: tuple[Repair, ...] = (
    Repair("adaptive_pool",
           replaces="adaptive average/max pooling (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, F.adaptive_*_pool2d) "
                    "with dynamic height and width",
           removes="the dynamo exporter fixes the pooling bins at the traced size (frozen H/W); the TorchScript "
                   "exporter refuses it ('input size not accessible')",
           find=_find_adaptive, apply=_apply_adaptive),
)


def applicable(module, prepared) -> dict[str, list[str]]:
    """Repair name -> the modules it would replace, for every catalogue entry whose pattern the model holds."""
    found = {}
    for repair in CATALOGUE:
        try:
            names = repair.find(module, prepared)
        except Exception:  # a model whose modules cannot be walked has nothing to repair here
            names = []
        if names:
            found[repair.name] = names
    return found


@contextlib.contextmanager
def apply_repairs(module, repairs: dict[str, list[str]]) -> Iterator[None]:
    """Apply ``repairs`` (name -> modules) to ``module`` — which must be a copy — for the duration of the block."""
    by_name = {r.name: r for r in CATALOGUE}
    with contextlib.ExitStack() as stack:
        for name, modules in repairs.items():
            stack.enter_context(by_name[name].apply(module, modules))
        yield
