"""A zoo file: many models, each with its own inputs, dims, options, tags and limits, read strictly.

``ZOO.toml``::

    [zoo]
    name = "vision"                       # default: the file's stem
    stages = ["export", "verify"]         # the default; add optimize, quantize, bench, bundle, deploy
    timeout_s = 900                       # per model (default 900)
    memory_mb = 4096                      # per model: the worker's private memory cap (default 90% of free memory)
    cpus = 1                              # per model, what the Ray executor declares (default 1)

    [defaults]                            # every model's keys, applied where a model does not set them
    input = ["x:Bx3x224x224:float32"]
    dim = ["B=1..4"]

    [[model]]
    ref = "torchvision:resnet18"          # any model reference `onnxgate run` takes
    name = "resnet18"                     # default: from the ref; names the model's folder and ledger rows
    family = "resnet"                     # default: the name's leading letters
    tags = ["cnn", "small"]
    dim = ["B=1..8"]                      # per-model options, keys as in onnxgate.toml / the `run` flags

The per-model keys are ``onnxgate run``'s options, named as in ``onnxgate.toml`` (one flat table, the flag without
its dashes): the schema of an entry is generated from ``options.OPTIONS`` (``options.zoo_model_schema``), so the
zoo, the toml file and the flags accept the same names and values. What the zoo decides itself is not a key:
``output`` (each model's folder), and ``optimize``/``bundle``, which follow the stages: without ``bench`` the run
gets ``--bench none``, without ``optimize`` ``--no-optimize``, without ``bundle`` ``--no-bundle``, with ``quantize``
``--quantize`` (``dynamic`` unless the entry names a mode), with ``deploy`` ``--deploy TARGETS``; export and verify
always run. Relative paths (a ``file.py:build`` ref, weights, labels,
data) are relative to the zoo file. Every model's options go through ``configure.run_config`` — the same checks as
``onnxgate run`` — when the file is read, so a bad option is exit 2 naming the model and the key before any model
runs. Built-in zoos (``torchvision``, ``timm``, ``transformers``) ship as package data in ``builtin/``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from ..configure import flags_from, run_config
from ..options import BY_NAME, problem, zoo_entry, zoo_model_schema
from ..spec import RunConfig, clip, describe_value

STAGES = ("export", "verify", "optimize", "quantize", "bench", "bundle", "deploy")
DEFAULT_STAGES = ("export", "verify")
DEFAULT_TIMEOUT_S = 900.0
BUILTIN = ("torchvision", "timm", "transformers")
ZOO_MAX_BYTES = 4 << 20
_SAFE = re.compile(r"[^A-Za-z0-9_.\-]+")
# What the zoo's own keys must be (an option's form comes from options.OPTIONS).
_MODEL_KEYS_FORMS = {
    "name": 'a string, e.g. name = "resnet18"', "family": 'a string, e.g. family = "resnet"',
    "tags": 'an array of strings, e.g. tags = ["cnn"]', "stages": f"an array of stages out of {', '.join(STAGES)}",
    "timeout_s": "a number of seconds > 0", "memory_mb": "a number of MB > 0", "cpus": "a number of CPUs > 0",
}


@dataclass(frozen=True)
class ZooModel:
    """One model of a zoo, fully resolved: what its worker runs, and how the ledger and the dashboard name it."""

    name: str
    ref: str
    family: str
    tags: tuple[str, ...]
    run: RunConfig  # what `onnxgate run` would run (configure.run_config: the same checks)
    stages: tuple[str, ...]
    timeout_s: float
    memory_mb: float | None  # None: 90% of the memory available when the worker starts
    cpus: float
    deploy: tuple[str, ...] = ()
    fingerprint: str = ""  # of everything above: a ledger row counts for a rerun only while it matches
    index: int = 0  # position in the zoo file (shards and the exit-code rule go by it)

    def labels(self) -> set[str]:
        """What --allow-fail and --only match: the tags, the family and the model's own name."""
        return {*self.tags, self.family, self.name}

    def folder(self, out: Path) -> Path:
        return out / "models" / self.name


@dataclass(frozen=True)
class Zoo:
    name: str
    source: str  # the file, or "builtin:NAME"
    models: tuple[ZooModel, ...]
    stages: tuple[str, ...] = DEFAULT_STAGES
    notes: tuple[str, ...] = field(default_factory=tuple)


