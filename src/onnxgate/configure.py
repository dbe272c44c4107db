"""From flags, ``onnxgate.toml`` and zoo entries to the config objects the library runs on, once, in the library.

Every option is defined once, in ``options.OPTIONS``: the CLI's flags, the toml keys and the zoo keys are
generated from it, and ``ExportFlags`` / ``RunFlags`` are built from it by keyword (``flags_from``). Merging with
the toml file (flags win over the file, the file over the defaults) and every check that can fail before a model is
loaded (strategy, opset against what the exporters support, device against this machine, bench mode, quantize
mode and method, deploy targets) happen here, so the Python API, the CLI, onnxgate.toml and zoo files accept
exactly the same things, and a bad value names the option the way it was written (``--opset`` or ``key 'opset'``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .deploy.model import parse_targets
from .errors import BadInputError
from .options import BY_NAME, OPTIONS, FileOptions, check_given, for_command, read_toml
from .spec import (_DIM_NAME, ExportConfig, QuantizeConfig, RunConfig, _meta_key, clip, parse_device, parse_dim,
                   parse_input, read_labels)
from .verify.target_table import parse_target


@dataclass(frozen=True)
class ExportFlags:
    """What ``onnxgate export`` (and the export half of ``run``) was given; empty = unset. Fields are the ``field``
    of the options of group "export" in ``options.OPTIONS``."""

    inputs: tuple[str, ...] = ()
    dims: tuple[str, ...] = ()
    strategy: str | None = None
    opset: int | None = None
    device: str | None = None
    meta: dict[str, str] = field(default_factory=dict)  # --meta KEY=VALUE items, parsed
    labels: str | Path | None = None
    allow_static: tuple[str, ...] = ()
    reinit_degenerate: bool = False
    config_file: str | Path | None = None
    targets: tuple[str, ...] = ()  # --target: runtime releases the export must fit (the toml's `target` otherwise)
    accept_domain: bool = False  # --accept-domain: claim the verified shape domain when narrower than declared
    repair: bool | None = None  # --no-repair: no repair rung, no extra capture variants
    attempt_timeout_s: float | None = None  # --attempt-timeout: seconds per export attempt (its worker is stopped)
    attempt_memory_mb: int | None = None  # --attempt-memory-mb: private memory per export attempt
    ladder_budget: int | None = None  # --ladder-budget: at most this many export attempts run


@dataclass(frozen=True)
class RunFlags:
    """What ``onnxgate run`` was given besides the export flags; None = unset (the toml or the default decides).
    Fields are the ``field`` of the options of group "run"."""

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
    per_channel: bool | None = None
    max_accuracy_drop: float | None = None
    max_error: float | None = None
    deploy: str | tuple[str, ...] | None = None  # --deploy openvino,ort-mobile,... (or the names)
    hunt_budget: int | None = None  # --hunt-budget: evaluations of the divergence hunt (0: off)


@dataclass(frozen=True)
class RunJob(RunConfig):
    """A ``RunConfig`` plus the accuracy stage's data: ``eval_data`` (``--eval DATA``, or the quantize stage's), on
    which ``run`` measures top-1/top-5 of PyTorch, the exported model and each shipped variant, with or without
    ``--quantize``; ``preprocess`` reads image folders (``--eval``, ``--data``) with or without it;
    ``hunt_budget``: the divergence hunt's evaluations (``pipeline.run``)."""

    eval_data: str | None = None
    preprocess: str | None = None
    hunt_budget: int | None = None  # evaluations of the divergence hunt (None: its default; 0: no hunt)


#: Options that only the INT8 stage reads: given without quantize they are an error, never silently dropped.
#: ``eval`` and ``preprocess`` are not among them: the accuracy stage reads them.
QUANTIZE_ONLY = ("calib", "method", "max_accuracy_drop", "max_error", "per_channel")


def flags_from(values: dict[str, Any]) -> RunFlags:
    """Option values (by option name, as ``options`` checks them) -> ``RunFlags``, by keyword, from the table."""
    groups: dict[str, dict[str, Any]] = {"export": {}, "run": {}}
    for name, value in values.items():
        opt = BY_NAME[name]
        if opt.group is None:
            continue
        groups[opt.group][opt.attr] = tuple(value) if isinstance(value, list) else value
    if "config" in values:
        groups["export"]["config_file"] = values["config"]
    return RunFlags(export=ExportFlags(**groups["export"]), **groups["run"])


