"""The export ladder: try strategies × opsets in order, keep the first attempt that is *proven*, record them all.

An attempt wins only when its file passes the structural checks, loads and runs in onnxruntime, matches PyTorch on
the example inputs, and — for every declared-dynamic dim — still matches PyTorch at a size other than the traced one.
That last probe is what makes a traced export that froze a batch or image size lose to one that did not.
Failed attempts are values (``Attempt`` with an outcome and a diagnosis), not exceptions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from .. import serde
from ..fsutil import check_target
from .._version import __version__
from ..claim import metadata_entries
from ..errors import ExportError, ParityError, first_line
from ..spec import ExportConfig
from ..verify.structure import StructureReport, check_structure
from ..worker import release_freed_memory
from .guards import branch_frozen
from .prepare import Prepared, prepare
from .strategies import EXPORTERS, STRATEGIES, describe_assumption

# Outcomes, from worst to best.
EXPORT_ERROR = "export_error"
CHECK_FAILED = "check_failed"
RUNTIME_ERROR = "runtime_error"
TRACED_BRANCH = "traced_branch"  # tracing baked in the branch a data-dependent `if` took on the example
MISMATCH = "mismatch"  # wrong at the traced shape
FROZEN_DIM = "frozen_dim"  # right at the traced shape, wrong or unrunnable at another size of a dynamic dim
CRASHED = "crashed"  # the attempt's worker died (signal), ran past its timeout or its memory cap
OK = "ok"
SKIPPED = "skipped"


@dataclass
class Attempt:
    strategy: str
    opset: int
    seconds: float = 0.0
    peak_mb: float = 0.0  # peak resident memory of the process during the attempt
    outcome: str = SKIPPED
    error_class: str | None = None
    error: str | None = None
    diagnosis: dict | None = None
    opset_emitted: int | None = None
    frozen_dims: dict[str, str] = field(default_factory=dict)  # dim name -> what happened at another size
    max_abs_err: float | None = None
    warnings: list[str] = field(default_factory=list)
    path: str | None = None  # staging file, while the ladder runs
    parity: Any = None  # the ParityReport of this attempt: quick, the winner's full (export.ladder._prove)
    shapes: dict | None = None  # the winner's declared-shape audit (export/graph_shapes.py)
    lacking_ops: list[str] = field(default_factory=list)  # operators a --target lacks (error_class "target")
    fallback: bool = False  # added to the plan after a target lacked operators of newer opsets
    variant: str | None = None  # the dynamo capture variant of an extra rung (strategies.VARIANTS); None: the default
    repairs: dict[str, list[str]] = field(default_factory=dict)  # repair rung: catalogue entry -> modules replaced
    stage: str | None = None  # where an export error happened: "capture" (torch.export) or None (the exporter)
    # What the rung assumed instead of capturing (strategies.assumption dicts: draft export's data-dependent guards,
    # TorchScript's tensor-to-Python conversions): each value decision's other side must agree before it can win.
    assumptions: list[dict] = field(default_factory=list)
    # Declared dims the capture pinned to the example's size, with the guards that did it (export/guards.py
    # ``Specialized``): the rung is frozen there as soon as captured.
    specialized: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The rung in words: strategy, capture variant and repairs."""
        from .strategies import VARIANT_WORDS

        extra = [VARIANT_WORDS[self.variant]] if self.variant else []
        extra += [f"repair: {name}" for name in self.repairs]
        return f"{self.strategy} ({', '.join(extra)})" if extra else self.strategy


@dataclass
class ExportResult:
    ref: str
    output: str | None
    attempts: list[Attempt]
    winner: int | None
    inputs: list[str]
    outputs: list[str]
    dims: dict[str, dict]
    warnings: list[str]
    structure: StructureReport | None = None
    diagnosis: dict | None = None
    rejected: str | None = None  # an export that ran but failed parity, kept for diagnosis (never as `output`)

    # Why the export failed when it did (ExportError, ParityError, RuntimeIncompatibleError): ``run_ladder`` returns
    # a failed result like every other stage; its callers raise this error (``outcome.raise_for``). Not a field.
    error: ClassVar[Exception | None] = None

    @property
    def ok(self) -> bool:
        return self.winner is not None and self.error is None

    @property
    def fallbacks(self) -> int:
        """How many attempts failed before the winner (0 = the first strategy worked)."""
        return self.winner if self.winner is not None else len(self.attempts)

    def to_dict(self) -> dict:
        data = asdict(self)
        for a, attempt in zip(data["attempts"], self.attempts):
            a.pop("path", None)
            a["parity"] = attempt.parity.to_dict() if attempt.parity is not None else None
        data["ok"] = self.ok
        data["structure"] = self.structure.to_dict() if self.structure else None
        return data


def exporter_max_opsets() -> dict[str, int]:
    """The newest opset each torch exporter emits (torch 2.14: dynamo 23, TorchScript 20). Asking for more makes
    the TorchScript exporter fail and the dynamo exporter fall back silently."""
    try:
        from torch.onnx import _constants
    except ImportError:  # private module moved: fall back to torch 2.14's values
        return {"dynamo": 23, "torchscript": 20}
    return {"dynamo": _constants.ONNX_MAX_OPSET, "torchscript": _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET}


def exporter_min_opset() -> int:
    """The oldest opset torch exports (7 in torch 2.14; the dynamo exporter writes 18 and converts down)."""
    try:
        from torch.onnx import _constants
    except ImportError:
        return 7
    return int(getattr(_constants, "ONNX_MIN_OPSET", 7))


def supported_opsets() -> dict[str, tuple[int, int]]:
    """Per strategy, the opsets onnxgate can export *and* verify here: what the exporter writes, capped at what
    the installed onnxruntime runs (every attempt must load in it)."""
    from ..verify.targets import installed_ort_max_opset

    low, ort_max = exporter_min_opset(), installed_ort_max_opset()
    return {s: (low, min(top, ort_max)) for s, top in exporter_max_opsets().items()}


def check_opset(opset: int, strategy: str | None = None, *, where: str | None = None) -> list[str]:
    """The strategies that can export at ``opset`` (only ``strategy`` when pinned); BadInputError naming the
    supported range when none can. A pinned opset is a promise: the ladder rejects an attempt that wrote another."""
    from ..errors import BadInputError

    ranges = supported_opsets()
    where = where or f"--opset {opset}"
    candidates = [strategy] if strategy else list(STRATEGIES)
    able = [s for s in candidates if ranges[s][0] <= opset <= ranges[s][1]]
    if able:
        return able
    shown = "; ".join(f"the {s} exporter {ranges[s][0]}..{ranges[s][1]}" for s in candidates)
    low, high = min(ranges[s][0] for s in candidates), max(ranges[s][1] for s in candidates)
    raise BadInputError(f"{where} is outside the opsets onnxgate can export and verify here ({shown}; capped at the "
                        "newest opset the installed onnxruntime runs).",
                        hint=f"Pin an opset in {low}..{high}, or leave --opset out and let the ladder choose.")


def target_limits(config: ExportConfig):
    """The opset/IR limits of ``config.targets`` (``verify.targets.export_limits``); none without targets."""
    from ..verify.targets import ExportLimits, export_limits

    return export_limits(config.targets) if config.targets else ExportLimits()


