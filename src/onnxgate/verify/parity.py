"""Parity: does the candidate (ONNX Runtime, OpenVINO) compute what the reference (PyTorch) computes, on several
inputs and at every size each dynamic dim claims?

Torch-free: the reference is any runner (``TorchRunner`` when PyTorch is there, saved outputs in a bundle).
A dim whose outputs disagree only at sizes other than the traced one is reported as frozen at the traced size —
never as a pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..spec import Dim, InputSpec
from ..errors import first_line
from .compare import OutputComparison, Tolerance, check_input_sensitivity, compare_outputs
from .inputs import random_inputs
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

    @property
    def passed(self) -> bool:
        blocking = set(self.frozen) - set(self.allowed_static)
        return not blocking and all(c.passed for c in self.cases if c.dim is None or c.dim not in self.allowed_static)

    @property
    def first_failure(self) -> ShapeCase | None:
        return next((c for c in self.cases if not c.passed), None)

    def summary(self) -> str:
        if self.passed:
            extra = f" ({', '.join(self.allowed_static)} accepted as static)" if self.allowed_static else ""
            return f"parity holds on {len(self.cases)} feeds{extra}"
        if set(self.frozen) - set(self.allowed_static):
            return "; ".join(f"dim {d} is frozen: {why}" for d, why in self.frozen.items() if d not in self.allowed_static)
        case = self.first_failure
        bad = [c for c in case.comparisons if not c.passed]
        what = case.error or "; ".join(f"{c.name}: {c.reason}" for c in bad)
        return f"{case.label} ({case.source}): {what}"

    def to_dict(self) -> dict:
        return {"passed": self.passed, "summary": self.summary(), "reference": self.reference,
                "candidate": self.candidate, "frozen": self.frozen, "allowed_static": self.allowed_static,
                "static_in_graph": self.static_in_graph, "insensitive_outputs": self.insensitive_outputs,
                "cases": [c.to_dict() for c in self.cases]}


def _run_case(case: ShapeCase, feed, reference, candidate, tolerances, default) -> dict[str, np.ndarray] | None:
    try:
        ref = reference.run(feed)
    except Exception as exc:
        case.error = f"the reference fails on this feed: {first_line(exc, 300)}"
        return None
    try:
        got = candidate.run(feed)
    except Exception as exc:
        case.error = f"{candidate.name} fails: {first_line(exc, 300)}"
        return ref
    # Candidate outputs line up with the reference by position: the exporter named them from the same flattening.
    got = dict(zip(ref, got.values())) if set(got) != set(ref) and len(got) == len(ref) else got
    case.comparisons = compare_outputs(ref, got, tolerances=tolerances, default=default)
    return ref


def verify_parity(reference, candidate, specs: list[InputSpec], dims: dict[str, Dim], *,
                  seeds: tuple[int, ...] = (0, 1), data: list[dict[str, np.ndarray]] | None = None,
                  tolerances: dict[str, Tolerance] | None = None, default: Tolerance | None = None,
                  allow_static: tuple[str, ...] = (),
                  quick: bool = False, static_in_graph: dict[str, str] | None = None) -> ParityReport:
    """Compare ``candidate`` with ``reference`` on random feeds at the traced sizes (one per seed), on every
    ``data`` feed, and — per dynamic dim, one dim at a time — at each probe size (``quick``: one off-trace size).
    """
    traced = {n: d.example or 2 for n, d in dims.items()}
    cases: list[ShapeCase] = []
    refs = []
    for seed in seeds:
        case = ShapeCase("traced", dict(traced), f"random(seed={seed})")
        refs.append(_run_case(case, random_inputs(specs, traced, seed=seed), reference, candidate, tolerances, default))
        cases.append(case)
    for i, feed in enumerate(data or []):
        case = ShapeCase(f"data[{i}]", _sizes_of(feed, specs), "data")
        _run_case(case, feed, reference, candidate, tolerances, default)
        cases.append(case)
    insensitive = check_input_sensitivity(refs[0], refs[1]) if len(refs) > 1 and all(r is not None for r in refs) else []

    frozen = dict(static_in_graph or {})
    traced_ok = all(c.passed for c in cases)
    for name, dim in dims.items():
        sizes_to_try = ([first_off_trace_size(dim)] if quick else probe_sizes(dim)[1:])
        for size in [s for s in sizes_to_try if s is not None]:
            sizes = {**traced, name: size}
            case = ShapeCase(f"{name}={size}", sizes, f"random(seed={seeds[0] + 100})", dim=name)
            ref = _run_case(case, random_inputs(specs, sizes, seed=seeds[0] + 100), reference, candidate, tolerances,
                            default)
            cases.append(case)
            if not case.passed and traced_ok and name not in frozen:
                if case.error and case.error.startswith("the reference fails"):
                    continue  # PyTorch itself rejects this size: not the export's fault
                bad = [c for c in case.comparisons if not c.passed]
                why = (f"no output computed ({', '.join(repr(n) for n in ref or [])}): {case.error}" if case.error
                       else f"output '{bad[0].name}': {bad[0].reason}")
                frozen[name] = f"traced at {dim.example}, wrong at {name}={size} ({why})"
    # A size the reference itself cannot run is no evidence either way.
    cases = [c for c in cases if not (c.dim and c.error and c.error.startswith("the reference fails"))]
    return ParityReport(reference.name, candidate.name, cases, frozen, list(allow_static), insensitive,
                        dict(static_in_graph or {}))


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
