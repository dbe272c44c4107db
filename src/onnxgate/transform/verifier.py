"""The fixed feeds every step of a transform run is verified on, judged by the verification engine.

Verification runs onnxruntime with graph optimizations off (``VERIFY_OPT_LEVEL``): the graph is judged as written,
not as onnxruntime would repair it. Feeds are cast to each model's input types (an FP16 model without float32 I/O
gets float16 feeds) and outputs back to the baseline's dtype before comparing (``verify/engine.py``), so a precision
change is judged by its values, not flagged as a dtype mismatch.

A transform produces a claim for its artifact, never inherits one unchecked: the feeds cover every probe size of
every dim the input model's claim records (``claim_probes``; ``shapes.probe_sizes``: the range's ends, the traced
size and sizes that are none of these), so a pass that breaks the model at any size the claim was proven at is
rolled back, and the claim the transformed file keeps is the one re-verified on those sizes (``ClaimCheck``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from .. import claim as claim_codec
from ..errors import RuntimeIncompatibleError, first_line
from ..runtimes.ort import VERIFY_OPT_LEVEL, OrtRunner, open_session
from ..spec import Dim, InputSpec
from ..verify import engine
from ..verify.engine import TolerancePolicy
from ..verify.inputs import Feed, random_inputs
from ..verify.shapes import first_off_trace_size
from ..verify.tolerance import Tolerance

Outputs = list[dict[str, np.ndarray]]  # one dict per feed


@dataclass
class Verdict:
    passed: bool
    max_abs_err: float | None
    reason: str | None
    outputs: Outputs = field(default_factory=list)


@dataclass
class ClaimCheck:
    """What the transformed file may claim: the dims of the input model's claim (``onnxgate.dims``), re-verified
    at ``probes`` (every probe size of each dim) on every pass that was kept."""

    status: str  # "re-verified" | "narrowed" | "none recorded"
    dims: dict[str, Dim] = field(default_factory=dict)  # what the transformed file claims (narrowed: written)
    probes: dict[str, list[int]] = field(default_factory=dict)
    # probe sizes the input model itself does not run at in onnxruntime: not verified, and said so
    unverified: dict[str, str] = field(default_factory=dict)
    first_probe: int = 0  # the index of the first feed added for the claim (the caller's feeds come first)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "dims": {n: asdict(d) for n, d in self.dims.items()},
                "probes": dict(self.probes), "unverified": dict(self.unverified)}

    def describe(self) -> str:
        if self.status == "none recorded":
            return "no claim recorded: nothing to re-verify"
        text = "claim re-verified at " + "; ".join(f"{n} = {', '.join(map(str, s))}" for n, s in self.probes.items())
        if self.unverified:
            text += "; not at " + "; ".join(f"{k} ({why})" for k, why in self.unverified.items())
        if self.status == "narrowed":
            text += "; narrowed to " + ", ".join(_dim_text(d) for d in self.dims.values())
        return text

    def metadata(self) -> dict[str, str]:
        """The metadata the transformed file's claim changes: the narrowed dims (none when re-verified as it was).
        Written by the claim codec (``claim.dims_entries``)."""
        return claim_codec.dims_entries(self.dims) if self.status == "narrowed" else {}

    def narrow(self) -> None:
        """Each dim narrowed to the probe sizes around its traced size that were verified: the interval stops at
        the last verified probe before the nearest size that was not (an open end stays as claimed)."""
        for name in dict.fromkeys(label.split("=", 1)[0] for label in self.unverified):
            dim, ok = self.dims[name], self.probes.get(name, [])
            failed = [int(k.split("=", 1)[1]) for k in self.unverified if k.split("=", 1)[0] == name]
            traced = dim.example or 2
            below = max((f for f in failed if f < traced), default=None)
            above = min((f for f in failed if f > traced), default=None)
            low = dim.min if below is None else min(p for p in ok if p > below)
            high = dim.max if above is None else max(p for p in ok if p < above)
            self.dims[name] = Dim(name, low, high, dim.example, dim.multiple_of, declared=dim.ranged)
            self.status = "narrowed"


def _dim_text(dim: Dim) -> str:
    return f"{dim.name}={dim.min}..{'' if dim.max is None else dim.max}" + (
        f"%{dim.multiple_of}" if dim.multiple_of else "")


class Verifier:
    """The fixed feeds every step of a transform run is verified on. ``labels`` name each feed in failures (the
    sizes a probe feed was drawn at); ``sizes`` are the dim sizes each feed has, as far as known."""

    def __init__(self, feeds: list[Feed], *, source: str = "data", labels: list[str] | None = None,
                 sizes: list[dict[str, int]] | None = None):
        if not feeds:
            raise ValueError("a Verifier needs at least one feed")
        self.feeds = feeds
        self.source = source
        self.labels = labels or [f"feed {i}" for i in range(len(feeds))]
        self.sizes = sizes or [{} for _ in feeds]

    @classmethod
    def random(cls, specs: list[InputSpec], dims: dict[str, Dim], *, seed: int = 0) -> "Verifier":
        """Seeded random feeds at the traced sizes, plus one feed per probe size of each dynamic dim (one dim at a
        time): a rewrite that freezes a dim, or folds a constant computed at the traced size, must not pass."""
        traced = {n: d.example or 2 for n, d in dims.items()}
        verifier = cls([random_inputs(specs, traced, seed=seed)], source=f"random(seed={seed})",
                       labels=["feed 0"], sizes=[traced])
        return verifier.with_probes(specs, dims, seed=seed + 1)

    @classmethod
    def traced_and_one_off_trace(cls, specs: list[InputSpec], dims: dict[str, Dim], *, seed: int = 0) -> "Verifier":
        """The feeds transforms were verified on before claims were re-verified (issue 24): the traced sizes and one
        off-trace size per dim. Kept to show what that check misses (``tests/test_transform_claim.py``)."""
        traced = {n: d.example or 2 for n, d in dims.items()}
        feeds = [random_inputs(specs, traced, seed=seed)]
        for name, dim in dims.items():
            size = first_off_trace_size(dim)
            if size is not None:
                feeds.append(random_inputs(specs, {**traced, name: size}, seed=seed + 1))
        return cls(feeds, source=f"random(seed={seed}), {len(feeds)} feeds")

    def with_probes(self, specs: list[InputSpec], dims: dict[str, Dim], *, seed: int = 1) -> "Verifier":
        """These feeds plus a seeded random feed at every probe size of each dim that no feed has yet (the other
        dims at their traced sizes)."""
        probes = engine.probe_feeds(specs, dims, seed=seed, have=self.sizes)
        feeds = [*self.feeds, *(p.feed for p in probes)]
        labels = [*self.labels, *(p.label for p in probes)]
        sizes = [*self.sizes, *(p.sizes for p in probes)]
        added = len(probes)
        source = self.source + (f", {len(feeds)} feeds" if added or len(feeds) > 1 else "")
        if added:
            source += f" (with the claim's probe sizes: {', '.join(labels[len(self.feeds):])})"
        return Verifier(feeds, source=source, labels=labels, sizes=sizes)

    def runner(self, model: onnx.ModelProto, *, what: str):
        """onnxruntime on ``model`` as verification runs it (optimizations off, feeds cast to its input types)."""
        return OrtRunner(model, what=what, opt_level=VERIFY_OPT_LEVEL, providers=["CPUExecutionProvider"],
                         cast_float_inputs=True)

    def run(self, model: onnx.ModelProto, *, what: str = "the model") -> Outputs:
        """Outputs of ``model`` on every feed. Raises RuntimeIncompatibleError if onnxruntime cannot run it."""
        runner = self.runner(model, what=what)
        outputs = []
        for feed in self.feeds:
            try:
                outputs.append(runner.run(feed))
            except Exception as exc:
                raise RuntimeIncompatibleError(f"onnxruntime cannot run {what}: {first_line(exc)}",
                                               hint="Check that the feeds match the model's inputs.") from exc
        return outputs

    def judge(self, model: onnx.ModelProto, baseline: Outputs, *, tolerance: Tolerance | None = None,
              relative_to_scale: bool = False) -> Verdict:
        """Does ``model`` compute ``baseline`` on the feeds? ``tolerance`` (default: per output dtype), with its atol
        tied to each output's scale when ``relative_to_scale`` (reduced precision, whose error grows with the
        values' magnitude)."""
        what = "the transformed model"
        try:
            runner = self.runner(model, what=what)
        except RuntimeIncompatibleError as exc:
            return Verdict(False, None, exc.message)
        policy = TolerancePolicy(override=tolerance, relative=relative_to_scale)
        record = engine.check(baseline, runner, self.feeds, policy, reference_label="the previous model",
                              candidate_label=what, labels=self.labels,
                              on_error=lambda exc: f"onnxruntime cannot run {what}: {first_line(exc)}")
        errors = [f.error for f in record.feeds if f.error is not None]
        if errors:
            return Verdict(False, None, errors[0])
        return Verdict(record.passed, record.max_abs_err, record.reason(3), record.outputs)

    @staticmethod
    def max_abs_err(a: Outputs, b: Outputs) -> float:
        """Largest absolute difference over every output both have, on every feed (float64, finite elements)."""
        return engine.max_abs_err(a, b)


