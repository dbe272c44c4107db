"""`onnxgate env`: what this machine and interpreter are (versions, CPU, threads, runtimes), and lock files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from .common import console, finish


def env(
    lock: Path | None = typer.Option(None, "--lock", metavar="DIR", help="Write requirements.txt, "
                                     "requirements-runtime.txt and environment.yml into DIR instead."),
    force: bool = typer.Option(False, "--force", help="With --lock: replace existing lock files."),
    torch: bool = typer.Option(True, "--torch/--no-torch", help="Import torch (when installed) to report CUDA "
                               "devices; --no-torch skips the seconds that costs."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Print the environment capture that bundles record, or write lock files that recreate it."""
    from .. import envinfo

    if lock is not None:
        written = [str(path) for path in envinfo.write_locks(lock, force=force)]
        if json_out:
            finish(json_out=True, data={"written": written})
        else:
            for path in written:
                console.print(f"wrote {escape(path)}")
        return
    capture = envinfo.capture(include_torch=torch)
    if json_out:
        finish(json_out=True, data=capture)
    else:
        console.print(_table(capture))


def _table(capture: dict[str, Any]) -> Table:
    from ..envinfo import NOTABLE_CPU_FLAGS

    table = Table(title="environment", title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for name, version in capture["versions"].items():
        table.add_row(name, version or "[dim]not installed[/]")
    plat, cpu = capture["platform"], capture["cpu"]
    table.add_row("platform", escape(plat["platform"]))
    table.add_row("cpu", escape(f"{cpu['model'] or 'unknown'}: {cpu['usable']} usable of {cpu['count']} cores"))
    shown = [flag for flag in NOTABLE_CPU_FLAGS if flag in cpu["flags"]]
    table.add_row("cpu flags", f"{' '.join(shown) or '-'} [dim]({len(cpu['flags'])} in all; --json lists them)[/]")
    threads = ", ".join(f"{k}={v}" for k, v in capture["threads"].items() if v is not None)
    table.add_row("threads", threads or "[dim]defaults[/]")
    if capture["load_average"] is not None:
        table.add_row("load average", " ".join(f"{x:.2f}" for x in capture["load_average"]))
    table.add_row("onnxruntime providers", ", ".join(capture["onnxruntime_providers"] or []) or "-")
    cuda = capture["cuda"]
    if cuda is not None:
        devices = ", ".join(cuda["devices"]) or "no device"
        table.add_row("cuda", f"{'available' if cuda['available'] else 'not available'} "
                              f"(torch CUDA {cuda['cuda_version'] or '-'}): {escape(devices)}")
    return table


def register(app: typer.Typer) -> None:
    app.command("env")(env)
