"""`onnxgate demo`: the main job on the built-in example (a CNN trained on real handwritten digits)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, emit_json


def demo(
    output: Path = typer.Option(Path("onnxgate-demo"), "-o", "--output", help="Folder for the model and report."),
    force: bool = typer.Option(False, "--force", help="Overwrite the output folder's files."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Train (once) a small CNN on scikit-learn's digits, then export, verify and measure it end to end."""
    from ..pipeline import run_demo

    with console.status("demo", spinner="dots") as status:
        report = run_demo(output, force=force, progress=lambda m: status.update(m))
    render_pipeline(report, json_out)


def render_pipeline(report, json_out: bool) -> None:
    if json_out:
        emit_json(report.to_dict())
    else:
        from .render import attempts_table, parity_table

        export = report.stages.get("export")
        if export:
            console.print(f"export: {sum(1 for a in export['attempts'] if a['outcome'] != 'skipped')} attempt(s), "
                          f"winner: {export['attempts'][export['winner']]['strategy'] if export.get('winner') is not None else 'none'}")
        verify = report.stages.get("verify")
        if verify:
            for p in verify["parity"]:
                console.print(f"parity ({p['candidate']}): {p['summary']}")
        acc = report.stages.get("accuracy")
        if acc:
            console.print("accuracy: " + ", ".join(f"{k} top-1 {v['top1']:.2%}" for k, v in acc.items()))
        colour = "green" if report.verdict == "pass" else "red"
        console.print(f"[{colour}]verdict: {report.verdict}[/]" + (f" — {report.reason}" if report.reason else ""))
        console.print(f"report: {Path(report.out_dir) / 'report.json'}")
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
