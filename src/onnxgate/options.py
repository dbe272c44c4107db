"""Every option onnxgate takes, written once: name, type, CLI flags, help, allowed values, which commands take it.

One table (``OPTIONS``) is the source of three readers, so a name and a value mean the same thing everywhere:

- the CLI: each command's typer parameters are generated from the rows naming it (``cli/params.py``);
- ``onnxgate.toml``: one flat table whose keys are the option names (``opset = 18``, ``quantize = "static"``),
  read by ``read_toml`` (the older ``[export]``/``[quantize]`` tables still read, with a deprecation line);
- a zoo file's ``[[model]]`` entries and ``[defaults]``: the same keys (``zoo_model_schema``), minus what the
  zoo decides itself (``output``; ``optimize``/``bundle`` follow its ``stages``).

All three go through ``check``: one pydantic model built from the table, so a bad value is the same exit-2 error
naming the option (``--opset`` on the command line, ``key 'opset'`` in a file) wherever it was written. What a
value means beyond its type (an input spec, a dim, a device) is parsed by ``configure``, once, for all three.
Light on purpose (no torch, no onnx, no typer; pydantic is imported when a check runs).
"""

from __future__ import annotations

import difflib
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadInputError
from .spec import (BENCH_MODES, CALIBRATION_METHODS, QUANTIZE_MODES, STRATEGIES, clip, describe_value)

EXPORT, RUN, VERIFY, BENCH, BUNDLE, DEPLOY = "export", "run", "verify", "bench", "bundle", "deploy"
COMMANDS = (EXPORT, RUN, VERIFY, BENCH, BUNDLE)
_MODEL = frozenset({EXPORT, RUN, VERIFY, BENCH, BUNDLE, DEPLOY})  # commands that load or export a model
_EXPORTS = frozenset({EXPORT, RUN})
_ALL = frozenset(COMMANDS) | {DEPLOY}


@dataclass(frozen=True)
class Option:
    """One option. ``kind``: str, path (a file or DATA, relative to the toml/zoo file that names it), int, float,
    bool, list (of str; ``item=int`` for numbers), meta (KEY=VALUE items / a table). ``field``: its attribute in
    ``configure.ExportFlags`` (``group="export"``) or ``RunFlags`` (``group="run"``); other options are read by
    their command. ``toml``: readable from onnxgate.toml (and, for ``run`` options, zoo entries)."""

    name: str
    kind: str
    help: str
    commands: frozenset[str] = frozenset()
    flags: tuple[str, ...] = ()  # default: --NAME (dashes); a bool with a default of its own: --X/--no-X
    toml: bool = True
    choices: tuple[str, ...] = ()
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    negatable: bool = False  # --x/--no-x (unset = the library default); else a bool is a plain switch
    split: bool = False  # on the command line: one comma-separated value (--deploy a,b)
    item: type = str
    group: str | None = None  # "export" | "run"
    field: str | None = None  # default: the name
    legacy: str | None = None  # the key in the older nested toml shape, e.g. "export.opset"
    aliases: tuple[str, ...] = ()  # other toml keys read as this option (trust_pickle)
    metavar: str | None = None
    form: str = ""  # what the value must be, for the messages (default from kind/choices)

    @property
    def cli_flags(self) -> tuple[str, ...]:
        if self.flags:
            return self.flags
        flag = "--" + self.name.replace("_", "-")
        return (f"{flag}/--no-{flag[2:]}",) if self.negatable else (flag,)

    @property
    def flag(self) -> str:
        """The flag named in messages: the first long one (``--optimize`` for ``--optimize/--no-optimize``)."""
        return next(f for f in self.cli_flags if f.startswith("--")).split("/")[0]

    @property
    def attr(self) -> str:
        return self.field or self.name

    @property
    def zoo(self) -> bool:
        """A key of zoo entries: every ``run`` option of onnxgate.toml but what the zoo decides itself."""
        return self.toml and (RUN in self.commands or self.name == "ref") and self.name not in ZOO_DECIDES

    def describe(self) -> str:
        if self.form:
            return self.form
        if self.choices:
            return " or ".join(", ".join(f'"{c}"' for c in self.choices).rsplit(", ", 1))
        return {"str": "a string", "path": "a string naming a file", "int": "an integer", "bool": "true or false",
                "float": "a number", "list": "an array of strings" if self.item is str else "an array of integers",
                "meta": "a table of string or number values"}[self.kind] + _bounds(self)


