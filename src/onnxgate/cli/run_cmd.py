"""`onnxgate run REF|onnxgate.toml` — the main job — and `onnxgate demo`, the same job on the built-in example."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import TRUST_CODE_HELP, console, finish, progress
from .export_cmd import ACCEPT_DOMAIN_HELP, DIM_HELP, INPUT_HELP, LADDER_BUDGET_HELP, REPAIR_HELP, TARGET_HELP
from .render import print_pipeline


def run(
    model: str = typer.Argument(None, help="A model reference or an onnxgate.toml. Without one, runs the demo."),
    output: Path = typer.Option(None, "-o", "--output", help="Folder for model, bundle and reports (default onnxgate-out)."),
    inputs: list[str] = typer.Option([], "--input", "-i", help=INPUT_HELP),
    dims: list[str] = typer.Option([], "--dim", help=DIM_HELP),
    data: list[str] = typer.Option([], "--data", help="Real inputs, repeatable: an .npz/.npy (arrays named after the inputs), an image folder (photos flat or in class sub-folders, for a single image input; preprocessed as --preprocess or the preprocessing the --meta entries record) or file.py:fn yielding feeds."),
    strategy: str = typer.Option(None, help="Pin one export strategy: dynamo or torchscript."),
    opset: int = typer.Option(None, help="Pin one opset."),
    meta: list[str] = typer.Option([], "--meta", help="KEY=VALUE written into the model's metadata. Repeatable."),
    labels: Path = typer.Option(None, help="Class labels file (UTF-8, one a line)."),
    reinit_degenerate: bool = typer.Option(False, "--reinit-degenerate", help="Re-initialize all-zero weights "
                                           "with small seeded noise before export (random-weight models only)."),
    allow_static: list[str] = typer.Option([], "--allow-static", help="Accept this dim being frozen. Repeatable."),
    accept_domain: bool = typer.Option(False, "--accept-domain", help=ACCEPT_DOMAIN_HELP),
    no_repair: bool = typer.Option(False, "--no-repair", help=REPAIR_HELP),
    target: list[str] = typer.Option([], "--target", help=TARGET_HELP),
    weights: str = typer.Option(None, help="State-dict file for torchvision:/timm: models (loaded weights_only)."),
    arch: str = typer.Option(None, help="Architecture ref for a state-dict REF file, e.g. torchvision:resnet18."),
    trust_pickle: bool = typer.Option(False, "--trust-code", "--trust-pickle", help=TRUST_CODE_HELP),
    bundle: bool = typer.Option(None, "--bundle/--no-bundle", help="Write the portable bundle when verification passes (default: yes)."),
    bench: str = typer.Option(None, "--bench", help="Benchmark stage: quick (under a minute, the default), full, or none."),
    optimize: bool = typer.Option(None, "--optimize/--no-optimize", help="Write a verified, optimized model.opt.onnx (default: yes)."),
    quantize: str = typer.Option(None, "--quantize", help="Add an INT8 variant: static or dynamic."),
    method: str = typer.Option(None, "--method", help="INT8 calibration: minmax (default), entropy or percentile."),
    preprocess: str = typer.Option(None, "--preprocess", help="For image-folder DATA: resize=256,crop=224,mean=a/b/c,std=a/b/c,order=RGB (default: the model's metadata)."),
    calib: str = typer.Option(None, "--calib", help="Calibration DATA for --quantize static (npz, image folder, file.py:fn)."),
    eval_data: str = typer.Option(None, "--eval", help="Evaluation DATA (npz, image folder by class, file.py:fn): top-1/top-5 of PyTorch, the "
                                 "exported model and each variant, against its labels (else agreement with PyTorch); "
                                 "with --quantize, also the accuracy budget."),
    max_accuracy_drop: float = typer.Option(None, "--max-accuracy-drop", help="Top-1 budget in points (exit 5 if missed)."),
    max_error: float = typer.Option(None, "--max-error", help="Max abs error budget against FP32 (exit 5 if missed)."),
    deploy: str = typer.Option(None, "--deploy", help="Deploy targets, comma-separated: openvino, ort-mobile, tflite, "
                               "tensorrt, coreml; each artifact verified against PyTorch (into bundle/targets/)."),
    ladder_budget: int = typer.Option(None, "--ladder-budget", help=LADDER_BUDGET_HELP),
    force: bool = typer.Option(False, "--force", help="Overwrite the output folder's files."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Export → verify → bundle → report (report.json, report.html), with an exit code a CI pipeline can gate on."""
    from ..pipeline import run_demo

    if model is None:
        with progress("demo") as status:
            report = run_demo(output or Path("onnxgate-demo"), force=force, progress=status.update)
        return render_pipeline(report, json_out)
    from ..configure import ExportFlags, RunFlags, run_config
    from ..pipeline import run_job

    config_file = Path(model) if model.endswith(".toml") else None
    export_flags = ExportFlags(tuple(inputs), tuple(dims), strategy, opset, None, tuple(meta), labels,
                               tuple(allow_static), reinit_degenerate, config_file, accept_domain=accept_domain,
                               no_repair=no_repair, ladder_budget=ladder_budget)
    job = run_config(None if config_file else model, RunFlags(
        export_flags, weights=weights, arch=arch, trust_pickle=trust_pickle, output=str(output) if output else None,
        targets=tuple(target), data=tuple(data), bench=bench, optimize=optimize, bundle=bundle, quantize=quantize,
        calib=calib, eval_data=eval_data, method=method, preprocess=preprocess, max_accuracy_drop=max_accuracy_drop,
        max_error=max_error, deploy=deploy))
    with progress("running") as status:
        report = run_job(job, force=force, progress=status.update)
    render_pipeline(report, json_out)


def demo(
    output: Path = typer.Option(Path("onnxgate-demo"), "-o", "--output", help="Folder for the model and report."),
    force: bool = typer.Option(False, "--force", help="Overwrite the output folder's files."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Train (once) a small CNN on scikit-learn's digits, then export, verify, bundle and report end to end."""
    from ..pipeline import run_demo

    with progress("demo") as status:
        report = run_demo(output, force=force, progress=status.update)
    render_pipeline(report, json_out)


def render_pipeline(report, json_out: bool) -> None:
    if not json_out:
        print_pipeline(console, report)
    finish(report, json_out=json_out, quiet_failure=True)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)