def values_of(flags: RunFlags | ExportFlags) -> dict[str, Any]:
    """The options ``flags`` set (the inverse of ``flags_from``), checked against the table."""
    run = flags if isinstance(flags, RunFlags) else RunFlags(export=flags)
    given: dict[str, Any] = {}
    for opt in OPTIONS:
        source = run.export if opt.group == "export" else run if opt.group == "run" else None
        if source is None or opt.attr not in {f.name for f in fields(source)}:
            continue
        value = getattr(source, opt.attr)
        if value is None or value == () or value == {} or (opt.kind == "bool" and not opt.negatable and not value):
            continue
        if isinstance(value, Path):
            value = str(value)
        if opt.name == "deploy" and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        given[opt.name] = list(value) if isinstance(value, tuple) else value
    if run.targets:  # `run --target` (RunFlags.targets) and the export's own
        given["target"] = list(run.targets)
    return check_given(given)


def load_toml(path: str | Path) -> RunJob:
    """Read ``onnxgate.toml`` (see ``options.read_toml``) into the job it describes, every value checked."""
    file = read_toml(path)
    return _resolve(dict(file.values), _Namer(file, set()))


class _Namer:
    """How a message names an option: the file's key when the value came from onnxgate.toml, else the flag."""

    def __init__(self, file: FileOptions | None, from_flags: set[str]):
        self.file, self.from_flags = file, from_flags

    def in_file(self, name: str) -> bool:
        return self.file is not None and name not in self.from_flags and (name in self.file.values
                                                                          or name.startswith("meta."))

    def __call__(self, name: str, item: Any = None) -> str:
        if self.in_file(name):
            return self.file.at(name, None if item is None else str(item))
        flag = BY_NAME[name].flag
        return f"{flag} '{clip(str(item))}'" if item is not None else flag


def _merge(flags: RunFlags) -> tuple[dict[str, Any], _Namer]:
    """Flags over the file (``flags.export.config_file``) over the defaults; ``meta`` entries merge."""
    return _over_file(values_of(flags), flags.export.config_file, None)


def _over_file(given: dict[str, Any], config: str | Path | None, command: str | None) -> tuple[dict, _Namer]:
    file = read_toml(config) if config else None
    takes = None if command is None else {o.name for o in for_command(command)} | {"ref"}
    from_file = {k: v for k, v in (file.values if file else {}).items() if takes is None or k in takes}
    values = {**from_file, **given}
    if "meta" in from_file and "meta" in given:
        values["meta"] = {**from_file["meta"], **given["meta"]}
    return values, _Namer(file, set(given))


def command_config(command: str, given: dict[str, Any]) -> tuple[RunJob, dict[str, Any]]:
    """What ``verify``, ``bench`` or ``bundle`` was given (``given``: its checked flags) over its own options of
    onnxgate.toml (``--config``; the file's other keys are other commands'): the job they describe (model
    reference, input specs and dims, weights...) and every value by option name (the command's own settings)."""
    values, at = _over_file(given, given.get("config"), command)
    return _resolve(values, at), values


def export_config(flags: ExportFlags | RunFlags) -> tuple[RunJob, ExportConfig]:
    """The job the flags and their toml file describe (flags over file), and its export config, checked."""
    values, at = _merge(flags if isinstance(flags, RunFlags) else RunFlags(export=flags))
    job = _resolve(values, at)
    return job, job.export


def run_config(ref: str | None, flags: RunFlags) -> RunJob:
    """The whole job of ``onnxgate run REF`` or ``onnxgate run onnxgate.toml``: flags over the file over defaults.
    ``--target`` steers the export (opset, IR, operators) as well as verification."""
    values, at = _merge(flags)
    if ref:
        values["ref"] = ref
    if not values.get("ref"):
        raise BadInputError(f"'{flags.export.config_file}' names no model (its `ref` key is missing).",
                            hint='Add ref = "torchvision:resnet18" to it.')
    return _resolve(values, at)


def _resolve(v: dict[str, Any], at: _Namer) -> RunJob:
    """Checked option values -> the ``RunJob`` they describe; ``at(name, item)`` names an option in messages."""
    cfg = _export(v, at)
    quantize = _quantize(v)
    data = tuple(v.get("data", ()))
    if quantize is None:
        _check_quantize_only(v, data, at)
    eval_data = v.get("eval")
    return RunJob(
        ref=v.get("ref"), export=cfg, weights=v.get("weights"), arch=v.get("arch"),
        trust_pickle=bool(v.get("trust_code")), output=v.get("output"), targets=cfg.targets, data=data,
        bench=v.get("bench", "quick"), optimize=v.get("optimize", True), bundle=v.get("bundle", True),
        quantize=quantize, deploy=_deploy(v.get("deploy"), at),
        eval_data=str(eval_data) if eval_data is not None else None, preprocess=v.get("preprocess"),
        hunt_budget=v.get("hunt_budget"))