def _bounds(opt: Option) -> str:
    parts = [f">= {opt.ge:g}" if opt.ge is not None else "", f"> {opt.gt:g}" if opt.gt is not None else "",
             f"<= {opt.le:g}" if opt.le is not None else ""]
    return "".join(f" {p}" for p in parts if p)


INPUT_HELP = "NAME:SHAPE:DTYPE[:LOW..HIGH], e.g. x:Bx3x224x224:float32 or ids:Bx128:int64:0..30521. Repeatable."
DIM_HELP = ("NAME=MIN..MAX[@EXAMPLE][%MULTIPLE] or NAME=EXAMPLE for a named dim, e.g. B=1..64, H=32..512@224 or "
            "H=64..1024@256%64 (multiples of 64 only). Repeatable.")
TARGET_HELP = ("A runtime the model must run on, e.g. onnxruntime==1.16, openvino==2024.0, tensorrt==10.0: checks "
               "its opset, IR version and operators (the installed onnxruntime: by loading); for export and run it "
               "also steers the export (no attempt whose operators it lacks wins). Repeatable.")
ACCEPT_DOMAIN_HELP = ("Accept the verified shape domain when it is narrower than the declared one (a range end "
                      "or a granularity the model does not support): the metadata, bundle and report then claim "
                      "it. Without it, a narrower domain fails with the parity code.")
TRUST_CODE_HELP = ("Allow model files that are code: full pickles and TorchScript archives (--trust-pickle is the older "
                   "name). Runs code from the file, confined to a scratch folder where Linux Landlock allows: only "
                   "for files you trust.")
DATA_HELP = ("Real inputs, repeatable: an .npz/.npy (arrays named after the inputs), an image folder (photos flat or "
             "in class sub-folders, for a single image input; preprocessed as --preprocess or the preprocessing the "
             "model's metadata records) or file.py:fn yielding feeds.")
EVAL_HELP = ("Evaluation DATA (npz, image folder by class, file.py:fn): top-1/top-5 of PyTorch, the exported model "
             "and each variant, against its labels (else agreement with PyTorch); with --quantize, also the accuracy "
             "budget.")
_QUANT = "quantize"


def _o(name: str, kind: str, help: str, commands=_EXPORTS, **kw) -> Option:
    return Option(name, kind, help, frozenset(commands), **kw)