def check_target_opset(opset: int, limits, *, where: str) -> None:
    """A pinned opset newer than a target reads, or older than it runs, is a BadInputError before any export."""
    from ..errors import BadInputError

    if limits.max_opset is not None and opset > limits.max_opset:
        raise BadInputError(f"{where} is newer than {limits.opset_by} reads (opset {limits.max_opset} at most).",
                            hint=f"Pin --opset {limits.max_opset} or lower, or leave --opset out: --target picks it.")
    if limits.min_opset is not None and opset < limits.min_opset:
        raise BadInputError(f"{where} is older than the targets support (opset {limits.min_opset} at least).",
                            hint=f"Pin --opset {limits.min_opset} or newer, or leave --opset out.")


def default_plan(config: ExportConfig) -> list[tuple[str, int]]:
    """Strategies in order (dynamo, then TorchScript), each at the newest opset both the installed onnxruntime
    and that exporter support, then at 17 (old runtimes). ``--target`` caps both at the newest opset every target
    reads. ``--strategy``/``--opset`` pin one; a pinned opset outside what the exporters (or the targets) support
    is a BadInputError, and only the strategies that support it are tried."""
    from ..errors import BadInputError
    from ..verify.targets import installed_ort_max_opset

    limits = target_limits(config)
    if config.opset is not None:
        check_target_opset(config.opset, limits, where=f"--opset {config.opset}")
        return [(s, config.opset) for s in check_opset(config.opset, config.strategy)]
    strategies = [config.strategy] if config.strategy else list(STRATEGIES)
    tops = exporter_max_opsets()
    cap = limits.max_opset if limits.max_opset is not None else 10**6
    plan = []
    for strategy in strategies:
        opsets = [min(installed_ort_max_opset(), tops[strategy], cap), min(17, cap)]
        plan += [(strategy, o) for o in dict.fromkeys(opsets)
                 if o >= max(exporter_min_opset(), limits.min_opset or 0)]
    if not plan:
        raise BadInputError(f"No opset satisfies {', '.join(config.targets)} and the exporters here (opsets "
                            f"{exporter_min_opset()}..{max(tops.values())}).",
                            hint="Target a newer runtime release.")
    return plan


def _judge(prepared: Prepared, attempt: Attempt, path: Path, allow_static: tuple[str, ...],
           traced_branches: list[str], candidate=None, *, pinned_opset: bool = False,
           targets: tuple[str, ...] = ()) -> None:
    """Fill in the attempt's outcome: structure, onnxruntime load, then quick parity — the example inputs, a
    random feed at the traced sizes and one other size of every dynamic dim.

    Every attempt is also judged on the sign and scale variants of a random feed (all-negative, all-positive, zeros,
    x10, x0.01). When the rung assumed values (tracing turned tensors into Python bools or ints, ``traced_branches``
    and ``attempt.assumptions``; draft export specialized a data-dependent expression), the graph holds only the
    side the example took, and a few random feeds may well take the same one. Such an attempt must also agree on
    feeds built to take the other side (``inputs.value_probes``: the example negated, rescaled, made all-positive
    or all-negative; more seeds), and PyTorch must be *seen* to take the other side
    of each assumed decision on one of them (``_check_assumptions``); otherwise it is rejected as a baked-in
    data-dependent branch, the assumption named.

    ``candidate``: onnxruntime on ``path`` (``verify.api.ort_runs``), whose outputs the winner's proof starts from
    (default: its own, closed here); PyTorch's outputs are the ladder's (``prepared.reference_runs()``), shared by
    every rung."""
    if candidate is None:
        from ..verify.api import ort_runs

        with contextlib.closing(ort_runs(path)) as own:
            return _judge(prepared, attempt, path, allow_static, traced_branches, own, pinned_opset=pinned_opset,
                          targets=targets)
    from ..verify.parity import static_dims_in_graph, verify_parity

    structure = check_structure(path)
    attempt.opset_emitted = structure.opset
    if pinned_opset and structure.opset != attempt.opset:
        # The dynamo exporter writes opset 18 and converts down; when conversion fails it keeps 18 with a warning.
        attempt.outcome, attempt.error_class = CHECK_FAILED, "opset"
        attempt.error = (f"--opset {attempt.opset} was asked for, but the {attempt.strategy} exporter wrote opset "
                         f"{structure.opset} (it could not convert the model to opset {attempt.opset})")
        return
    if not (structure.checker_ok and structure.shape_inference_ok):
        attempt.outcome, attempt.error_class = CHECK_FAILED, "onnx.checker"
        attempt.error = structure.checker_error or structure.shape_inference_error
        return
    if not structure.ort_loads:
        attempt.outcome, attempt.error_class, attempt.error = RUNTIME_ERROR, "onnxruntime.load", structure.ort_error
        return
    if targets and not _fits_targets(attempt, path, targets):
        return
    reference = prepared.reference_runs()
    assumed = bool(traced_branches or _value_assumptions(attempt))

    def quick_check(tolerances=None):
        return verify_parity(
            reference, candidate, prepared.specs, prepared.dims,
            seeds=(0, 1, 2) if assumed else (0,), data=[prepared.example],
            probes=_branch_probes(prepared) if assumed else None, variants=True,
            allow_static=allow_static, quick=True, tolerances=tolerances,
            static_in_graph=static_dims_in_graph(prepared.specs, {t.name: t.shape for t in structure.inputs}),
        )

    report = quick_check(prepared.noise)
    if not report.passed and prepared.noise is None and numeric_miss(report) and noise_of(prepared, reference.run):
        report = quick_check(prepared.noise)  # judged again where the model's own noise exceeds the default
    attempt.parity = report
    errors = [c.max_abs_err for case in report.cases for c in case.comparisons if c.max_abs_err is not None]
    attempt.max_abs_err = max(errors, default=None)
    attempt.frozen_dims = dict(report.frozen)
    if report.passed:
        attempt.outcome = OK
        if assumed:
            _check_assumptions(prepared, attempt, traced_branches)
        return
    traced = [c for c in report.cases if c.dim is None and not c.passed]
    if traced and assumed:
        from .diagnose import known

        values = _value_assumptions(attempt)
        where = ", ".join(dict.fromkeys([*traced_branches, *(a["location"] for a in values if a.get("location"))]))
        what = ("tracing turned a tensor into a Python bool" if traced_branches and not values
                else f"the {attempt.label} rung assumed values: "
                + "; ".join(describe_assumption(a) for a in values[:3]))
        attempt.outcome, attempt.error_class = TRACED_BRANCH, "TracerWarning" if traced_branches else "assumption"
        attempt.error = (f"{what}{f' at {where}' if traced_branches and not values else ''}, and the graph "
                         f"disagrees with PyTorch on {traced[0].label} ({traced[0].source}): only the side the "
                         "example took is in it")
        attempt.diagnosis = asdict(known("data_dependent_control_flow", detail=attempt.error,
                                         location=(traced_branches or [where.split(', ')[0] or None])[0]))
        return
    if traced:
        failed = traced[0]
        attempt.outcome = RUNTIME_ERROR if failed.error else MISMATCH
        attempt.error_class = "onnxruntime.run" if failed.error else "parity"
        attempt.error = report.summary()
    else:
        attempt.outcome, attempt.error_class = FROZEN_DIM, "frozen_dim"
        attempt.error = report.summary()


