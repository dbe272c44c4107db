"""Verify one deployed artifact through the same parity machinery as the ONNX file (``verify/parity.py``).

The reference is the PyTorch model (``TorchRunner``, each feed run once per deploy: the ``Context`` owns a
``parity.ReferenceRuns`` that every artifact's verification shares) or, for a bundle without PyTorch, the bundle's golden outputs
on its golden inputs (``GoldenReference``: that one feed only, and it says so). A target that keeps the ONNX file's
dynamic dims is verified over the model's claimed shape domain (``domain.discover`` probes it, as for the ONNX
file); a static one (TFLite) at the traced sizes it was built for, with real-data feeds cut to its batch size.
Tolerances follow the precision the artifact computes in (``contract.runtime_tolerance``: FP32 -> verify's own
defaults; FP16/BF16 -> a reduced-precision tolerance tied to each output's scale).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..spec import Dim, InputSpec
from ..verify import engine
from ..verify.engine import TolerancePolicy
from ..verify.parity import ReferenceRuns, feed_digest, verify_parity
from .model import FAILED, NOT_CONVERTED, PASSED, DeployedArtifact

MAX_DATA_ROWS = 64  # real-data rows a static (batch-fixed) artifact is fed, one batch at a time


@dataclass
class Context:
    """What every converter and the verification share for one deploy."""

    onnx_path: Path
    out_dir: Path  # the targets folder
    specs: list[InputSpec]
    dims: dict[str, Dim]  # the claimed (verified) shape domain of the ONNX file
    reference: Any  # a runner: PyTorch, or the golden outputs
    data: list[dict[str, np.ndarray]] | None = None
    loaded: Any = None  # the LoadedModel (PyTorch) when there is one
    golden: dict[str, np.ndarray] | None = None  # a bundle's golden inputs (no PyTorch): the only feed
    note: Callable[[str], None] = lambda _m: None
    measure_latency: bool = True
    _traced_outputs: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # this deploy's reference outputs, per feed: every artifact is judged against the same ones, computed once
        if not isinstance(self.reference, ReferenceRuns):
            self.reference = ReferenceRuns(self.reference)

    @property
    def traced(self) -> dict[str, int]:
        return {n: d.example or 2 for n, d in self.dims.items()}

    def traced_feed(self) -> dict[str, np.ndarray]:
        from ..verify.inputs import random_inputs

        return dict(self.golden) if self.golden is not None else random_inputs(self.specs, self.traced, seed=0)

    def traced_outputs(self) -> dict[str, np.ndarray]:
        """The reference's outputs on the seed-0 feed at the traced sizes (the first feed parity runs)."""
        if self._traced_outputs is None:
            self._traced_outputs = self.reference.run(self.traced_feed())
        return self._traced_outputs

    def static_specs(self, keep: set[str] | frozenset[str] = frozenset()) -> list[InputSpec]:
        """The input specs with every dynamic dim but ``keep`` fixed at its traced size."""
        sizes = self.traced
        return [replace(s, shape=tuple(sizes[d] if isinstance(d, str) and d not in keep else d for d in s.shape))
                for s in self.specs]


@dataclass
class Built:
    """An artifact a converter wrote, and how to run it."""

    variant: str
    files: list[Path]
    precision: str  # the precision it is judged at: fp32 | fp16 | bf16
    precision_text: str
    runtime: str
    open: Callable[[], Any]  # -> a runner
    dynamic: set[str] | None = None  # the dims it keeps dynamic (None: all of the ONNX file's); the rest are
    layout: str | None = None        # fixed at their traced sizes, and verified there
    fallback: "Built | None" = None  # another way to run it, verified when this one fails (the report says both)


class GoldenReference:
    """A bundle's reference outputs as a runner: the golden inputs give them; any other feed is not known."""

    name = "golden outputs"

    def __init__(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]):
        self._digest, self._outputs = feed_digest(inputs), outputs
        self.input_names, self.output_names = list(inputs), list(outputs)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if feed_digest(feed) != self._digest:
            raise ValueError("only the bundle's golden inputs have reference outputs")
        return {k: v.copy() for k, v in self._outputs.items()}


def total_bytes(files: list[Path]) -> int:
    return sum(f.stat().st_size if f.is_file() else sum(p.stat().st_size for p in f.rglob("*") if p.is_file())
               for f in files)


