"""`onnxgate run REF|onnxgate.toml` — the main job — and `onnxgate demo`, the same job on the built-in example."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, finish, progress
from .params import options_of
from .render import print_pipeline


@options_of("run")
def run(
    model: str = typer.Argument(None, help="A model reference or an onnxgate.toml. Without one, runs the demo."),
    *, given: dict,
) -> None:
    """Export → verify → bundle → report (report.json, report.html), with an exit code a CI pipeline can gate on."""
    from ..pipeline import run_demo

    json_out, force = bool(given.get("json")), bool(given.get("force"))
    if model is None:
        output = Path(given["output"]) if "output" in given else Path("onnxgate-demo")
        with progress("demo") as status:
            report = run_demo(output, force=force, progress=status.update)
        return render_pipeline(report, json_out)
    from ..configure import flags_from, run_config
    from ..pipeline import run_job

    if model.endswith(".toml"):
        given = {**given, "config": model}
    job = run_config(None if model.endswith(".toml") else model, flags_from(given))
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