def claim_probes(model: onnx.ModelProto, verifier: Verifier) -> tuple[Verifier, ClaimCheck]:
    """``verifier`` extended to every probe size of the claim ``model`` records, and what the transformed file may
    claim once every kept pass passed on them. The one place a transform reads the claim (the claim codec,
    ``onnxgate.claim``)."""
    meta = {p.key: p.value for p in model.metadata_props}
    recorded = claim_codec.from_metadata(meta, model="the model to transform")
    if recorded is None or not recorded.inputs or not recorded.dims:
        return verifier, ClaimCheck("none recorded")
    specs, dims = list(recorded.inputs), recorded.domains
    extended = verifier.with_probes(specs, dims)
    probes = {n: sorted({s[n] for s in extended.sizes if n in s}) for n in dims}
    return extended, ClaimCheck("re-verified", dims, probes, first_probe=len(verifier.feeds))


def _traced_labels(claim: ClaimCheck) -> set[str]:
    return {f"{n}={d.example or 2}" for n, d in claim.dims.items()}


def baseline(model: onnx.ModelProto, verifier: Verifier, claim: ClaimCheck) -> tuple[Outputs, Verifier]:
    """The input model's outputs on every feed. A caller's feed it cannot run is a RuntimeIncompatibleError; a
    probe feed of its claim it cannot run is dropped, and the claim says it was not verified there."""
    runner = verifier.runner(model, what="the input model")
    outputs, keep = [], []
    for index, feed in enumerate(verifier.feeds):
        try:
            outputs.append(runner.run(feed))
            keep.append(index)
        except Exception as exc:
            traced = claim.status == "re-verified" and verifier.labels[index] in _traced_labels(claim)
            if index < claim.first_probe or claim.status != "re-verified" or traced:
                raise RuntimeIncompatibleError(f"onnxruntime cannot run the input model: {first_line(exc)}",
                                               hint="Check that the feeds match the model's inputs.") from exc
            label = verifier.labels[index]
            claim.unverified[label] = f"the input model fails there: {first_line(exc, 200)}"
            name, size = label.split("=", 1)
            claim.probes[name] = [s for s in claim.probes.get(name, []) if str(s) != size]
    claim.narrow()
    if len(keep) == len(verifier.feeds):
        return outputs, verifier
    pick = lambda items: [items[i] for i in keep]  # noqa: E731
    return outputs, Verifier(pick(verifier.feeds), source=verifier.source, labels=pick(verifier.labels),
                             sizes=pick(verifier.sizes))


def session_for(model: onnx.ModelProto, *, what: str, opt_level: str | None = None, threads: int = 0):
    """An onnxruntime CPU session for an in-memory model (default: optimizations off, as verification wants)."""
    return open_session(model, what=what, opt_level=opt_level or VERIFY_OPT_LEVEL, intra_op_threads=threads,
                        providers=["CPUExecutionProvider"])
