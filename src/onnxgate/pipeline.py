"""The main job: one model through export → check → verify (→ bundle), into one report with one verdict.

Each stage returns a typed result; the pipeline collects them into ``report.json`` (schema version
``REPORT_SCHEMA_VERSION``), and the report alone decides the exit code.
Stages still to come (optimize, quantize, bench, HTML) append to the same report.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ._version import __version__
from .errors import BadInputError, ExitCode, OnnxgateError, OutputExistsError
from .fsutil import atomic_write_text
from .spec import ExportConfig

REPORT_SCHEMA_VERSION = "1"


@dataclass
class PipelineReport:
    ref: str
    out_dir: str
    stages: dict[str, dict] = field(default_factory=dict)
    verdict: str = "fail"
    exit_code: int = int(ExitCode.INTERNAL)
    reason: str | None = None

    def to_dict(self) -> dict:
        return {"schema_version": REPORT_SCHEMA_VERSION, "onnxgate_version": __version__, "ref": self.ref,
                "out_dir": self.out_dir, "verdict": self.verdict, "exit_code": self.exit_code,
                "reason": self.reason, "stages": self.stages}

    def to_html(self) -> str:
        from .report import render_html

        return render_html(self.to_dict())

    def _repr_html_(self) -> str:  # Jupyter renders the report inline
        return self.to_html()


def _prepare_out_dir(out_dir: Path, force: bool) -> None:
    if not out_dir.parent.is_dir():
        raise BadInputError(f"Cannot write to '{out_dir}': the folder '{out_dir.parent}' does not exist.",
                            hint="Create it first, or choose another output folder.")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise OutputExistsError(f"The output folder '{out_dir}' exists and is not empty.",
                                hint="Pass --force to overwrite its files, or choose another folder with -o.")
    out_dir.mkdir(exist_ok=True)


def run(ref, out_dir: str | Path, *, config: ExportConfig | None = None, data: list[dict] | None = None,
        evaluate: Callable | None = None, force: bool = False, bundle: bool = True, targets: tuple[str, ...] = (),
        bench: str | None = "quick", optimize: bool = True, quantize: QuantizeConfig | None = None,
        progress: Callable[[str], None] | None = None) -> PipelineReport:
    """Run the pipeline on ``ref`` (a reference string or a LoadedModel) into ``out_dir``.

    ``data``: real feeds verified besides the random ones. ``evaluate(runner) -> dict``: an accuracy measurement
    run on both PyTorch and ONNX Runtime (the demo measures top-1 on the digits test split).
    ``bench``: "quick" (under a minute), "full", or None to skip the benchmark stage. ``optimize``: write the
    verified, optimized ``model.opt.onnx``. ``quantize``: an INT8 variant within an accuracy budget.
    Expected failures end up in the report (verdict, exit code, reason), not as exceptions.
    """
    from .bundle import verify_bundle
    from .export.ladder import run_ladder
    from .sources import LoadedModel, load_model
    from .verify.api import verify

    note = progress or (lambda _m: None)
    out = Path(out_dir)
    _prepare_out_dir(out, force)
    config = config or ExportConfig()
    loaded = ref if isinstance(ref, LoadedModel) else load_model(ref)
    report = PipelineReport(loaded.ref, str(out))
    model_path = out / "model.onnx"
    try:
        start = time.perf_counter()
        exported = run_ladder(loaded, config, model_path, force=True, progress=note)
        report.stages["export"] = {**exported.to_dict(), "seconds": round(time.perf_counter() - start, 2)}
        note("verifying parity at every claimed shape")
        start = time.perf_counter()
        verified = verify(model_path, loaded, config=config, data=data, targets=targets)
        report.stages["verify"] = {**verified.to_dict(), "seconds": round(time.perf_counter() - start, 2)}
        if verified.targets:
            report.stages["targets"] = [t.to_dict() for t in verified.targets]
        if evaluate is not None:
            note("measuring accuracy on real data")
            report.stages["accuracy"] = _accuracy(evaluate, loaded, exported, model_path)
        variants = []
        if verified.passed and optimize:
            variants += _optimize_stage(report, model_path, out, note)
        if verified.passed and quantize is not None:
            variants += _quantize_stage(report, model_path, out, quantize, note)
        if verified.passed and bench:
            from .bench import BenchSettings
            from .bench import bench as run_bench

            note("benchmarking against PyTorch eager")
            settings = BenchSettings.quick() if bench == "quick" else BenchSettings()
            report.stages["bench"] = run_bench(model_path, against=loaded, variants=variants, config=config,
                                               settings=settings, base_verified=True, progress=note).to_dict()
        if verified.passed and bundle:
            note("writing the bundle")
            path = write_verified_bundle(loaded, exported, verified, out / "bundle", force=True)
            report.stages["bundle"] = {"path": str(path), "verification": verify_bundle(path).to_dict()}
        unsupported = [t for t in verified.targets if not t.supported]
        if not all(p.passed for p in verified.parities):
            report.verdict, report.exit_code = "fail", int(ExitCode.PARITY_FAILED)
            report.reason = "; ".join(p.summary() for p in verified.parities if not p.passed)
            if verified.localization:
                report.reason += f" — {verified.localization['summary']}"
        elif quantize is not None and not report.stages["quantize"]["passed"]:
            report.verdict, report.exit_code = "fail", int(ExitCode.ACCURACY_BUDGET)
            report.reason = report.stages["quantize"]["summary"]
        elif not verified.passed:
            report.verdict, report.exit_code = "fail", int(ExitCode.RUNTIME_INCOMPATIBLE)
            report.reason = "; ".join([f"{t.target}: {'; '.join(t.reasons)}" for t in unsupported]
                                      or [verified.structure.ort_error or verified.structure.checker_error or "structural check failed"])
        else:
            report.verdict, report.exit_code = "pass", int(ExitCode.OK)
    except OnnxgateError as exc:
        report.verdict, report.exit_code, report.reason = "fail", int(exc.exit_code), str(exc)
        if exc.result is not None and hasattr(exc.result, "to_dict"):
            report.stages["export"] = exc.result.to_dict()
            if getattr(exc.result, "rejected", None):
                note("localizing the divergence in the rejected export")
                rejected = verify(exc.result.rejected, loaded, config=config, data=data)
                report.stages["verify"] = rejected.to_dict()
                failed = [p.summary() for p in rejected.parities if not p.passed]
                if failed:
                    report.reason += f" The rejected export ({Path(exc.result.rejected).name}): {'; '.join(failed)}."
                if rejected.localization:
                    report.reason += f" Localizer: {rejected.localization['summary']}."
    from .envinfo import capture

    report.stages["environment"] = capture()
    atomic_write_text(out / "report.json", json.dumps(report.to_dict(), indent=2, default=str, ensure_ascii=False),
                      force=True)
    atomic_write_text(out / "report.html", report.to_html(), force=True)
    return report


@dataclass(frozen=True)
class QuantizeConfig:
    """The INT8 stage: ``calib``/``eval_data`` are DATA (npz, image folder, file.py:fn) or in-memory feeds."""

    mode: str = "static"
    calib: object = None
    eval_data: object = None
    labels: object = None
    method: str = "minmax"
    max_accuracy_drop: float | None = None
    max_error: float | None = None


def _optimize_stage(report: PipelineReport, model_path: Path, out: Path, note) -> list:
    from .bench import Variant
    from .transform import optimize

    note("optimizing (each transform re-verified)")
    result = optimize(model_path, out / "model.opt.onnx", force=True, progress=note)
    report.stages["optimize"] = {**result.to_dict(), "path": str(out / "model.opt.onnx") if result.passed else None}
    return [Variant("optimized", str(out / "model.opt.onnx"), verified=True)] if result.passed else []


def _quantize_stage(report: PipelineReport, model_path: Path, out: Path, cfg: QuantizeConfig, note) -> list:
    from .bench import Variant
    from .transform import quantize

    note(f"quantizing to INT8 ({cfg.mode})")
    result = quantize(model_path, out / "model.int8.onnx", mode=cfg.mode, calib=cfg.calib, eval_data=cfg.eval_data,
                      labels=cfg.labels, method=cfg.method, max_accuracy_drop=cfg.max_accuracy_drop,
                      max_error=cfg.max_error, force=True, progress=note)
    report.stages["quantize"] = {**result.to_dict(), "passed": result.passed, "summary": result.summary(),
                                 "path": str(out / "model.int8.onnx") if result.passed else None}
    return [Variant("int8", str(out / "model.int8.onnx"), verified=True)] if result.passed else []


def write_verified_bundle(loaded, exported, verified, out_dir: Path, *, force: bool, tarball: bool = False) -> Path:
    """Bundle an exported model that passed verification: golden inputs are a seeded random feed at the traced
    sizes, reference outputs come from PyTorch, tolerances are the ones verification used."""
    from .bundle import write_bundle
    from .runtimes.torch_runner import TorchRunner
    from .verify.api import specs_from_model
    from .verify.inputs import random_inputs

    specs, dims = specs_from_model(verified.structure, ExportConfig())
    golden = random_inputs(specs, {n: d.example for n, d in dims.items()}, seed=0)
    reference = TorchRunner(loaded.module, input_names=[s.name for s in specs],
                            output_names=[t.name for t in verified.structure.outputs]).run(golden)
    first_case = verified.parities[0].cases[0]
    tolerances = {c.name: (c.tolerance.rtol, c.tolerance.atol) for c in first_case.comparisons}
    won = exported.attempts[exported.winner]
    export_info = {"strategy": won.strategy, "opset": won.opset_emitted or won.opset, "seconds": won.seconds,
                   "peak_mb": won.peak_mb, "attempts": len([a for a in exported.attempts if a.outcome != "skipped"])}
    verification = {"passed": verified.passed, "summary": [p.summary() for p in verified.parities]}
    return write_bundle(out_dir, model_path=verified.model, golden_inputs=golden, reference_outputs=reference,
                        tolerances=tolerances, export_info=export_info, verification=verification,
                        source_ref=loaded.ref, force=force, tarball=tarball)


def bundle_from_ref(ref: str, out_dir: str | Path, *, config: ExportConfig | None = None, force: bool = False,
                    tarball: bool = False, progress: Callable[[str], None] | None = None) -> Path:
    """`onnxgate bundle REF -o DIR`: export, verify against PyTorch, and write the bundle to ``DIR``.
    Raises ParityError when verification fails: an unproven model is never bundled."""
    import tempfile

    from .errors import ParityError
    from .export.ladder import run_ladder
    from .fsutil import check_target
    from .sources import load_model
    from .verify.api import verify

    note = progress or (lambda _m: None)
    check_target(Path(out_dir), force=force, kind="folder")
    loaded = load_model(ref)
    config = config or ExportConfig()
    with tempfile.TemporaryDirectory(prefix="onnxgate-bundle-") as tmp:
        model_path = Path(tmp) / "model.onnx"
        exported = run_ladder(loaded, config, model_path, force=True, progress=note)
        note("verifying parity at every claimed shape")
        verified = verify(model_path, loaded, config=config)
        if not verified.passed:
            raise ParityError("; ".join(p.summary() for p in verified.parities if not p.passed),
                              hint="Run `onnxgate verify --localize` on the exported model to find the diverging layer.")
        note("writing the bundle")
        return write_verified_bundle(loaded, exported, verified, Path(out_dir), force=force, tarball=tarball)


def _accuracy(evaluate: Callable, loaded, exported, model_path: Path) -> dict:
    from .runtimes.ort import OrtRunner
    from .runtimes.torch_runner import TorchRunner

    names = [s.split(":")[0] for s in exported.inputs]
    torch_metrics = evaluate(TorchRunner(loaded.module, input_names=names, output_names=exported.outputs))
    onnx_metrics = evaluate(OrtRunner(model_path))
    return {"pytorch": torch_metrics, "onnxruntime": onnx_metrics}


def run_demo(out_dir: str | Path = "onnxgate-demo", *, force: bool = False,
             progress: Callable[[str], None] | None = None) -> PipelineReport:
    """The built-in example: a small CNN trained on scikit-learn's real digits images (cached after the first
    run), exported with a dynamic batch, verified on random and real feeds at batch 1..64, accuracy measured on
    the held-out split in PyTorch and ONNX Runtime, optimized, quantized to INT8 with calibration on the training
    split within a 1-point top-1 budget, benchmarked and bundled."""
    from .errors import require
    from .examples import digits
    from .sources import load_model
    from .spec import parse_dim, parse_input

    require("sklearn", "dev", "The built-in demo (scikit-learn's digits data set)")
    note = progress or (lambda _m: None)
    note("loading the digits CNN (trained on first use, then cached)")
    loaded = load_model("onnxgate.examples.digits:trained_digits_cnn")
    _, _, x_test, y_test = digits.digits_split()
    config = ExportConfig(inputs=(parse_input("x:Bx1x8x8:float32"),), dims=(parse_dim("B=1..64@4"),),
                          labels=tuple(str(i) for i in range(10)), meta={"dataset": "scikit-learn digits"})

    def evaluate(runner) -> dict:
        logits = np.concatenate([runner.run({"x": x_test[i:i + 64]})["output"] for i in range(0, len(x_test), 64)])
        return {"top1": digits.accuracy(logits, y_test), "samples": int(len(y_test))}

    data = [{"x": x_test[i:i + 16]} for i in range(0, 64, 16)]
    x_train, _, _, _ = digits.digits_split()
    int8 = QuantizeConfig(calib=[{"x": x_train[i:i + 64]} for i in range(0, 512, 64)],
                          eval_data=[{"x": x_test}], labels=y_test, max_accuracy_drop=1.0)
    return run(loaded, out_dir, config=config, data=data, evaluate=evaluate, force=force, quantize=int8, progress=note)