OPTIONS: tuple[Option, ...] = (
    # the model and where its settings come from
    _o("ref", "str", "The model reference (the command's argument; in onnxgate.toml and zoo entries, a key).",
       commands=(), form='a string, e.g. ref = "torchvision:resnet18"'),
    _o("config", "path", "Read settings from an onnxgate.toml (flags win over it).", _ALL - {DEPLOY}, toml=False),
    _o("output", "str", "Where to write: the .onnx file (export), the folder (run, bundle).", {EXPORT, RUN, BUNDLE},
       flags=("-o", "--output", "--out"), group="run", form='a string, e.g. output = "model.onnx"'),
    _o("input", "list", INPUT_HELP, _MODEL, flags=("--input", "-i"), group="export", field="inputs",
       form='an array of strings, e.g. input = ["x:Bx3x224x224:float32"]'),
    _o("dim", "list", DIM_HELP, _MODEL, group="export", field="dims",
       form='an array of strings, e.g. dim = ["B=1..64"]'),
    # the export
    _o("strategy", "str", "Pin one export strategy: dynamo or torchscript (default: try both).", choices=STRATEGIES,
       group="export", legacy="export.strategy"),
    _o("opset", "int", "Pin one opset (default: newest the installed onnxruntime supports, then 17).", ge=1, le=1000,
       group="export", legacy="export.opset", form="an integer, e.g. opset = 18 (a TOML integer, not a string)"),
    _o("device", "str", "Device to export on (default cpu).", group="export", form='a string, e.g. device = "cpu"'),
    _o("meta", "meta", "KEY=VALUE written into the model's metadata. Repeatable.", group="export", metavar="KEY=VALUE",
       form='a table like [meta] owner = "vision-team" (string or number values)'),
    _o("labels", "path", "Class labels file (UTF-8, one a line) stored in the model's metadata.", group="export",
       form='a string naming a UTF-8 labels file, e.g. labels = "labels.txt"'),
    _o("allow_static", "list", "Accept this dynamic dim being frozen at its traced size. Repeatable.",
       {EXPORT, RUN, VERIFY}, group="export", form='an array of dim names, e.g. allow_static = ["B"]'),
    _o("reinit_degenerate", "bool", "Re-initialize all-zero weights with small seeded noise before export (and in "
       "verify's reference, as the export did; random-weight models only).", {EXPORT, RUN, VERIFY}, group="export",
       form="true or false (a TOML boolean, not a string)"),
    _o("accept_domain", "bool", ACCEPT_DOMAIN_HELP, {EXPORT, RUN, VERIFY, DEPLOY}, group="export",
       form="true or false (a TOML boolean, not a string)"),
    _o("repair", "bool", "Try the repair rung (catalogued replacements for export-hostile patterns) and the dynamo "
       "exporter's other capture variants after the plain rungs fail (default: yes).", negatable=True,
       group="export", legacy="export.repair"),
    _o("attempt_timeout", "float", "Seconds one export attempt may run in its worker process before it is stopped "
       "(default 1800).", gt=0, group="export", field="attempt_timeout_s", legacy="export.attempt_timeout_s"),
    _o("attempt_memory_mb", "int", "Private memory (MB) one export attempt may allocate before its worker is "
       "stopped (default: 90% of the memory available).", gt=0, group="export", legacy="export.attempt_memory_mb"),
    _o("ladder_budget", "int", "At most this many export attempts run (rungs skipped for a known reason do not "
       "count); the rest are listed as skipped (default: no limit).", gt=0, group="export",
       legacy="export.ladder_budget"),
    _o("target", "list", TARGET_HELP, {EXPORT, RUN, VERIFY}, group="export", field="targets",
       form='an array of strings, e.g. target = ["onnxruntime==1.17"]'),
    # the PyTorch model
    _o("weights", "path", "State-dict file for torchvision:/timm: models (loaded weights_only).", _MODEL - {BUNDLE},
       group="run", form='a string naming a state-dict file, e.g. weights = "weights.pth"'),
    _o("arch", "str", "Architecture ref for a state-dict REF file, e.g. torchvision:resnet18.", _MODEL - {BUNDLE},
       group="run", form='a string, e.g. arch = "torchvision:resnet18"'),
    _o("trust_code", "bool", TRUST_CODE_HELP, _MODEL - {BUNDLE}, flags=("--trust-code", "--trust-pickle"),
       group="run", field="trust_pickle", aliases=("trust_pickle",),
       form="true or false (a TOML boolean, not a string)"),
    # the job (run)
    _o("data", "list", DATA_HELP, {RUN, VERIFY, DEPLOY}, group="run",
       form='an array of strings, e.g. data = ["feeds.npz"]'),
    _o("bench", "str", "Benchmark stage: quick (under a minute, the default), full, or none.", {RUN},
       choices=BENCH_MODES, group="run"),
    _o("optimize", "bool", "Write a verified, optimized model.opt.onnx (default: yes).", {RUN}, negatable=True,
       group="run"),
    _o("bundle", "bool", "Write the portable bundle when verification passes (default: yes).", {RUN},
       negatable=True, group="run"),
    _o("deploy", "list", "Deploy targets, comma-separated: openvino, ort-mobile, tflite, tensorrt, coreml; each "
       "artifact verified against PyTorch (into bundle/targets/).", {RUN}, split=True, group="run",
       form='an array of deploy targets, e.g. deploy = ["openvino", "ort-mobile", "tflite"]'),
    _o(_QUANT, "str", "Add an INT8 variant: static or dynamic.", {RUN}, choices=QUANTIZE_MODES, group="run",
       legacy="quantize.mode"),
    _o("calib", "path", "Calibration DATA for --quantize static (npz, image folder, file.py:fn).", {RUN}, group="run",
       legacy="quantize.calib"),
    _o("eval", "path", EVAL_HELP, {RUN}, group="run", field="eval_data", legacy="quantize.eval"),
    _o("method", "str", "INT8 calibration: minmax (default), entropy or percentile.", {RUN},
       choices=CALIBRATION_METHODS, group="run", legacy="quantize.method"),
    _o("preprocess", "str", "For image-folder DATA: resize=256,crop=224,mean=a/b/c,std=a/b/c,order=RGB (default: the "
       "model's metadata).", {RUN}, group="run", legacy="quantize.preprocess"),
    _o("per_channel", "bool", "INT8 weights per channel (default: yes).", {RUN}, negatable=True, group="run",
       legacy="quantize.per_channel"),
    _o("max_accuracy_drop", "float", "Top-1 budget in points (exit 5 if missed).", {RUN}, ge=0, group="run",
       legacy="quantize.max_accuracy_drop", form="a number >= 0 (top-1 points)"),
    _o("max_error", "float", "Max abs error budget against FP32 (exit 5 if missed).", {RUN}, ge=0, group="run",
       legacy="quantize.max_error"),
    _o("hunt_budget", "int", "Evaluations of the divergence hunt run after the sampled proof passes: a search of the "
       "declared inputs for the one where ONNX and PyTorch differ most; a failing input is exit 4, the worst one "
       "joins the bundle's golden set (default 200, fewer when they would take more than 10 s; 0 turns it off).",
       {RUN}, ge=0, group="run",
       form="an integer >= 0 (evaluations; 0 turns the hunt off)"),
    # verify
    _o("against", "str", "The PyTorch model to compare with (default: the toml's ref, else the source the model "
       "records when it is a torchvision:/timm: name).", {VERIFY, BENCH}, toml=False),
    _o("trust_source", "bool", "Use the source model the file's metadata records even when it is code (a .py file, "
       "a module, a model file): imports and runs it. Only for files you trust.", {VERIFY}),
    _o("runtime", "list", "verify: onnxruntime or openvino for a model, onnxruntime==X.Y.Z for a bundle (an isolated "
       "environment); bench: pytorch, onnxruntime or openvino (default all). Repeatable.", {VERIFY, BENCH}),
    _o("rtol", "float", "Relative tolerance for every output (default per dtype).", {VERIFY, BUNDLE}, ge=0),
    _o("atol", "float", "Absolute tolerance for every output (default per dtype).", {VERIFY, BUNDLE}, ge=0),
    _o("localize", "bool", "Name the first diverging layer when parity fails (default: yes).", {VERIFY},
       negatable=True),
    _o("trust", "path", "For a bundle: the public key (KEY.pub) it must be signed with (`onnxgate sign`); checks the "
       "signature, the signed claim and every signed digest first (exit 9 naming which), and refuses an unsigned "
       "bundle.", {VERIFY}, toml=False),
    # bench
    _o("variant", "list", "Another ONNX file to measure (optimized, fp16, int8...). Repeatable.", {BENCH},
       metavar="NAME=PATH"),
    _o("verified", "list", "A variant that passed verification and may be recommended (the base model counts when "
       "onnxgate exported it). Repeatable.", {BENCH}, metavar="NAME"),
    _o("threads", "list", "Thread counts to measure (repeatable; default 1 and all cores).", {BENCH}, item=int),
    _o("quick", "bool", "Short runs, fewer levels and batch sizes: for CI.", {BENCH}),
    _o("seconds", "float", "Time per configuration, at most (default 3, quick 0.8).", {BENCH}, gt=0),
    _o("runs", "int", "Timed runs per repeat, at most.", {BENCH}, gt=0),
    _o("repeats", "int", "Repeats per configuration (their spread is reported; default 3).", {BENCH}, gt=0),
    _o("max_batch", "int", "Largest batch of the throughput sweep (default 8, quick 4).", {BENCH}, gt=0),
    _o("startup", "bool", "Measure start-up and peak memory in fresh processes (default: yes).", {BENCH},
       negatable=True),
    # bundle
    _o("golden", "path", "Golden inputs .npz (with an .onnx file).", {BUNDLE}, toml=False),
    _o("reference", "path", "Reference outputs .npz (with an .onnx file).", {BUNDLE}, toml=False),
    _o("tar", "bool", "Also write OUT.tar.gz.", {BUNDLE}),
    # every command
    _o("force", "bool", "Overwrite the output if it exists.", {EXPORT, RUN, BUNDLE, DEPLOY}, toml=False),
    _o("json", "bool", "Print the result as JSON on stdout.", _ALL, toml=False),
)
BY_NAME = {o.name: o for o in OPTIONS}
# What a zoo decides itself: where each model writes, and (from its stages) whether to optimize and bundle.
ZOO_DECIDES = frozenset({"output", "optimize", "bundle"})
TOML_KEYS = tuple(o.name for o in OPTIONS if o.toml)
LEGACY = {o.legacy: o.name for o in OPTIONS if o.legacy}
LEGACY_TABLES = {"export": 'a table like [export] strategy = "dynamo" (with opset = 18 on the next line)',
                 _QUANT: 'a table like [quantize] mode = "static"'}


