"""Parity: does the candidate (ONNX Runtime, OpenVINO) compute what the reference (PyTorch) computes, on several
inputs and at every size each dynamic dim claims?

Torch-free: the reference is any runner (``TorchRunner`` when PyTorch is there, saved outputs in a bundle).
A dim whose outputs disagree at every size but the traced one is reported as frozen at the traced size — never as
a pass. A dim that works on part of its declared range (or only at multiples of a stride) gets a verified domain
(``domain.py``) narrower than the declaration, which fails unless accepted (``accept_domain``); sizes where
PyTorch itself fails narrow it too, and are named; for a dim declared without a range they only bound it (its
domain is where the reference runs: the edge and PyTorch's error are claimed, not failed). A reference whose
outputs cannot tell a wrong candidate from the right one (tied scores, constant outputs) is "not verifiable with
these weights", never a pass.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Any

import numpy as np

from ..spec import Dim, InputSpec
from ..errors import first_line
from . import engine
from .compare import OutputComparison, check_input_sensitivity, indiscriminate_reason
from .engine import TolerancePolicy
from .tolerance import Tolerance
from .domain import DimDomain, DomainBudget, ProbeOutcome, discover
from .inputs import random_inputs, variant_feeds
from .shapes import first_off_trace_size, probe_sizes


@dataclass
class ShapeCase:
    """One feed: which sizes, where the data came from, and the per-output comparisons."""

    label: str  # "traced", "B=3", "data[0]"
    sizes: dict[str, int]
    source: str  # "random(seed=0)", "data"
    comparisons: list[OutputComparison] = field(default_factory=list)
    error: str | None = None  # a runner failed: the case could not be compared
    dim: str | None = None  # the dim this case probes, when it probes one

    @property
    def passed(self) -> bool:
        return self.error is None and all(c.passed for c in self.comparisons)

    def to_dict(self) -> dict:
        return {"label": self.label, "sizes": self.sizes, "source": self.source, "dim": self.dim,
                "passed": self.passed, "error": self.error, "outputs": [c.to_dict() for c in self.comparisons]}


@dataclass
class ParityReport:
    reference: str
    candidate: str
    cases: list[ShapeCase]
    frozen: dict[str, str]  # dim -> what goes wrong away from the traced size
    allowed_static: list[str]
    insensitive_outputs: list[str]  # reference outputs that do not depend on the input
    static_in_graph: dict[str, str] = field(default_factory=dict)
    # The verified shape domain of every dynamic dim (full verification only; the ladder's quick check has none).
    domains: dict[str, DimDomain] = field(default_factory=dict)
    accept_domain: bool = False  # a domain narrower than declared passes, and is what the model claims
    # Outputs whose comparison cannot fail with these weights (tied scores, constant outputs, vanished
    # activations): output -> why. A report with any is "not verifiable", never a pass.
    degenerate: dict[str, str] = field(default_factory=dict)
    # Where PyTorch's own path parts between a feed that agrees and one that fails (verify.api._value_branch): the
    # value-dependent branch a graph holds one side of. None when not looked for or not found.
    branch: str | None = None
    # The judgment at the model's own float32 noise on the traced feeds (``noise.NoiseVerdict``; issue 28), when
    # no tolerance was given: a report whose noise verdict fails does not pass, whatever its cases say.
    noise: Any = None

    @property
    def narrowed(self) -> list[DimDomain]:
        """Domains narrower than declared (dims frozen or accepted as static are reported as such instead)."""
        return [d for n, d in self.domains.items()
                if d.narrower and n not in self.frozen and n not in self.allowed_static]

    @property
    def passed(self) -> bool:
        blocking = set(self.frozen) - set(self.allowed_static)
        if blocking or self.degenerate or (self.narrowed and not self.accept_domain):
            return False
        if self.noise is not None and not self.noise.passed:
            return False
        return all(c.passed or self._excused(c) for c in self.cases)

    def _excused(self, case: ShapeCase) -> bool:
        """A failing probe that does not count: a dim accepted as static, or a size outside an accepted domain."""
        if case.dim is None:
            return False
        if case.dim in self.allowed_static:
            return True
        domain = self.domains.get(case.dim)
        if domain is None or domain.contains(case.sizes[case.dim]):
            return False
        # Accepted narrower; or a dim declared without a range, at a size beyond an edge PyTorch itself sets.
        return self.accept_domain or (bool(domain.reference_edges()) and not domain.narrower)

    @property
    def first_failure(self) -> ShapeCase | None:
        """The first failing feed the candidate is to blame for (not a size PyTorch itself rejects)."""
        return next((c for c in self.cases if not c.passed and not self._excused(c) and not _reference_failed(c)),
                    None)

    def claimed_dims(self, dims: dict[str, Dim]) -> dict[str, Dim]:
        """What the model may claim: the declared dims, with each accepted narrower domain, and each domain a dim
        without a range has where PyTorch runs, in place of its dim."""
        return {n: (self.domains[n].as_dim() if n in self.domains and n not in self.frozen
                    and self._claims_verified(self.domains[n]) else d) for n, d in dims.items()}

    def _claims_verified(self, domain: DimDomain) -> bool:
        """The verified domain replaces the declared dim: accepted narrower, or a dim declared without a range
        whose edges PyTorch itself sets (it claims where the reference runs, never the sizes it rejects)."""
        if domain.narrower:
            return self.accept_domain
        return bool(domain.reference_edges())

    def summary(self) -> str:
        if self.passed:
            extra = f" ({', '.join(self.allowed_static)} accepted as static)" if self.allowed_static else ""
            accepted = [d for d in self.narrowed if self.accept_domain]
            if accepted:
                extra += "; verified domain accepted: " + "; ".join(d.summary() for d in accepted)
            edged = [d for n, d in self.domains.items() if n not in self.frozen and not d.narrower
                     and d.reference_edges()]
            if edged:
                extra += "; where PyTorch runs: " + "; ".join(d.summary() for d in edged)
            if self.noise is not None:
                extra += f"; {self.noise.summary()}"
            return f"parity holds on {len(self.cases)} feeds{extra}"
        if set(self.frozen) - set(self.allowed_static):
            return "; ".join(f"dim {d} is frozen: {why}" for d, why in self.frozen.items() if d not in self.allowed_static)
        parts = []
        case = self.first_failure
        if case is not None and (case.dim is None or case.dim not in self.domains):
            bad = [c for c in case.comparisons if not c.passed]
            what = case.error or "; ".join(f"{c.name}: {c.reason}" for c in bad)
            parts.append(f"{case.label} ({case.source}): {what}")
        if self.narrowed and not self.accept_domain:
            parts.append("verified on less than the declared shape domain: "
                         + "; ".join(d.summary() for d in self.narrowed))
        if self.degenerate:
            parts.append(degenerate_summary(self.degenerate))
        if self.noise is not None and not self.noise.passed:
            parts.append(f"at the model's own float32 noise ({len(self.noise.record.feeds)} traced feeds): "
                         f"{self.noise.reason()}")
        if self.branch:
            parts.append(self.branch)
        return "; ".join(parts) or "parity failed"

    def to_dict(self) -> dict:
        return {"passed": self.passed, "summary": self.summary(), "reference": self.reference,
                "candidate": self.candidate, "frozen": self.frozen, "allowed_static": self.allowed_static,
                "static_in_graph": self.static_in_graph, "insensitive_outputs": self.insensitive_outputs,
                "domains": {n: d.to_dict() for n, d in self.domains.items()}, "accept_domain": self.accept_domain,
                "degenerate": self.degenerate, "branch": self.branch, "cases": [c.to_dict() for c in self.cases],
                "noise": self.noise.to_dict() if self.noise is not None else None}


NOT_VERIFIABLE = "not verifiable with these weights"
DEGENERATE_HINT = ("Re-initialize all-zero weights with --reinit-degenerate, load real weights (--weights, or a "
                   "checkpoint in the model's code), or verify on real data (--data) whose outputs differ.")
DEGENERATE_AFTER_REINIT_HINT = (
    "--reinit-degenerate is already on (its all-zero weights were re-initialized), and the outputs stay degenerate "
    "with these random weights: load real weights (--weights, or a checkpoint in the model's code), or verify on "
    "real data (--data) whose outputs differ.")


def degenerate_hint(reinit: bool = False) -> str:
    """The way out of a degenerate reference; with ``--reinit-degenerate`` already on, it is not suggested again
    (issue 27 item 7: the zoo's ShuffleNet, which sets it, was told to pass it)."""
    return DEGENERATE_AFTER_REINIT_HINT if reinit else DEGENERATE_HINT


def degenerate_summary(degenerate: dict[str, str]) -> str:
    return f"{NOT_VERIFIABLE}: " + "; ".join(f"output '{n}': {why}" for n, why in degenerate.items())


def _reference_failed(case: ShapeCase) -> bool:
    return bool(case.error and case.error.startswith("the reference fails"))


def _run_case(case: ShapeCase, feed, reference, candidate, policy: TolerancePolicy) -> dict[str, np.ndarray] | None:
    try:
        ref = reference.run(feed)
    except Exception as exc:
        case.error = f"the reference fails on this feed: {first_line(exc, 300)}"
        return None
    try:
        got = candidate.run(feed)
    except Exception as exc:
        case.error = f"{candidate.name} fails: {_tidy(first_line(exc, 4000))[:300]}"
        return ref
    # Candidate outputs line up with the reference by position: the exporter named them from the same flattening.
    got = dict(zip(ref, got.values())) if set(got) != set(ref) and len(got) == len(ref) else got
    case.comparisons = engine.compare(ref, got, policy)
    return ref


def verify_parity(reference, candidate, specs: list[InputSpec], dims: dict[str, Dim], *,
                  seeds: tuple[int, ...] = (0, 1), data: list[dict[str, np.ndarray]] | None = None,
                  tolerances: dict[str, Tolerance] | None = None, default: Tolerance | None = None,
                  policy: TolerancePolicy | None = None,
                  allow_static: tuple[str, ...] = (),
                  quick: bool = False, static_in_graph: dict[str, str] | None = None,
                  accept_domain: bool = False, granularities: tuple[int, ...] = (),
                  budget: DomainBudget | None = None, probes: list[tuple[str, dict[str, np.ndarray]]] | None = None,
                  variants: bool = False) -> ParityReport:
    """Compare ``candidate`` with ``reference`` on random feeds at the traced sizes (one per seed), on every
    ``data`` feed, and — per dynamic dim, one dim at a time — at each probe size.

    ``quick`` (the export ladder): one off-trace size per dim, a failure there freezes the dim. Otherwise the
    shape domain of every dim is discovered (``domain.discover``: range ends, off-trace sizes, sizes of different
    divisibility incl. the graph's ``granularities``, seeded draws, bisection of the ends, within ``budget``), and
    the reference's own outputs are checked for being able to tell a wrong candidate at all (``degenerate``).
    Each feed runs once here; a caller judging several candidates against one reference wraps it in a
    ``ReferenceRuns`` it owns (one verification over its runtimes, one deploy over its artifacts).

    Tolerances: ``policy`` (the engine's ``TolerancePolicy``), with ``tolerances`` (per output) and ``default``
    layered on top as recorded per-output tolerances and an override.

    ``probes``: labelled feeds built to send value-dependent decisions the other way (the export ladder's, from the
    example inputs); ``variants``: the sign and scale variants of the first seed's feed (``inputs.variant_feeds``:
    all-negative, all-positive, zeros, x10, x0.01) at the traced sizes. Both count like the traced feeds.
    """
    policy = replace(policy or TolerancePolicy(), fixed={**((policy and policy.fixed) or {}), **(tolerances or {})},
                     override=default or (policy.override if policy else None))
    traced = {n: d.example or 2 for n, d in dims.items()}
    cases: list[ShapeCase] = []
    refs = []
    for seed in seeds:
        case = ShapeCase("traced", dict(traced), f"random(seed={seed})")
        refs.append(_run_case(case, random_inputs(specs, traced, seed=seed), reference, candidate, policy))
        cases.append(case)
    data_refs = []
    for i, feed in enumerate(data or []):
        case = ShapeCase(f"data[{i}]", _sizes_of(feed, specs), "data")
        data_refs.append(_run_case(case, feed, reference, candidate, policy))
        cases.append(case)
    labelled = list(probes or [])
    if variants:
        seed = seeds[0] if seeds else 0
        labelled += [(label, feed, f"variant of random(seed={seed})")
                     for label, feed in variant_feeds(specs, traced, seed=seed)]
    for label, feed, *source in labelled:
        case = ShapeCase(label, _sizes_of(feed, specs), source[0] if source else "probe")
        _run_case(case, feed, reference, candidate, policy)
        cases.append(case)
    insensitive = check_input_sensitivity(refs[0], refs[1]) if len(refs) > 1 and all(r is not None for r in refs) else []
    run = _Runs(reference, candidate, specs, traced, policy, seed=(seeds[0] if seeds else 0) + 100,
                cases=cases)
    frozen = dict(static_in_graph or {})
    traced_ok = all(c.passed for c in cases)
    domains: dict[str, DimDomain] = {}
    axis0 = {n for s in specs for a, n in s.dynamic_axes.items() if a == 0}
    for name, dim in dims.items():
        if quick or not traced_ok or name in frozen:
            _probe_fixed(run, name, dim, quick=quick, judge=traced_ok, frozen=frozen)
            continue
        domain = discover(dim, lambda size, name=name: run.probe(name, size), required=probe_sizes(dim)[1:],
                          granularities=granularities, budget=budget, spatial=name not in axis0)
        domains[name] = domain
        if domain.only_traced and any(f.by != "pytorch" for f in domain.failures):
            frozen[name] = run.frozen_reason(name, dim, domain)
    if quick:  # the ladder's quick check judges the export, not the model: a size PyTorch rejects is no evidence
        cases[:] = [c for c in cases if not (c.dim and _reference_failed(c))]
    degenerate = {} if quick or not traced_ok else degenerate_outputs(refs, data_refs, policy=policy)
    return ParityReport(reference.name, candidate.name, cases, frozen, list(allow_static), insensitive,
                        dict(static_in_graph or {}), domains, accept_domain, degenerate)


class ReferenceRuns:
    """A reference runner that runs each feed once for as long as its owner keeps it: one verification judging
    several runtimes, one deploy judging several artifacts, one export judging its rungs (PyTorch, on ``Prepared``)
    and its winner's quick check and proof (the winner's onnxruntime outputs). The outputs (or the reference's
    failure, which is a result too) are kept by a digest of the feed's bytes, at most ``max_bytes`` of them (least
    recently used go first). Owned by its caller and dropped with it, never module-global (issue 24): the weights do
    not change while it lives, so they are no part of the key. Same ``run``/``name`` as the runner it wraps.

    ``runner`` may be a factory (``opens``: a callable returning the runner, and ``name``): it is opened at the first
    feed not kept, and ``release()`` closes it while keeping the outputs, so no onnxruntime session and its threads
    live across a fork between two uses (the export ladder forks its next attempt worker)."""

    MAX_BYTES = 256 * 2**20

    def __init__(self, runner=None, max_bytes: int = MAX_BYTES, *, opens=None, name: str | None = None):
        self.runner, self.opens, self.max_bytes = runner, opens, max_bytes
        self.name = name or getattr(runner, "name", "reference")
        self.runs = 0  # feeds the wrapped runner actually ran
        self._kept: OrderedDict[str, tuple[dict[str, np.ndarray] | None, Exception | None, int]] = OrderedDict()
        self._bytes = 0

    def __getattr__(self, item: str):
        if item in ("runner", "opens"):  # not set yet (a copy being built): no recursion through self.runner
            raise AttributeError(item)
        return getattr(self._open(), item)

    def _open(self):
        if self.runner is None:
            self.runner = self.opens()
        return self.runner

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        key = feed_digest(feed)
        if key in self._kept:
            self._kept.move_to_end(key)
            outputs, error, _ = self._kept[key]
            if error is not None:
                raise _fresh(error)
            return {k: v.copy() for k, v in outputs.items()}
        runner = self._open()
        self.runs += 1
        try:
            outputs, error = runner.run(feed), None
        except Exception as exc:  # noqa: BLE001  the reference failing at this feed is a result too
            outputs, error = None, exc
        self._keep(key, outputs, error)
        if error is not None:
            raise error
        return outputs

    def release(self) -> None:
        """Close the runner it wraps (an onnxruntime session and its threads), keep the outputs; a later feed not
        kept opens it again (``opens``). A runner given without ``opens`` is closed for good."""
        closer = getattr(self.runner, "__exit__", None) if self.runner is not None else None
        if closer is not None:
            closer(None, None, None)
        if self.opens is not None:
            self.runner = None

    def close(self) -> None:
        """Drop what it kept and close the runner it wraps (``release``)."""
        self._kept.clear()
        self._bytes = 0
        self.release()

    def _keep(self, key: str, outputs: dict[str, np.ndarray] | None, error: Exception | None) -> None:
        size = sum(np.asarray(v).nbytes for v in (outputs or {}).values())
        if size > self.max_bytes // 4:
            return
        kept = {k: np.array(v, copy=True) for k, v in outputs.items()} if outputs is not None else None
        if error is not None:  # a kept traceback would keep the failed forward pass's frames (and tensors) alive
            error = _fresh(error)
        self._kept[key] = (kept, error, size)
        self._bytes += size
        while self._bytes > self.max_bytes and self._kept:
            self._bytes -= self._kept.popitem(last=False)[1][2]


def _fresh(error: Exception) -> Exception:
    """A copy of a kept reference failure, without traceback or chained exceptions, to raise again. Raising the kept
    object itself would attach the raising frames to it (``__traceback__``) — the verification's runners among their
    locals — and, the kept error living as long as its ReferenceRuns, keep an onnxruntime session and its thread
    pool alive across the export ladder's next fork, where the forked worker can deadlock on a lock one of those
    threads held (seen: an attempt worker stuck importing a module)."""
    import copy

    try:
        fresh = copy.copy(error)
    except Exception:  # noqa: BLE001  an exception type that cannot be copied: the same words, a plain error
        fresh = RuntimeError(str(error))
    fresh.__traceback__ = fresh.__context__ = fresh.__cause__ = None
    return fresh


def feed_digest(feed: dict[str, np.ndarray]) -> str:
    """A digest of a feed's names, dtypes, shapes and bytes: which feed this is, whatever arrays hold it."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(feed):
        arr = np.ascontiguousarray(feed[name])
        h.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(arr.view(np.uint8).reshape(-1) if arr.size else b"")
    return h.hexdigest()


class _Runs:
    """Runs one dim at one size (the other dims traced) as a ShapeCase appended to ``cases``."""

    def __init__(self, reference, candidate, specs, traced, policy, *, seed: int, cases: list):
        self.reference, self.candidate, self.specs, self.traced = reference, candidate, specs, traced
        self.policy, self.seed, self.cases = policy, seed, cases
        self.outputs: dict[str, list] = {}

    def case(self, name: str, size: int) -> ShapeCase:
        sizes = {**self.traced, name: size}
        case = ShapeCase(f"{name}={size}", sizes, f"random(seed={self.seed})", dim=name)
        ref = _run_case(case, random_inputs(self.specs, sizes, seed=self.seed), self.reference, self.candidate,
                        self.policy)
        self.outputs[case.label] = list(ref or [])
        self.cases.append(case)
        return case

    def probe(self, name: str, size: int) -> ProbeOutcome:
        case = self.case(name, size)
        if case.passed:
            return ProbeOutcome(True)
        if _reference_failed(case):
            return ProbeOutcome(False, "pytorch", case.error.removeprefix("the reference fails on this feed: "))
        return ProbeOutcome(False, self.candidate.name, self.why(case))

    def why(self, case: ShapeCase) -> str:
        if case.error:
            return case.error.removeprefix(f"{self.candidate.name} fails: ")
        bad = [c for c in case.comparisons if not c.passed]
        return f"output '{bad[0].name}': {bad[0].reason}"

    def frozen_reason(self, name: str, dim: Dim, domain: DimDomain) -> str:
        failure = next(f for f in domain.failures if f.by != "pytorch")
        label = f"{name}={failure.size}"
        case = next(c for c in self.cases if c.label == label)
        why = (f"no output computed ({', '.join(repr(n) for n in self.outputs.get(label, []))}): {case.error}"
               if case.error else self.why(case))
        return f"traced at {dim.example}, wrong at {label} ({why})"


_RUNTIME_NOISE = (re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Non-zero status code returned while running )?"),
                  re.compile(r"/onnxruntime_src/\S+:\d+ (\S+::)+\S+\([^)]*\)( const)? "))


def _tidy(error: str) -> str:
    """An onnxruntime error without its boilerplate and source locations: "Reshape node. Name:'node_view_7' Status
    Message: input_shape_size == requested_shape_size was false. ..." (the node is what a user needs)."""
    for pattern in _RUNTIME_NOISE:
        error = pattern.sub("", error)
    return error


def _probe_fixed(run: _Runs, name: str, dim: Dim, *, quick: bool, judge: bool, frozen: dict[str, str]) -> None:
    """The fixed probes (quick: one off-trace size; else every probe size): the first failure freezes the dim."""
    sizes = [first_off_trace_size(dim)] if quick else probe_sizes(dim)[1:]
    for size in [s for s in sizes if s is not None]:
        case = run.case(name, size)
        if not case.passed and judge and name not in frozen and not _reference_failed(case):
            label = case.label
            why = (f"no output computed ({', '.join(repr(n) for n in run.outputs.get(label, []))}): {case.error}"
                   if case.error else run.why(case))
            frozen[name] = f"traced at {dim.example}, wrong at {label} ({why})"


def degenerate_outputs(refs: list, data_refs: list, tolerances: dict[str, Tolerance] | None = None,
                       default: Tolerance | None = None, *, policy: TolerancePolicy | None = None) -> dict[str, str]:
    """Outputs whose comparison cannot fail: the reference's output for one input passes as the output for
    *another* input, in every pair of feeds available (two random seeds at the traced sizes; consecutive real
    data feeds of one shape). A candidate that ignored its input, or returned arbitrary boxes among tied scores,
    would pass them: such a comparison proves nothing about the graph."""
    pairs = [(a, b) for a, b in pairwise(refs) if a is not None and b is not None]
    pairs += [(a, b) for a, b in pairwise(data_refs) if a is not None and b is not None
              and all(np.shape(a[k]) == np.shape(b.get(k)) for k in a)]
    if not pairs:
        return {}
    policy = policy or TolerancePolicy(fixed=tolerances, override=default)
    found: dict[str, str] | None = None
    for a, b in pairs:
        unable = {c.name: indiscriminate_reason(c, np.asarray(a[c.name]))
                  for c in engine.compare(a, b, policy) if c.passed}
        found = unable if found is None else {n: why for n, why in found.items() if n in unable}
    return found or {}


def _sizes_of(feed: dict[str, np.ndarray], specs: list[InputSpec]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for spec in specs:
        if spec.name in feed:
            for axis, name in spec.dynamic_axes.items():
                sizes.setdefault(name, int(feed[spec.name].shape[axis]))
    return sizes


def static_dims_in_graph(specs: list[InputSpec], graph_inputs: dict[str, list]) -> dict[str, str]:
    """Dims declared dynamic that the exported graph fixed to a number (the dynamo exporter specializes a dim it
    cannot keep symbolic, with only a warning)."""
    found = {}
    for spec in specs:
        shape = graph_inputs.get(spec.name, [])
        for axis, name in spec.dynamic_axes.items():
            if axis < len(shape) and isinstance(shape[axis], int):
                found[name] = f"the graph input '{spec.name}' has the static size {shape[axis]} at axis {axis}"
    return found