def verify_built(built: Built, ctx: Context, target: str) -> DeployedArtifact:
    """Run ``built`` on its runtime against the reference, at every shape it claims; the row for the report."""
    from ..errors import OnnxgateError

    start = time.perf_counter()
    row = DeployedArtifact(target, built.variant, FAILED, [_rel(f, ctx.out_dir) for f in built.files],
                           total_bytes(built.files), built.precision_text, built.runtime, layout=built.layout)
    try:
        runner = built.open()
    except OnnxgateError as exc:
        row.status, row.reason = NOT_CONVERTED, exc.message
        return row
    keep = set(ctx.dims) if built.dynamic is None else set(built.dynamic) & set(ctx.dims)
    specs, dims = ctx.static_specs(keep), {n: d for n, d in ctx.dims.items() if n in keep}
    row.shapes = _shapes(specs, dims)
    if ctx.golden is not None:  # one feed: what was verified is the traced sizes, whatever the artifact keeps
        row.shapes = _shapes(ctx.static_specs(), {}) + " (golden feed only" + (
            f"; {', '.join(dims)} kept dynamic, not probed)" if dims else ")")
    policy = _policy(built.precision, ctx)
    if policy.rule is not None:
        first = next(iter(policy.tolerances(ctx.traced_outputs()).values()), None)
        row.tolerance = f"{built.precision}: {first} (tied to each output's scale)"
    seeds, data = ((), [ctx.golden]) if ctx.golden is not None else ((0, 1), _fit(ctx.data, specs, bool(dims)))
    with runner:
        report = verify_parity(ctx.reference, runner, specs, {} if ctx.golden is not None else dims, seeds=seeds,
                               data=data, policy=policy)
        if ctx.measure_latency and report.passed:
            row.latency_ms = _latency(runner, ctx.traced_feed())
    _fill(row, report, target)
    row.seconds = round(time.perf_counter() - start, 2)
    return row


def _fill(row: DeployedArtifact, report, target: str) -> None:
    comps = [c for case in report.cases for c in case.comparisons]
    errs = [c.max_abs_err for c in comps if c.max_abs_err is not None]
    used = [c.tolerance_used for c in comps if c.tolerance_used is not None]
    row.max_abs_err = max(errs) if errs else None
    row.tolerance_used = max(used) if used else None
    row.feeds = len(report.cases)
    data_cases = [c for c in report.cases if c.source == "data"]
    row.top1_agreement, row.top1_on = _top1(data_cases, "real data") if data_cases else (None, None)
    if row.top1_agreement is None:
        row.top1_agreement, row.top1_on = _top1(report.cases, "random feeds")
    row.parity = report.to_dict()
    for case in row.parity["cases"]:  # the per-feed histograms are kept in the ONNX file's verification only
        for out in case["outputs"]:
            out.pop("error_histogram", None)
    row.status = PASSED if report.passed else FAILED
    row.reason = (f"parity holds on {row.feeds} feeds" if report.passed
                  else f"differs from {report.reference}: {report.summary()}")


def _top1(cases, source: str) -> tuple[float | None, str | None]:
    rows = agree = 0.0
    for case in cases:
        for c in case.comparisons:
            if c.top1_agreement is not None and c.shape_ref:
                rows += c.shape_ref[0]
                agree += c.top1_agreement * c.shape_ref[0]
    return (agree / rows, f"{source} ({int(rows)} rows)") if rows else (None, None)


def _policy(precision: str, ctx: Context) -> TolerancePolicy:
    """The engine's policy for an artifact computing in ``precision``: FP32 gets exactly what ``verify`` uses;
    FP16/BF16 a reduced-precision tolerance tied to the scale of each traced reference output."""
    policy = TolerancePolicy.for_runtime(precision)
    if policy.rule is None:
        return policy
    return TolerancePolicy.for_runtime(precision, scales=engine.output_scales([ctx.traced_outputs()]))


def _fit(data, specs: list[InputSpec], dynamic: bool):
    """Real-data feeds for an artifact: as they are for one with dynamic dims; for a static one, cut along axis 0
    into feeds of its batch size (up to MAX_DATA_ROWS rows); feeds of another shape are left out."""
    if not data or dynamic:
        return data
    fitted, rows = [], 0
    for feed in data:
        shapes = {s.name: tuple(s.shape) for s in specs}
        if any(n not in feed for n in shapes):
            continue
        batch = {s.name: s.shape[0] for s in specs if len(s.shape)}
        n = len(next(iter(feed.values())))
        step = next(iter(batch.values()), n)
        if any(np.asarray(feed[k]).shape[1:] != shapes[k][1:] for k in shapes) or not step or n % step:
            continue
        for i in range(0, n, step):
            if rows >= MAX_DATA_ROWS:
                return fitted
            fitted.append({k: np.asarray(v)[i:i + step] for k, v in feed.items()})
            rows += step
    return fitted


def _latency(runner, feed: dict[str, np.ndarray]) -> float:
    from ..bench.harness import measure

    return round(measure(lambda: runner.run(feed), warmup_runs=2, runs=20, seconds=1.5).p50_ms, 3)


def _shapes(specs: list[InputSpec], dims: dict[str, Dim]) -> str:
    text = ", ".join(f"{s.name} {'x'.join(map(str, s.shape))}" for s in specs)
    if dims:
        return text + " with " + ", ".join((f"{n} {d.min}..{d.max}" if d.max is not None else f"{n} >= {d.min}")
                                           + (f"%{d.multiple_of}" if d.multiple_of else "") for n, d in dims.items())
    return "static: " + text


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


class Skipped(Exception):
    """A target that cannot be built or run here (no CUDA device, no PyTorch for Core ML): its reason."""