def for_command(command: str) -> tuple[Option, ...]:
    """The options a command takes, in table order (its CLI parameters after its arguments)."""
    return tuple(o for o in OPTIONS if command in o.commands)


# --------------------------------------------------------------------------------------------------- checking

def _annotation(opt: Option):
    from typing import Literal

    from pydantic import StrictBool, StrictFloat, StrictInt, StrictStr

    if opt.choices:
        return Literal[opt.choices]  # type: ignore[valid-type]
    return {"str": StrictStr, "path": StrictStr, "int": StrictInt, "bool": StrictBool,
            "float": StrictFloat | StrictInt, "meta": dict[str, StrictStr | StrictInt | StrictFloat],
            "list": list[StrictInt] if opt.item is int else list[StrictStr]}[opt.kind]


_MODELS: dict[tuple, Any] = {}


def schema(names: tuple[str, ...], *, extra: dict[str, tuple] | None = None):
    """The strict pydantic model of these options (and ``extra`` fields), every field optional: None = not given."""
    key = (names, tuple(sorted(extra or {})))
    if key not in _MODELS:
        from pydantic import BaseModel, ConfigDict, Field, create_model

        fields = {}
        for name in names:
            opt = BY_NAME[name]
            bounds = {k: getattr(opt, k) for k in ("ge", "gt", "le") if getattr(opt, k) is not None}
            if opt.kind in ("str", "path"):
                bounds["min_length"] = 1
            if opt.kind == "float":
                bounds["allow_inf_nan"] = False
            # an option named like a BaseModel attribute ("json") is a field under an alias: pydantic warns otherwise
            field_name, alias = (f"option_{name}", {"alias": name}) if hasattr(BaseModel, name) else (name, {})
            fields[field_name] = (_annotation(opt) | None, Field(None, **alias, **bounds))
        fields.update(extra or {})
        _MODELS[key] = create_model(f"Options_{len(_MODELS)}", __config__=ConfigDict(extra="forbid", strict=True),
                                    **fields)
    return _MODELS[key]


