"""Every configuration the benchmark may recommend is verified as it runs, at its own precision.

A variant file that passed ``verify`` proves what onnxruntime computes with optimizations off; the benchmark then
runs it otherwise — onnxruntime's optimization levels, OpenVINO in PERFORMANCE mode (which computes float32 models in
bfloat16 on CPUs that have it: a max abs error of 1.38 on MobileNetV2's logits for real photos, against 2.4e-5 in
float32) — and an FP16 or INT8 file is a different computation altogether. So each configuration is run, with the
very runner that is timed, on the verification feeds and compared with the reference (PyTorch; without it, the base
ONNX file as written in onnxruntime, when that file is verified), with a tolerance that fits its precision and is
stated in the record:

    the file carries a contract (INT8, FP16)   the contract's tolerance (verify/contract.py)
    the runtime computes in bf16 / fp16        that precision's tolerance, tied to each output's scale
    float32                                    the per-dtype default ``verify`` uses

A configuration without a passing record can be measured but is never recommended.

The feeds are the latency feed and one more seeded random feed, plus the first few real feeds when the caller has
them. A file whose contract was measured on real data (an INT8 model calibrated and evaluated on photos) is judged
on the real feeds alone when there are some: standard-normal noise lies far outside its calibrated ranges (the
digits demo's INT8 model errs by 26 on noise and 0.16 on digits), so noise would test the calibration, not the file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..verify.compare import Tolerance, compare_outputs, default_tolerance
from ..verify.contract import Contract, contract_of, normalize_precision, runtime_tolerance

MAX_DATA_FEEDS = 4  # real feeds verified per configuration, besides the seeded random ones


@dataclass
class Verification:
    """One configuration against the reference, at its own precision."""

    reference: str  # what it was compared with
    precision: str  # what it computes in: fp32, bf16, fp16, int8
    tolerance: str  # stated, e.g. "rtol=1e-2 atol=1e-3 or 1e-2 x max|ref|"
    tolerance_source: str  # why that tolerance: "float32 default", "runtime computes in bf16", "the file's contract"
    feeds: int
    passed: bool
    max_abs_err: float | None = None
    max_scaled_err: float | None = None  # max abs err / max |ref|, worst output
    tolerance_used: float | None = None  # worst element's |got - ref| over its allowance (atol + rtol|ref|): <= 1
    worst_output: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        err = "-" if self.max_abs_err is None else f"{self.max_abs_err:.3g}"
        used = "" if self.tolerance_used is None else f", {self.tolerance_used:.3g}x its allowance"
        verdict = "within" if self.passed else "outside"
        return (f"{self.precision}: max abs err {err} {verdict} {self.tolerance}{used} ({self.tolerance_source}), "
                f"{self.feeds} feeds against {self.reference}")


class ConfigVerifier:
    """The verification feeds, the reference's outputs on them (computed once), and the judging."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], reference_runner: Any, reference: str,
                 contracts: dict[str, Contract | None], *, random_feeds: int | None = None):
        self.feeds = feeds
        self.random_feeds = len(feeds) if random_feeds is None else random_feeds  # the first ones are random
        self.reference = reference
        self.contracts = contracts  # variant name -> its contract (None: a float32 file)
        self._runner = reference_runner
        self._outputs: list[dict[str, np.ndarray]] | None = None

    @property
    def available(self) -> bool:
        return self._runner is not None

    def reference_outputs(self) -> list[dict[str, np.ndarray]]:
        if self._outputs is None:
            self._outputs = [self._runner.run(feed) for feed in self.feeds]
        return self._outputs

    def check(self, variant: str, runner: Any, runtime_precision: str | None) -> Verification:
        """Run ``runner`` (the configuration's own, as timed) on the feeds and judge it."""
        contract = self.contracts.get(variant)
        precision = normalize_precision(runtime_precision)
        if contract is not None:
            stated = contract.tolerance
            source = f"the file's {contract.precision} contract" + (
                f", runtime computing the rest in {precision}" if precision != "fp32" else "")
            precision = contract.precision if precision == "fp32" else f"{contract.precision}+{precision}"
        else:
            stated = runtime_tolerance(precision)
            source = f"runtime computes in {precision}" if stated is not None else "float32 default, as verify"
        if not self.available:
            return Verification("nothing", precision, str(stated or "-"), source, 0, False,
                                reason="no reference to verify against: give the PyTorch model (--against), or a "
                                       "base model that passed verification")
        worst_abs, worst_scaled, worst_used, worst_name, failures, shown = 0.0, 0.0, 0.0, None, [], None
        pairs = list(zip(self.feeds, self.reference_outputs()))
        real_only = (contract is not None and not str(contract.measured.get("on") or "random").startswith("random")
                     and len(pairs) > self.random_feeds)
        if real_only:
            pairs = pairs[self.random_feeds:]
            source += ", on the real feeds alone (it was measured on real data)"
        for index, (feed, ref) in enumerate(pairs):
            got = _cast_like(runner.run(feed), ref)
            tolerances = _tolerances(ref, stated) if stated is not None else None
            for comp in compare_outputs(ref, got, tolerances=tolerances, reference_label=self.reference):
                shown = shown or str(comp.tolerance)
                scale = comp.scale or 0.0
                if comp.max_abs_err is not None and comp.max_abs_err >= worst_abs:
                    worst_abs, worst_name = comp.max_abs_err, comp.name
                if comp.max_abs_err is not None and scale > 0:
                    worst_scaled = max(worst_scaled, comp.max_abs_err / scale)
                worst_used = max(worst_used, _allowance_used(comp, ref[comp.name], got.get(comp.name)))
                if not comp.passed:
                    failures.append(f"{comp.name} on feed {index}: {comp.reason}")
        tolerance = str(stated) if stated is not None else (shown or str(default_tolerance("float32")))
        return Verification(self.reference, precision, tolerance, source, len(pairs), not failures, worst_abs,
                            worst_scaled, worst_used, worst_name, "; ".join(failures[:2]) or None)