def _fits_targets(attempt: Attempt, path: Path, targets: tuple[str, ...]) -> bool:
    """Check the attempt's file against every ``--target`` (opset, IR, operators) before it can win."""
    from ..verify.targets import check_targets

    failed = [t for t in check_targets(path, list(targets)) if not t.supported]
    if failed:
        attempt.outcome, attempt.error_class = CHECK_FAILED, "target"
        attempt.error = "; ".join(f"{t.target}: {'; '.join(t.reasons)}" for t in failed)
        attempt.lacking_ops = sorted({op for t in failed for op in t.lacking_ops})
    return not failed


MAX_TARGET_FALLBACKS = 3


def _target_fallbacks(attempt: Attempt, attempts: list[Attempt], config: ExportConfig) -> list[Attempt]:
    """After an attempt failed a target on operators that a newer opset introduced (LayerNormalization at 17 on
    TensorRT 8.5, Attention at 23 on OpenVINO 2024.0), each exporter at the opset before the oldest of them writes
    them as older operators: those rungs (the dynamo exporter only from its native opset 18 up), unless the plan
    pins the opset, already has them, or has fallen back enough."""
    from ..verify.targets import first_opset, installed_ort_max_opset

    if config.opset is not None or not attempt.lacking_ops:
        return []
    since = [first_opset(op) for op in attempt.lacking_ops]
    if any(s is None for s in since):  # an operator of another domain: no opset makes it go away
        return []
    tops, tried = exporter_max_opsets(), {(a.strategy, a.opset) for a in attempts}
    rungs = []
    for strategy in [config.strategy] if config.strategy else list(STRATEGIES):
        opset = min(min(since) - 1, tops[strategy], installed_ort_max_opset())
        if opset >= max(exporter_min_opset(), 18 if strategy == "dynamo" else 0) and (strategy, opset) not in tried:
            rungs.append(Attempt(strategy, opset, fallback=True))
    return rungs[:max(0, MAX_TARGET_FALLBACKS - sum(a.fallback for a in attempts))]


def _fit(attempt: Attempt, path: Path, config: ExportConfig, limits) -> None:
    """Bring the attempt's file to the opset and IR version asked for (export/fit.py); a file that cannot be made
    to fit a pinned opset or the targets fails the attempt (``check_failed``), and the ladder moves on."""
    from .fit import fit_file

    by = [f"--opset {config.opset}"] if config.opset is not None else []
    by += [f"--target {t}" for t in dict.fromkeys(t for t in (limits.opset_by, limits.ir_by) if t)]
    fitted = fit_file(path, strategy=attempt.strategy, opset=attempt.opset, pinned=config.opset is not None,
                      target_opset=limits.max_opset, target_ir=limits.max_ir, limit_by=" and ".join(by) or "the plan")
    attempt.warnings += fitted.notes
    if fitted.error:
        attempt.outcome, attempt.error_class, attempt.error = CHECK_FAILED, fitted.error_class, fitted.error


def _honest_shapes(prepared: Prepared, attempt: Attempt, config: ExportConfig, traced_branches: list[str],
                   candidate):
    """Audit the winning file's declared shapes against what onnxruntime produces (export/graph_shapes.py); a
    rewrite of wrong dims replaces the file only when it passes the same judgement again. Returns the onnxruntime
    runs of the file that won (``candidate``, the judged file's; the rewrite's own when it replaced it)."""
    from ..verify.api import ort_runs
    from .graph_shapes import audit_file

    try:
        audit, fixed = audit_file(attempt.path, prepared.specs, prepared.dims,
                                  skip=tuple(config.allow_static) + tuple(attempt.frozen_dims))
    except Exception as exc:  # an audit that cannot run leaves the proven file as it is, and says so
        attempt.warnings.append(f"graph shapes not checked: {type(exc).__name__}: {first_line(exc, 200)}")
        return candidate
    attempt.shapes = audit.to_dict()
    if audit.note:
        attempt.warnings.append(audit.note)
    if fixed is None:
        return candidate
    again = Attempt(attempt.strategy, attempt.opset, variant=attempt.variant, assumptions=attempt.assumptions)
    rewritten = ort_runs(fixed)
    try:
        _judge(prepared, again, fixed, config.allow_static, traced_branches, rewritten,
               pinned_opset=config.opset is not None, targets=config.targets)
    except Exception as exc:  # as in the ladder: a judgement that raises is a runtime error of that file
        again.outcome, again.error = RUNTIME_ERROR, f"{type(exc).__name__}: {first_line(exc, 200)}"
    finally:
        rewritten.release()
    lines = audit.summary()
    attempt.shapes["rewritten"] = again.outcome == OK
    if again.outcome != OK:
        rewritten.close()
        attempt.warnings += [f"graph shape declared wrong (kept: the rewrite failed re-verification, "
                             f"{again.outcome}: {again.error}): {line}" for line in lines]
        return candidate
    candidate.close()
    attempt.path, attempt.parity = str(fixed), again.parity
    attempt.warnings += [f"graph shape corrected and re-verified: {line}" for line in lines]
    return rewritten