def _export(v: dict[str, Any], at: _Namer) -> ExportConfig:
    device = parse_device(v["device"], where=at("device", v["device"])) if "device" in v else "cpu"
    for name in v.get("allow_static", ()):
        if not _DIM_NAME.match(name):
            raise BadInputError(f"{at('allow_static', name)} is not a dim name.",
                                hint='Give the names of dynamic dims, e.g. allow_static = ["B"] (--allow-static B).')
    labels = ()
    if "labels" in v:
        raw = at.file.raw.get("labels") if at.in_file("labels") else None
        labels = read_labels(v["labels"], where=(at("labels", raw) + f" -> '{v['labels']}'") if raw else None)
    targets = tuple(v.get("target", ()))
    _check_targets(targets, at)
    defaults = ExportConfig()
    cfg = ExportConfig(
        inputs=tuple(parse_input(s, where=at("input", s) if at.in_file("input") else None) for s in v.get("input", ())),
        dims=tuple(parse_dim(s, where=at("dim", s) if at.in_file("dim") else None) for s in v.get("dim", ())),
        strategy=v.get("strategy"), opset=v.get("opset"), device=device,
        meta={_meta_key(k, where=at(f"meta.{k}") if at.in_file("meta") else f"--meta '{clip(k)}'"): str(x)
              for k, x in v.get("meta", {}).items()},
        labels=labels, allow_static=tuple(v.get("allow_static", ())),
        reinit_degenerate=bool(v.get("reinit_degenerate")), accept_domain=bool(v.get("accept_domain")),
        targets=targets, repair=v.get("repair", True),
        attempt_timeout_s=v.get("attempt_timeout", defaults.attempt_timeout_s),
        attempt_memory_mb=v.get("attempt_memory_mb"), ladder_budget=v.get("ladder_budget"))
    _check_opset(cfg, at)
    check_device_available(cfg.device, where=(at("device") + f" = '{cfg.device}'") if at.in_file("device")
                           else f"--device '{cfg.device}'")
    return cfg


def _check_targets(targets: tuple[str, ...], at: _Namer) -> None:
    """A malformed target, or one older than the table, fails here, before a model is loaded."""
    if not targets:
        return
    if at.in_file("target"):
        for target in targets:
            try:
                parse_target(target)
            except BadInputError as exc:
                raise BadInputError(f"{at('target', target)}: {exc.message}", hint=exc.hint) from None


def _check_opset(cfg: ExportConfig, at: _Namer) -> None:
    limits = None
    if cfg.targets:
        from .verify.targets import export_limits

        limits = export_limits(cfg.targets)
    if cfg.opset is not None:
        from .export.ladder import check_opset, check_target_opset

        where = f"{at('opset')} = {cfg.opset}" if at.in_file("opset") else f"--opset {cfg.opset}"
        check_opset(cfg.opset, cfg.strategy, where=where)
        if limits is not None:
            check_target_opset(cfg.opset, limits, where=where)


def _check_quantize_only(v: dict[str, Any], data: tuple[str, ...], at: _Namer) -> None:
    """A run that does not quantize: an INT8-only option would be dropped, so it is exit 2 naming the option and
    the fix; so is ``preprocess`` with no image data to read (no ``eval``, no ``data``)."""
    given = [at(name) for name in QUANTIZE_ONLY if name in v]
    if given:
        them = " and ".join(given)
        raise BadInputError(
            f"{them} {'is' if len(given) == 1 else 'are'} for the INT8 stage, and this run does not quantize (no "
            f"--quantize): {'it' if len(given) == 1 else 'they'} would be ignored.",
            hint="Add --quantize static (or --quantize dynamic; quantize = \"static\" in onnxgate.toml) to quantize "
                 f"within the budget, or leave {them} out: --eval DATA alone measures the top-1/top-5 of PyTorch and "
                 "the exported model.")
    if "preprocess" in v and not v.get("eval") and not data:
        raise BadInputError(f"{at('preprocess')} reads image-folder DATA, and this run reads none (no --eval, --data "
                            "or --quantize): it would be ignored.",
                            hint="Give the image folder with --eval DATA (accuracy) or --data DATA (verification), "
                                 "or leave --preprocess out.")


def _deploy(names: list[str] | None, at: _Namer) -> tuple[str, ...]:
    """The deploy targets, checked now (an unknown name is exit 2 before a model is loaded)."""
    if not names:
        return ()
    return tuple(parse_targets(list(names), where=at("deploy") if at.in_file("deploy") else "--deploy"))


def _quantize(v: dict[str, Any]) -> QuantizeConfig | None:
    if "quantize" not in v:
        return None
    return QuantizeConfig(mode=v["quantize"], calib=v.get("calib"), eval_data=v.get("eval"),
                          method=v.get("method", "minmax"), preprocess=v.get("preprocess"),
                          per_channel=v.get("per_channel", True), max_accuracy_drop=v.get("max_accuracy_drop"),
                          max_error=v.get("max_error"))
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


