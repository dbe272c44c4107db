"""From flags and ``onnxgate.toml`` to the config objects the library runs on, once, in the library.

The CLI only parses flags into ``ExportFlags`` / ``RunFlags`` and renders what comes back. Merging with the toml
file (flags win over the file, the file over the defaults) and every check that can fail before a model is loaded
(strategy, opset against what the exporters support, device against this machine, bench mode, quantize mode and
method) happen here, so the Python API and the CLI accept exactly the same things.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import BadInputError
from .spec import (ExportConfig, QuantizeConfig, RunConfig, load_toml, parse_device, parse_dim, parse_input,
                   parse_meta, read_labels)


@dataclass(frozen=True)
class ExportFlags:
    """What ``onnxgate export`` (and the export half of ``run``) was given on the command line; empty = unset."""

    inputs: tuple[str, ...] = ()
    dims: tuple[str, ...] = ()
    strategy: str | None = None
    opset: int | None = None
    device: str | None = None
    meta: tuple[str, ...] = ()
    labels: str | Path | None = None
    allow_static: tuple[str, ...] = ()
    reinit_degenerate: bool = False
    config_file: str | Path | None = None
    targets: tuple[str, ...] = ()  # --target: runtime releases the export must fit (the toml's `target` otherwise)
    accept_domain: bool = False  # --accept-domain: claim the verified shape domain when narrower than declared
    no_repair: bool = False  # --no-repair: no repair rung, no extra capture variants
    attempt_timeout_s: float | None = None  # --attempt-timeout: seconds per export attempt (its worker is stopped)
    attempt_memory_mb: int | None = None  # --attempt-memory-mb: private memory per export attempt
    ladder_budget: int | None = None  # --ladder-budget: at most this many export attempts run


@dataclass(frozen=True)
class RunFlags:
    """What ``onnxgate run`` was given besides the export flags; None = unset (the toml or the default decides)."""

    export: ExportFlags = field(default_factory=ExportFlags)
    weights: str | None = None
    arch: str | None = None
    trust_pickle: bool = False
    output: str | None = None
    targets: tuple[str, ...] = ()
    data: tuple[str, ...] = ()
    bench: str | None = None
    optimize: bool | None = None
    bundle: bool | None = None
    quantize: str | None = None  # static | dynamic
    calib: str | None = None
    eval_data: str | None = None
    method: str | None = None
    preprocess: str | None = None
    max_accuracy_drop: float | None = None
    max_error: float | None = None
    deploy: str | None = None  # --deploy openvino,ort-mobile,...


@dataclass(frozen=True)
class RunJob(RunConfig):
    """A ``RunConfig`` plus the accuracy stage's data: ``eval_data`` (``--eval DATA``, or the quantize stage's), on
    which ``run`` measures top-1/top-5 of PyTorch, the exported model and each shipped variant, with or without
    ``--quantize``; ``preprocess`` reads image folders (``--eval``, ``--data``) with or without it."""

    eval_data: str | None = None
    preprocess: str | None = None


#: Flags that only the INT8 stage reads: given without --quantize (or a [quantize] table) they are an error, never
#: silently dropped. ``--eval`` and ``--preprocess`` are not among them: the accuracy stage reads them.
QUANTIZE_ONLY = (("calib", "--calib"), ("method", "--method"), ("max_accuracy_drop", "--max-accuracy-drop"),
                 ("max_error", "--max-error"))


def export_config(flags: ExportFlags) -> tuple[RunConfig, ExportConfig]:
    """The toml file's job (or an empty one) and its export config with the flags applied, checked."""
    run = load_toml(flags.config_file) if flags.config_file else RunConfig()
    cfg = run.export
    if flags.device is not None:
        parse_device(flags.device)
    cfg = replace(
        cfg,
        inputs=tuple(parse_input(s) for s in flags.inputs) or cfg.inputs,
        dims=tuple(parse_dim(s) for s in flags.dims) or cfg.dims,
        strategy=flags.strategy or cfg.strategy,
        opset=flags.opset if flags.opset is not None else cfg.opset,
        device=flags.device or cfg.device,
        meta={**cfg.meta, **parse_meta(list(flags.meta))},
        labels=read_labels(flags.labels) if flags.labels else cfg.labels,
        allow_static=tuple(flags.allow_static) or cfg.allow_static,
        reinit_degenerate=flags.reinit_degenerate or cfg.reinit_degenerate,
        accept_domain=flags.accept_domain or cfg.accept_domain,
        targets=tuple(flags.targets) or run.targets,
        repair=cfg.repair and not flags.no_repair,
        attempt_timeout_s=flags.attempt_timeout_s or cfg.attempt_timeout_s,
        attempt_memory_mb=flags.attempt_memory_mb or cfg.attempt_memory_mb,
        ladder_budget=flags.ladder_budget if flags.ladder_budget is not None else cfg.ladder_budget,
    )
    in_file = f"In {flags.config_file}, key" if flags.config_file else None
    limits = None
    if cfg.targets:  # a malformed target, or one older than the table, fails here, before a model is loaded
        from .verify.targets import export_limits

        limits = export_limits(cfg.targets)
    if cfg.opset is not None:
        from .export.ladder import check_opset, check_target_opset

        where = (f"--opset {cfg.opset}" if flags.opset is not None or not in_file
                 else f"{in_file} 'export.opset' = {cfg.opset}")
        check_opset(cfg.opset, cfg.strategy, where=where)
        if limits is not None:
            check_target_opset(cfg.opset, limits, where=where)
    check_device_available(cfg.device, where=f"--device '{cfg.device}'" if flags.device or not in_file
                           else f"{in_file} 'device' = '{cfg.device}'")
    return run, cfg


