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

from ..verify import engine
from ..verify.engine import TolerancePolicy
from ..verify.tolerance import default_tolerance
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
        pairs = list(zip(self.feeds, self.reference_outputs()))
        real_only = (contract is not None and not str(contract.measured.get("on") or "random").startswith("random")
                     and len(pairs) > self.random_feeds)
        first = self.random_feeds if real_only else 0
        if real_only:
            source += ", on the real feeds alone (it was measured on real data)"
        policy = TolerancePolicy(contract=contract, reduced=None if contract is not None else stated)
        record = engine.check(self.reference_outputs()[first:], runner, self.feeds[first:], policy,
                              reference_label=self.reference, indices=range(len(pairs) - first))
        tolerance = str(stated) if stated is not None else (record.shown_tolerance
                                                            or str(default_tolerance("float32")))
        return Verification(self.reference, precision, tolerance, source, len(pairs) - first, record.passed,
                            record.max_abs_err or 0.0, record.max_scaled_err, record.tolerance_used,
                            record.worst_output, "; ".join(record.failures(2)) or None)


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


def _contract(path: str) -> Contract | None:
    from .. import serde

    model = serde.load(path, load_external_data=False)
    return contract_of({p.key: p.value for p in model.metadata_props}, model=path)


def _output_names(path: str) -> list[str]:
    from .. import serde

    return [o.name for o in serde.load(path, load_external_data=False).graph.output]
