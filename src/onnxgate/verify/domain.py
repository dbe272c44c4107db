"""Shape-domain discovery: the sizes of each dynamic dim at which the ONNX model is *proven* to agree with PyTorch.

A dim declared ``H=64..1024`` claims every size in that range. Random-weight probes at min, max, the traced size
and one other size miss the commonest silent failure: a model that only works at multiples of its stride or patch
size (a MobileViT traced at 256 fails at 160 in a Reshape; 128 and 384 both work). So, per dim, besides the range
ends and the off-trace sizes (``shapes.probe_sizes``), discovery probes

* sizes of different divisibility: a size that is a multiple of none of the candidate granularities, and an odd
  multiple of 8, 16, 32 and of every stride or patch size found in the graph (``graph_granularities``);
* a few seeded draws inside the range;

cheapest (smallest) first, within a budget that counts probes, never seconds (``DomainBudget``): the same model and
declaration get the same probes, and so the same claim, on an idle machine and on a busy one. From the outcomes it
infers

* the **granularity**: the gcd of the sizes that work, claimed only when it explains a failing size, then refined
  (an odd multiple of half of it is tried: 64 is claimed only after 192 worked and 160 failed);
* the **interval** around the traced size with no failure on that lattice, its ends found by bisection (a BERT
  whose position table has 512 rows: "4..512", 513 fails in PyTorch itself). A dim declared without a range means
  "wherever PyTorch runs": an end that PyTorch itself sets (``DimDomain.reference_edges``) bounds it, with
  PyTorch's error as the reason, instead of making it narrower than declared (AlexNet: "63..", 62 fails with
  "Output size is too small").

The result is a ``DimDomain``: declared vs verified, the failures (size, who failed, the error), every size probed
and the seconds it took. It is data: the parity report shows it, and ``to_claim`` gives the ``claim.DimClaim`` that
the model's metadata, the bundle manifest and the report store (through ``claim``'s codec). Torch-free.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from ..claim import DimClaim, DimFailure as ClaimedFailure, EdgeReason
from ..spec import Dim

#: Granularities every dim is probed for (odd multiples of each), besides what the graph shows.
GENERIC_GRANULARITIES = (8, 16, 32)


@dataclass(frozen=True)
class DomainBudget:
    """How much discovery may cost per dim, in probes (one run of the model at one size), never in seconds: a
    time budget spent faster on an idle machine than on a busy one gave near-identical models different claims
    (issue 25). ``extra_probes``: sizes beyond the range ends and off-trace sizes, chosen by what they can refute
    (``extra_sizes``); ``draws``: how many of them are seeded draws; ``refine_steps``: validation and bisection
    probes for the granularity and the interval's ends (only when something failed). A size the budget leaves out
    is named in ``DimDomain.skipped``."""

    extra_probes: int = 8
    draws: int = 2
    refine_steps: int = 12


@dataclass(frozen=True)
class ProbeOutcome:
    """What happened at one size: ``by`` names who failed: "pytorch" (the reference itself) or the candidate."""

    ok: bool
    by: str | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class DomainFailure:
    size: int
    by: str  # "pytorch", or the candidate runtime ("onnxruntime", "openvino")
    error: str

    def to_dict(self) -> dict:
        return {"size": self.size, "by": self.by, "error": self.error}


@dataclass
class DimDomain:
    """One dim's declared domain against the verified one. ``verified_max`` None: unbounded, as declared (no
    failure above the largest probe). ``multiple_of`` 1: any size."""

    dim: str
    declared_min: int
    declared_max: int | None
    declared_multiple_of: int
    traced: int
    verified_min: int
    verified_max: int | None
    multiple_of: int = 1
    failures: list[DomainFailure] = field(default_factory=list)
    probes: list[int] = field(default_factory=list)  # every size run, in the order they ran (traced first)
    skipped: list[int] = field(default_factory=list)  # candidate sizes the budget left out
    seconds: float = 0.0
    # The dim was declared without a range (``x:Bx3xHxW`` and no ``--dim H=MIN..MAX``): it means "wherever the
    # PyTorch reference runs", so an edge PyTorch itself sets (``reference_edges``) bounds the domain, not a failure.
    unranged: bool = False

    def reference_edges(self) -> dict[str, DomainFailure]:
        """For a dim declared without a range, the ends of the verified interval that PyTorch itself sets: "min"
        (or "max") -> the nearest failure below (above) the interval, when the reference raised there (an AlexNet
        below H = 63: "Output size is too small"). Empty for a declared range: a size it declares that PyTorch
        rejects stays a failure."""
        if not self.unranged:
            return {}
        edges: dict[str, DomainFailure] = {}
        below = [f for f in self.failures if f.size < self.verified_min]
        if below and max(below, key=lambda f: f.size).by == "pytorch":
            edges["min"] = max(below, key=lambda f: f.size)
        above = [f for f in self.failures if self.verified_max is not None and f.size > self.verified_max]
        if above and min(above, key=lambda f: f.size).by == "pytorch":
            edges["max"] = min(above, key=lambda f: f.size)
        return edges

    def _declared_bounds(self) -> tuple[int, int | None]:
        """The declared ends, where an edge PyTorch itself sets replaces an end a dim without a range left open."""
        edges = self.reference_edges()
        return (self.verified_min if "min" in edges else self.declared_min,
                self.verified_max if "max" in edges else self.declared_max)

    def edge_note(self) -> str:
        """Why each edge PyTorch itself sets is where it is: "lower edge 63: PyTorch itself fails at 62 (Given
        input size: (256x1x1). ... Output size is too small)"; the sizes between were not probed when the
        failure is not next to the edge (the probe budget ran out)."""
        parts = []
        for end, failure in self.reference_edges().items():
            edge = self.verified_min if end == "min" else self.verified_max
            gap = abs(edge - failure.size) > self.multiple_of
            between = (f"; {min(edge, failure.size) + 1}..{max(edge, failure.size) - 1} not probed" if gap else "")
            parts.append(f"{'lower' if end == 'min' else 'upper'} edge {edge}: PyTorch itself fails at {failure.size}"
                         f" ({failure.error}){between}")
        return "; ".join(parts)

    @property
    def narrower(self) -> bool:
        """The declaration claims a size the verification did not prove (outside the interval, or off its
        granularity). A dim declared without a range claims the sizes where PyTorch runs (``reference_edges``)."""
        step = self.declared_multiple_of
        declared_min, declared_max = self._declared_bounds()
        first = -(-max(declared_min, 1) // step) * step
        last = None if declared_max is None else declared_max // step * step
        if first < self.verified_min or (self.verified_max is not None and (last is None or last > self.verified_max)):
            return True
        if step % self.multiple_of == 0:
            return False
        start = -(-max(first, self.verified_min) // step) * step
        bounds = [b for b in (last, self.verified_max) if b is not None]
        top = min(bounds) if bounds else start + step * self.multiple_of
        return any(size % self.multiple_of for size in range(start, min(top, start + step * self.multiple_of) + 1, step))

    @property
    def only_traced(self) -> bool:
        """Nothing but the traced size works."""
        return self.verified_min == self.traced and self.verified_max == self.traced

    def contains(self, size: int) -> bool:
        return (size >= self.verified_min and (self.verified_max is None or size <= self.verified_max)
                and size % self.multiple_of == 0)

    def as_dim(self) -> Dim:
        """The verified domain as a Dim: what the metadata, the bundle and ``serve`` claim once it is accepted."""
        return Dim(self.dim, self.verified_min, self.verified_max, self.traced,
                   self.multiple_of if self.multiple_of > 1 else None)

    def claimed(self) -> dict:
        """The domain the model claims once verified: the verified one (equal to the declared one unless a narrower
        domain was accepted): what ``to_claim`` records."""
        step = self.multiple_of if self.narrower else self.declared_multiple_of
        return {"min": self.verified_min, "max": self.verified_max, "multiple_of": step if step > 1 else None,
                "example": self.traced}

    def to_claim(self) -> DimClaim:
        """The dim as a ``Claim`` records it: the claimed sizes (``claimed``), what was declared, why each edge
        PyTorch sets is where it is, the failures, the sizes probed and skipped."""
        claimed = self.claimed()
        edges = tuple(EdgeReason(end, self.verified_min if end == "min" else self.verified_max, f.size, f.by, f.error)
                      for end, f in self.reference_edges().items())
        return DimClaim(self.dim, claimed["min"], claimed["max"], claimed["multiple_of"], claimed["example"],
                        self.declared_min, self.declared_max, self.declared_multiple_of, self.unranged,
                        self.narrower, self.multiple_of, edges,
                        tuple(ClaimedFailure(f.size, f.by, f.error) for f in sorted(self.failures, key=lambda f: f.size)),
                        tuple(self.probes), tuple(self.skipped), self.summary())

    def describe(self) -> str:
        """"multiples of 64 in 64..1024", "1..16", "only 224"; a dim declared without a range adds the edges
        PyTorch itself sets: "63.. (lower edge 63: PyTorch itself fails at 62 (... Output size is too small))"."""
        note = self.edge_note()
        return self._span() + (f" ({note})" if note else "")

    def _span(self) -> str:
        if self.only_traced:
            return f"only {self.traced}"
        span = f"{self.verified_min}..{'' if self.verified_max is None else self.verified_max}"
        return f"multiples of {self.multiple_of} in {span}" if self.multiple_of > 1 else span

    def declared(self) -> str:
        if self.unranged:
            return "no range (wherever PyTorch runs)"
        span = f"{self.declared_min}..{'' if self.declared_max is None else self.declared_max}"
        return f"multiples of {self.declared_multiple_of} in {span}" if self.declared_multiple_of > 1 else span

    def summary(self) -> str:
        """"H: multiples of 64 in 64..1024; fails at 160 (onnxruntime: ... Reshape node_view_16 ...)"."""
        text = f"{self.dim}: {self.describe()}"
        if self.narrower:
            edges = [f"first working size {self.verified_min}"] if self.verified_min > self.declared_min else []
            if self.only_traced:
                edges = []
            elif self.verified_max is not None and (self.declared_max is None or self.verified_max < self.declared_max):
                edges.append(f"last working size {self.verified_max}")
            text += f" (declared {self.declared()}{''.join('; ' + e for e in edges)})"
        edges = list(self.reference_edges().values())
        if self.failures and edges and not self.narrower:  # every failure is PyTorch's own, outside the domain
            others = sorted(f.size for f in self.failures if f not in edges)
            if others:
                text += f"; PyTorch also fails at {', '.join(map(str, others[:5]))}{' ...' if len(others) > 5 else ''}"
        elif self.failures:
            first = self.telling_failure()
            others = sorted(f.size for f in self.failures if f is not first)
            more = f"; also fails at {', '.join(map(str, others[:5]))}{' ...' if len(others) > 5 else ''}" if others else ""
            text += f"; fails at {first.size} ({first.by}: {first.error}){more}"
        return text

    def telling_failure(self) -> DomainFailure | None:
        """The failure that tells most: at an interval's edge the nearest one outside it; for a granularity the
        failing size sharing the largest factor with it (160 for multiples of 64: a multiple of 32 that fails)."""
        if not self.failures:
            return None
        outside = [f for f in self.failures if f.size % self.multiple_of == 0]
        if outside:
            return min(outside, key=lambda f: abs(f.size - self.traced))
        return max(self.failures, key=lambda f: (math.gcd(f.size, self.multiple_of), -abs(f.size - self.traced)))

    def to_dict(self) -> dict:
        return {"dim": self.dim, "declared_min": self.declared_min, "declared_max": self.declared_max,
                "declared_multiple_of": self.declared_multiple_of, "traced": self.traced,
                "verified_min": self.verified_min, "verified_max": self.verified_max,
                "multiple_of": self.multiple_of, "narrower": self.narrower, "summary": self.summary(),
                "unranged": self.unranged,
                "reference_edges": {end: {**f.to_dict(), "edge": self.verified_min if end == "min" else
                                          self.verified_max} for end, f in self.reference_edges().items()},
                "failures": [f.to_dict() for f in sorted(self.failures, key=lambda f: f.size)],
                "probes": list(self.probes), "skipped": list(self.skipped), "seconds": round(self.seconds, 3)}

    def intersect(self, other: DimDomain) -> DimDomain:
        """Where both runtimes agree with PyTorch (several candidates verified the same dim)."""
        top = [m for m in (self.verified_max, other.verified_max) if m is not None]
        known = {f.size: f for f in [*self.failures, *other.failures]}
        return replace(self, verified_min=max(self.verified_min, other.verified_min),
                       verified_max=min(top) if top else None,
                       multiple_of=math.lcm(self.multiple_of, other.multiple_of),
                       failures=sorted(known.values(), key=lambda f: f.size),
                       probes=list(dict.fromkeys([*self.probes, *other.probes])),
                       skipped=sorted(set(self.skipped) | set(other.skipped)), seconds=self.seconds + other.seconds)


# ---------------------------------------------------------------------------------------------- candidate sizes

def _lattice(dim: Dim) -> tuple[int, int, int | None]:
    """(step, first, last): the sizes the declaration allows are first, first + step, ... last (None: unbounded)."""
    step = dim.multiple_of or 1
    first = max(step, -(-max(dim.min, 1) // step) * step)
    last = None if dim.max is None else dim.max // step * step
    return step, first, last


def _top(dim: Dim, traced: int) -> int:
    """The largest size to draw from: the declared max, or 4x the traced size for an unbounded dim."""
    return dim.max if dim.max is not None else max(4 * traced, traced + 8)


def extra_sizes(dim: Dim, probed: Iterable[int], granularities: Iterable[int], *, budget: DomainBudget,
                spatial: bool = True) -> list[int]:
    """Sizes of different divisibility and seeded draws, cheapest (smallest) first, at most
    ``budget.extra_probes``. ``granularities``: strides/patch sizes from the graph (used for ``spatial`` dims)."""
    step, first, _ = _lattice(dim)
    traced = dim.example or first
    top = _top(dim, traced)
    probed = set(probed)
    allowed = [g for g in sorted(set(GENERIC_GRANULARITIES) | (set(granularities) if spatial else set()))
               if g > step and g % step == 0]
    picks: list[int] = []

    def inside(size: int) -> bool:
        return first <= size <= top and size % step == 0

    # A size that is a multiple of none of them (an odd one, on the declared lattice), unless one was probed.
    if not any(all(s % g for g in allowed) for s in probed):
        k = first // step
        while k * step <= top and (any((k * step) % g == 0 for g in allowed) or k * step in probed):
            k += 1
        if inside(k * step):
            picks.append(k * step)
    # An odd multiple of each granularity (g, 3g, 5g ...: the smallest in range), unless one was probed.
    for g in allowed:
        if any(s % (2 * g) == g for s in probed | set(picks)):
            continue
        k = max(1, -(-first // g))
        k += (k % 2 == 0)
        if inside(k * g):
            picks.append(k * g)
    # Seeded draws inside the range (the seed is the dim's name: the same sizes on every run).
    rng = np.random.default_rng(zlib.crc32(dim.name.encode()))
    for _ in range(budget.draws):
        size = int(rng.integers(first // step, top // step, endpoint=True)) * step if top >= first else first
        if inside(size) and size not in probed and size not in picks:
            picks.append(size)
    return sorted(picks[:budget.extra_probes])


# ------------------------------------------------------------------------------------------------- discovery

class _Prober:
    """Runs sizes through ``run`` once each, keeping outcomes, order, seconds and what the budget skipped. The
    seconds are reported, never used to decide what runs."""

    def __init__(self, run: Callable[[int], ProbeOutcome], traced: int):
        self.run, self.traced = run, traced
        self.results: dict[int, ProbeOutcome] = {traced: ProbeOutcome(True)}
        self.order = [traced]
        self.skipped: list[int] = []

    def __call__(self, size: int) -> ProbeOutcome:
        if size not in self.results:
            start = time.perf_counter()
            outcome = self.run(size)
            self.results[size] = replace(outcome, seconds=time.perf_counter() - start)
            self.order.append(size)
        return self.results[size]

    @property
    def ok(self) -> list[int]:
        return sorted(s for s, r in self.results.items() if r.ok)

    @property
    def failed(self) -> dict[int, ProbeOutcome]:
        return {s: r for s, r in self.results.items() if not r.ok}


def discover(dim: Dim, run: Callable[[int], ProbeOutcome], *, required: Iterable[int] = (),
             granularities: Iterable[int] = (), budget: DomainBudget | None = None,
             spatial: bool = True) -> DimDomain:
    """The verified domain of ``dim``. ``run(size)`` runs the model at that size (every other dim traced) and says
    whether the candidate agreed with PyTorch; the traced size itself is taken as passed (the caller checked it).
    ``required``: sizes always run (the range ends and off-trace sizes); then extras, refinement and bisection
    within ``budget`` (counted in probes: the sizes run depend on the model and the declaration only)."""
    budget = budget or DomainBudget()
    start = time.perf_counter()
    step, first, last = _lattice(dim)
    traced = dim.example or first
    probe = _Prober(run, traced)
    for size in required:
        probe(size)
    if not [s for s in probe.ok if s != traced] and probe.failed:  # works nowhere but at the traced size
        domain = _domain(dim, probe, step, traced, traced, step)
    else:
        for size in extra_sizes(dim, probe.results, granularities, budget=budget, spatial=spatial):
            probe(size)
        domain = _conclude(dim, probe, step, first, last, budget)
    domain.seconds = time.perf_counter() - start
    return domain


def _domain(dim: Dim, probe: _Prober, step: int, low: int, high: int | None, grain: int) -> DimDomain:
    failures = [DomainFailure(s, r.by or "?", r.error or "failed") for s, r in sorted(probe.failed.items())]
    return DimDomain(dim.name, dim.min, dim.max, step, probe.traced, low, high, grain, failures, list(probe.order),
                     list(dict.fromkeys(probe.skipped)), unranged=not dim.ranged)


def _conclude(dim: Dim, probe: _Prober, step: int, first: int, last: int | None,
              budget: DomainBudget) -> DimDomain:
    """From the outcomes so far to a domain: the finest granularity whose interval around the traced size holds
    up under validation probes, then that interval's ends found by bisection. A size where PyTorch itself fails
    beyond every working size is evidence of an edge, not against a granularity (an AlexNet below H = 63 is no
    reason to claim multiples of 7)."""
    if not probe.failed:
        return _domain(dim, probe, step, first, last, step)
    refine = _Refiner(probe, budget)
    grain = step
    for grain in _grains(step, probe.traced):
        low, high = _gap(probe, grain, first, last)
        if _holds(probe, grain, low, high, refine):
            break
    low, high = _ends(probe, grain, first, last, refine)
    return _domain(dim, probe, step, low, high, grain)


class _Refiner:
    """Runs a validation or bisection probe while the refinement budget (``refine_steps`` probes) allows."""

    def __init__(self, probe: _Prober, budget: DomainBudget):
        self.probe, self.budget, self.steps = probe, budget, 0

    def __call__(self, size: int) -> ProbeOutcome | None:
        """The outcome at ``size`` (None: out of budget, the size is named as skipped)."""
        if size in self.probe.results:
            return self.probe.results[size]
        if self.steps >= self.budget.refine_steps:
            self.probe.skipped.append(size)
            return None
        self.steps += 1
        return self.probe(size)


def _grains(step: int, traced: int) -> list[int]:
    """Candidate granularities, finest first: the multiples of ``step`` that divide the traced size (the traced
    size is in every domain claimed)."""
    return [g for g in range(step, traced + 1, step) if traced % g == 0]


def _gap(probe: _Prober, grain: int, first: int, last: int | None) -> tuple[int, int | None]:
    """The widest interval of multiples of ``grain`` around the traced size holding no known failure."""
    traced = probe.traced
    low = -(-first // grain) * grain
    high = None if last is None else last // grain * grain
    for size in probe.failed:
        if size % grain == 0:
            if size < traced:
                low = max(low, size + grain)
            elif high is None or size <= high:
                high = size - grain
    return low, high


def _level(size: int, grain: int) -> bool:
    """A size that is a multiple of ``grain`` and of nothing coarser along it (an odd multiple): evidence that
    ``grain`` itself, not a multiple of it, is the granularity."""
    return size % grain == 0 and size % (2 * grain) != 0


def _holds(probe: _Prober, grain: int, low: int, high: int | None, refine, need: int = 2) -> bool:
    """Whether sizes at this granularity work across the interval: ``need`` working odd multiples of ``grain``
    inside it (the ones probed so far, then validation probes near its low end, middle and high end, cheapest
    first). One failure refutes the granularity; a budget spent with some evidence accepts it."""
    top = high if high is not None else max(probe.results)
    inside = [s for s, r in probe.results.items() if r.ok and low <= s <= top and _level(s, grain)]
    if len(inside) >= need:
        return True
    for target in sorted({low, (low + top) // 2, top}):
        k = max(1, round(target / grain))
        k += (k % 2 == 0) * (1 if k * grain < (low + top) / 2 else -1)
        size = k * grain
        if not (low <= size <= top) or size in probe.results:
            continue
        outcome = refine(size)
        if outcome is None:
            return bool(inside)
        if not outcome.ok:
            working = probe.ok
            if outcome.by == "pytorch" and not working[0] < size < working[-1]:
                continue  # beyond every working size: where the reference stops running (an edge, bisected)
            return False
        inside.append(size)
        if len(inside) >= need:
            return True
    return True  # nothing at this granularity inside the interval contradicts it


def _ends(probe: _Prober, grain: int, first: int, last: int | None, refine) -> tuple[int, int | None]:
    """The interval's ends on the ``grain`` lattice, proven: the declared ends are probed, and where a failure
    bounds the interval its edge is found by bisection (an unbounded dim stays unbounded without a failure)."""
    traced = probe.traced
    lo_end = -(-first // grain) * grain
    hi_end = None if last is None else last // grain * grain
    for end in (lo_end, hi_end):
        if end is not None:
            refine(end)
    low, high = _gap(probe, grain, first, last)
    good = min(s for s in probe.ok if s % grain == 0 and s >= low)
    bad = low - grain if low > lo_end else None
    while bad is not None and good - bad > grain:
        mid = max(bad + grain, (bad + good) // 2 // grain * grain)
        outcome = refine(mid)
        if outcome is None:
            break
        bad, good = (bad, mid) if outcome.ok else (mid, good)
    low = good
    if high is None:
        return low, None
    good = max(s for s in probe.ok if s % grain == 0 and s <= high and s >= traced)
    bad = high + grain if hi_end is None or high < hi_end else None
    while bad is not None and bad - good > grain:
        mid = min(bad - grain, -(-((bad + good) // 2) // grain) * grain)
        outcome = refine(mid)
        if outcome is None:
            break
        good, bad = (mid, bad) if outcome.ok else (good, mid)
    return low, good


# --------------------------------------------------------------------------------------- strides in the graph

_DOWNSAMPLING = {"Conv", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool"}


def graph_granularities(model, *, limit: int = 256) -> list[int]:
    """Strides and patch sizes in an ONNX graph (a path or a ModelProto): the cumulative stride at every
    downsampling node (Conv/pool strides multiplied along the path from the inputs: resnet18 gives 2, 4, 8, 16,
    32) and the kernel of every ``kernel == stride`` patch embedding (ViT-B/16: 16). Never raises: a graph that
    cannot be read gives no granularities."""
    try:
        if not hasattr(model, "graph"):
            from .. import serde

            model = serde.load(model, load_external_data=False)
        return _strides(model.graph, limit)
    except Exception:  # noqa: BLE001  a hint for probing, not a verdict
        return []


def _strides(graph, limit: int) -> list[int]:
    stride: dict[str, int] = {}
    found: set[int] = set()
    for node in graph.node:
        s_in = max((stride.get(name, 1) for name in node.input if name), default=1)
        attrs = {a.name: list(a.ints) for a in node.attribute if a.ints}
        s_out = s_in
        if node.op_type in _DOWNSAMPLING:
            steps = attrs.get("strides") or [1]
            factor = max(steps)
            if factor > 1:
                s_out = s_in * factor
                found.add(s_out)
                if attrs.get("kernel_shape") == steps and node.op_type.startswith("Conv"):
                    found.add(factor)  # a patch embedding
        for name in node.output:
            stride[name] = s_out
    return sorted(g for g in found if 1 < g <= limit)