def _branch_probes(prepared: Prepared) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Feeds meant to send data-dependent decisions the other way (``inputs.value_probes``), labelled."""
    from ..verify.inputs import value_probes

    return value_probes(prepared.example, prepared.specs)


# Assumptions about values (the others, a guard on a dynamic dim or a fake kernel, face the dims' probes and parity).
VALUE_KINDS = ("data_dependent", "traced_bool", "traced_value")


def _value_assumptions(attempt: Attempt) -> list[dict]:
    return [a for a in attempt.assumptions if a.get("kind") in VALUE_KINDS]


def _check_assumptions(prepared: Prepared, attempt: Attempt, traced_branches: list[str]) -> None:
    """An attempt that agreed with PyTorch on every probe but assumed values: PyTorch must be seen taking the other
    side of each assumed decision on one of the feeds it agreed on (``export/assumptions.py`` records the eager
    path). A decision no constructed input flips leaves the graph's other side unproven: the rung is refused
    (``traced_branch``), the assumption named. A TorchScript conversion that is no value decision in the eager
    run (a Python int taken from a shape) is the dims' probes' business."""
    from ..verify.inputs import random_inputs, variant_feeds
    from .assumptions import describe, exercised, record_path, value_sites

    values = _value_assumptions(attempt) or [
        {"kind": "traced_bool", "what": "tracing turned a tensor into a Python bool", "location": w}
        for w in traced_branches]
    traced = {n: d.example or 2 for n, d in prepared.dims.items()}
    feeds = [*_branch_probes(prepared), *variant_feeds(prepared.specs, traced, seed=0),
             *((f"random(seed={k})", random_inputs(prepared.specs, traced, seed=k)) for k in (0, 1, 2))]
    try:
        args, kwargs = prepared.torch_args()
        example = record_path(prepared.module, args, kwargs)
        paths = []
        for label, feed in feeds:
            args, kwargs = prepared.torch_args(feed)
            paths.append((label, record_path(prepared.module, args, kwargs)))
    except Exception as exc:  # noqa: BLE001  the path cannot be watched: nothing shows the other side was taken
        _refuse_assumed(attempt, values, f"its path through forward() could not be recorded ({type(exc).__name__}: "
                        f"{first_line(exc, 200)})")
        return
    sites = value_sites(example)
    required: dict[str, dict] = {}
    for a in values:
        if a.get("location") in sites:
            required.setdefault(a["location"], a)
        elif a["kind"] == "data_dependent":  # torch named no site the eager run decides at: every decision counts
            if not sites:
                _refuse_assumed(attempt, [a], "PyTorch makes no value decision in forward() that an input could flip")
                return
            for site in sites:
                required.setdefault(site, a)
    taken = []
    for site, a in required.items():
        flipped = next((label for label, path in paths if exercised(example, path, site)), None)
        if flipped is None:
            _refuse_assumed(attempt, [a], f"no input onnxgate constructed takes the other side of {describe(site)} "
                            "(the example negated, scaled x10/x0.1, made all-positive/all-negative, zeros, random "
                            "draws)")
            return
        taken.append(f"{describe(site)} (other side on {flipped})")
    if taken:
        attempt.warnings.append(f"the {attempt.label} rung assumed values; the graph agrees with PyTorch on inputs "
                                "that take the other side of each: " + "; ".join(taken))


def _refuse_assumed(attempt: Attempt, values: list[dict], why: str) -> None:
    from .diagnose import known

    attempt.outcome, attempt.error_class = TRACED_BRANCH, "assumption"
    attempt.error = (f"the {attempt.label} rung assumed " + "; ".join(describe_assumption(a) for a in values[:3])
                     + f", and {why}: the side the example took is all the graph is known to hold")
    attempt.diagnosis = asdict(known("data_dependent_control_flow", detail=attempt.error,
                                     location=values[0].get("location") if values else None))


def _metadata(loaded, prepared: Prepared, config: ExportConfig, attempt: Attempt) -> dict[str, str]:
    import torch

    meta = {
        "onnxgate.version": __version__,
        "onnxgate.torch_version": torch.__version__,
        "onnxgate.source": loaded.ref,
        **metadata_entries(prepared.specs, prepared.dims),
        "onnxgate.strategy": attempt.strategy,
        **({"onnxgate.export_variant": attempt.variant} if attempt.variant else {}),
        **({"onnxgate.repairs": json.dumps(attempt.repairs)} if attempt.repairs else {}),
        "onnxgate.opset": str(attempt.opset_emitted or attempt.opset),
    }
    for key, value in loaded.meta.items():
        meta[f"onnxgate.model.{key}"] = str(value)
    if prepared.weights_sha256:  # verify/identity.py: a rebuilt reference with other weights is told apart
        meta["onnxgate.weights_sha256"] = prepared.weights_sha256
    for key in ("arch", "weights"):  # where a state-dict source's architecture and weights came from
        if loaded.meta.get(key):
            meta[f"onnxgate.{key}"] = str(loaded.meta[key])
    if config.targets:
        meta["onnxgate.targets"] = json.dumps(list(config.targets))
    if config.reinit_degenerate:
        meta["onnxgate.reinit_degenerate"] = "true"  # verify re-applies the same seeded re-initialization
    if config.labels:
        meta["labels"] = json.dumps(list(config.labels), ensure_ascii=False)
    meta.update(config.meta)
    return meta


def run_ladder(loaded, config: ExportConfig, output: str | Path | None, *, force: bool = False,
               progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export ``loaded`` (a sources.LoadedModel) to ``output``. When nothing works, a failed result (``ok`` False)
    whose ``error`` is the ExportError/ParityError/RuntimeIncompatibleError to raise (``outcome.raise_for``); a bad
    flag or an existing output still raises before anything runs."""
    note = progress or (lambda _msg: None)
    if output is not None:
        check_target(Path(output), force=force, kind="model file")  # fail before minutes of exporting, not after
    plan = default_plan(config)  # an unsupported --opset or --target fails here, before the model is even run
    limits = target_limits(config)
    note("preparing the model")
    prepared = prepare(loaded, config)
    attempts = _forced_first(plan) + [Attempt(s, o) for s, o in plan]
    staging = Path(tempfile.mkdtemp(prefix="onnxgate-export-"))
    winner = None
    try:
        proof, extras = None, False
        for i, attempt in enumerate(attempts):  # the list grows: target fallbacks, then the extra rungs
            candidate = _step(prepared, attempts, i, staging / f"attempt{i}" / "model.onnx", config, limits, note)
            if candidate is not None:
                try:
                    proof = _prove_or_demote(prepared, attempts, attempt, config, note, candidate)
                finally:
                    candidate.close()
                if proof is not None:
                    winner = i
                    break
            if i == len(attempts) - 1 and not extras:
                extras = True
                more = _extra_rungs(prepared, attempts, config)
                if more:  # say why the "N/M" count grows (issue 27 item 7: "4/4" then "5/7")
                    note(f"none of the {len(attempts)} planned attempt(s) won: adding {len(more)} extra rung(s) "
                         f"(repairs, capture variants), {len(attempts) + len(more)} attempts in all now")
                attempts += more
        result = ExportResult(
            ref=loaded.ref, output=str(output) if output else None, attempts=attempts, winner=winner,
            inputs=[str(s) for s in prepared.specs], outputs=prepared.output_names,
            dims={n: asdict(d) for n, d in prepared.dims.items()},
            warnings=[*prepared.warnings, *_shape_warnings(attempts[winner] if winner is not None else None)],
        )
        if winner is None:
            if output is not None:
                result.rejected = _keep_rejected(loaded, prepared, config, attempts, Path(output))
            result.error = _failure(result, prepared, targets=config.targets)
            return result
        if not proof.passed:
            from ..verify.api import unproven_export

            result.error = unproven_export(proof, result, reinit=config.reinit_degenerate)
            return result
        won = attempts[winner]
        if output is not None:
            _save_with_metadata(won, loaded, prepared, config, Path(output), force=force)
            # The winner's graph was loaded and run in onnxruntime by its judge; the saved file only adds
            # onnxgate's metadata to it, so the load is not repeated (a ViT-B: 1.7 s for a second session).
            result.structure = check_structure(output, try_ort=False)
            result.structure.ort_version, result.structure.ort_loads = _ort_version(), True
        for a in attempts:
            a.path = None
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _step(prepared: Prepared, attempts: list[Attempt], i: int, path: Path, config: ExportConfig, limits,
          note: Callable[[str], None]):
    """Run rung ``i``: export in its worker, fit, judge. When it won (and its declared shapes were audited), the
    onnxruntime runs its quick check kept (``verify.api.ort_runs``, session closed), for the proof to start from;
    otherwise None."""
    from ..verify.api import ort_runs

    attempt = attempts[i]
    note(f"attempt {i + 1}/{len(attempts)}: {attempt.label} exporter, opset {attempt.opset}")
    path.parent.mkdir()
    if (_over_budget(attempt, attempts[:i], config.ladder_budget) or _same_capture_failed(attempt, attempts[:i])
            or _ruled_out(attempt, attempts[:i])):
        return None
    out = _run_attempt(prepared, attempt, path, config)
    if out is None:
        return None
    note(f"attempt {i + 1}/{len(attempts)}: checking and running in onnxruntime")
    candidate = ort_runs(path)
    try:
        _fit(attempt, path, config, limits)
        if attempt.outcome != CHECK_FAILED:
            _judge(prepared, attempt, path, config.allow_static, out.traced_branches, candidate,
                   pinned_opset=config.opset is not None, targets=config.targets)
    except Exception as exc:
        attempt.outcome, attempt.error_class, attempt.error = RUNTIME_ERROR, type(exc).__name__, first_line(exc)
    finally:
        candidate.release()  # no session (and its threads) across the audit or the next rung's fork
    attempt.path = str(path)
    if attempt.error_class == "target":
        fallbacks = _target_fallbacks(attempt, attempts, config)
        if fallbacks:  # say why the "N/M" count grows
            note(f"attempt {i + 1}/{len(attempts)}: adding {len(fallbacks)} fallback rung(s) at an older opset "
                 f"for the target, {len(attempts) + len(fallbacks)} attempts in all now")
        attempts[i + 1:i + 1] = fallbacks
    release_freed_memory()  # the judge's PyTorch and onnxruntime buffers, before the next rung or the audit
    if attempt.outcome != OK:
        candidate.close()
        return None
    note(f"attempt {i + 1}/{len(attempts)}: checking the graph's declared shapes")
    candidate = _honest_shapes(prepared, attempt, config, out.traced_branches, candidate)
    release_freed_memory()  # the audit's exposed intermediates, before the proof
    return candidate