def build_verifier(target, data: list[dict[str, np.ndarray]] | None) -> ConfigVerifier:
    """The reference for ``target``: PyTorch when the benchmark has it; else the base file as written in
    onnxruntime (optimizations off, as ``verify`` runs it) when the base file is verified; else none."""
    from ..verify.inputs import conform, random_inputs
    from .runners import BASE

    feeds = [target.feed, random_inputs(target.specs, target.sizes, seed=1)]
    feeds += [conform(f, target.specs, where="The benchmark's data") for f in (data or [])[:MAX_DATA_FEEDS]]
    contracts = {v.name: _contract(v.path) for v in target.variants}
    base = next(v for v in target.variants if v.name == BASE)
    if target.loaded is not None:
        from ..runtimes.torch_runner import TorchRunner

        outputs = _output_names(base.path)
        runner = TorchRunner(target.module, input_names=target.input_names, output_names=outputs)
        return ConfigVerifier(feeds, runner, "PyTorch", contracts, random_feeds=2)
    if base.verified and contracts.get(BASE) is None:
        from ..runtimes.ort import VERIFY_OPT_LEVEL, OrtRunner

        runner = OrtRunner(base.path, opt_level=VERIFY_OPT_LEVEL)
        return ConfigVerifier(feeds, runner, "the verified base model in onnxruntime (as written)", contracts,
                              random_feeds=2)
    return ConfigVerifier(feeds, None, "nothing", contracts)


def _allowance_used(comp, ref: np.ndarray, got: np.ndarray | None) -> float:
    """How much of its tolerance the worst element uses, as compare judged it: |got - ref| / (atol + rtol |ref|)
    element-wise, or max abs err / (atol + rtol * scale) where compare judged the output against its scale. A
    reader of the record checks the verdict with it (<= 1) without re-deriving each element's allowance."""
    if got is None or comp.max_abs_err is None or np.shape(ref) != np.shape(got):
        return float("inf") if not comp.passed else 0.0
    tol = comp.tolerance
    if comp.scale_relative:
        allowance = tol.atol + tol.rtol * (comp.scale or 0.0)
        return comp.max_abs_err / allowance if allowance > 0 else (0.0 if comp.max_abs_err == 0 else float("inf"))
    a, b = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
    finite = np.isfinite(a) & np.isfinite(b)
    if not finite.any():
        return 0.0
    diff, allowance = np.abs(a - b)[finite], tol.atol + tol.rtol * np.abs(a)[finite]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(allowance > 0, diff / allowance, np.where(diff > 0, np.inf, 0.0))
    return float(ratio.max())


def _contract(path: str) -> Contract | None:
    from .. import serde

    model = serde.load(path, load_external_data=False)
    return contract_of({p.key: p.value for p in model.metadata_props}, model=path)


def _output_names(path: str) -> list[str]:
    from .. import serde

    return [o.name for o in serde.load(path, load_external_data=False).graph.output]


def _tolerances(ref: dict[str, np.ndarray], stated) -> dict[str, Tolerance]:
    """Each output's tolerance at its own scale on this feed (max |ref| over finite elements)."""
    out = {}
    for name, value in ref.items():
        magnitude = np.abs(np.asarray(value, dtype=np.float64)) if np.asarray(value).dtype.kind == "f" else None
        finite = magnitude[np.isfinite(magnitude)] if magnitude is not None else np.zeros(0)
        out[name] = stated.for_scale(float(finite.max()) if finite.size else None)
    return out


def _cast_like(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float outputs in the reference's dtype (an FP16 file's float16 outputs are judged by value)."""
    out = {}
    for name, value in got.items():
        want = ref.get(name)
        value = np.asarray(value)
        if want is not None and value.dtype != want.dtype and value.dtype.kind == np.asarray(want).dtype.kind == "f":
            value = value.astype(np.asarray(want).dtype)
        out[name] = value
    return out
