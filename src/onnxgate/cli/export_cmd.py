"""`onnxgate export REF -o model.onnx`: the export ladder, with its attempts table."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import TRUST_CODE_HELP, console, finish, progress

INPUT_HELP = "NAME:SHAPE:DTYPE[:LOW..HIGH], e.g. x:Bx3x224x224:float32 or ids:Bx128:int64:0..30521. Repeatable."
TARGET_HELP = ("A runtime the model must run on, e.g. onnxruntime==1.16, openvino==2024.0, tensorrt==10.0: checks "
               "its opset, IR version and operators (the installed onnxruntime: by loading). Repeatable.")
DIM_HELP = ("NAME=MIN..MAX[@EXAMPLE][%MULTIPLE] or NAME=EXAMPLE for a named dim, e.g. B=1..64, H=32..512@224 or "
            "H=64..1024@256%64 (multiples of 64 only). Repeatable.")
REPAIR_HELP = ("Do not try the repair rung (catalogued replacements for export-hostile patterns) nor the dynamo "
               "exporter's other capture variants (strict, draft, Dim.AUTO) after the plain rungs fail.")
ATTEMPT_TIMEOUT_HELP = "Seconds one export attempt may run in its worker process before it is stopped (default 1800)."
ATTEMPT_MEMORY_HELP = ("Private memory (MB) one export attempt may allocate before its worker is stopped "
                       "(default: 90% of the memory available).")
LADDER_BUDGET_HELP = ("At most this many export attempts run (rungs skipped for a known reason do not count); the "
                      "rest are listed as skipped. Counts attempts, not seconds (default: no limit).")
ACCEPT_DOMAIN_HELP = ("Accept the verified shape domain when it is narrower than the declared one (a range end "
                      "or a granularity the model does not support): the metadata, bundle and report then claim "
                      "it. Without it, a narrower domain fails with the parity code.")


def export(
    ref: str = typer.Argument(None, help="Model reference: torchvision:NAME, timm:NAME, hf:PATH, file.py:Name, "
                                          "pkg.module:Name, a TorchScript/.pt2/state-dict file. Optional with --config."),
    output: Path = typer.Option(None, "-o", "--output", help="Where to write the .onnx file."),
    inputs: list[str] = typer.Option([], "--input", "-i", help=INPUT_HELP),
    dims: list[str] = typer.Option([], "--dim", help=DIM_HELP),
    strategy: str = typer.Option(None, help="Pin one strategy: dynamo or torchscript (default: try both)."),
    opset: int = typer.Option(None, help="Pin one opset (default: newest the installed onnxruntime supports, then 17)."),
    device: str = typer.Option(None, help="Device to export on (default cpu)."),
    weights: str = typer.Option(None, help="State-dict file for torchvision:/timm: models (loaded weights_only)."),
    arch: str = typer.Option(None, help="Architecture ref for a state-dict REF file, e.g. torchvision:resnet18."),
    trust_pickle: bool = typer.Option(False, "--trust-code", "--trust-pickle", help=TRUST_CODE_HELP),
    meta: list[str] = typer.Option([], "--meta", help="KEY=VALUE written into the model's metadata. Repeatable."),
    labels: Path = typer.Option(None, help="Class labels file (UTF-8, one a line) stored in the model's metadata."),
    reinit_degenerate: bool = typer.Option(False, "--reinit-degenerate", help="Re-initialize all-zero weights "
                                           "with small seeded noise before export (random-weight models only)."),
    allow_static: list[str] = typer.Option([], "--allow-static", help="Accept this dynamic dim being frozen at its traced size. Repeatable."),
    target: list[str] = typer.Option([], "--target", help=TARGET_HELP + " Steers the export: the opset and IR "
                                     "version it reads, and no attempt whose operators it lacks wins."),
    accept_domain: bool = typer.Option(False, "--accept-domain", help=ACCEPT_DOMAIN_HELP),
    no_repair: bool = typer.Option(False, "--no-repair", help=REPAIR_HELP),
    attempt_timeout: float = typer.Option(None, "--attempt-timeout", help=ATTEMPT_TIMEOUT_HELP),
    attempt_memory_mb: int = typer.Option(None, "--attempt-memory-mb", help=ATTEMPT_MEMORY_HELP),
    ladder_budget: int = typer.Option(None, "--ladder-budget", help=LADDER_BUDGET_HELP),
    config_file: Path = typer.Option(None, "--config", help="Read settings from an onnxgate.toml."),
    force: bool = typer.Option(False, "--force", help="Overwrite the output if it exists."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Export a PyTorch model to ONNX, trying dynamo and TorchScript exporters over opsets until one is proven."""
    from ..configure import ExportFlags, export_config
    from ..errors import BadInputError

    run, cfg = export_config(ExportFlags(tuple(inputs), tuple(dims), strategy, opset, device, tuple(meta), labels,
                                         tuple(allow_static), reinit_degenerate, config_file, tuple(target),
                                         accept_domain=accept_domain, no_repair=no_repair,
                                         attempt_timeout_s=attempt_timeout, attempt_memory_mb=attempt_memory_mb,
                                         ladder_budget=ladder_budget))
    ref = ref or run.ref
    if not ref:
        raise BadInputError("No model given.", hint="Pass a model reference, e.g. onnxgate export torchvision:resnet18 -o r18.onnx.")
    output = output or (Path(run.output) if run.output else None)
    if output is None:
        raise BadInputError("No output path given.", hint="Pass -o model.onnx.")
    from ..fsutil import check_writable

    check_writable(output)
    from ..export import export as do_export

    with progress("exporting") as status:
        result = do_export(ref, output, config=cfg, weights=weights or run.weights, arch=arch or run.arch,
                           trust_pickle=trust_pickle or run.trust_pickle, force=force,
                           progress=lambda msg: status.update(msg))
    if json_out:
        return finish(result, json_out=True)
    from .render import attempts_table, io_table

    for w in result.warnings:
        console.print(f"[yellow]warning[/]: {w}")
    console.print(attempts_table(result))
    if result.structure:
        console.print(io_table(result.structure))
    won = result.attempts[result.winner]
    for line in success_lines(result, output):
        console.print(line)
    if cfg.targets:
        console.print(f"fits {', '.join(cfg.targets)}: opset, IR version and operators checked before it won")
    for name, why in won.frozen_dims.items():
        console.print(f"[yellow]static by request[/] (--allow-static {name}): dim {name} is frozen at "
                      f"{result.dims[name]['example']}: {why}")