def check(values: dict[str, Any], name_of, *, model=None, source: str | None = None) -> dict[str, Any]:
    """``values`` (option name -> value) checked against the table: returned as the model read them, or one
    BadInputError listing every offending option, each named by ``name_of(loc) -> (name, value_text)``."""
    from pydantic import ValidationError

    model = model or schema(tuple(BY_NAME))  # every field optional: one model for any set of given options
    try:
        return model.model_validate(values).model_dump(exclude_none=True, by_alias=True)
    except ValidationError as exc:
        problems: dict[str, str] = {}
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            if loc and loc[0] in problems:
                continue
            problems[loc[0] if loc else "?"] = name_of(loc, err, values)
        shown = "; ".join(list(problems.values())[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6
                                                           else "")
        raise BadInputError((f"In {source}, " if source else "") + shown + ("" if shown.endswith("?") else "."),
                            hint="Fix " + ("those keys" if source else "those options") + " (`onnxgate COMMAND "
                            "--help` lists each option with its values).") from None


def _value_at(data: Any, loc: list[str]) -> Any:
    for part in loc:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def problem(where: str, opt: Option | None, err: dict, value: Any, *, flag: bool = False) -> str:
    """One sentence: the option (``key 'opset'`` or ``--opset 0``), what it must be, what it is."""
    form = opt.describe() if opt else err.get("msg", "").lower()
    if err["type"] == "string_too_short":
        return f"{where} must not be empty"
    if err["type"] in ("greater_than_equal", "less_than_equal", "greater_than"):
        word = {"greater_than_equal": "at least", "less_than_equal": "at most", "greater_than": "more than"}
        bound = next(iter(err.get("ctx", {}).values()), "?")
        return f"{where} must be {word[err['type']]} {bound}" + ("" if flag else f" (it is {_text(value)})")
    if flag:
        return f"{where} must be {form}"
    return f"{where} must be {form} (it is {_text(value)})"


def _text(value: Any) -> str:
    return describe_value(value, mapping="a table", limit=40)


# --------------------------------------------------------------------------------------------------- command line

def from_cli(command: str, params: dict[str, Any]) -> dict[str, Any]:
    """What a command was given on its command line (typer's values by option name), as checked values: unset
    options (None, an empty list, a switch left off) are left out, so onnxgate.toml and the defaults decide."""
    given: dict[str, Any] = {}
    for opt in for_command(command):
        value = params.get(opt.name)
        if value is None or value == [] or value == () or (opt.kind == "bool" and not opt.negatable and not value):
            continue
        if isinstance(value, Path):
            value = str(value)
        if opt.split:
            value = [v.strip() for v in str(value).split(",") if v.strip()]
        elif opt.kind == "meta":
            from .spec import parse_meta

            value = parse_meta(list(value), where=opt.flag)
        elif isinstance(value, tuple):
            value = list(value)
        given[opt.name] = value
    return check_given(given)


def check_given(given: dict[str, Any]) -> dict[str, Any]:
    """Command-line (or Python) values checked against the table; messages name the flag and the value."""
    def name_of(loc, err, values):
        opt = BY_NAME.get(loc[0]) if loc else None
        value = _value_at(values, loc[:1])
        flag = opt.flag if opt else loc[0]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return problem(f"{flag} {value:g}", opt, err, value, flag=True)
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        return problem(f"{flag} '{clip(str(shown), 40)}'", opt, err, value, flag=True)

    return check(given, name_of)


# --------------------------------------------------------------------------------------------------- onnxgate.toml

TOML_MAX_BYTES = 1 << 20  # a config file is a few lines; refuse to parse megabytes of anything


def read_toml_file(path: str | Path) -> dict:
    """The parsed TOML of a small config file, or a BadInputError saying why not."""
    p, name = Path(path), f"'{path}'"
    try:
        raw = p.read_bytes()[: TOML_MAX_BYTES + 1]
    except FileNotFoundError:
        raise BadInputError(f"Config file {name} does not exist.", hint="Check the path.") from None
    except (OSError, ValueError) as exc:  # a folder, no permission, a NUL in the path
        raise BadInputError(f"Config file {name} cannot be read: {exc}.", hint="Give a readable onnxgate.toml.") from None
    if len(raw) > TOML_MAX_BYTES:
        raise BadInputError(f"Config file {name} is larger than {TOML_MAX_BYTES >> 20} MiB; that is not an onnxgate.toml.",
                            hint="Give the small TOML file described in the README.")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadInputError(f"Config file {name} is not valid UTF-8 ({exc.reason} at byte {exc.start}).",
                            hint="Save it as UTF-8 (TOML files must be).") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"Config file {name} is not valid TOML: {exc}.", hint="Fix the syntax at that line.") from None
    except RecursionError:
        raise BadInputError(f"Config file {name} nests arrays or tables too deeply to be an onnxgate.toml.",
                            hint="Give the small TOML file described in the README.") from None


