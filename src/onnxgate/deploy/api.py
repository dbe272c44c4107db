"""``onnxgate deploy``: one artifact per target from a verified ONNX file, each verified before it is kept.

Two doors: ``deploy_verified`` (the pipeline's deploy stage: the PyTorch model is the reference, at every shape
the ONNX file claims) and ``deploy_bundle`` (an existing bundle: checked first, then its golden outputs are the
reference). Artifacts are converted into a staging folder; the ones that passed (or, for Core ML, were converted
and checked structurally) move into the bundle's ``targets/`` folder and the manifest gains their checksums and a
``targets`` section. A failed artifact is reported and not shipped. Each shipped artifact carries a side file
(``targets/TARGET-VARIANT.claim.json``, ``claim.to_side_file``): the claim it was verified under — the runtime
and settings that ran it, the error measured, and the shapes it was proven at (the traced sizes only for a static
artifact, or for ``deploy_bundle``, which has no PyTorch to probe other sizes with).
"""

from __future__ import annotations

import importlib
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import claim as cl
from ..bundle import manifest as mf
from ..bundle.opened import open as open_bundle
from ..bundle.verify import verify_bundle
from ..errors import MissingExtraError, OnnxgateError, require
from ..fsutil import atomic_dir, staging_dir
from ..outcome import raise_for
from ..spec import ExportConfig
from .check import Built, Context, GoldenReference, Skipped, verify_built
from .model import FAILED, NOT_CONVERTED, PASSED, SKIPPED, UNVERIFIED, DeployedArtifact, DeployReport

CONVERTERS = {"openvino": ".openvino_ir", "ort-mobile": ".ort_mobile", "tflite": ".tflite",
              "tensorrt": ".tensorrt", "coreml": ".coreml"}
# What each target needs in this environment, checked before any work: (module, extra, purpose).
EXTRAS = {"openvino": ("openvino", "openvino", "The OpenVINO IR target"),
          "tflite": ("ai_edge_litert", "tflite", "The TFLite target (the LiteRT interpreter verifies it)"),
          "coreml": ("coremltools", "coreml", "The Core ML target")}
TARGETS_DIR = "targets"


def check_extras(targets: tuple[str, ...], *, with_torch: bool = True) -> None:
    """MissingExtraError (exit 8) for the first requested target whose package is missing (Core ML only when
    there is a PyTorch model to convert; TensorRT only where a CUDA device makes it runnable)."""
    for target in targets:
        if target in EXTRAS and (target != "coreml" or with_torch):
            require(*EXTRAS[target])


def convert_and_verify(ctx: Context, targets: tuple[str, ...]) -> list[DeployedArtifact]:
    """Every requested target, in order: its artifacts, each verified (or skipped / not converted, with why)."""
    rows: list[DeployedArtifact] = []
    for target in targets:
        start = time.perf_counter()
        try:
            items = importlib.import_module(CONVERTERS[target], __package__).convert(ctx)
        except Skipped as exc:
            rows.append(DeployedArtifact(target, "", SKIPPED, reason=str(exc)))
            continue
        except MissingExtraError:
            raise
        except OnnxgateError as exc:
            rows.append(DeployedArtifact(target, "", NOT_CONVERTED, reason=exc.message,
                                         seconds=round(time.perf_counter() - start, 2)))
            continue
        converted = time.perf_counter() - start
        for item in items:
            if isinstance(item, Built):
                item = _verify_with_fallback(item, ctx, target)
            item.seconds = round(item.seconds + converted / len(items), 2)
            rows.append(item)
    return rows


def _verify_with_fallback(built: Built, ctx: Context, target: str) -> DeployedArtifact:
    """Verify ``built`` as it runs by default; if that fails and it has a fallback configuration (OpenVINO pinned
    to f32 where the CPU's default is bf16), verify that one, and say why the default was not kept."""
    ctx.note(f"{target}: verifying the {built.variant} artifact")
    row = verify_built(built, ctx, target)
    if row.status != FAILED or built.fallback is None:
        return row
    ctx.note(f"{target}: the {built.variant} artifact failed as run by default; verifying {built.fallback.runtime}")
    kept = verify_built(built.fallback, ctx, target)
    err = f", max abs err {row.max_abs_err:.2g}" if row.max_abs_err is not None else ""
    kept.runtime = (f"{kept.runtime} (set it when deploying: the default, {built.runtime}, failed verification"
                    f"{err}: {built.precision_text})")
    kept.seconds = round(kept.seconds + row.seconds, 2)
    return kept


def deploy_verified(onnx_path: str | Path, loaded, structure, claim: cl.Claim, targets: tuple[str, ...], *,
                    bundle_dir: Path | None, out_dir: Path, data=None, progress: Callable[[str], None] | None = None,
                    measure_latency: bool = True) -> DeployReport:
    """Deploy a model whose ONNX file passed verification (the pipeline's stage): PyTorch is the reference, at
    every shape ``claim`` (the verification's ``Claim``) proves. Artifacts go to ``bundle_dir/targets`` (recorded
    in its manifest) or, without a bundle, ``out_dir/targets``."""
    from ..runtimes.torch_runner import TorchRunner

    check_extras(targets)
    specs, dims = list(claim.inputs), claim.domains
    reference = TorchRunner(loaded.module, input_names=[s.name for s in specs],
                            output_names=[t.name for t in structure.outputs])
    ctx_args = dict(onnx_path=Path(onnx_path), specs=list(specs), dims=dict(dims), reference=reference, data=data,
                    loaded=loaded, note=progress or (lambda _m: None), measure_latency=measure_latency)
    report = DeployReport(loaded.ref, str(onnx_path), "PyTorch", "", list(targets))
    return _deploy(report, ctx_args, targets, bundle_dir or out_dir, manifest=bundle_dir is not None, claim=claim)