def _export_in_worker(prepared: Prepared, strategy: str, opset: int, path: Path, variant: str | None,
                      repairs: dict[str, list[str]], allow_static: tuple[str, ...] = ()) -> dict:
    """One export, run inside the attempt's worker process: returns plain data, never raises."""
    from .strategies import CaptureError, SpecializedDims

    try:
        with contextlib.ExitStack() as stack:
            if repairs:
                from .repair import apply_repairs

                stack.enter_context(apply_repairs(prepared.module, repairs))  # the worker's own copy
            kwargs = {"variant": variant} if variant else {}
            if strategy == "dynamo":
                kwargs["allow_static"] = tuple(allow_static)
            out = EXPORTERS[strategy](prepared, opset, path, **kwargs)
        return {"warnings": out.warnings, "traced_branches": out.traced_branches, "assumptions": out.assumptions}
    except SpecializedDims as exc:  # frozen as soon as captured: no conversion, no parity run
        return {"specialized": [d.to_dict() for d in exc.dims], "frozen": {d.dim: d.why() for d in exc.dims}}
    except Exception as exc:  # an exporter failure is an expected outcome, recorded
        from .diagnose import diagnose

        cause = exc.__cause__ if isinstance(exc, CaptureError) and exc.__cause__ is not None else exc
        # Decomposing the captured program (before any ONNX operator is chosen) fails alike at every opset too.
        before_onnx = isinstance(exc, CaptureError) or "decompose the FX graph" in str(exc)
        return {"error_class": type(cause).__name__, "error": first_line(cause),
                "stage": "capture" if before_onnx else None,
                "diagnosis": asdict(diagnose(cause, getattr(exc, "exporter_output", "")))}


def _run_attempt(prepared: Prepared, attempt: Attempt, path: Path, config: ExportConfig):
    """Export in a worker process (``worker.run_in_worker``): a crash, a hang or a memory hog is this attempt's
    outcome, and the ladder goes on. Without fork (not Linux/macOS), in-process on a deep copy when repairing."""
    from ..worker import run_in_worker
    from .strategies import StrategyOutput

    label = f"the {attempt.label} exporter (opset {attempt.opset})"
    if _can_fork():
        done = run_in_worker(_export_in_worker, prepared, attempt.strategy, attempt.opset, path, attempt.variant,
                             attempt.repairs, tuple(config.allow_static), timeout_s=config.attempt_timeout_s, label=label,
                             memory_mb=config.attempt_memory_mb or _default_memory_mb())
        attempt.seconds, attempt.peak_mb = done.seconds, done.peak_mb
        attempt.warnings += done.notes
        if not done.ok:
            attempt.outcome, attempt.error = CRASHED, done.error
            attempt.error_class = {"timeout": "timeout", "memory": "memory cap"}.get(done.status, done.signal or done.error_type)
            return None
        result = done.value
    else:
        import copy

        start = time.perf_counter()
        work = dataclasses.replace(prepared, module=copy.deepcopy(prepared.module)) if attempt.repairs else prepared
        result = _export_in_worker(work, attempt.strategy, attempt.opset, path, attempt.variant, attempt.repairs,
                                   tuple(config.allow_static))
        attempt.seconds = round(time.perf_counter() - start, 2)
    if "specialized" in result:
        attempt.outcome, attempt.error_class = FROZEN_DIM, "frozen_dim"
        attempt.specialized, attempt.frozen_dims = result["specialized"], result["frozen"]
        attempt.error = "; ".join(result["frozen"].values()) + " (not converted: every graph of this capture holds it static)"
        return None
    if "error" in result:
        attempt.outcome, attempt.error_class, attempt.error = EXPORT_ERROR, result["error_class"], result["error"]
        attempt.stage, attempt.diagnosis = result["stage"], result["diagnosis"]
        return None
    attempt.warnings += result["warnings"]
    attempt.assumptions = list(result.get("assumptions") or [])
    return StrategyOutput(path, result["warnings"], result["traced_branches"], attempt.assumptions)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def _default_memory_mb() -> int | None:
    from ..worker import default_memory_mb

    return default_memory_mb()


def _over_budget(attempt: Attempt, earlier: list[Attempt], budget: int | None) -> bool:
    """``--ladder-budget N``: once N attempts ran (skipped ones do not count), the others are skipped, named."""
    if budget is None or sum(a.outcome != SKIPPED for a in earlier) < budget:
        return False
    attempt.outcome, attempt.error_class = SKIPPED, "ladder_budget"
    attempt.error = f"not run: the ladder budget of {budget} attempt{'s' * (budget != 1)} was spent (--ladder-budget)"
    return True


def _same_capture_failed(attempt: Attempt, earlier: list[Attempt]) -> bool:
    """What fails in capture or tracing does not depend on the opset: when the same rung at another opset failed
    torch.export's capture, or froze a dim (a size specialized while capturing or tracing), skip this one — it
    would spend the same seconds to fail the same way. So for a traced branch (the trace is the same at every
    opset), an error diagnosed as ``OPSET_INDEPENDENT``, and an operator the exporter lacks at a newer opset than
    this one. Opset-dependent failures (other conversion errors, a runtime that cannot load the file, numbers)
    still get their other opsets."""
    for a in earlier:
        if (a.strategy, a.variant, a.repairs) != (attempt.strategy, attempt.variant, attempt.repairs):
            continue
        cause = (a.diagnosis or {}).get("id")
        if a.stage == "capture" or a.outcome == FROZEN_DIM:
            why = ("torch.export's capture (or the captured program's decomposition) failed" if a.stage == "capture"
                   else "it froze a dynamic dim")
        elif a.outcome == TRACED_BRANCH:
            why = "the graph held only the branch its example took"
        elif a.outcome == EXPORT_ERROR and (cause in OPSET_INDEPENDENT or (cause in NEWER_OPSET_NO_BETTER
                                                                            and a.opset >= attempt.opset)):
            why = f"it failed with {cause}"
        else:
            continue
        attempt.outcome, attempt.error_class = SKIPPED, a.error_class
        attempt.error = f"not run: at opset {a.opset} {why}, " + (
            "which an older opset does not change (it has no more operators)" if cause in NEWER_OPSET_NO_BETTER
            and a.outcome == EXPORT_ERROR and a.stage != "capture" else "which does not depend on the opset")
        return True
    return False


