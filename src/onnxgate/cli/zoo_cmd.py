"""`onnxgate zoo ZOO.toml|BUILTIN` — every model of a zoo through the pipeline, each in its own worker process."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, finish, progress


def zoo(
    source: str = typer.Argument(..., metavar="ZOO", help="A zoo file (ZOO.toml) or a built-in zoo: torchvision, "
                                 "timm, transformers."),
    output: Path = typer.Option(None, "-o", "--output", help="Folder for the ledger, the models' reports and "
                                "zoo.html (default onnxgate-zoo-NAME). Running again into it resumes."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Models run at the same time (local workers, or the CPUs of "
                             "the local Ray cluster)."),
    executor: str = typer.Option("local", "--executor", help="local (a pool of worker processes) or ray."),
    address: str = typer.Option(None, "--address", help="The Ray cluster to run on (ray.init address, e.g. auto or "
                                "ray://HOST:10001); without it --executor ray starts a local one."),
    shard: str = typer.Option(None, "--shard", help="I/N: run only shard I of N (1-based; for CI matrices)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run the models whose latest ledger row "
                                      "failed again (finished ones are otherwise never re-run)."),
    allow_fail: list[str] = typer.Option([], "--allow-fail", help="A tag (or family, or model name) whose failures "
                                         "do not fail the zoo. Repeatable."),
    only: list[str] = typer.Option([], "--only", help="Run only the models with this tag (or family, or name). "
                                   "Repeatable."),
    json_out: bool = typer.Option(False, "--json", help="Print the zoo summary as JSON on stdout."),
) -> None:
    """Export and verify every model of a zoo (more stages on request), each in its own worker process with a
    timeout and a memory cap; a JSONL ledger, resumable; zoo.html; exit 0 only when every model passed."""
    from ..zoo import run_zoo

    with progress(f"zoo {source}") as status:
        report = run_zoo(source, output, jobs=jobs, executor=executor, address=address, shard=shard,
                         retry_failed=retry_failed, allow_fail=tuple(allow_fail), only=tuple(only),
                         progress=status.update)
    if not json_out:
        for note in report.notes:
            console.print(f"note: {note}")
        for name, entry in report.failure_classes().items():
            console.print(f"  {name}: {entry['count']} ({', '.join(e['model'] for e in entry['examples'])})")
        console.print(f"zoo: {report.summary()} in {report.wall_seconds:.0f} s "
                      f"({report.ran} run now, {report.resumed} from the ledger)")
        console.print(f"dashboard: {Path(report.out_dir) / 'zoo.html'} (ledger: {Path(report.out_dir) / 'ledger.jsonl'})")
    finish(report, json_out=json_out)


def register(app: typer.Typer) -> None:
    app.command("zoo")(zoo)