def deploy_bundle(bundle: str | Path, targets: tuple[str, ...], *, progress: Callable[[str], None] | None = None,
                  measure_latency: bool = True) -> DeployReport:
    """Deploy an existing bundle: its checksums are verified first (a tampered bundle is never deployed), then
    every artifact is verified against the bundle's golden outputs on its golden inputs (no PyTorch: that one
    feed, at the traced sizes). The specs and domain are the bundle's claim (``bundle.open``); a bundle written
    before its manifest held input specs falls back to the model's recorded ones."""
    from ..verify.parity import _sizes_of

    folder = Path(bundle)
    check_extras(targets, with_torch=False)
    note = progress or (lambda _m: None)
    note("checking the bundle")
    opened = open_bundle(folder, purpose="deploys")  # tampered (9) before anything runs
    raise_for(verify_bundle(opened))  # wrong numbers (4), cannot run (6): nothing is deployed; hashed once, above
    model = folder / mf.MODEL
    claim = opened.claim
    specs, dims = list(claim.inputs), claim.domains
    if not specs:
        from ..verify.api import specs_from_model
        from ..verify.structure import check_structure

        specs, recorded = specs_from_model(check_structure(model), ExportConfig())
        dims = {**recorded, **{n: d for n, d in dims.items() if n in recorded}}
    golden, outputs = opened.golden()
    sizes = _sizes_of(golden, specs)
    dims = {n: replace(d, example=sizes.get(n, d.example)) for n, d in dims.items()}
    ctx_args = dict(onnx_path=model, specs=specs, dims=dims, reference=GoldenReference(golden, outputs),
                    golden=golden, note=note, measure_latency=measure_latency)
    report = DeployReport(str(folder), str(model), "the bundle's golden outputs", "", list(targets),
                          notes=["Without PyTorch, each artifact is verified on the bundle's golden feed only, at "
                                 "the traced sizes: the shape domain is not probed."])
    return _deploy(report, ctx_args, targets, folder, manifest=True, claim=claim, traced_only=True)


def _deploy(report: DeployReport, ctx_args: dict[str, Any], targets, dest: Path, *, manifest: bool,
            claim: cl.Claim, traced_only: bool = False) -> DeployReport:
    with staging_dir("deploy") as tmp:
        ctx = Context(out_dir=Path(tmp), **ctx_args)
        report.artifacts = convert_and_verify(ctx, targets)
        _side_files(report, Path(tmp), claim, ctx.dims, traced_only=traced_only)
        report.out_dir = str(dest / TARGETS_DIR)
        _ship(report, Path(tmp), dest / TARGETS_DIR)
    if manifest:
        record_in_manifest(dest, report)
    return report


def _side_files(report: DeployReport, staged: Path, claim: cl.Claim, dims: dict, *, traced_only: bool) -> None:
    """Each artifact to ship gets ``TARGET-VARIANT.claim.json``: ``claim`` as this artifact proved it (the runtime
    and its settings, the largest error and the tolerance, the feeds, and the shapes: the traced ones for a static
    artifact or a deploy without PyTorch)."""
    for a in report.artifacts:
        if a.status not in (PASSED, UNVERIFIED) or not a.files:
            continue
        name = f"{a.target}-{a.variant}.claim.json" if a.variant else f"{a.target}.claim.json"
        static = traced_only or (a.shapes or "").startswith("static")
        proven = tuple(cl.DimClaim(n, d.example, d.example, None, d.example) if static else
                       (claim.dim(n) or cl.DimClaim(n, d.min, d.max, d.multiple_of, d.example))
                       for n, d in dims.items())
        condition = cl.RuntimeCondition(a.target, a.runtime, a.precision, layout=a.layout)
        worst = a.max_abs_err if len(claim.outputs) == 1 else None  # the row records the worst output's only
        outputs = tuple(replace(o, max_abs_err=worst, policy=a.tolerance or o.policy) for o in claim.outputs)
        artifact = replace(claim, dims=proven, outputs=outputs, conditions=(condition,),
                           evidence=cl.Evidence(cases=a.feeds))
        (staged / name).write_text(cl.to_side_file(artifact), encoding="utf-8")
        a.files = [*a.files, name]


def _ship(report: DeployReport, staged: Path, final: Path) -> None:
    """Move the artifacts that passed (or are unverified Core ML packages) into ``final``, replacing it."""
    kept = [a for a in report.artifacts if a.status in (PASSED, UNVERIFIED)]
    for a in report.artifacts:
        if a.files and a.status not in (PASSED, UNVERIFIED, SKIPPED):
            a.reason = (a.reason or "") + " (not written: only verified artifacts are shipped)"
    with atomic_dir(final, force=final.exists()) as tmp:
        for a in kept:
            for rel in a.files:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                source = staged / rel
                shutil.copytree(source, tmp / rel) if source.is_dir() else shutil.copyfile(source, tmp / rel)


def record_in_manifest(bundle: Path, report: DeployReport) -> None:
    """The bundle's manifest lists every file under ``targets/`` with its checksum (so ``verify-bundle`` catches
    a tampered artifact) and a ``targets`` section: what each artifact is and how it was verified."""
    keep = ("files", "bytes", "precision", "runtime", "shapes", "layout", "tolerance", "max_abs_err",
            "tolerance_used", "top1_agreement", "top1_on", "latency_ms", "feeds", "reason")
    mf.record_targets(bundle, {"reference": report.reference, "artifacts": [
        {"target": a.target, "variant": a.variant, "verdict": a.verdict_text(),
         **{k: getattr(a, k) for k in keep}} for a in report.artifacts]})