def _schema():
    """The pydantic models of a zoo file (built on first use, like spec.py's onnxgate.toml schema)."""
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

    Number = StrictFloat | StrictInt

    # A [[model]] entry (and [defaults]): every `run` option of onnxgate.toml, generated from options.OPTIONS,
    # plus the zoo's own keys (name, family, tags, stages, timeout_s, memory_mb, cpus).
    ModelTable = zoo_model_schema(STAGES)

    class ZooTable(Strict):
        name: str | None = Field(None, min_length=1, max_length=100)
        stages: list[Literal[STAGES]] = list(DEFAULT_STAGES)  # type: ignore[valid-type]
        timeout_s: Number = Field(DEFAULT_TIMEOUT_S, gt=0)
        memory_mb: Number | None = Field(None, gt=0)
        cpus: Number = Field(1, gt=0)

    class ZooFile(Strict):
        zoo: ZooTable = ZooTable()
        defaults: ModelTable = ModelTable()
        model: list[ModelTable] = Field(default_factory=list)

    return ZooFile, ModelTable


def _problems(data: dict, exc) -> list[str]:
    """One sentence per offending key: where it is (the model's position and ref), what it must be."""
    out: dict[str, str] = {}
    _, model_table = _schema()
    for err in exc.errors():
        loc = _data_loc(data, [str(p) for p in err["loc"]], extra=err["type"] == "extra_forbidden")
        where = _where(data, loc)
        key = loc[-1] if loc else "?"
        if err["type"] == "extra_forbidden":
            known = list(model_table.model_fields) if len(loc) > 1 and loc[0] in ("model", "defaults") else (
                ["name", "stages", "timeout_s", "memory_mb", "cpus"] if loc[0] == "zoo" else ["zoo", "defaults", "model"])
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            out[where] = f"{where} is not a key onnxgate knows" + (
                f": did you mean '{close[0]}'?" if close else f" (known keys there: {', '.join(known)})")
            continue
        if where in out:
            continue
        value = _value_at(data, loc)
        name = loc[2] if loc[:1] == ["model"] and len(loc) > 2 else loc[1] if loc[:1] == ["defaults"] and len(loc) > 1 else ""
        option = BY_NAME.get(name)
        if option is not None and option.zoo:  # an option: the message onnxgate.toml and the flags give
            out[where] = problem(where, option, err, _value_at(data, loc[:3] if loc[0] == "model" else loc[:2]))
            continue
        field_name = next((p for p in reversed(loc) if not p.isdigit() and p in _MODEL_KEYS_FORMS), key)
        form = _MODEL_KEYS_FORMS.get(field_name, err.get("msg", "").lower())
        out[where] = f"{where} must be {form} (it is {describe_value(value, mapping='a table', limit=40)})"
    return list(out.values())


def _data_loc(data: Any, loc: list[str], *, extra: bool) -> list[str]:
    """The error's location as keys of the file: pydantic adds the member of a union it tried ('float', 'int')."""
    kept = []
    for i, part in enumerate(loc):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        elif not (extra and i == len(loc) - 1):
            continue
        kept.append(part)
    return kept


def _where(data: dict, loc: list[str]) -> str:
    if len(loc) >= 2 and loc[0] == "model" and loc[1].isdigit():
        entry = (data.get("model") or [None] * (int(loc[1]) + 1))[int(loc[1])]
        ref = entry.get("ref") if isinstance(entry, dict) else None
        model = f"[[model]] #{int(loc[1]) + 1}" + (f" ('{clip(str(ref), 60)}')" if ref else "")
        return f"{model} key '{'.'.join(loc[2:]) or '?'}'"
    return f"key '{clip('.'.join(loc))}'"


def _value_at(data: Any, loc: list[str]) -> Any:
    for part in loc:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def read_zoo_text(arg: str) -> tuple[str, str, Path]:
    """(text, source, base folder) of a zoo file or a built-in zoo's name; exit 2 for anything else."""
    path = Path(arg)
    if not arg.endswith(".toml") and arg in BUILTIN:
        text = resources.files(__package__).joinpath("builtin", f"{arg}.toml").read_text(encoding="utf-8")
        return text, f"builtin:{arg}", Path.cwd()
    if not path.is_file():
        close = difflib.get_close_matches(arg, BUILTIN, n=1)
        raise BadInputError(
            f"Zoo '{clip(arg)}' is neither a zoo file (no such file) nor a built-in zoo."
            + (f" Did you mean '{close[0]}'?" if close else ""),
            hint=f"Give a ZOO.toml (see the README's Zoo section) or one of the built-in zoos: {', '.join(BUILTIN)}.")
    try:
        raw = path.read_bytes()[: ZOO_MAX_BYTES + 1]
        if len(raw) > ZOO_MAX_BYTES:
            raise BadInputError(f"Zoo file '{arg}' is larger than {ZOO_MAX_BYTES >> 20} MiB; that is not a zoo file.",
                                hint="Give the TOML file described in the README's Zoo section.")
        return raw.decode("utf-8"), str(path), path.resolve().parent
    except UnicodeDecodeError as exc:
        raise BadInputError(f"Zoo file '{arg}' is not valid UTF-8 ({exc.reason} at byte {exc.start}).",
                            hint="Save it as UTF-8 (TOML files must be).") from None
    except OSError as exc:
        raise BadInputError(f"Zoo file '{arg}' cannot be read: {exc}.", hint="Give a readable ZOO.toml.") from None