def run_config(ref: str | None, flags: RunFlags) -> RunConfig:
    """The whole job of ``onnxgate run REF`` or ``onnxgate run onnxgate.toml``: flags over the file over defaults.
    ``--target`` steers the export (opset, IR, operators) as well as verification."""
    job, cfg = export_config(replace(flags.export, targets=tuple(flags.targets) or flags.export.targets))
    ref = ref or job.ref
    if not ref:
        raise BadInputError(f"'{flags.export.config_file}' names no model (its `ref` key is missing).",
                            hint='Add ref = "torchvision:resnet18" to it.')
    quantize = _quantize_config(flags, job.quantize)
    data = tuple(flags.data) or job.data
    if quantize is None:
        _check_quantize_only(flags, data)
    eval_data = flags.eval_data or (quantize.eval_data if quantize else None)
    return RunJob(
        ref=ref, export=cfg, weights=flags.weights or job.weights, arch=flags.arch or job.arch,
        trust_pickle=flags.trust_pickle or job.trust_pickle, output=flags.output or job.output,
        targets=cfg.targets, data=data,
        bench=flags.bench or job.bench, optimize=_first(flags.optimize, job.optimize),
        bundle=_first(flags.bundle, job.bundle), quantize=quantize,
        deploy=_deploy(flags.deploy) or job.deploy,
        eval_data=str(eval_data) if eval_data is not None else None,
        preprocess=flags.preprocess or (quantize.preprocess if quantize else None))


def _check_quantize_only(flags: RunFlags, data: tuple[str, ...]) -> None:
    """A run that does not quantize: an INT8-only flag would be dropped, so it is exit 2 naming the flag and the
    fix; so is ``--preprocess`` with no image data to read (no ``--eval``, no ``--data``)."""
    given = [name for key, name in QUANTIZE_ONLY if getattr(flags, key) is not None]
    if given:
        them = " and ".join(given)
        raise BadInputError(
            f"{them} {'is' if len(given) == 1 else 'are'} for the INT8 stage, and this run does not quantize (no "
            f"--quantize): {'it' if len(given) == 1 else 'they'} would be ignored.",
            hint="Add --quantize static (or --quantize dynamic) to quantize within the budget, or leave "
                 f"{them} out: --eval DATA alone measures the top-1/top-5 of PyTorch and the exported model.")
    if flags.preprocess is not None and not flags.eval_data and not data:
        raise BadInputError("--preprocess reads image-folder DATA, and this run reads none (no --eval, --data or "
                            "--quantize): it would be ignored.",
                            hint="Give the image folder with --eval DATA (accuracy) or --data DATA (verification), "
                                 "or leave --preprocess out.")


def _deploy(text: str | None) -> tuple[str, ...]:
    """--deploy: the deploy targets, checked now (an unknown name is exit 2 before a model is loaded)."""
    if text is None:
        return ()
    from .deploy.model import parse_targets

    return parse_targets(text, where="--deploy")


def _quantize_config(flags: RunFlags, from_file: QuantizeConfig | None) -> QuantizeConfig | None:
    if not flags.quantize and from_file is None:
        return None
    base = from_file or QuantizeConfig(mode=flags.quantize)
    return QuantizeConfig(
        mode=flags.quantize or base.mode, calib=flags.calib or base.calib, eval_data=flags.eval_data or base.eval_data,
        labels=base.labels, method=flags.method or base.method, preprocess=flags.preprocess or base.preprocess,
        per_channel=base.per_channel, max_accuracy_drop=_first(flags.max_accuracy_drop, base.max_accuracy_drop),
        max_error=_first(flags.max_error, base.max_error))


def _first(*values):
    return next((v for v in values if v is not None), None)


def check_device_available(device: str, *, where: str) -> None:
    """A device other than the CPU must exist on this machine (asks torch, which the export needs anyway)."""
    if device == "cpu":
        return
    from .errors import require

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