# Diagnoses (diagnoses.json ids) of an export error that no other opset of the same rung changes: what the model
# takes and returns, a Python decision on a tensor's value, a construct ONNX has no type or translation for. An
# operator missing at a newer opset is missing at an older one too (the reverse, ``opset_too_low``, is not).
OPSET_INDEPENDENT = frozenset({"non_tensor_input", "non_tensor_output", "forward_signature_mismatch",
                               "data_dependent_control_flow", "complex_tensor", "custom_op",
                               "custom_autograd_function"})
NEWER_OPSET_NO_BETTER = frozenset({"unsupported_aten_op"})

# Early refusal (issue 25): for a cause every plain rung failed with, the extra rungs that cannot change it, and
# why. Decided per cause and per rung, from what each rung does differently: ``auto-dims`` only declares the dims
# with Dim.AUTO; ``strict`` captures with TorchDynamo (keeps a Python int from a shape symbolic, translates numpy);
# ``draft`` assumes what it cannot prove (data-dependent guards, a custom op without a fake kernel); a ``repair``
# replaces catalogued modules (export/repair/catalogue.py: adaptive pooling). A cause absent here (a frozen dim,
# a dynamic-shape guard, a mismatch, an unknown error) rules nothing out: the extra rungs exist to fix those.
_INTERFACE = "what forward() takes or returns is the same under every capture and repair"
RULED_OUT: dict[str, dict[str, str]] = {
    "data_dependent_control_flow": {
        "auto-dims": "declaring the dims otherwise does not make a decision on a tensor's value capturable",
        "strict": "TorchDynamo refuses a Python decision on a tensor's value too",
        "repair": "the catalogued repairs replace modules that make no decision on values"},
    "unsupported_aten_op": {
        "auto-dims": "the captured program has the same operator",
        "strict": "the captured program has the same operator",
        "draft": "the captured program has the same operator",
        "repair": "no catalogued repair replaces that operator"},
    "custom_op": {
        "auto-dims": "the captured program calls the same custom operator",
        "strict": "the captured program calls the same custom operator",
        "repair": "no catalogued repair replaces a custom operator"},
    "complex_tensor": {
        "auto-dims": "ONNX has no complex type under any capture",
        "strict": "ONNX has no complex type under any capture",
        "draft": "ONNX has no complex type under any capture",
        "repair": "no catalogued repair removes complex arithmetic"},
    "custom_autograd_function": {
        "auto-dims": "the same Function reaches the exporter",
        "draft": "the same Function reaches the exporter",
        "repair": "no catalogued repair replaces an autograd.Function"},
    "non_tensor_input": {k: _INTERFACE for k in ("auto-dims", "strict", "draft", "repair")},
    "non_tensor_output": {k: _INTERFACE for k in ("auto-dims", "strict", "draft", "repair")},
    "forward_signature_mismatch": {k: _INTERFACE for k in ("auto-dims", "strict", "draft", "repair")},
}


def _cause(attempt: Attempt) -> str | None:
    """The diagnosed cause of a failed attempt (a diagnoses.json id), None when it has none."""
    return (attempt.diagnosis or {}).get("id") if attempt.outcome not in (OK, SKIPPED) else None


def _draft_repeats(attempt: Attempt, earlier: list[Attempt]) -> bool:
    """Draft export is torch.export's non-strict capture with real values propagated where a data-dependent guard
    or a missing fake kernel would stop it, retried with Dim.AUTO on a dim constraint it cannot keep (torch's
    ``draft_export``). When the non-strict rung and the Dim.AUTO rung (with the same repairs) both captured without
    any value assumption and both froze a dim, draft export captures one of those two programs: it is skipped,
    named (a tiny_vit-class refusal spent minutes there)."""
    if attempt.variant != "draft" or attempt.strategy != "dynamo":
        return False
    same = [a for a in earlier if a.strategy == "dynamo" and a.repairs == attempt.repairs
            and a.variant in (None, "auto-dims")]
    froze = {a.variant for a in same if a.outcome == FROZEN_DIM and not _value_assumptions(a)}
    if froze != {None, "auto-dims"} or any(a.outcome not in (FROZEN_DIM, SKIPPED) for a in same):
        return False
    dims = sorted({d for a in same for d in a.frozen_dims})
    attempt.outcome, attempt.error_class = SKIPPED, "frozen_dim"
    attempt.error = (f"not run: the non-strict and Dim.AUTO captures it falls back on both froze {', '.join(dims)} "
                     "and assumed no values, which draft export would not change")
    return True


def _branch_frozen(attempt: Attempt, earlier: list[Attempt]) -> bool:
    """A capture variant (Dim.AUTO, strict, draft) is skipped when the non-strict capture with the same repairs
    pinned a declared dim by a Python branch on a size comparison in the model's code (``guards.branch_frozen``:
    ``if H == self.window_size``, and no size turned into a Python number anywhere in that capture): every capture
    evaluates that branch on the example's size and guards on it, so this rung would freeze the same dim. The
    TorchScript and repair rungs still run (a trace or a replaced module computes sizes otherwise)."""
    if attempt.strategy != "dynamo" or attempt.variant not in ("auto-dims", "strict", "draft"):
        return False
    for a in earlier:
        found = (branch_frozen(a.specialized) if a.strategy == "dynamo" and a.variant is None
                 and a.repairs == attempt.repairs and a.outcome == FROZEN_DIM else None)
        if found:
            branches = [g for g in found["guards"] if g["kind"] == "branch" and g.get("site")]
            guard = next((g for g in branches if g["expr"].startswith("Eq(")), branches[0] if branches else {})
            code = f" (`{guard['code'][:100]}`)" if guard.get("code") else ""
            attempt.outcome, attempt.error_class = SKIPPED, "frozen_dim"
            attempt.error = (f"not run: the non-strict capture pinned {found['dim']} to {found['value']} by a Python "
                             f"branch on a size comparison at {guard.get('site')}{code}, which this capture "
                             "evaluates on the example's size and guards on the same way")
            return True
    return False