@dataclass(frozen=True)
class FileOptions:
    """The options a file gave (name -> checked value, paths resolved against the file's folder) and the key each
    was written under (``opset``, or ``export.opset`` in the older shape), for the messages."""

    values: dict[str, Any]
    keys: dict[str, str]
    source: str
    raw: dict[str, Any] = field(default_factory=dict)  # the values as written (paths not resolved)

    def at(self, name: str, item: str | None = None) -> str:
        where = f"In {self.source}, key '{self.keys.get(name, name)}'"
        return where + (f" ('{clip(item)}')" if item is not None else "")


def read_toml(path: str | Path) -> FileOptions:
    """Read ``onnxgate.toml``: one flat table whose keys are the option names, like the flags::

        ref = "torchvision:resnet18"
        input = ["x:Bx3x224x224:float32"]
        dim = ["B=1..64"]
        strategy = "dynamo"
        opset = 18
        quantize = "static"
        [meta]
        owner = "vision-team"

    Checked strictly: a value of the wrong type (``trust_pickle = "false"``, ``opset = "18"``) or an unknown key
    (``opest``, with the closest known key suggested) is a BadInputError naming the file and the key. The older
    nested shape (``[export] opset = 18``, ``[quantize] mode = "static"``) still reads, with a deprecation line.
    """
    data = read_toml_file(path)
    flat, keys = _flatten(data, str(path))
    values = _check_table(flat, keys, TOML_KEYS, source=str(path), sections=_toml_sections())
    return FileOptions(_resolve_paths(values, Path(path).parent, TOML_RELATIVE), keys, str(path), values)


