"""`onnxgate bundle` writes a portable bundle; `onnxgate verify-bundle` re-verifies one, on one or many runtimes.

Both are torch-free when given an ONNX file: `bundle MODEL.onnx --golden IN.npz --reference OUT.npz`
packs a model whose reference outputs already exist. Bundling from a model reference runs the pipeline (export,
verify against PyTorch, bundle) and needs the torch extra.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import BadInputError
from .common import console, finish, progress
from .params import options_of

_STYLES = {"pass": "green", "fail": "red", "tampered": "bold red", "incompatible": "yellow",
           "unavailable": "dim", "crashed": "red"}


@options_of("bundle")
def bundle(
    model_or_ref: str = typer.Argument(None, help="An .onnx file, or a model reference to export first. Optional "
                                                  "with --config (its ref)."),
    *, given: dict,
) -> None:
    """Write a bundle (model, golden inputs, reference outputs, lock files, manifest), then verify it."""
    from ..configure import command_config

    job, v = command_config("bundle", given)
    model_or_ref = model_or_ref or job.ref
    if not model_or_ref or not job.output:
        raise BadInputError("No " + ("model" if not model_or_ref else "bundle folder") + " given.",
                            hint="Pass the model and -o DIR, e.g. onnxgate bundle torchvision:resnet18 -o bundle "
                                 "(or ref = ... and output = ... in the --config file).")
    out, golden, reference = Path(job.output), v.get("golden"), v.get("reference")
    tar, force = bool(v.get("tar")), bool(v.get("force"))
    if model_or_ref.lower().endswith(".onnx"):
        written = _bundle_onnx_file(Path(model_or_ref), out, golden and Path(golden), reference and Path(reference),
                                    v.get("rtol"), v.get("atol"), tar, force)
    else:
        if golden or reference:
            raise BadInputError(f"--golden/--reference apply to an .onnx file, not to the model reference "
                                f"'{model_or_ref}'.", hint="Drop them: golden data comes from the export.")
        from ..pipeline import bundle_from_ref

        with progress("exporting and verifying") as status:
            written = bundle_from_ref(model_or_ref, out, config=job.export, force=force, tarball=tar,
                                      progress=status.update)
    from ..bundle import verify_bundle

    _finish([verify_bundle(written)], bool(v.get("json")), written=str(written))


def _bundle_onnx_file(model: Path, out: Path, golden: Path | None, reference: Path | None, rtol: float | None,
                      atol: float | None, tar: bool, force: bool) -> Path:
    from ..bundle import write_bundle
    from ..verify.compare import default_tolerance

    if golden is None or reference is None:
        raise BadInputError(
            f"Bundling the ONNX file '{model}' needs its golden inputs and reference outputs.",
            hint="Pass --golden INPUTS.npz --reference OUTPUTS.npz (one array per model input/output).",
        )
    from ..npz import load_npz

    inputs, outputs = load_npz(golden, what="--golden"), load_npz(reference, what="--reference")
    tolerances = None
    if rtol is not None or atol is not None:
        tolerances = {}
        for name, array in outputs.items():
            default = default_tolerance(array.dtype.name)
            tolerances[name] = (default.rtol if rtol is None else rtol, default.atol if atol is None else atol)
    return write_bundle(out, model_path=model, golden_inputs=inputs, reference_outputs=outputs,
                        tolerances=tolerances, source_ref=str(model), force=force, tarball=tar)


def verify_bundle_cmd(
    bundle_path: Path = typer.Argument(..., help="A bundle folder or .tar.gz."),
    runtime: list[str] = typer.Option([], "--runtime", help="Verify on this exact release, e.g. "
                                      "onnxruntime==1.17.3, in an isolated venv. Repeat for a matrix."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Check every file's checksum, then run the golden inputs and compare with the reference outputs."""
    verify_and_report(bundle_path, runtime, json_out)


def verify_and_report(bundle_path: Path, runtimes: list[str], json_out: bool) -> None:
    """Verify a bundle on each runtime (none: this process's onnxruntime), print, exit with the worst code.

    Shared by `onnxgate verify-bundle` and `onnxgate verify BUNDLE` (which routes bundle folders and .tar.gz files here).
    """
    from ..bundle import parse_runtime, verify_matrix

    for spec in runtimes:
        parse_runtime(spec)  # reject a typo before minutes of installing the others
    _finish(verify_matrix(bundle_path, list(runtimes) or [None]), json_out)


def _finish(results: list, json_out: bool, **extra) -> None:
    """Report the results; the judge's exit code is that of the worst failed cell (0 when every cell passed)."""
    if not json_out:
        if "written" in extra:
            console.print(f"bundle written: [bold]{escape(extra['written'])}[/]")
        console.print(_results_table(results))
        if len(results) == 1 and results[0].outputs:
            console.print(_outputs_table(results[0]))
    finish(results, json_out=json_out, data={**extra, "results": [r.to_dict() for r in results]})


def _results_table(results: list) -> Table:
    table = Table(title=f"bundle verification: {results[0].bundle}", title_justify="left")
    for column in ("runtime", "ran", "status", "detail"):
        table.add_column(column, overflow="fold")
    for r in results:
        style = _STYLES.get(r.status, "")
        detail = r.reason or f"{len(r.files_checked)} files intact, {len(r.outputs)} output(s) within tolerance"
        table.add_row(escape(r.runtime), r.runtime_version or "-", f"[{style}]{r.status}[/]", escape(detail))
    return table


def _outputs_table(result) -> Table:
    table = Table(title="outputs", title_justify="left")
    for column in ("output", "max abs err", "max rel err", "rtol", "atol", "ok"):
        table.add_column(column)
    for c in result.outputs:
        table.add_row(escape(c.name), _num(c.max_abs_err), _num(c.max_rel_err), f"{c.tolerance.rtol:g}", f"{c.tolerance.atol:g}",
                      "[green]yes[/]" if c.passed else f"[red]no[/] {escape(c.reason or '')}")
    return table


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def register(app: typer.Typer) -> None:
    app.command("bundle")(bundle)
    app.command("verify-bundle")(verify_bundle_cmd)