def _ruled_out(attempt: Attempt, earlier: list[Attempt]) -> bool:
    """Skip an extra rung (a repair, a capture variant) when every plain rung that ran failed with the same
    diagnosed cause and this rung cannot change that cause (``RULED_OUT``); the attempt is recorded as skipped with
    the reason. A repair of an operator's module is never ruled out by that operator (adaptive pooling)."""
    if not (attempt.repairs or attempt.variant):
        return False
    if _branch_frozen(attempt, earlier) or _draft_repeats(attempt, earlier):
        return True
    ran = [a for a in earlier if not a.repairs and not a.variant and a.outcome != SKIPPED]
    causes = {_cause(a) for a in ran}
    if not ran or len(causes) != 1 or None in causes:
        return False
    cause = causes.pop()
    kinds = ([attempt.variant] if attempt.variant else []) + (["repair"] if attempt.repairs else [])
    reasons = [RULED_OUT.get(cause, {}).get(k) for k in kinds]
    if not reasons or None in reasons:  # one part of the rung may change it: it runs
        return False
    if cause == "custom_op" and attempt.variant == "draft" and any(a.stage == "capture" for a in ran):
        return False  # draft export stands in for a missing fake kernel
    if attempt.repairs and cause == "unsupported_aten_op":
        operators = " ".join(str((a.diagnosis or {}).get("operator") or "") for a in ran).lower()
        if not operators.strip() or "pool" in operators:  # the operator unknown, or one a repair may replace
            return False
    attempt.outcome, attempt.error_class = SKIPPED, cause
    attempt.error = f"not run: every plain rung failed with {cause}, which this rung cannot change: {reasons[0]}"
    return True


def _extra_rungs(prepared: Prepared, attempts: list[Attempt], config: ExportConfig) -> list[Attempt]:
    """After every planned rung failed or froze a dim: the repair rung (catalogue patterns this model holds, each
    exporter), then the dynamo exporter's other capture variants. Added once; none with --no-repair, or when the
    plan pins a strategy the rung does not use."""
    if not config.repair or any(a.repairs for a in attempts):
        return []
    from .repair import applicable

    first = {}  # each strategy's first (newest) planned opset
    for a in attempts:
        if not a.variant:
            first.setdefault(a.strategy, a.opset)
    found = applicable(prepared.module, prepared)
    rungs = [Attempt(s, o, repairs=found) for s, o in first.items()] if found else []
    if "dynamo" in first:
        rungs += [Attempt("dynamo", first["dynamo"], variant=v, repairs=found) for v in ("auto-dims", "strict", "draft")]
    tried = {(a.strategy, a.opset, a.variant, json.dumps(a.repairs, sort_keys=True)) for a in attempts}
    return [r for r in rungs if (r.strategy, r.opset, r.variant, json.dumps(r.repairs, sort_keys=True)) not in tried]


#: For tests only: a dynamo capture variant (strategies.VARIANTS, e.g. "draft") tried before the planned rungs, so a
#: test can hold the ladder's judgement of that rung to a model the plain rungs would have handled first.
FIRST_RUNG_ENV = "ONNXGATE_TEST_FIRST_RUNG"


def _forced_first(plan: list[tuple[str, int]]) -> list[Attempt]:
    import os

    from ..errors import BadInputError
    from .strategies import VARIANTS

    variant = os.environ.get(FIRST_RUNG_ENV, "").strip()
    if not variant:
        return []
    if variant not in VARIANTS:
        raise BadInputError(f"{FIRST_RUNG_ENV}={variant!r} is not a dynamo capture variant.",
                            hint=f"Use one of {', '.join(VARIANTS)}, or unset it (it is meant for tests).")
    opset = next((o for s, o in plan if s == "dynamo"), None)
    return [Attempt("dynamo", opset, variant=variant)] if opset is not None else []


def _prove_or_demote(prepared: Prepared, attempts: list[Attempt], attempt: Attempt, config: ExportConfig,
                     note: Callable[[str], None], candidate=None):
    """The quick winner's full verification. When it finds a dim frozen at a size the quick check did not reach (an
    AlexNet traced at 224 is right at 225..255, where its features stay 6x6, and wrong at 192), the attempt is
    demoted to ``frozen_dim`` and None returned, so the ladder goes on to its next rungs; any other outcome (passed,
    or a domain narrower than declared) is the ladder's verdict on this winner."""
    dims = dict(prepared.dims)
    proof = _prove(prepared, attempt, config, note, _judged_probes(prepared, attempts), candidate)
    if proof.passed or not [d for d in proof.frozen if d not in getattr(proof, "allowed_static", ())]:
        return proof
    prepared.dims = dims
    attempt.outcome, attempt.error_class, attempt.error = FROZEN_DIM, "frozen_dim", proof.summary()
    return None