def load_zoo(arg: str) -> Zoo:
    """Read and check a zoo file or a built-in zoo; every model's options resolved as `onnxgate run` would."""
    from pydantic import ValidationError

    text, source, base = read_zoo_text(arg)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"Zoo file '{source}' is not valid TOML: {exc}.", hint="Fix the syntax at that line.") from None
    except RecursionError:
        raise _too_deep(source) from None
    zoo_file, _ = _schema()
    try:
        doc = zoo_file.model_validate(data)
    except RecursionError:
        raise _too_deep(source) from None
    except ValidationError as exc:
        problems = _problems(data, exc)
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise BadInputError(f"In {source}, {shown}" + ("" if shown.endswith("?") else "."),
                            hint="Fix those keys (the README's Zoo section lists them).") from None
    if not doc.model:
        raise BadInputError(f"Zoo file '{source}' lists no models.",
                            hint='Add one [[model]] table per model, e.g. [[model]] ref = "torchvision:resnet18".')
    name = doc.zoo.name or (Path(source).stem if not source.startswith("builtin:") else source.split(":", 1)[1])
    _check_memory(doc.zoo.memory_mb, f"In {source}, key 'zoo.memory_mb'")
    defaults = doc.defaults.model_dump(exclude_none=True, by_alias=True)
    models = tuple(_resolve(i, {**defaults, **m.model_dump(exclude_none=True, by_alias=True)}, doc.zoo, source, base)
                   for i, m in enumerate(doc.model))
    seen: dict[str, int] = {}
    for m in models:
        if m.name in seen:
            raise BadInputError(f"In {source}, models #{seen[m.name] + 1} and #{m.index + 1} are both named '{m.name}'.",
                                hint="Give one of them its own name = \"...\" (names key the ledger and the folders).")
        seen[m.name] = m.index
    return Zoo(name=_SAFE.sub("_", name), source=source, models=models, stages=tuple(doc.zoo.stages))