def success_lines(result, output) -> list[str]:
    """What a successful export says: how closely it matches (as a share of the tolerance met, never a raw error
    above it) and the verified shape domain of each dynamic dim (declared, or accepted narrower)."""
    from ..verify.compare import agreement

    won = result.attempts[result.winner]
    comps = [c for case in getattr(won.parity, "cases", []) for c in case.comparisons if c.passed]
    how = agreement(comps) if comps else f"max abs err {won.max_abs_err:.2e}"
    domains = getattr(won.parity, "domains", {})
    dynamic = [d for d in result.dims if d not in won.frozen_dims]
    lines = [f"[green]exported[/] {output} with the {won.strategy} exporter at opset "
             f"{won.opset_emitted or won.opset}; matches PyTorch ({how})"
             + (f" and keeps dims {', '.join(dynamic)} dynamic" if dynamic else "")]
    for name in dynamic:
        if name in domains:
            d = domains[name]
            lines.append(f"  dim {name}: {d.describe()}" + (f" [yellow](accepted with --accept-domain; declared "
                         f"{d.declared()})[/]" if d.narrower else "") + f" — {len(d.probes)} sizes probed in "
                         f"{d.seconds:.1f} s" + (f"; fails at {', '.join(str(f.size) for f in d.failures[:6])}"
                                                 if d.failures else ""))
    return lines


def register(app: typer.Typer) -> None:
    app.command("export")(export)
