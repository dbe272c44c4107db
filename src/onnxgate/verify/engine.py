"""The verification engine: feeds x runners x one tolerance policy x the one comparer -> a parity record.

Polygraphy's shape, onnxgate's rules. Every check that says "this artifact computes what that one computes" runs
here — the transforms' ``Verifier``, the benchmark's ``ConfigVerifier``, a deploy target's check, a bundle's
re-verification, and the parity of the ONNX file itself (``parity.py``, which adds shape probing and domains):

    feeds      dicts of arrays: seeded random (``inputs.random_inputs``), real data, a bundle's golden inputs,
               the domain probes of a claim (every probe size of each dim, ``shapes.probe_sizes``)
    runners    anything with ``run(feed) -> dict`` (an onnxruntime/OpenVINO session, ``TorchRunner``, golden
               outputs) or a plain callable; outputs already computed are given as a list, one dict per feed
    policy     ``TolerancePolicy``: each output's tolerance, decided in one order — the output dtype's default,
               then the file's contract (INT8/FP16), else the runtime's reduced precision (tied to each
               output's scale), then the user's (or a pass's) override, then per-output recorded tolerances
    comparer   ``compare.compare_outputs`` (NaN/Inf placement, huge outputs judged against their scale,
               detections as sets)
    record     ``ParityRecord``: per feed, every output's comparison (or the runner's error), and the summary
               figures callers report (max abs err, worst output, the share of the tolerance used)

Only this module (and ``tolerance.py``, where the ``Tolerance`` type and its arithmetic live) constructs a
``Tolerance`` or calls the comparer; ``tests/test_one_engine.py`` fails when another module does. Torch-free and
onnx-free: a bundle is re-verified with numpy and onnxruntime alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import first_line
from ..spec import Dim, InputSpec
from .compare import OutputComparison, compare_outputs
from .contract import Contract, PrecisionTolerance, runtime_tolerance
from .inputs import random_inputs
from .shapes import probe_sizes
from .tolerance import Tolerance, default_tolerance, scaled_tolerance, sci, zero_tolerance

Feed = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class TolerancePolicy:
    """How each output's tolerance is chosen, in one order (a later layer replaces an earlier one):

    1. the default of the output's dtype (``tolerance.default_tolerance``);
    2. ``contract``: the file's own (an INT8/FP16 file is judged by what its transform proved), else
       ``reduced``: the precision the runtime computes a float32 model in (bf16/fp16), tied to each output's scale;
    3. ``override``: the user's --rtol/--atol, or a transform pass's own tolerance;
    4. ``fixed``: per-output tolerances recorded with the artifact (a bundle's manifest), for the outputs it names.

    ``relative``: the chosen tolerance's atol grows with the output's scale (``scale_fraction = rtol``), for a
    reduced-precision rewrite whose error grows with the values. ``scales``: the max |ref| each output is tied to
    (recorded ones: a contract's, the traced reference's); an output without one is tied to its reference on the
    feed being judged.
    """

    contract: Contract | None = None
    reduced: PrecisionTolerance | None = None
    override: Tolerance | PrecisionTolerance | None = None
    fixed: Mapping[str, Tolerance] | None = None
    relative: bool = False
    scales: Mapping[str, float] | None = None

    @classmethod
    def for_runtime(cls, precision: str | None, *, contract: Contract | None = None,
                    scales: Mapping[str, float] | None = None) -> "TolerancePolicy":
        """A configuration computing in ``precision`` (fp32/bf16/fp16), on a file that may carry a contract."""
        return cls(contract=contract, reduced=None if contract is not None else runtime_tolerance(precision),
                   scales=scales)

    @property
    def rule(self) -> PrecisionTolerance | Tolerance | None:
        """The tolerance the layers above the dtype default give (None: each output's dtype default)."""
        if self.override is not None:
            return self.override
        if self.contract is not None:
            return self.contract.tolerance
        return self.reduced

    @property
    def source(self) -> str:
        if self.override is not None:
            return "override"
        if self.contract is not None:
            return f"the file's {self.contract.precision} contract"
        if self.reduced is not None:
            return "reduced precision"
        return "dtype default"

    def describe(self) -> str | None:
        rule = self.rule
        if rule is None:
            return None
        text = str(rule)
        if self.relative and not getattr(rule, "scale_fraction", 0.0):
            text += f" or {sci(rule.rtol)} x max|ref|"
        return text

    def tolerance(self, name: str, reference: np.ndarray | None) -> Tolerance:
        """The tolerance of output ``name`` whose reference value on this feed is ``reference``."""
        if self.fixed and name in self.fixed:
            return self.fixed[name]
        ref = None if reference is None else np.asarray(reference)
        rule = self.rule
        if rule is None:
            rule = default_tolerance(ref.dtype.name if ref is not None else "float32")
            if not self.relative:
                return rule
        fraction = getattr(rule, "scale_fraction", 0.0)
        if self.relative:
            fraction = max(fraction, rule.rtol)
        if not fraction:
            return scaled_tolerance(rule.rtol, rule.atol, 0.0, None)
        if self.scales and name in self.scales:
            scale = self.scales[name]
        else:  # an integer output is not tied to its values' magnitude
            scale = output_scale(ref) if ref is not None and ref.dtype.kind == "f" else None
        return scaled_tolerance(rule.rtol, rule.atol, fraction, scale)

    def tolerances(self, reference: Outputs) -> dict[str, Tolerance]:
        return {name: self.tolerance(name, value) for name, value in reference.items()}

    def default(self) -> Tolerance | None:
        """For an output the reference does not show (a per-output table's fallback): the rule at the largest
        recorded scale; None: each output's dtype default."""
        if self.rule is None and not self.relative:
            return None
        largest = max((self.scales or {}).values(), default=0.0)
        rule = self.rule or default_tolerance("float32")
        fraction = max(getattr(rule, "scale_fraction", 0.0), rule.rtol if self.relative else 0.0)
        return scaled_tolerance(rule.rtol, rule.atol, fraction, largest)


def ceiling(reference: np.ndarray | None, dtype: str, *, max_rtol: float, max_scale_fraction: float) -> Tolerance:
    """The loosest tolerance an output whose reference is ``reference`` may be judged with: beyond it a comparison
    no longer tells the model from a wrong one (a bundle's manifest is held to it)."""
    return scaled_tolerance(max_rtol, default_tolerance(dtype).atol, max_scale_fraction, output_scale(reference))


def output_scale(value: np.ndarray | None) -> float:
    """max |value| over the finite elements of a numeric array (0 when there is none, or it is not numeric)."""
    if value is None:
        return 0.0
    arr = np.asarray(value)
    if arr.dtype.kind not in "biufc" or not arr.size:
        return 0.0
    magnitude = np.abs(arr) if arr.dtype.kind == "c" else np.abs(arr.astype(np.float64, copy=False))
    finite = magnitude[np.isfinite(magnitude)]
    return float(finite.max()) if finite.size else 0.0


def output_scales(outputs: Sequence[Outputs]) -> dict[str, float]:
    """Max |value| of each float output over every feed (finite elements)."""
    scales: dict[str, float] = {}
    for feed in outputs:
        for name, value in feed.items():
            arr = np.asarray(value)
            if arr.dtype.kind == "f" and arr.size:
                scales[name] = max(scales.get(name, 0.0), output_scale(arr))
    return scales


# ------------------------------------------------------------------------------------------------ feeds


@dataclass
class ProbeFeed:
    """A seeded random feed at one probe size of one dim (the other dims at their traced sizes)."""

    label: str  # "B=8"
    sizes: dict[str, int]
    feed: Feed


def probe_feeds(specs: Sequence[InputSpec], dims: Mapping[str, Dim], *, seed: int = 1,
                have: Sequence[Mapping[str, int]] = ()) -> list[ProbeFeed]:
    """The domain probes of a claim: a feed at every probe size of each dim (``shapes.probe_sizes``: the traced
    size, the range's ends, sizes that are none of these), one dim at a time, leaving out the sizes some feed in
    ``have`` (the sizes of feeds already run) has for that dim."""
    traced = {n: d.example or 2 for n, d in dims.items()}
    probes = []
    for name, dim in dims.items():
        seen = {s.get(name) for s in have}
        for size in probe_sizes(dim):
            if size in seen:
                continue
            seen.add(size)
            sizes = {**traced, name: size}
            probes.append(ProbeFeed(f"{name}={size}", sizes, random_inputs(list(specs), sizes, seed=seed)))
    return probes


# ------------------------------------------------------------------------------------------------ comparing


def cast_like(got: Outputs, ref: Outputs) -> Outputs:
    """Float outputs in the reference's float dtype (an FP16 file's float16 logits are judged by value, not
    flagged as a dtype mismatch)."""
    out = {}
    for name, value in got.items():
        want = ref.get(name)
        value = np.asarray(value)
        if want is not None and value.dtype != np.asarray(want).dtype and \
                value.dtype.kind == np.asarray(want).dtype.kind == "f":
            value = value.astype(np.asarray(want).dtype)
        out[name] = value
    return out


def compare(reference: Outputs, candidate: Outputs, policy: TolerancePolicy | None = None, *,
            tolerances: Mapping[str, Tolerance] | None = None, default: Tolerance | None = None,
            reference_label: str = "PyTorch", cast: bool = False) -> list[OutputComparison]:
    """Every reference output against the candidate's, at ``policy`` (or explicit ``tolerances``/``default``, as
    a caller with a recorded table passes them). ``cast``: float outputs first cast to the reference's dtype."""
    if policy is not None:
        tolerances = {**policy.tolerances(reference), **(tolerances or {})}
        default = default or policy.default()
    got = cast_like(candidate, reference) if cast else candidate
    return compare_outputs(reference, got, tolerances=dict(tolerances or {}), default=default,
                           reference_label=reference_label)


def not_compared(name: str, why: str, tolerance: Tolerance | None = None) -> OutputComparison:
    """A failed comparison for an output that could not be compared at all (missing, not numeric)."""
    return OutputComparison(name, None, None, None, None, tolerance or zero_tolerance(), reason=why)


def compare_value(reference: np.ndarray, got: np.ndarray, tolerance: Tolerance | None) -> OutputComparison:
    """One tensor against one reference tensor (a layer's output in ``localize``)."""
    return compare_outputs({"value": reference}, {"value": got}, default=tolerance)[0]


def same_within(a: Outputs, b: Outputs, *, tolerances=None, default=None) -> list[OutputComparison]:
    """``a`` as reference, ``b`` as candidate: does one input's output pass as another's? (degenerate outputs)."""
    return compare_outputs(a, b, tolerances=tolerances, default=default)


# ------------------------------------------------------------------------------------------------ running


def run_on(runner: Any, feed: Feed) -> Outputs:
    """A runner's outputs on one feed: ``runner.run(feed)`` or ``runner(feed)``."""
    run = getattr(runner, "run", None)
    return dict((run or runner)(feed))


@dataclass
class FeedResult:
    """One feed: every output's comparison, or why it could not be compared."""

    index: int
    label: str
    comparisons: list[OutputComparison] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(c.passed for c in self.comparisons)


@dataclass
class ParityRecord:
    """What one candidate computed against one reference on a set of feeds, at one tolerance policy."""

    reference: str
    candidate: str
    tolerance: str | None  # the policy, stated (None: each output's dtype default)
    tolerance_source: str
    feeds: list[FeedResult]
    outputs: list[Outputs] = field(default_factory=list)  # the candidate's, one dict per feed

    @property
    def passed(self) -> bool:
        return bool(self.feeds) and all(f.passed for f in self.feeds)

    @property
    def comparisons(self) -> list[OutputComparison]:
        return [c for f in self.feeds for c in f.comparisons]

    @property
    def max_abs_err(self) -> float | None:
        errs = [c.max_abs_err for c in self.comparisons if c.max_abs_err is not None]
        return max(errs) if errs else None

    @property
    def worst_output(self) -> str | None:
        worst, name = -1.0, None
        for c in self.comparisons:
            if c.max_abs_err is not None and c.max_abs_err >= worst:
                worst, name = c.max_abs_err, c.name
        return name

    @property
    def max_scaled_err(self) -> float:
        return max((c.max_abs_err / c.scale for c in self.comparisons
                    if c.max_abs_err is not None and c.scale), default=0.0)

    @property
    def tolerance_used(self) -> float:
        """The worst element's |got - ref| over its allowance (atol + rtol |ref|, or against the scale where the
        comparer judged so): <= 1 when it passed, inf for an output that could not be compared."""
        used = 0.0
        for c in self.comparisons:
            if c.tolerance_used is not None:
                used = max(used, c.tolerance_used)
            elif not c.passed and c.max_abs_err is None:
                used = math.inf
        return used

    @property
    def shown_tolerance(self) -> str | None:
        """The tolerance of the first output compared, as printed (what a per-dtype default came to)."""
        return next((str(c.tolerance) for c in self.comparisons), None)

    def failures(self, limit: int | None = None, *, feed_word: str = "feed") -> list[str]:
        found = []
        for f in self.feeds:
            if f.error is not None:
                found.append(f"{feed_word} {f.index}: {f.error}")
            where = f"{feed_word} {f.index}" + (f" ({f.label})" if f.label != f"feed {f.index}" else "")
            found += [f"{c.name} on {where}: {c.reason}" for c in f.comparisons if not c.passed]
        return found[:limit] if limit is not None else found

    def reason(self, limit: int = 3) -> str | None:
        return "; ".join(self.failures(limit)) or None


def check(reference: Any, candidate: Any, feeds: Sequence[Feed], policy: TolerancePolicy | None = None, *,
          reference_label: str = "PyTorch", candidate_label: str = "the candidate", cast: bool = True,
          labels: Sequence[str] | None = None, indices: Sequence[int] | None = None,
          on_error: Callable[[BaseException], str] | None = None) -> ParityRecord:
    """Run ``candidate`` on every feed and judge it against ``reference`` (a runner, or its outputs already
    computed: a list with one dict per feed) at ``policy``. A runner that raises on a feed gives that feed an
    error (``on_error`` words it), never an exception: every feed is judged before the record is made."""
    policy = policy or TolerancePolicy()
    record = ParityRecord(reference_label, candidate_label, policy.describe(), policy.source, [])
    words = on_error or (lambda exc: first_line(exc, 300))
    for i, feed in enumerate(feeds):
        index = indices[i] if indices is not None else i
        result = FeedResult(index, labels[i] if labels is not None else f"feed {index}")
        record.feeds.append(result)
        try:
            ref = reference[i] if isinstance(reference, Sequence) else run_on(reference, feed)
        except Exception as exc:
            result.error = f"the reference fails on this feed: {first_line(exc, 300)}"
            record.outputs.append({})
            continue
        try:
            got = run_on(candidate, feed)
        except Exception as exc:
            result.error = words(exc)
            record.outputs.append({})
            continue
        record.outputs.append(got)
        result.comparisons = compare(ref, got, policy, reference_label=reference_label, cast=cast)
    return record


def max_abs_err(a: Sequence[Outputs], b: Sequence[Outputs]) -> float:
    """Largest absolute difference over every output both have, on every feed (float64, finite elements)."""
    worst = 0.0
    for x, y in zip(a, b):
        for name, ref in x.items():
            if name in y and np.shape(ref) == np.shape(y[name]):
                diff = np.abs(np.asarray(ref, np.float64) - np.asarray(y[name], np.float64))
                finite = diff[np.isfinite(diff)]
                worst = max(worst, float(finite.max()) if finite.size else 0.0)
    return worst