def _resolve(index: int, table: dict, zoo, source: str, base: Path) -> ZooModel:
    """One model's table (defaults applied) -> ZooModel, its options checked by configure.run_config."""
    ref = table.get("ref")
    if not ref:
        raise BadInputError(f"In {source}, [[model]] #{index + 1} has no ref.",
                            hint='Give every model a reference, e.g. ref = "torchvision:resnet18".')
    ref = _relative_ref(ref, base)
    stages = tuple(s for s in STAGES if s in set(table.get("stages", zoo.stages)) | set(DEFAULT_STAGES))
    name = _SAFE.sub("_", table.get("name") or default_name(ref)).strip("._") or f"model{index + 1}"
    where = f"In {source}, model '{name}' (#{index + 1})"
    values = zoo_entry(table, base)  # the options, as onnxgate.toml and the `run` flags name them
    values.update(bench=values.get("bench", "quick") if "bench" in stages else "none",
                  optimize="optimize" in stages, bundle="bundle" in stages)
    if "quantize" in stages:
        values.setdefault("quantize", "dynamic")
    else:
        values.pop("quantize", None)
    timeout = float(table.get("timeout_s", zoo.timeout_s))
    memory = table.get("memory_mb", zoo.memory_mb)
    if "memory_mb" in table:
        _check_memory(memory, f"{where}: key 'memory_mb'")
    try:
        deploy = _deploy_targets(table.get("deploy", ()), stages)
        values["deploy"] = list(deploy)
        run = run_config(ref, flags_from({k: v for k, v in values.items() if v != []}))
    except BadInputError as exc:
        raise BadInputError(f"{where}: {exc.message}", hint=exc.hint) from None
    run = replace(run, export=_attempt_limits(run.export, timeout, memory))
    family = table.get("family") or default_family(name)
    tags = tuple(dict.fromkeys(table.get("tags", ())))
    fingerprint = hashlib.sha256(json.dumps(
        {"ref": ref, "table": {k: v for k, v in table.items() if k not in ("name", "family", "tags")},
         "stages": stages, "timeout_s": timeout, "memory_mb": memory}, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return ZooModel(name, ref, family, tags, run, stages, timeout, None if memory is None else float(memory),
                    float(table.get("cpus", zoo.cpus)), deploy, fingerprint, index)


def _too_deep(source: str) -> BadInputError:
    return BadInputError(f"Zoo file '{source}' nests arrays or tables too deeply to be a zoo file.",
                         hint="Give the TOML file described in the README's Zoo section (its values are strings, "
                         "numbers and arrays of strings).")


def _check_memory(memory_mb: float | None, where: str) -> None:
    """A memory cap above the machine's memory is no cap: the kernel's OOM killer would strike first, without a
    message. Refused (exit 2) naming the key and the machine's memory."""
    from ..worker import total_memory_mb

    total = total_memory_mb()
    if memory_mb is None or total is None or memory_mb <= total:
        return
    raise BadInputError(f"{where} is {clip(str(memory_mb), 30)} MB, more than this machine's "
                        f"{total} MB of memory: a cap above it would never be reached.",
                        hint=f"Give memory_mb up to {total} (or leave it out: the default is 90% of the memory "
                        "available when each model starts).")


def _attempt_limits(export, timeout: float, memory: float | None):
    """The model's limits hold for the export attempts its worker forks too (each attempt is a worker of its own
    where the ladder isolates attempts: its memory is not the model worker's, so the cap is passed down)."""
    names = {f.name for f in fields(export)}
    limits = {}
    if "attempt_timeout_s" in names:
        limits["attempt_timeout_s"] = min(timeout, export.attempt_timeout_s or timeout)
    if "attempt_memory_mb" in names and memory is not None:
        limits["attempt_memory_mb"] = max(1, int(memory))
    return replace(export, **limits)


def _deploy_targets(targets, stages) -> tuple[str, ...]:
    if "deploy" not in stages:
        return ()
    if not targets:
        raise BadInputError("the deploy stage is on but no targets are named.",
                            hint='Add deploy = ["openvino"] (or ort-mobile, tflite, tensorrt, coreml) to the model '
                            "or to [defaults].")
    from ..deploy.model import parse_targets

    return tuple(parse_targets(list(targets), where="key 'deploy'"))


def default_name(ref: str) -> str:
    """resnet18 for torchvision:resnet18; crash.build for models/crash.py:build; tiny_transformers.bert for a module."""
    prefix, colon, rest = ref.partition(":")
    if colon and prefix in ("torchvision", "timm"):
        return rest
    if colon and prefix == "hf":
        return Path(rest).name
    head, colon, tail = ref.rpartition(":")
    if colon:
        return f"{Path(head).stem if head.endswith('.py') else head.rsplit('.', 1)[-1]}.{tail}"
    return Path(ref).stem


def default_family(name: str) -> str:
    match = re.match(r"[A-Za-z]+", name)
    return match.group(0).lower() if match else name


def _relative_ref(ref: str, base: Path) -> str:
    """A file.py:build ref (or a model file) relative to the zoo file's folder becomes absolute."""
    prefix = ref.partition(":")[0]
    if prefix in ("torchvision", "timm"):
        return ref
    if prefix == "hf":
        folder = ref[3:]
        return ref if Path(folder).is_absolute() else f"hf:{base / folder}"
    head, colon, tail = ref.rpartition(":")
    if colon and head.endswith(".py") and not Path(head).is_absolute():
        return f"{base / head}:{tail}"
    if not colon and not Path(ref).is_absolute() and (base / ref).exists():
        return str(base / ref)
    return ref


def _relative_path(value: str | None, base: Path) -> str | None:
    if value is None or Path(value).is_absolute():
        return value
    head, colon, tail = value.rpartition(":")
    if colon and head.endswith(".py"):
        return f"{base / head}:{tail}" if not Path(head).is_absolute() else value
    if colon:
        return value  # a package.module:fn data source
    return str(base / value)


def select(models: tuple[ZooModel, ...], *, shard: tuple[int, int] | None = None,
           only: tuple[str, ...] = ()) -> list[ZooModel]:
    """The models this run owns: ``only`` (tags, families or names), then shard I of N (1-based, round robin over
    the zoo file's order, so every shard gets a similar mix)."""
    chosen = [m for m in models if not only or m.labels() & set(only)]
    if shard is not None:
        index, count = shard
        chosen = [m for i, m in enumerate(chosen) if i % count == index - 1]
    return chosen


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise BadInputError(f"--shard '{clip(text)}' is not a shard: it must be I/N with 1 <= I <= N.",
                            hint="For a CI matrix of 4 jobs pass --shard 1/4 ... --shard 4/4.")
    return int(match.group(1)), int(match.group(2))