def _judged_probes(prepared: Prepared, attempts: list[Attempt]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Every probe a rung so far was judged by, for the winner's proof: the example itself, and the value probes
    when any rung assumed values (a TorchScript rung rejected on them must not be followed by a winner never
    faced with them). The sign and scale variants and the off-trace sizes are the proof's own."""
    probes = [("example", prepared.example)]
    if any(a.assumptions for a in attempts if a.outcome != SKIPPED):
        probes += _branch_probes(prepared)
    return probes


def _prove(prepared: Prepared, attempt: Attempt, config: ExportConfig, note: Callable[[str], None],
           probes: list[tuple[str, dict[str, np.ndarray]]] | None = None, candidate=None):
    """The winner's full verification (``verify.api.verify_export``): the shape domain of every dynamic dim and
    whether these weights can be verified at all. Its report replaces the quick one; an accepted domain
    (``--accept-domain``) becomes what the model claims (``prepared.dims``: the metadata and the result).
    ``candidate``: the quick check's onnxruntime runs of this file (``_step``), whose outputs it starts from."""
    from ..verify.api import export_runs, verify_export

    note("verifying the winner: the shape domain of every dynamic dim")
    static = attempt.parity.static_in_graph if attempt.parity else None
    with export_runs(prepared, attempt.path, candidate) as runs:  # a second judgment at the noise reruns nothing
        report = verify_export(prepared, attempt.path, config, static, probes=probes, tolerances=prepared.noise,
                               runs=runs)
        if not report.passed and prepared.noise is None and numeric_miss(report) and noise_of(prepared, runs[0].run):
            note("verifying the winner again at the model's own float32 noise (the same outputs, judged again)")
            report = verify_export(prepared, attempt.path, config, static, probes=probes, tolerances=prepared.noise,
                                   runs=runs)
    attempt.parity, attempt.frozen_dims = report, {**attempt.frozen_dims, **report.frozen}
    prepared.dims = report.claimed_dims(prepared.dims)
    return report


def numeric_miss(report) -> bool:
    """A parity that failed in its numbers alone: every feed ran, every output has the reference's shape and a
    finite error, no dim froze. Such a miss may be the model's own float32 noise exceeding the dtype default
    (random-init deep nets with exploding activations; issue 28), which ``noise_of`` measures."""
    import math

    failed = [case for case in report.cases if not case.passed]
    return bool(failed) and not report.frozen and all(
        case.error is None and all(c.passed or (c.shape_ref == c.shape_got and c.max_abs_err is not None
                                                and math.isfinite(c.max_abs_err)) for c in case.comparisons)
        for case in failed)


def noise_of(prepared: Prepared, run32=None) -> bool:
    """Measure, once, each float32 output's parity tolerance at the model's own float32 noise into
    ``prepared.noise`` (the looser of the dtype default and k x the noise: ``verify.api.noise_tolerances``, what
    ``verify`` judges its parity at when no tolerance is given). True when a tolerance was found; the sharp noise
    gate stays with the verify stage. ``run32``: the float32 PyTorch run to measure with (the proof's
    ``export_runs``, which kept the traced feeds' outputs); default: a new one."""
    from ..verify.api import noise_tolerances

    if prepared.noise is None:
        prepared.noise = noise_tolerances(prepared.module, prepared.specs, prepared.dims, prepared.output_names,
                                          run32=run32)
    return bool(prepared.noise)


def _shape_warnings(attempt: Attempt | None, limit: int = 6) -> list[str]:
    """The winner's declared-shape corrections, for the result's warnings (all of them stay in attempt.shapes)."""
    if attempt is None:
        return []
    lines = [w for w in attempt.warnings if w.startswith(("graph shape", "intermediate values not checked"))]
    return lines[:limit] + ([f"... and {len(lines) - limit} more graph shape corrections (see the attempt's "
                             "shapes)"] if len(lines) > limit else [])


def _save_with_metadata(attempt: Attempt, loaded, prepared: Prepared, config: ExportConfig, output: Path, *,
                        force: bool) -> None:
    """The winner's file with onnxgate's metadata; a large model's weights file is moved, never read into memory."""
    model = serde.load(attempt.path, load_external_data=False)
    del model.metadata_props[:]
    for key, value in _metadata(loaded, prepared, config, attempt).items():
        model.metadata_props.add(key=key, value=value)
    serde.save_moving_external_data(model, Path(attempt.path).parent, output, force=force)


def _keep_rejected(loaded, prepared: Prepared, config: ExportConfig, attempts: list[Attempt], output: Path) -> str | None:
    """An export that ran but computed wrong results is kept beside the output as ``NAME.rejected.onnx``, never
    under the output's own name, so `onnxgate verify --localize` (and the pipeline's report) can show where it
    goes wrong."""
    ran = [a for a in attempts if a.outcome in (FROZEN_DIM, MISMATCH) and a.path]
    if not ran:
        return None
    # Prefer a graph that kept the dim symbolic: it runs at the failing size, so localization can show where.
    ran.sort(key=lambda a: a.parity is not None and bool(a.parity.static_in_graph))
    rejected = output.with_name(output.name.removesuffix(".onnx") + ".rejected.onnx")
    _save_with_metadata(ran[0], loaded, prepared, config, rejected, force=True)
    return str(rejected)


def _failure(result: ExportResult, prepared: Prepared, *, targets: tuple[str, ...] = ()) -> Exception:
    from .diagnose import Diagnosis, format_message, summarize

    # The diagnosis comes from the plain rungs: the extra rungs (repairs, capture variants) are listed as tried
    # (``_extras_tried``), so a draft export that froze a dim cannot hide the data-dependent branch behind it.
    every = result.attempts
    attempts = [a for a in every if not a.repairs and not a.variant] or every
    frozen = [a for a in attempts if a.outcome == FROZEN_DIM]
    if frozen:
        dims = {}
        for a in frozen:
            for name, why in a.frozen_dims.items():
                dims.setdefault(name, why)
        names = ", ".join(f"{n} (frozen at {prepared.dims[n].example})" for n in dims)
        detail = "; ".join(f"dim {n}: {why}" for n, why in dims.items())
        return ParityError(
            result=result, message=f"Every export that ran computes wrong results at sizes other than the traced one for the dynamic "
            f"dim(s) {names}: {detail}. The model bakes the traced size in (a Python int taken from a shape, "
            "or a size the exporter specialized)." + _extras_tried(every),
            hint="Keep sizes symbolic in forward() (use tensor.shape inside torch ops, reshape(-1, ...), "
                 "not int(x.shape[0])), or accept the dim as static with --allow-static "
                 f"{' --allow-static '.join(dims)}.",
        )
    mismatched = [a for a in attempts if a.outcome == MISMATCH]
    if mismatched:
        return ParityError(
            result=result, message=f"Every export that ran disagrees with PyTorch at the traced shape: {mismatched[0].error}."
            + _extras_tried(every),
            hint="Run `onnxgate verify --localize` to find the first diverging layer.",
        )
    unfit = [a for a in attempts if a.error_class in ("target", "opset", "ir_version")]
    if targets and unfit:
        from ..errors import RuntimeIncompatibleError

        why: dict[str, list[str]] = {}
        for a in unfit:
            why.setdefault(a.error, []).append(f"{a.strategy} at opset {a.opset}")
        return RuntimeIncompatibleError(
            result=result, message=f"No export fits {', '.join(targets)}: "
            + "; ".join(f"{', '.join(where)}: {error}" for error, where in why.items()) + ".",
            hint="Target a newer release of the runtime, or replace the operators it lacks in the model's code.",
        )
    diags = [Diagnosis(**a.diagnosis) for a in attempts if a.diagnosis]
    if diags:
        d = summarize(diags)
        result.diagnosis = asdict(d)
        exc = ExportError(format_message(d) + _extras_tried(every), result=result)
    else:
        last = attempts[-1]
        exc = ExportError(f"No export attempt produced a working model; the last one ended in {last.outcome}: "
                          f"{last.error}.{_extras_tried(every)}", hint="See the attempts table above.", result=result)
    return exc


def _extras_tried(attempts: list[Attempt]) -> str:
    """What the repair rung and the capture variants tried, for the failure message (none: say there was none)."""
    ran = [a for a in attempts if a.outcome != SKIPPED]  # a rung skipped is named as not run, never as tried
    repairs = {name: modules for a in ran for name, modules in a.repairs.items()}
    variants = sorted({a.variant for a in ran if a.variant})
    ruled_out = {a.error_class: [] for a in attempts if a.outcome == SKIPPED and (a.variant or a.repairs)
                 and (a.error_class in RULED_OUT or a.error_class == "frozen_dim")}
    for a in attempts:
        if a.outcome == SKIPPED and (a.variant or a.repairs) and a.error_class in ruled_out:
            ruled_out[a.error_class].append(a.label)
    crashed = [f"{a.label} at opset {a.opset}: {a.error}" for a in attempts if a.outcome == CRASHED]
    parts = []
    if repairs:
        parts.append("Repairs tried: " + "; ".join(f"{n} (on {', '.join(m[:4])}{' ...' if len(m) > 4 else ''})"
                                                   for n, m in repairs.items()) + ".")
    elif any(a.variant for a in attempts) and not any(a.repairs for a in attempts):
        parts.append("No catalogued repair applies to this model (export/repair/catalogue.py).")
    if variants:
        parts.append(f"Capture variants tried: {', '.join(variants)}.")
    for cause, labels in ruled_out.items():
        parts.append(f"Not run, as they cannot change {cause}: {', '.join(dict.fromkeys(labels))}.")
    assumed = [f"{a.label}: it assumed {describe_assumption(_value_assumptions(a)[0])}" for a in attempts
               if a.variant and a.error_class == "assumption" and _value_assumptions(a)]
    if assumed:
        parts.append("Refused for assuming values the graph holds one side of: " + "; ".join(assumed) + ".")
    if crashed:
        parts.append("Crashed: " + "; ".join(crashed) + ".")
    return (" " + " ".join(parts)) if parts else ""