def _toml_sections() -> dict[tuple[str, ...], list[str]]:
    nested = {t: [k.split(".", 1)[1] for k in LEGACY if k.startswith(t + ".")] for t in LEGACY_TABLES}
    top = [k for k in TOML_KEYS if k not in LEGACY_TABLES] + list(LEGACY_TABLES)
    return {(): top + [a for o in OPTIONS for a in o.aliases], **{(t,): ks for t, ks in nested.items()}}


def _flatten(data: dict, source: str) -> tuple[dict, dict[str, str]]:
    """The older ``[export]``/``[quantize]`` tables as flat keys (remembering where each was written); aliases
    (``trust_pickle``) as their option's name."""
    flat, keys, old = {}, {}, []
    aliases = {a: o.name for o in OPTIONS for a in o.aliases}
    problems = []
    for key, value in data.items():
        if key in LEGACY_TABLES and isinstance(value, dict):
            old.append(key)
            if key == _QUANT and "mode" not in value:
                flat[_QUANT], keys[_QUANT] = "static", "quantize"  # [quantize] alone meant static
            for sub, v in value.items():
                name = LEGACY.get(f"{key}.{sub}")
                if name is None:
                    known = [k.split(".", 1)[1] for k in LEGACY if k.startswith(key + ".")]
                    close = difflib.get_close_matches(sub, known, n=1, cutoff=0.6)
                    problems.append(f"key '{clip(f'{key}.{sub}')}' is not a key onnxgate knows at [{key}]"
                                    + (f": did you mean '{close[0]}'?" if close else
                                       f" (known keys there: {', '.join(known)})"))
                    continue
                flat[name], keys[name] = v, f"{key}.{sub}"
        elif key == "export":
            problems.append(f"key 'export' must be {LEGACY_TABLES['export']} (it is {_text(value)})")
        elif key in aliases:
            flat[aliases[key]], keys[aliases[key]] = value, key
        else:
            flat[key], keys[key] = value, key
    if old:
        new = ", ".join(f"{keys[n]} -> {n}" for n in flat if "." in keys.get(n, ""))
        warnings.warn(f"{source}: the [{'] and ['.join(old)}] table{'s are' if len(old) > 1 else ' is'} the older "
                      f"shape of onnxgate.toml; write the keys at the top level, as the flags and zoo entries name "
                      f"them ({new}).", FutureWarning, stacklevel=3)
    if problems:
        _raise(problems, source)
    return flat, keys


def _raise(problems: list[str], source: str) -> None:
    shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
    raise BadInputError(f"In {source}, {shown}" + ("" if shown.endswith("?") else "."),
                        hint="Fix those keys. Keys: " + ", ".join(TOML_KEYS) + "; under [meta]: any name with a "
                        "string or number value.")


