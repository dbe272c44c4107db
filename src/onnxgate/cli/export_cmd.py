"""`onnxgate export REF -o model.onnx`: the export ladder, with its attempts table."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, finish

INPUT_HELP = "NAME:SHAPE:DTYPE[:LOW..HIGH], e.g. x:Bx3x224x224:float32 or ids:Bx128:int64:0..30521. Repeatable."
TARGET_HELP = ("A runtime the model must run on, e.g. onnxruntime==1.16, openvino==2024.0, tensorrt==10.0: checks "
               "its opset, IR version and operators (the installed onnxruntime: by loading). Repeatable.")
DIM_HELP = "NAME=MIN..MAX[@EXAMPLE] or NAME=EXAMPLE for a named dim, e.g. B=1..64 or H=32..512@224. Repeatable."


def build_config(inputs, dims, strategy, opset, device, meta, labels, allow_static, config_file):
    """Flags win over onnxgate.toml, which wins over library defaults. Every option is checked here, before a
    model is loaded: the strategy, the opset against what the exporters support, the device against this machine."""
    from ..errors import BadInputError
    from ..spec import RunConfig, load_toml, parse_device, parse_dim, parse_input, parse_meta, read_labels, replace

    run = load_toml(config_file) if config_file else RunConfig()
    cfg = run.export
    if strategy and strategy not in ("dynamo", "torchscript"):
        raise BadInputError(f"--strategy '{strategy}' is not a strategy.", hint="Use dynamo or torchscript.")
    if device is not None:
        parse_device(device)
    cfg = replace(
        cfg,
        inputs=tuple(parse_input(s) for s in inputs) or cfg.inputs,
        dims=tuple(parse_dim(s) for s in dims) or cfg.dims,
        strategy=strategy or cfg.strategy,
        opset=opset if opset is not None else cfg.opset,
        device=device or cfg.device,
        meta={**cfg.meta, **parse_meta(meta)},
        labels=read_labels(labels) if labels else cfg.labels,
        allow_static=tuple(allow_static) or cfg.allow_static,
    )
    in_file = f"In {config_file}, key" if config_file else None
    if cfg.opset is not None:
        from ..export.ladder import check_opset

        check_opset(cfg.opset, cfg.strategy, where=f"--opset {cfg.opset}" if opset is not None or not in_file
                    else f"{in_file} 'export.opset' = {cfg.opset}")
    check_device_available(cfg.device, where=f"--device '{cfg.device}'" if device or not in_file
                           else f"{in_file} 'device' = '{cfg.device}'")
    return run, cfg


def check_device_available(device: str, *, where: str) -> None:
    """A device other than the CPU must exist on this machine (asks torch, which the export needs anyway)."""
    if device == "cpu":
        return
    from ..errors import BadInputError, require

    torch = require("torch", "torch", f"Exporting on {device}")
    kind, _, index = device.partition(":")
    count = {
        "cuda": lambda: torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "mps": lambda: int(torch.backends.mps.is_available()),
        "xpu": lambda: torch.xpu.device_count() if hasattr(torch, "xpu") and torch.xpu.is_available() else 0,
    }[kind]()
    wanted = int(index or 0)
    if wanted >= count:
        seen = f"torch {torch.__version__} sees {count} {kind} device{'s' if count != 1 else ''}"
        raise BadInputError(f"{where}: this machine has no such device ({seen}).",
                            hint="Export on the CPU (leave --device out): the exported model runs on any device, "
                                 "and parity is verified on the CPU either way.")


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
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow unpickling a full-model file. Runs code from the file: only for files you trust."),
    meta: list[str] = typer.Option([], "--meta", help="KEY=VALUE written into the model's metadata. Repeatable."),
    labels: Path = typer.Option(None, help="Class labels file (UTF-8, one a line) stored in the model's metadata."),
    reinit_degenerate: bool = typer.Option(False, "--reinit-degenerate", help="Re-initialize all-zero weights "
                                           "with small seeded noise before export (random-weight models only)."),
    allow_static: list[str] = typer.Option([], "--allow-static", help="Accept this dynamic dim being frozen at its traced size. Repeatable."),
    config_file: Path = typer.Option(None, "--config", help="Read settings from an onnxgate.toml."),
    force: bool = typer.Option(False, "--force", help="Overwrite the output if it exists."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Export a PyTorch model to ONNX, trying dynamo and TorchScript exporters over opsets until one is proven."""
    from ..errors import BadInputError
    from ..spec import replace

    run, cfg = build_config(inputs, dims, strategy, opset, device, meta, labels, allow_static, config_file)
    cfg = replace(cfg, reinit_degenerate=reinit_degenerate or cfg.reinit_degenerate)
    ref = ref or run.ref
    if not ref:
        raise BadInputError("No model given.", hint="Pass a model reference, e.g. onnxgate export torchvision:resnet18 -o r18.onnx.")
    output = output or (Path(run.output) if run.output else None)
    if output is None:
        raise BadInputError("No output path given.", hint="Pass -o model.onnx.")
    from ..fsutil import check_writable

    check_writable(output)
    from ..export import export as do_export

    with console.status("exporting", spinner="dots") as status:
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
    dynamic = [d for d in result.dims if d not in won.frozen_dims]
    console.print(f"[green]exported[/] {output} with the {won.strategy} exporter at opset "
                  f"{won.opset_emitted or won.opset}; matches PyTorch (max abs err {won.max_abs_err:.2e})"
                  + (f" and keeps dims {', '.join(dynamic)} dynamic" if dynamic else ""))
    for name, why in won.frozen_dims.items():
        console.print(f"[yellow]static by request[/] (--allow-static {name}): dim {name} is frozen at "
                      f"{result.dims[name]['example']}: {why}")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
