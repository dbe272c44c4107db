"""Runs candidate models on a fixed set of feeds and judges them against a baseline's outputs.

Verification runs onnxruntime with graph optimizations off (``VERIFY_OPT_LEVEL``): the graph is judged as written,
not as onnxruntime would repair it. Feeds are cast to each model's input types (an FP16 model without float32 I/O
gets float16 feeds) and outputs back to the baseline's dtype before comparing, so a precision change is judged by
its values, not flagged as a dtype mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import RuntimeIncompatibleError, first_line
from ..spec import Dim, InputSpec
from ..verify.compare import Tolerance, compare_outputs
from ..verify.inputs import Feed, random_inputs
from ..verify.shapes import first_off_trace_size

Outputs = list[dict[str, np.ndarray]]  # one dict per feed


@dataclass
class Verdict:
    passed: bool
    max_abs_err: float | None
    reason: str | None
    outputs: Outputs = field(default_factory=list)


class Verifier:
    """The fixed feeds every step of a transform run is verified on."""

    def __init__(self, feeds: list[Feed], *, source: str = "data"):
        if not feeds:
            raise ValueError("a Verifier needs at least one feed")
        self.feeds = feeds
        self.source = source

    @classmethod
    def random(cls, specs: list[InputSpec], dims: dict[str, Dim], *, seed: int = 0) -> "Verifier":
        """Seeded random feeds at the traced sizes, plus one feed per dynamic dim at another size: a rewrite that
        freezes a dim (a simplifier folding a shape) must not pass."""
        traced = {n: d.example or 2 for n, d in dims.items()}
        feeds = [random_inputs(specs, traced, seed=seed)]
        for name, dim in dims.items():
            size = first_off_trace_size(dim)
            if size is not None:
                feeds.append(random_inputs(specs, {**traced, name: size}, seed=seed + 1))
        return cls(feeds, source=f"random(seed={seed}), {len(feeds)} feeds")

    def run(self, model: onnx.ModelProto, *, what: str = "the model") -> Outputs:
        """Outputs of ``model`` on every feed. Raises RuntimeIncompatibleError if onnxruntime cannot run it."""
        session = session_for(model, what=what)
        types = {i.name: i.type for i in session.get_inputs()}
        names = [o.name for o in session.get_outputs()]
        outputs = []
        for feed in self.feeds:
            cast = {k: v.astype(_NP_OF_ORT[types[k]]) if types[k] in _NP_OF_ORT else v
                    for k, v in feed.items() if k in types}
            try:
                outputs.append(dict(zip(names, session.run(None, cast))))
            except Exception as exc:
                raise RuntimeIncompatibleError(f"onnxruntime cannot run {what}: {first_line(exc)}",
                                               hint="Check that the feeds match the model's inputs.") from exc
        return outputs

    def judge(self, model: onnx.ModelProto, baseline: Outputs, *, tolerance: Tolerance | None = None,
              relative_to_scale: bool = False) -> Verdict:
        """Does ``model`` compute ``baseline`` on the feeds? ``tolerance`` (default: per output dtype) with its atol
        tied to each output's scale (see ``_scaled``)."""
        try:
            outputs = self.run(model, what="the transformed model")
        except RuntimeIncompatibleError as exc:
            return Verdict(False, None, exc.message)
        errs, failures = [], []
        for index, (ref, got) in enumerate(zip(baseline, outputs)):
            tolerances = _scaled(ref, tolerance, relative=relative_to_scale)
            compared = compare_outputs(ref, _cast_like(got, ref), tolerances=tolerances,
                                       reference_label="the previous model")
            errs += [c.max_abs_err for c in compared if c.max_abs_err is not None]
            failures += [f"{c.name} on feed {index}: {c.reason}" for c in compared if not c.passed]
        return Verdict(not failures, max(errs, default=None), "; ".join(failures[:3]) or None, outputs)

    @staticmethod
    def max_abs_err(a: Outputs, b: Outputs) -> float:
        """Largest absolute difference over every output both have, on every feed (float64, finite elements)."""
        worst = 0.0
        for x, y in zip(a, b):
            for name, ref in x.items():
                if name in y and np.shape(ref) == np.shape(y[name]):
                    diff = np.abs(np.asarray(ref, np.float64) - np.asarray(y[name], np.float64))
                    finite = diff[np.isfinite(diff)]
                    worst = max(worst, float(finite.max()) if finite.size else 0.0)
        return worst


_NP_OF_ORT = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def session_for(model: onnx.ModelProto, *, what: str, opt_level: str | None = None, threads: int = 0):
    """An onnxruntime CPU session for an in-memory model (default: optimizations off, as verification wants)."""
    from ..runtimes.ort import VERIFY_OPT_LEVEL, open_session

    return open_session(model, what=what, opt_level=opt_level or VERIFY_OPT_LEVEL, intra_op_threads=threads,
                        providers=["CPUExecutionProvider"])


def _scaled(ref: dict[str, np.ndarray], tolerance: Tolerance | None, *, relative: bool) -> dict[str, Tolerance]:
    """Each output's tolerance. ``relative``: atol *is* rtol * the output's scale (max |ref|), for reduced
    precision, whose error grows with the values' magnitude. Otherwise the tolerance as given: compare_outputs
    ties every atol to rtol x scale itself (the one place that rule lives), so vanished activations are still
    judged."""
    from ..verify.compare import default_tolerance

    out = {}
    for name, value in ref.items():
        tol = tolerance or default_tolerance(np.asarray(value).dtype.name)
        if relative:
            magnitude = np.abs(np.asarray(value, np.float64))
            magnitude = magnitude[np.isfinite(magnitude)]
            scale = float(magnitude.max()) if magnitude.size else 0.0
            if scale > 0:
                tol = Tolerance(tol.rtol, tol.rtol * scale)
        out[name] = tol
    return out


def _cast_like(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float outputs in the reference's float dtype (an FP16 model's float16 logits vs float32 ones)."""
    out = {}
    for name, value in got.items():
        want = ref.get(name)
        if want is not None and value.dtype != want.dtype and value.dtype.kind == want.dtype.kind == "f":
            value = value.astype(want.dtype)
        out[name] = value
    return out


