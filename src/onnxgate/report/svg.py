"""Tiny inline-SVG charts for the HTML report: no JavaScript library, no network fetch, no matplotlib.

Each function returns one ``<svg>`` element as a string, with a ``data-plot`` attribute naming the chart so a
test (and a curious reader) can find it.
"""

from __future__ import annotations

import math
from html import escape

PALETTE = ("#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6", "#dd4477", "#66aa00")


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-2:
        return f"{v:.0e}"
    return f"{v:.3g}"


def bar_chart(name: str, title: str, labels: list[str], values: list[float], *, unit: str = "",
              log: bool = False, highlight: set[int] | None = None, width: int = 640) -> str:
    """Horizontal bars, one per label; ``log`` for errors spanning decades; ``highlight`` bars drawn in red."""
    highlight = highlight or set()
    row, left, top = 18, 190, 28
    height = top + row * len(labels) + 24
    finite = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)]
    if not finite:
        return _empty(name, title, width)
    lo = min(finite) if log else 0.0
    hi = max(finite)
    if log:
        lo_l, hi_l = math.floor(math.log10(max(lo, 1e-30))), math.ceil(math.log10(max(hi, 1e-30)))
        hi_l = max(hi_l, lo_l + 1)
        scale = lambda v: (math.log10(max(v, 10.0 ** lo_l)) - lo_l) / (hi_l - lo_l)  # noqa: E731
    else:
        scale = lambda v: v / hi if hi else 0  # noqa: E731
    span = width - left - 70
    parts = [_open(name, title, width, height)]
    for i, (label, value) in enumerate(zip(labels, values)):
        y = top + i * row
        parts.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end" font-size="11">{escape(label[:32])}</text>')
        if value is None or not math.isfinite(value):
            parts.append(f'<text x="{left + 4}" y="{y + 12}" font-size="11" fill="#999">n/a</text>')
            continue
        w = max(1.0, scale(value) * span)
        colour = "#dc3912" if i in highlight else PALETTE[0]
        parts.append(f'<rect x="{left}" y="{y + 2}" width="{w:.1f}" height="{row - 5}" fill="{colour}"/>')
        parts.append(f'<text x="{left + w + 4}" y="{y + 12}" font-size="11">{_fmt(value)}{escape(unit)}</text>')
    axis = "log scale" if log else "linear scale"
    parts.append(f'<text x="{left}" y="{height - 6}" font-size="10" fill="#666">{axis}</text></svg>')
    return "".join(parts)


def histogram(name: str, title: str, series: dict[str, list[int]], bin_labels: list[str], width: int = 640) -> str:
    """Grouped vertical bars: one group per bin, one colour per series (e.g. per output)."""
    height, left, bottom, top = 220, 40, 40, 28
    n_bins = len(bin_labels)
    peak = max((max(c) for c in series.values() if c), default=0)
    if not peak:
        return _empty(name, title, width)
    group = (width - left - 10) / max(n_bins, 1)
    bar = group / (len(series) + 1)
    parts = [_open(name, title, width, height)]
    plot_h = height - top - bottom
    for s, (label, counts) in enumerate(series.items()):
        colour = PALETTE[s % len(PALETTE)]
        for i, c in enumerate(counts):
            if not c:
                continue
            h = max(1.0, math.log1p(c) / math.log1p(peak) * plot_h)  # log counts: rare large errors stay visible
            x = left + i * group + s * bar
            parts.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                         f'fill="{colour}"><title>{escape(label)} {escape(bin_labels[i])}: {c}</title></rect>')
        parts.append(f'<rect x="{width - 150}" y="{top + 4 + s * 14}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{width - 136}" y="{top + 13 + s * 14}" font-size="10">{escape(label[:22])}</text>')
    for i, lab in enumerate(bin_labels):
        if i % 2 == 0:
            parts.append(f'<text x="{left + i * group:.1f}" y="{height - bottom + 14}" font-size="9">{escape(lab)}</text>')
    parts.append(f'<text x="{left}" y="{height - 6}" font-size="10" fill="#666">|error| per decade; bar height: '
                 'log(1 + count)</text></svg>')
    return "".join(parts)


