"""The main job: one model through a list of stages into one report, with one verdict from the judge.

``STAGES`` runs in order over one ``Job`` (the model, its configuration and the typed results so far); each stage
records its facts in ``report.stages`` and leaves its typed result on the job. Before each stage the run announces
it (``on_stage``, a ``stages.Stage``; in the console script's child also into the file its parent reads when the
child dies): a watcher books a crash, a timeout or a memory kill in the stage the process was in, never by reading
progress messages. After the last stage, ``outcome.judge_run`` gives the verdict (an error that ended the run
early, else the first failed stage result) and the stage it came from; the report records them: the same rules as
``onnxgate verify`` / ``inspect`` / ``quantize`` apply, so the same failure gives the same code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import BadInputError, OnnxgateError, OutputExistsError
from .fsutil import atomic_write_text
from .outcome import Outcome, judge, judge_run, raise_for
from .report.model import REPORT_SCHEMA_VERSION, PipelineReport
from .spec import ExportConfig, QuantizeConfig, RunConfig
from .stages import Stage, stage_file_from_env

__all__ = ["run", "run_demo", "bundle_from_ref", "write_verified_bundle", "QuantizeConfig", "PipelineReport",
           "REPORT_SCHEMA_VERSION", "STAGES", "Stage"]


def _prepare_out_dir(out_dir: Path, force: bool) -> None:
    if not out_dir.parent.is_dir():
        raise BadInputError(f"Cannot write to '{out_dir}': the folder '{out_dir.parent}' does not exist.",
                            hint="Create it first, or choose another output folder.")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise OutputExistsError(f"The output folder '{out_dir}' exists and is not empty.",
                                hint="Pass --force to overwrite its files, or choose another folder with -o.")
    out_dir.mkdir(exist_ok=True)


@dataclass
class Job:
    """One pipeline run: what the stages share. Typed results accumulate as the stages run."""

    loaded: Any
    config: ExportConfig
    out: Path
    note: Callable[[str], None]
    data: list[dict] | None = None
    evaluate: Callable | None = None
    targets: tuple[str, ...] = ()
    bench: str | None = "quick"
    optimize: bool = True
    quantize: QuantizeConfig | None = None
    bundle: bool = True
    deploy: tuple[str, ...] = ()  # deploy targets (onnxgate deploy / --deploy): one verified artifact each
    eval_data: Any = None  # the accuracy stage's DATA (--eval); else the quantize stage's evaluation data
    eval_labels: Any = None  # one label per sample of eval_data, winning over labels found in it
    preprocess: str | None = None  # reads image-folder eval_data (else the quantize stage's, else the metadata)
    photos: tuple[str, ...] = ()  # the DATA arguments ``data`` was read from (image folders, labelled CSVs...)
    hunt_budget: int | None = None  # evaluations of the divergence hunt (None: verify.hunt.DEFAULT_BUDGET; 0: off)
    exported: Any = None
    accuracy: Any = None  # (evaluation Dataset, PyTorch's logits on it): each shipped variant is measured on both
    verified: Any = None
    hunted: Any = None  # the divergence hunt's HuntResult (verify/hunt.py), once the sampled proof passed
    golden_extra: dict | None = None  # the hunted row(s) the bundle's golden set adds (``_hunted_rows``)
    golden_replaced: bool = False  # ... or the hunted feed that replaces it (a batch that admits no more rows)
    quantized: Any = None
    variants: list = field(default_factory=list)
    deployed: Any = None
    failure: Outcome | None = None  # an error that ended the run early (the remaining stages are skipped)
    stage: Stage = Stage.LOAD  # the stage the run is in (the one that failed, once it ended early)

    @property
    def model_path(self) -> Path:
        return self.out / "model.onnx"

    @property
    def proven(self) -> bool:
        """The exported model verified (and the divergence hunt found no failing feed): the later stages (optimize
        ... bundle) only run on a proven model."""
        return (self.verified is not None and self.verified.passed
                and (self.hunted is None or self.hunted.passed))


def run(ref, out_dir: str | Path, *, config: ExportConfig | None = None, data: list[dict] | None = None,
        evaluate: Callable | None = None, force: bool = False, bundle: bool = True, targets: tuple[str, ...] = (),
        bench: str | None = "quick", optimize: bool = True, quantize: QuantizeConfig | None = None,
        progress: Callable[[str], None] | None = None, weights: str | None = None, arch: str | None = None,
        trust_pickle: bool = False, deploy: tuple[str, ...] = (), eval_data: Any = None, eval_labels: Any = None,
        preprocess: str | None = None, on_stage: Callable[[Stage], None] | None = None,
        hunt_budget: int | None = None) -> PipelineReport:
    """Run the pipeline on ``ref`` (a reference string or a LoadedModel) into ``out_dir``.

    ``data``: real feeds verified besides the random ones. ``evaluate(runner) -> dict``: an accuracy measurement
    run on both PyTorch and ONNX Runtime (the demo measures top-1 on the digits test split). Without one,
    ``eval_data`` (DATA: npz, image folder, file.py:fn, or feeds; ``eval_labels`` one label per sample; else
    ``quantize.eval_data``) gets top-1/top-5 of PyTorch, the exported model and each shipped variant, against the
    data's true labels, or agreement with PyTorch when it has none (``report.stages["accuracy"]``).
    ``bench``: "quick" (under a minute), "full", or None to skip the benchmark stage. ``optimize``: write the
    verified, optimized ``model.opt.onnx``. ``quantize``: an INT8 variant within an accuracy budget.
    ``deploy``: targets (``deploy.TARGETS``) converted from the verified file and each verified against PyTorch.
    ``data`` may also name DATA (an image folder, a labelled CSV, an .npz...), read with ``config.inputs``.
    ``preprocess`` (image DATA) is recorded in the model's metadata when the config records none, so that the
    bundle serves what was proven; whenever image DATA is given (``data``, ``eval_data``, the quantize stage's) and
    a preprocessing is recorded or given, the verify stage proves the served bytes -> label path on a sample of
    those photos (``_prove_preprocessing``; ``report.stages["preprocessing"]``, the claim's ``preprocess``).
    ``on_stage(stage)``: called as the run enters each stage (``stages.Stage``), before any of its work.
    ``hunt_budget``: evaluations of the divergence hunt run after the sampled proof passes (``verify/hunt.py``;
    None: ``hunt.DEFAULT_BUDGET``, 0: no hunt); a feed it finds outside the tolerance fails the verification
    (exit 4), and the worst feed it found joins the bundle's golden set (``report.stages["hunt"]``).
    Expected failures end up in the report (verdict, exit code, reason, stage), not as exceptions.
    """
    from .sources import LoadedModel, load_model

    announce = _announcer(on_stage)
    announce(Stage.LOAD)
    if deploy:  # a missing converter is exit 8 now, not after the export
        from .deploy.api import check_extras

        check_extras(tuple(deploy))
    config = _recording(config or ExportConfig(), preprocess)
    hunt_budget = _hunt_budget(hunt_budget)  # refused before any output exists
    data, photos = _read_data(data, config, preprocess)  # a bad --data is refused before any output exists
    out = Path(out_dir)
    _prepare_out_dir(out, force)
    loaded = ref if isinstance(ref, LoadedModel) else load_model(ref, weights=weights, arch=arch,
                                                                 trust_pickle=trust_pickle)
    targets = tuple(targets) or config.targets  # the targets steer the export as well as verification
    job = Job(loaded, replace(config, targets=targets), out, progress or (lambda _m: None), data=data,
              evaluate=evaluate, targets=targets, bench=bench, optimize=optimize, quantize=quantize, bundle=bundle,
              deploy=tuple(deploy), eval_data=eval_data, eval_labels=eval_labels, preprocess=preprocess,
              photos=photos, hunt_budget=hunt_budget)
    report = PipelineReport(loaded.ref, str(out))
    reached = Stage.LOAD
    for stage, step in STAGES:
        job.stage = stage
        announce(stage)
        with _peak_memory(stage, report):
            try:
                step(job, report)
            except OnnxgateError as exc:
                job.failure = judge(exc)
        if stage.value in report.stages:
            reached = stage
        if job.failure is not None:
            break
    _conclude(job, report, reached)
    _write_reports(report, out)
    return report


def run_job(job: RunConfig, *, out_dir: str | Path | None = None, force: bool = False,
            progress: Callable[[str], None] | None = None,
            on_stage: Callable[[Stage], None] | None = None) -> PipelineReport:
    """``onnxgate run``: the pipeline on a ``RunConfig`` (see ``configure.run_config``); ``--data`` files are read
    with the job's input specs (by ``run``, which keeps their names for the preprocessing proof)."""
    preprocess = getattr(job, "preprocess", None) or (job.quantize.preprocess if job.quantize else None)
    return run(job.ref, out_dir or job.output or "onnxgate-out", config=job.export, data=list(job.data) or None,
               force=force,
               bundle=job.bundle, targets=job.targets, bench=None if job.bench == "none" else job.bench,
               optimize=job.optimize, quantize=job.quantize, progress=progress, weights=job.weights, arch=job.arch,
               trust_pickle=job.trust_pickle, deploy=job.deploy, eval_data=getattr(job, "eval_data", None),
               preprocess=preprocess, on_stage=on_stage, hunt_budget=getattr(job, "hunt_budget", None))


def _hunt_budget(budget: int | None) -> int | None:
    """``hunt_budget`` checked: an integer >= 0 (0: no hunt), None for the default."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise BadInputError(f"hunt_budget={budget!r} is not a number of evaluations.",
                            hint="Give an integer >= 0 (0 turns the divergence hunt off), or leave it unset for "
                                 "the default.")
    return budget


def _recording(config: ExportConfig, preprocess: str | None) -> ExportConfig:
    """The export config with ``preprocess`` recorded in the model's metadata (``preprocess=``) when the config
    records none: the preprocessing the run reads photos with is then what the bundle serves and what the claim
    states. A recorded one is kept (the proof then holds it to ``preprocess``)."""
    from .preprocess import Preprocess

    if not preprocess or Preprocess.from_meta(config.meta, model="--meta") is not None:
        return config
    return replace(config, meta={**config.meta, "preprocess": str(Preprocess.parse(preprocess))})


def _read_data(data, config: ExportConfig, preprocess: str | None) -> tuple[list[dict] | None, tuple[str, ...]]:
    """``data``'s feeds, its DATA arguments (str/Path items) read with the config's input specs, and those
    arguments' names (the preprocessing proof reads the photos behind them)."""
    if not data:
        return data, ()
    names = tuple(str(d) for d in data if isinstance(d, (str, Path)))
    feeds = [d for d in data if not isinstance(d, (str, Path))]
    if names:
        from .verify.inputs import load_feeds

        feeds += load_feeds(list(names), list(config.inputs), meta=config.meta, preprocess=preprocess)
    return feeds, names


def _announcer(on_stage: Callable[[Stage], None] | None) -> Callable[[Stage], None]:
    """``on_stage``, and in the console script's child the stage file its parent reads if the child dies
    (``cli/isolate.py``)."""
    sinks = [s for s in (on_stage, stage_file_from_env()) if s is not None]

    def announce(stage: Stage) -> None:
        for sink in sinks:
            sink(stage)

    return announce


@contextmanager
def _peak_memory(stage: Stage, report: PipelineReport) -> Iterator[None]:
    """Each stage's peak memory (``transform.large.stage_peak``) under ``report.stages["memory"][name]``, for the
    stages that ran."""
    from .transform.large import stage_peak

    name = stage.value
    with stage_peak() as peak:
        yield
    if name in report.stages:
        report.stages.setdefault("memory", {}).setdefault(name, {}).update(peak)


def _export_stage(job: Job, report: PipelineReport) -> None:
    from .export.ladder import run_ladder
    from .transform.large import check_memory, module_bytes

    weights = module_bytes(job.loaded.module)  # fail now, not when the kernel kills the export half-way
    estimate = check_memory("export", weights, resident=weights, what=f"Exporting '{job.loaded.ref}'")
    report.stages.setdefault("memory", {})["export"] = {"estimate": estimate}
    start = time.perf_counter()
    exported = run_ladder(job.loaded, job.config, job.model_path, force=True, progress=job.note)
    if not exported.ok:  # every attempt failed, or ran but computed wrong numbers: a failed result, judged
        job.failure = judge(exported)
        report.stages["export"] = exported.to_dict()
        _localize_rejected(job, report, exported)
        return
    job.exported = exported
    report.stages["export"] = {**job.exported.to_dict(), "seconds": round(time.perf_counter() - start, 2)}


def _localize_rejected(job: Job, report: PipelineReport, exported) -> None:
    """An export that ran but computed something else is kept as NAME.rejected.onnx: say where it diverges."""
    from .verify.api import verify

    if not getattr(exported, "rejected", None):
        return
    job.note("localizing the divergence in the rejected export")
    rejected = verify(exported.rejected, job.loaded, config=job.config, data=job.data)
    report.stages["verify"] = rejected.to_dict()
    reason = job.failure.reason or ""
    failed = [p.summary() for p in rejected.parities if not p.passed]
    if failed:
        reason += f" The rejected export ({Path(exported.rejected).name}): {'; '.join(failed)}."
    if rejected.localization:
        reason += f" Localizer: {rejected.localization['summary']}."
    job.failure = replace(job.failure, reason=reason)


def _verify_stage(job: Job, report: PipelineReport) -> None:
    from .verify.api import verify

    job.note("verifying parity at every claimed shape")
    start = time.perf_counter()
    job.verified = verify(job.model_path, job.loaded, config=job.config, data=job.data, targets=job.targets,
                          proof=_proof_of(job.exported))
    seconds = time.perf_counter() - start
    if job.verified.passed:
        _prove_preprocessing(job, report)
    if job.verified.passed:
        _hunt_stage(job, report, proof_seconds=seconds + (report.stages.get("export") or {}).get("seconds", 0.0))
    report.stages["verify"] = {**job.verified.to_dict(), "seconds": round(seconds, 2)}
    if job.hunted is not None and not job.hunted.passed:  # the sampled proof passed, the hunt found a failing feed
        report.stages["verify"]["passed"] = False
    if job.verified.targets:
        report.stages["targets"] = [t.to_dict() for t in job.verified.targets]


def _prove_preprocessing(job: Job, report: PipelineReport) -> None:
    """Image bytes to label, proven inside ``run`` (``verify/preprocessing.py``, the same proof as ``verify --data
    PHOTOS``): on the photos behind the run's image DATA (``data``, ``eval_data``, the quantize stage's calibration
    and evaluation data), a sample of ``RUN_IMAGES``, when a preprocessing is recorded in the model (what ``serve``
    will run) or given (``preprocess``: what the model expects). A failed proof fails the verification; the
    figures are in ``report.stages["preprocessing"]`` and the claim's ``preprocess``."""
    from .verify.api import prove_preprocessing
    from .verify.preprocessing import RUN_IMAGES

    sources = list(job.photos)
    for value in (job.eval_data, *((job.quantize.calib, job.quantize.eval_data) if job.quantize else ())):
        if isinstance(value, (str, Path)):
            sources.append(str(value))
    if not sources:
        return
    given = job.preprocess or (job.quantize.preprocess if job.quantize else None)
    prove_preprocessing(job.verified, job.loaded.module, sources, given=given, limit=RUN_IMAGES, note=job.note)
    if job.verified.preprocessing is not None:
        report.stages["preprocessing"] = job.verified.preprocessing


def _hunt_stage(job: Job, report: PipelineReport, proof_seconds: float = 0.0) -> None:
    """The divergence hunt (``verify/hunt.py``, issue 28 item 2), once the sampled proof passed: the exported
    model in onnxruntime, at the session settings the verification used, against the PyTorch reference, on feeds
    of the claimed inputs at the traced sizes, judged at the claim's tolerances (what every re-verification of the
    bundle judges by), within ``job.hunt_budget`` evaluations (unset: ``hunt.DEFAULT_BUDGET``, shrunk to what fits
    in ``hunt_cap(proof_seconds)``, a share of what the export and the sampled proof took; a budget given is spent
    whole). A failing feed fails the verification (the judge's
    HuntResult rule: exit 4); the figures go to ``report.stages["hunt"]`` and the claim's ``hunt``, and the worst
    row found to the bundle's golden set (``_hunted_rows``)."""
    from .runtimes.ort import VERIFY_OPT_LEVEL, OrtRunner
    from .runtimes.torch_runner import TorchRunner
    from .verify import engine, hunt

    budget = hunt.DEFAULT_BUDGET if job.hunt_budget is None else job.hunt_budget
    claim = job.verified.claim
    if budget == 0 or claim is None or not claim.inputs:
        return
    job.note(f"hunting for inputs that diverge ({budget} evaluations)")
    start = time.perf_counter()
    specs = list(claim.inputs)
    sizes = {d.name: d.example for d in claim.dims}
    reference = TorchRunner(job.loaded.module, input_names=[s.name for s in specs],
                            output_names=[t.name for t in job.verified.structure.outputs])
    candidate = OrtRunner(job.model_path, opt_level=VERIFY_OPT_LEVEL)
    policy = engine.TolerancePolicy(fixed=claim.tolerances())
    cap = hunt_cap(proof_seconds) if job.hunt_budget is None else None
    left = None if cap is None else max(0.0, cap - (time.perf_counter() - start))  # the session counts too
    found = hunt.hunt(reference, candidate, specs, sizes, policy=policy, budget=budget, seed=HUNT_SEED,
                      candidate_label="onnxruntime", seconds=left)
    job.hunted = found
    golden, feed = None, None
    if found.passed:
        job.golden_extra, golden = _hunted_rows(job, found, reference, candidate, policy)
        job.golden_replaced = golden["mode"] == "replaced"
    else:  # the failing feed, to reproduce the failure with (inputs by name, as --data reads them)
        from .runtimes.venv_worker import save_npz

        feed = job.out / "hunted_feed.npz"
        save_npz(feed, found.worst)
    entry = {**found.to_dict(), "requested": budget, "seconds_cap": cap, "sizes": dict(sizes),
             "summary": found.summary(), "runtime": "onnxruntime", "golden": golden, "feed": str(feed) if feed else None,
             "seconds": round(time.perf_counter() - start, 2)}
    report.stages["hunt"] = entry
    job.verified.claim = replace(claim, hunt={k: entry[k] for k in (
        "passed", "budget", "capped", "evaluations", "seed", "found_by", "score", "distribution", "golden")})


HUNT_SEED = 0  # the run's divergence hunt is seeded: the same model and budget find the same feed
# The default hunt's time cap: a quarter of what the export and the sampled proof took, within 2..10 s (its budget
# shrinks to the evaluations that fit). A flat 10 s added 9.6 s to a 15.4 s resnet18 run (62%,
# benchmarks/beyond_sampling.py); a small model still spends its whole budget in well under the floor.
HUNT_SHARE, HUNT_MIN_SECONDS, HUNT_SECONDS = 0.25, 2.0, 10.0


def hunt_cap(proof_seconds: float) -> float:
    """Seconds the default hunt may take, given the seconds the export and the sampled proof took."""
    return round(min(HUNT_SECONDS, max(HUNT_MIN_SECONDS, HUNT_SHARE * proof_seconds)), 2)


def _hunted_rows(job: Job, found, reference, candidate, policy) -> tuple[dict, dict]:
    """What the hunt adds to the bundle's golden set (the seeded random feed at the traced sizes): the row of the
    worst feed on which onnxruntime came closest to its tolerance, appended along the batch axis when every input
    has the same dynamic dim at axis 0 and one more row lies in the claimed domain (else the worst feed whole, when
    twice the rows lie in it); with a batch that admits no more rows (a static one), the worst row replaces the
    last random row, or the worst feed the random one when there is no row to pick.
    -> (the rows, a record of what was done: the report's and the claim's ``golden``)."""
    from .verify import hunt

    claim = job.verified.claim
    axis0 = {s.shape[0] if s.shape else None for s in claim.inputs}
    name = axis0.pop() if len(axis0) == 1 else None
    dim = claim.dim(name) if isinstance(name, str) else None
    row = hunt.worst_row(reference, candidate, found.worst, policy)
    picked = hunt.row_of(found.worst, row) if row is not None else None
    if dim is not None and dim.example:
        for rows, count, what in ((picked, 1, "the worst row"), (found.worst, dim.example, "the worst feed")):
            if rows is not None and dim.allows(dim.example + count):
                return rows, {"mode": "appended", "rows": count, "what": what, "dim": name,
                              "golden_size": dim.example + count}
    why = "the batch admits no more rows than the traced size" if name is not None else "no batch axis"
    size = next(iter(found.worst.values())).shape[0] if picked is not None else 0
    if picked is not None and size >= 2:
        return picked, {"mode": "replaced", "rows": 1, "what": "the worst row", "replaces": "the last random row",
                        "why": why}
    return found.worst, {"mode": "replaced", "rows": size, "what": "the worst feed", "replaces": "the random feed",
                         "why": why}


def _proof_of(exported):
    """The export's proof of its winner (``export.ladder._prove``: the full onnxruntime verification of the graph
    it saved), handed to the verify stage so that the domain the export just proved is not discovered again."""
    if exported is None or exported.winner is None:
        return None
    return exported.attempts[exported.winner].parity


def _accuracy_stage(job: Job, report: PipelineReport) -> None:
    from .runtimes.ort import OrtRunner
    from .runtimes.torch_runner import TorchRunner

    names = [s.split(":")[0] for s in job.exported.inputs]
    torch_runner = TorchRunner(job.loaded.module, input_names=names, output_names=job.exported.outputs)
    if job.evaluate is not None:
        job.note("measuring accuracy on real data")
        report.stages["accuracy"] = {"pytorch": job.evaluate(torch_runner),
                                     "onnxruntime": job.evaluate(OrtRunner(job.model_path))}
        return
    data = job.eval_data if job.eval_data is not None else (job.quantize.eval_data if job.quantize else None)
    if data is None:
        return
    dataset = _evaluation_data(job, data)
    job.note(f"measuring top-1/top-5 on {dataset.source} ({dataset.samples} samples)")
    reference = _logits(torch_runner, dataset, what="PyTorch")
    job.accuracy = (dataset, reference)
    acc = report.stages["accuracy"] = {}
    if dataset.labels is not None:
        acc["pytorch"] = _metrics(reference, dataset)
    _measure_variant(job, report, "onnxruntime", job.model_path)


def _evaluation_data(job: Job, data):
    """The accuracy stage's DATA, read as quantize reads its evaluation data: conformed to the exported model's
    inputs, image-folder classes matched by name to ``--labels`` or the model's labels metadata."""
    from . import serde
    from .transform.data import load_data, model_specs

    quantize = job.quantize
    own = job.eval_data is not None
    labels = job.eval_labels if own else (quantize.labels if quantize else None)
    preprocess = job.preprocess or (quantize.preprocess if quantize else None)
    specs, _ = model_specs(job.model_path)
    model = serde.load(job.model_path, load_external_data=False)
    return load_data(data, specs, model=model, labels=labels, class_names=tuple(job.config.labels) or None,
                     preprocess=preprocess, what="evaluation data")


def _logits(runner, dataset, *, what: str) -> np.ndarray:
    """The first output of ``runner`` on every feed of ``dataset``, as logits [samples, classes]."""
    from .transform.budget import class_logits

    return class_logits([next(iter(runner.run(feed).values())) for feed in dataset.feeds], dataset.samples, what=what)


def _metrics(logits: np.ndarray, dataset) -> dict:
    from .transform.budget import topk_accuracy

    return {"top1": topk_accuracy(logits, dataset.labels, 1), "top5": topk_accuracy(logits, dataset.labels, 5),
            "samples": int(len(logits)), "against": "labels", "data": dataset.source}


def _measure_variant(job: Job, report: PipelineReport, name: str, path: Path) -> None:
    """Top-1/top-5 of the ONNX file at ``path`` on the accuracy stage's data: against its labels, else agreement
    with PyTorch (PyTorch's top-1 class among the file's top 1 / top 5)."""
    from .runtimes.ort import OrtRunner
    from .transform.budget import topk_accuracy

    if job.accuracy is None:
        return
    dataset, reference = job.accuracy
    logits = _logits(OrtRunner(path), dataset, what=f"the {name} model")
    if dataset.labels is not None:
        entry = _metrics(logits, dataset)
    else:
        chosen = reference.argmax(axis=1)
        entry = {"top1": topk_accuracy(logits, chosen, 1), "top5": topk_accuracy(logits, chosen, 5),
                 "samples": int(len(logits)), "against": "pytorch", "data": dataset.source}
    report.stages.setdefault("accuracy", {})[name] = {**entry, "path": str(path)}


def _optimize_stage(job: Job, report: PipelineReport) -> None:
    from .bench import Variant
    from .transform import optimize

    if not (job.proven and job.optimize):
        return
    job.note("optimizing (each transform re-verified)")
    path = job.out / "model.opt.onnx"
    result = optimize(job.model_path, path, force=True, progress=job.note)
    report.stages["optimize"] = {**result.to_dict(), "path": str(path) if result.passed else None}
    if result.passed:
        job.variants.append(Variant("optimized", str(path), verified=True))
        _measure_variant(job, report, "optimized", path)


def _quantize_stage(job: Job, report: PipelineReport) -> None:
    from .bench import Variant
    from .transform import quantize

    cfg = job.quantize
    if not job.proven or cfg is None:
        return
    job.note(f"quantizing to INT8 ({cfg.mode})")
    path = job.out / "model.int8.onnx"
    job.quantized = quantize(job.model_path, path, mode=cfg.mode, calib=cfg.calib, eval_data=cfg.eval_data,
                             labels=cfg.labels, method=cfg.method, preprocess=cfg.preprocess,
                             per_channel=cfg.per_channel, max_accuracy_drop=cfg.max_accuracy_drop,
                             max_error=cfg.max_error, force=True, progress=job.note)
    passed = job.quantized.passed
    report.stages["quantize"] = {**job.quantized.to_dict(), "passed": passed, "summary": job.quantized.summary(),
                                 "path": str(path) if passed else None}
    if passed:
        job.variants.append(Variant("int8", str(path), verified=True))
        _measure_variant(job, report, "int8", path)


def _bench_stage(job: Job, report: PipelineReport) -> None:
    from .bench import BenchSettings
    from .bench import bench as run_bench

    if not (job.proven and job.bench):
        return
    job.note("benchmarking against PyTorch eager")
    settings = BenchSettings.quick() if job.bench == "quick" else BenchSettings()
    # The bundle ships model.onnx only: a recommendation of model.int8.onnx would point past what the bundle proves
    # (its golden outputs, checksums and runtime matrix cover model.onnx), so the recommendation is restricted to
    # what it ships; faster unshipped variants are still measured, and named in the recommendation's passed_over.
    report.stages["bench"] = run_bench(job.model_path, against=job.loaded, variants=job.variants, config=job.config,
                                       settings=settings, base_verified=True, data=job.data,
                                       shipped=("base",) if job.bundle else None, progress=job.note).to_dict()


def _bundle_stage(job: Job, report: PipelineReport) -> None:
    from .bundle.verify import verify_bundle

    if not (job.proven and job.bundle):
        return
    job.note("writing the bundle")
    path = write_verified_bundle(job.loaded, job.exported, job.verified, job.out / "bundle", force=True,
                                 hunted=job.golden_extra, hunted_replaces=job.golden_replaced)
    report.stages["bundle"] = {"path": str(path), "verification": verify_bundle(path).to_dict()}


def _deploy_stage(job: Job, report: PipelineReport) -> None:
    from .deploy.api import deploy_verified

    if not (job.proven and job.deploy):
        return
    job.note(f"deploying to {', '.join(job.deploy)} (each artifact verified against PyTorch)")
    bundle = job.out / "bundle" if report.stages.get("bundle") else None
    job.deployed = deploy_verified(job.model_path, job.loaded, job.verified.structure, job.verified.claim,
                                   job.deploy, bundle_dir=bundle, out_dir=job.out, data=job.data, progress=job.note)
    report.stages["deploy"] = job.deployed.to_dict()


# The main job, in order, each under the Stage it announces (``Stage.LOAD`` comes before: ``load_model``). A stage
# that does not apply (no --quantize, an unproven model) returns at once.
STAGES: tuple[tuple[Stage, Callable[[Job, PipelineReport], None]], ...] = (
    (Stage.EXPORT, _export_stage), (Stage.VERIFY, _verify_stage), (Stage.ACCURACY, _accuracy_stage),
    (Stage.OPTIMIZE, _optimize_stage), (Stage.QUANTIZE, _quantize_stage), (Stage.BENCH, _bench_stage),
    (Stage.BUNDLE, _bundle_stage), (Stage.DEPLOY, _deploy_stage))


def _conclude(job: Job, report: PipelineReport, reached: Stage) -> None:
    """The judge's verdict (``outcome.judge_run``) and the stage it came from (on a pass: the last stage that ran)."""
    verified = [job.verified, job.hunted] if job.hunted is not None else job.verified  # the hunt: the worse
    verdict, stage = judge_run((job.stage, job.failure) if job.failure is not None else None,
                               {Stage.VERIFY: verified, Stage.QUANTIZE: job.quantized, Stage.DEPLOY: job.deployed})
    report.verdict = "pass" if verdict.passed else "fail"
    report.exit_code = verdict.exit_code
    report.reason, report.hint, report.cause = verdict.reason, verdict.hint, verdict.cause
    report.stage = (stage or reached).value


def _write_reports(report: PipelineReport, out: Path) -> None:
    from .envinfo import capture

    report.stages["environment"] = capture()
    atomic_write_text(out / "report.json", json.dumps(report.to_dict(), indent=2, default=str, ensure_ascii=False),
                      force=True)
    atomic_write_text(out / "report.html", report.to_html(), force=True)


def write_verified_bundle(loaded, exported, verified, out_dir: Path, *, force: bool, tarball: bool = False,
                          hunted: dict | None = None, hunted_replaces: bool = False) -> Path:
    """Bundle an exported model that passed verification: golden inputs are a seeded random feed at the traced
    sizes, reference outputs come from PyTorch; the domain, tolerances and conditions are the verification's claim
    (``verified.claim``), written by the claim codec. ``hunted``: the divergence hunt's rows (``_hunted_rows``),
    appended to the golden feed along the batch axis (``hunted_replaces``: replacing it, for a batch that admits no
    more rows), so that every later re-verification of the bundle checks them again, against PyTorch's outputs on
    them."""
    from .bundle import write_bundle
    from .runtimes.torch_runner import TorchRunner
    from .verify.inputs import random_inputs

    claim = verified.claim
    specs = list(claim.inputs)
    golden = random_inputs(specs, {d.name: d.example for d in claim.dims}, seed=0)
    if hunted is not None:
        from .verify.hunt import golden_with

        golden = _replacing(golden, hunted) if hunted_replaces else golden_with(golden, hunted)
    reference = TorchRunner(loaded.module, input_names=[s.name for s in specs],
                            output_names=[t.name for t in verified.structure.outputs]).run(golden)
    won = exported.attempts[exported.winner]
    export_info = {"strategy": won.strategy, "opset": won.opset_emitted or won.opset, "seconds": won.seconds,
                   "peak_mb": won.peak_mb, "attempts": len([a for a in exported.attempts if a.outcome != "skipped"])}
    verification = {"passed": verified.passed, "summary": [p.summary() for p in verified.parities]}
    return write_bundle(out_dir, model_path=verified.model, golden_inputs=golden, reference_outputs=reference,
                        export_info=export_info, verification=verification, source_ref=loaded.ref, force=force,
                        tarball=tarball, claim=claim)


def _replacing(golden: dict, hunted: dict) -> dict:
    """The golden feed with its last rows replaced by the hunted ones (fewer rows than it has, on axis 0 of every
    input), else the hunted feed whole."""
    rows = {np.shape(v)[0] if np.ndim(v) else None for v in hunted.values()}
    sizes = {np.shape(v)[0] if np.ndim(v) else None for v in golden.values()}
    if len(rows) == len(sizes) == 1 and None not in rows | sizes and min(rows) < min(sizes):
        keep = min(sizes) - min(rows)
        return {k: np.concatenate([np.asarray(golden[k])[:keep], np.asarray(hunted[k]).astype(golden[k].dtype)])
                for k in golden}
    return {k: np.asarray(v) for k, v in hunted.items()}


def bundle_from_ref(ref: str, out_dir: str | Path, *, config: ExportConfig | None = None, force: bool = False,
                    tarball: bool = False, progress: Callable[[str], None] | None = None,
                    on_stage: Callable[[Stage], None] | None = None) -> Path:
    """`onnxgate bundle REF -o DIR`: export, verify against PyTorch, and write the bundle to ``DIR``.
    Raises the export's error when it fails, ParityError when verification fails: an unproven model is never
    bundled."""
    from .export.ladder import run_ladder
    from .fsutil import staging_dir
    from .fsutil import check_target
    from .sources import load_model
    from .verify.api import verify

    note = progress or (lambda _m: None)
    announce = _announcer(on_stage)
    announce(Stage.LOAD)
    check_target(Path(out_dir), force=force, kind="folder")
    loaded = load_model(ref)
    config = config or ExportConfig()
    with staging_dir("bundle") as tmp:
        model_path = Path(tmp) / "model.onnx"
        announce(Stage.EXPORT)
        exported = run_ladder(loaded, config, model_path, force=True, progress=note)
        raise_for(exported)  # the ladder's own error (ExportError, ParityError...), as when it raised it
        announce(Stage.VERIFY)
        note("verifying parity at every claimed shape")
        verified = verify(model_path, loaded, config=config, proof=_proof_of(exported))
        raise_for(verified)  # an unproven model is never bundled
        announce(Stage.BUNDLE)
        note("writing the bundle")
        return write_verified_bundle(loaded, exported, verified, Path(out_dir), force=force, tarball=tarball)


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
