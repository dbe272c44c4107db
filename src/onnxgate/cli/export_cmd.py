"""`onnxgate export REF -o model.onnx`: the export ladder, with its attempts table."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, finish, progress
from .params import options_of

@options_of("export")
def export(
    ref: str = typer.Argument(None, help="Model reference: torchvision:NAME, timm:NAME, hf:PATH, file.py:Name, "
                                          "pkg.module:Name, a TorchScript/.pt2/state-dict file. Optional with --config."),
    *, given: dict,
) -> None:
    """Export a PyTorch model to ONNX, trying dynamo and TorchScript exporters over opsets until one is proven."""
    from ..configure import export_config, flags_from
    from ..errors import BadInputError

    run, cfg = export_config(flags_from(given))
    ref = ref or run.ref
    if not ref:
        raise BadInputError("No model given.", hint="Pass a model reference, e.g. onnxgate export torchvision:resnet18 -o r18.onnx.")
    output = Path(run.output) if run.output else None
    if output is None:
        raise BadInputError("No output path given.", hint="Pass -o model.onnx.")
    from ..fsutil import check_writable

    check_writable(output)
    from ..export import export as do_export

    with progress("exporting") as status:
        result = do_export(ref, output, config=cfg, weights=run.weights, arch=run.arch,
                           trust_pickle=run.trust_pickle, force=bool(given.get("force")),
                           progress=lambda msg: status.update(msg))
    if given.get("json"):
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