def line_chart(name: str, title: str, labels: list[str], values: list[float | None], *, threshold: float | None = None,
               width: int = 640) -> str:
    """Values along an ordered axis (layers in execution order), log-y, with an optional threshold line."""
    height, left, bottom, top = 220, 50, 30, 28
    pts = [(i, v) for i, v in enumerate(values) if v is not None and v > 0 and math.isfinite(v)]
    if not pts:
        return _empty(name, title, width)
    lo = math.floor(math.log10(min(v for _, v in pts + ([(0, threshold)] if threshold else []))))
    hi = math.ceil(math.log10(max(v for _, v in pts + ([(0, threshold)] if threshold else []))))
    hi = max(hi, lo + 1)
    plot_w, plot_h = width - left - 10, height - top - bottom
    xs = lambda i: left + (i / max(len(values) - 1, 1)) * plot_w  # noqa: E731
    ys = lambda v: top + plot_h - (math.log10(v) - lo) / (hi - lo) * plot_h  # noqa: E731
    path = " ".join(f"{'M' if k == 0 else 'L'}{xs(i):.1f},{ys(v):.1f}" for k, (i, v) in enumerate(pts))
    parts = [_open(name, title, width, height), f'<path d="{path}" fill="none" stroke="{PALETTE[0]}" stroke-width="1.5"/>']
    for i, v in pts:
        parts.append(f'<circle cx="{xs(i):.1f}" cy="{ys(v):.1f}" r="2.5" fill="{PALETTE[0]}">'
                     f'<title>{escape(labels[i])}: {_fmt(v)}</title></circle>')
    if threshold:
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{ys(threshold):.1f}" y2="{ys(threshold):.1f}" '
                     f'stroke="#dc3912" stroke-dasharray="4 3"/>')
    parts.append(f'<text x="4" y="{top + 8}" font-size="9">1e{hi}</text><text x="4" y="{top + plot_h}" font-size="9">1e{lo}</text>')
    parts.append(f'<text x="{left}" y="{height - 8}" font-size="10" fill="#666">layers in execution order '
                 f'(first: {escape(labels[0][:30])}, last: {escape(labels[-1][:30])})</text></svg>')
    return "".join(parts)


def box_plot(name: str, title: str, labels: list[str], samples: list[list[float]], width: int = 640) -> str:
    """One horizontal box per configuration: p5–p95 whiskers, p25–p75 box, median tick (linear ms axis)."""
    import numpy as np

    rows = [(l, np.asarray(s, dtype=float)) for l, s in zip(labels, samples) if len(s)]
    if not rows:
        return _empty(name, title, width)
    row, left, top = 20, 190, 28
    height = top + row * len(rows) + 24
    hi = max(float(np.percentile(s, 95)) for _, s in rows) or 1.0
    span = width - left - 20
    x = lambda v: left + min(v / hi, 1.0) * span  # noqa: E731
    parts = [_open(name, title, width, height)]
    for i, (label, s) in enumerate(rows):
        p5, p25, p50, p75, p95 = (float(v) for v in np.percentile(s, [5, 25, 50, 75, 95]))
        y = top + i * row + row / 2
        parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end" font-size="11">{escape(label[:32])}</text>')
        parts.append(f'<line x1="{x(p5):.1f}" x2="{x(p95):.1f}" y1="{y}" y2="{y}" stroke="#555"/>')
        parts.append(f'<rect x="{x(p25):.1f}" y="{y - 6}" width="{max(x(p75) - x(p25), 1):.1f}" height="12" '
                     f'fill="{PALETTE[0]}" opacity="0.6"><title>{escape(label)}: p50 {_fmt(p50)} ms</title></rect>')
        parts.append(f'<line x1="{x(p50):.1f}" x2="{x(p50):.1f}" y1="{y - 7}" y2="{y + 7}" stroke="#000" stroke-width="2"/>')
    parts.append(f'<text x="{left}" y="{height - 6}" font-size="10" fill="#666">0 to {_fmt(hi)} ms; whiskers p5–p95, '
                 'box p25–p75, tick median</text></svg>')
    return "".join(parts)


def _open(name: str, title: str, width: int, height: int) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" data-plot="{escape(name)}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
            f'<text x="4" y="16" font-size="13" font-weight="bold">{escape(title)}</text>')


def _empty(name: str, title: str, width: int) -> str:
    return _open(name, title, width, 40) + '<text x="4" y="34" font-size="11" fill="#999">no data</text></svg>'
