"""`onnxgate deploy MODEL_OR_BUNDLE --to openvino,ort-mobile,tflite,tensorrt,coreml` — one artifact per target,
each verified (against PyTorch for a model reference, against the golden outputs for a bundle folder)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..deploy.model import parse_targets
from ..errors import BadInputError
from .common import console, finish, progress
from .params import options_of
from .render import print_pipeline, print_targets

@options_of("deploy")
def deploy(
    model_or_bundle: str = typer.Argument(..., help="A model reference (exported and verified first) or a bundle folder."),
    to: str = typer.Option(..., "--to", help="Targets, comma-separated: openvino, ort-mobile, tflite, tensorrt, coreml."),
    output: Path = typer.Option(None, "-o", "--output", help="With a model reference: the output folder (default onnxgate-deploy)."),
    *, given: dict,
) -> None:
    """Convert the verified ONNX model to each target and verify every artifact; exit 4 names a target whose
    artifact computes something else, 6 one that cannot convert it, 8 a missing extra."""
    json_out, force = bool(given.get("json")), bool(given.get("force"))
    targets = parse_targets(to)
    path = Path(model_or_bundle)
    _refuse_files_deploy_cannot_take(path)
    if path.is_dir():
        from ..deploy.api import deploy_bundle

        with progress("deploying the bundle") as status:
            report = deploy_bundle(path, targets, progress=status.update)
        if not json_out:
            print_targets(console, report.to_dict())
        return finish(report, json_out=json_out)
    from ..configure import flags_from, run_config
    from ..pipeline import run_job

    job = run_config(model_or_bundle, flags_from({**given, "output": str(output or "onnxgate-deploy"),
                                                  "bench": "none", "optimize": False, "bundle": True,
                                                  "deploy": list(targets)}))
    with progress("exporting, verifying and deploying") as status:
        report = run_job(job, force=force, progress=status.update)
    if not json_out:
        print_pipeline(console, report)
    finish(report, json_out=json_out, quiet_failure=True)


_ARCHIVES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def _refuse_files_deploy_cannot_take(path: Path) -> None:
    """A bundle archive or a bare .onnx file is not a model reference: say what deploy needs instead of letting the
    model loader call it "not a file PyTorch can load"."""
    name = path.name.lower()
    if name.endswith(_ARCHIVES) and not path.is_dir():
        folder = path.name[: -len(next(s for s in _ARCHIVES if name.endswith(s)))]
        raise BadInputError(
            f"'{path}' is a bundle archive; deploy writes each verified artifact into the bundle folder's targets/ "
            "(and records it in its manifest), so it needs the unpacked folder, not the archive.",
            hint=f"Unpack it (tar -xf '{path}'; `onnxgate verify` checks the archive first if you like), then run "
                 f"`onnxgate deploy {folder or 'BUNDLE_FOLDER'} --to ...` on the folder.")
    if name.endswith(".onnx") and path.is_file():
        raise BadInputError(
            f"'{path}' is an ONNX file without a PyTorch reference: deploy verifies every artifact against PyTorch "
            "(a model reference) or against a bundle's golden outputs, and a bare .onnx file has neither.",
            hint=f"Deploy the PyTorch model it came from (`onnxgate deploy REF --to ...`), or bundle the file with its "
                 f"golden data first: `onnxgate bundle '{path}' --golden INPUTS.npz --reference OUTPUTS.npz -o B`, "
                 "then `onnxgate deploy B --to ...`.")


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)