def _check_table(flat: dict, keys: dict[str, str], names: tuple[str, ...], *, source: str,
                 sections: dict[tuple[str, ...], list[str]], model=None, where_of=None) -> dict[str, Any]:
    """A flat table against the options ``names``: unknown keys (closest known one suggested) and bad values, all
    reported together."""
    from pydantic import ValidationError

    model = model or schema(names)
    try:
        return model.model_validate(flat).model_dump(exclude_none=True, by_alias=True)
    except RecursionError:
        raise BadInputError(f"'{source}' nests arrays or tables too deeply.",
                            hint="Give the TOML file described in the README.") from None
    except ValidationError as exc:
        problems: dict[str, str] = {}
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            where = where_of(loc) if where_of else None
            key = keys.get(loc[0], loc[0]) if loc else "?"
            if err["type"] == "extra_forbidden":
                known = sections.get((), [])
                close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
                text = (where or f"key '{clip(key)}'") + (" is not a key onnxgate knows" if where_of else
                                                          " is not a key onnxgate knows at the top level")
                problems[key] = text + (f": did you mean '{close[0]}'?" if close else
                                        f" (known keys there: {', '.join(known)})")
                continue
            opt = BY_NAME.get(loc[0]) if loc else None
            if loc[:1] == ["meta"] and len(loc) >= 2:
                key, opt = f"meta.{loc[1]}", None
                form = "a string or a number"
                problems.setdefault(key, f"key '{clip(key)}' must be {form} (it is {_text(_value_at(flat, loc[:2]))})")
                continue
            if key not in problems:
                problems[key] = problem(where or f"key '{clip(key)}'", opt, err, _value_at(flat, loc[:1]))
        _raise(list(problems.values()), source)
    raise AssertionError("unreachable")


# Options whose value is a file or DATA: relative to the zoo file that names them. onnxgate.toml has always read
# `weights` and `data` relative to the working folder (a test pins it), the other paths relative to itself.
PATH_OPTIONS = frozenset(o.name for o in OPTIONS if o.kind == "path") | {"data"}
TOML_RELATIVE = PATH_OPTIONS - {"weights", "data"}


def _resolve_paths(values: dict[str, Any], base: Path, names: frozenset[str] = PATH_OPTIONS) -> dict[str, Any]:
    out = dict(values)
    for name in names & set(values):
        value = values[name]
        out[name] = ([relative_path(v, base) for v in value] if isinstance(value, list)
                     else relative_path(value, base))
    return out


def relative_path(value: str | None, base: Path) -> str | None:
    """A path written in a toml or zoo file is relative to the file's folder (so is a file.py:fn's file; a
    package.module:fn is left alone)."""
    if value is None or Path(value).is_absolute():
        return value
    head, colon, tail = value.rpartition(":")
    if colon and head.endswith(".py"):
        return f"{base / head}:{tail}" if not Path(head).is_absolute() else value
    if colon:
        return value  # a package.module:fn data source
    return str(base / value)


# --------------------------------------------------------------------------------------------------- zoo entries

ZOO_KEYS = tuple(o.name for o in OPTIONS if o.zoo)


def zoo_model_fields(stages: tuple[str, ...]) -> dict[str, tuple]:
    """The zoo's own keys of a ``[[model]]`` entry (besides every option in ``ZOO_KEYS``)."""
    from typing import Literal

    from pydantic import Field, StrictFloat, StrictInt, StrictStr

    number = StrictFloat | StrictInt
    return {"name": (str | None, Field(None, min_length=1, max_length=100)),
            "family": (str | None, Field(None, min_length=1, max_length=100)),
            "tags": (list[StrictStr] | None, None),
            "stages": (list[Literal[stages]] | None, None),  # type: ignore[valid-type]
            "timeout_s": (number | None, Field(None, gt=0)),
            "memory_mb": (number | None, Field(None, gt=0)),
            "cpus": (number | None, Field(None, gt=0)),
            **{alias: (_annotation(o) | None, None) for o in OPTIONS for alias in o.aliases}}


def zoo_model_schema(stages: tuple[str, ...]):
    """The pydantic model of a zoo ``[[model]]`` entry (and ``[defaults]``): the table's zoo keys plus the zoo's
    own (name, family, tags, stages, timeout_s, memory_mb, cpus) — generated, never written out by hand."""
    return schema(ZOO_KEYS, extra=zoo_model_fields(stages))


def zoo_entry(table: dict[str, Any], base: Path) -> dict[str, Any]:
    """A zoo entry's options (a checked ``[[model]]`` table, defaults applied) as option values, paths resolved
    against the zoo file's folder: what ``configure`` turns into the model's ``RunConfig``."""
    values = {k: v for k, v in table.items() if k in BY_NAME and k != "ref"}
    for alias, name in ((a, o.name) for o in OPTIONS for a in o.aliases):
        if alias in table:
            values[name] = values.get(name) or table[alias]
    return _resolve_paths(values, base)
