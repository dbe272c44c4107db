"""Shape-generic replacements for operators the exporters cannot keep dynamic.

``adaptive_avg_pool2d`` and ``adaptive_max_pool2d`` choose their bins from the input size. The dynamo exporter
specializes them to the traced size (the following Linear then fails at any other size); the TorchScript exporter
refuses them ("input size not accessible"). The same bins can be computed from the symbolic size with ``arange``:
bin ``i`` of ``n`` over a length ``L`` covers ``[floor(i*L/n), ceil((i+1)*L/n))`` — PyTorch's own definition
(``aten/src/ATen/native/AdaptiveAveragePooling.cpp``: ``start_index``/``end_index``). Average pooling becomes two
matrix products with per-bin averaging matrices; max pooling a masked max, rows then columns (the max over a
rectangle is the max over its rows' maxima). Both export as Range/comparison/MatMul or ReduceMax: dynamic.
"""

from __future__ import annotations

import torch
from torch import nn


def _pair(size, dims: tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    return tuple(d if s is None else int(s) for s, d in zip(size, dims))


def bin_mask(length, bins: int, like: torch.Tensor) -> torch.Tensor:
    """Boolean (bins, length): which positions each adaptive-pooling bin covers."""
    position = torch.arange(length, device=like.device).unsqueeze(0)  # (1, L), L symbolic under export
    index = torch.arange(bins, device=like.device).unsqueeze(1)  # (n, 1)
    start = torch.div(index * length, bins, rounding_mode="floor")
    end = torch.div((index + 1) * length + bins - 1, bins, rounding_mode="floor")
    return (position >= start) & (position < end)


def adaptive_avg_pool2d(x: torch.Tensor, output_size) -> torch.Tensor:
    """``F.adaptive_avg_pool2d`` from shape-generic ops (same bins, same values up to float rounding)."""
    height, width = x.shape[-2], x.shape[-1]
    out_h, out_w = _pair(output_size, (height, width))
    rows = bin_mask(height, out_h, x).to(x.dtype)
    cols = bin_mask(width, out_w, x).to(x.dtype)
    rows = rows / rows.sum(dim=1, keepdim=True)
    cols = cols / cols.sum(dim=1, keepdim=True)
    return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


def adaptive_max_pool2d(x: torch.Tensor, output_size) -> torch.Tensor:
    """``F.adaptive_max_pool2d`` (values only) from shape-generic ops: masked max over rows, then columns."""
    height, width = x.shape[-2], x.shape[-1]
    out_h, out_w = _pair(output_size, (height, width))
    low = torch.finfo(x.dtype).min
    rows = bin_mask(height, out_h, x)  # (oh, H)
    y = torch.where(rows[:, :, None], x.unsqueeze(-3), torch.tensor(low, dtype=x.dtype)).amax(dim=-2)  # (.., oh, W)
    cols = bin_mask(width, out_w, x)  # (ow, W)
    return torch.where(cols, y.unsqueeze(-2), torch.tensor(low, dtype=x.dtype)).amax(dim=-1)  # (.., oh, ow)


class AdaptiveAvgPool2d(nn.Module):
    """Drop-in for ``nn.AdaptiveAvgPool2d`` that exports with dynamic height and width."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return adaptive_avg_pool2d(x, self.output_size)


class AdaptiveMaxPool2d(nn.Module):
    """Drop-in for ``nn.AdaptiveMaxPool2d`` (without ``return_indices``) that exports with dynamic height and width."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return adaptive_max_pool2d(x, self.output_size)
