"""What the user asks for, parsed: input specs, dynamic dims, export configuration.

Torch-free on purpose: the CLI parses flags before deciding whether torch is needed at all.

Input syntax (``--input``):   NAME:SHAPE:DTYPE[:LOW..HIGH]
    x:1x3x224x224:float32        static shape
    x:Bx3xHxW:float32            named dims are dynamic (ranges and example sizes from --dim)
    ids:Bx128:int64:0..30521     integer inputs take a value range (inclusive) for random data
    mask:B,S:int64               commas separate dims too (use them when a dim name contains 'x')
Dim syntax (``--dim``):       NAME=MIN..MAX[@EXAMPLE][%MULTIPLE] | NAME=EXAMPLE
    B=1..64                      batch from 1 to 64, example size from the model or a default
    H=32..512@224                range and the size to trace/export with
    H=64..1024@256%64            only multiples of 64 (a model that needs sizes divisible by its stride)
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import InitVar, asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import BadInputError
from .verify.tolerance import Tolerance, user_tolerance

DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
DTYPE_ALIASES = {"float": "float32", "fp32": "float32", "half": "float16", "fp16": "float16", "double": "float64",
                 "long": "int64", "int": "int32", "bf16": "bfloat16"}
_NAME = r"[A-Za-z_][A-Za-z0-9_.\-]*"
_DIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# The largest size a dim may have anywhere (flags, onnxgate.toml, a model's metadata): int32 indexing in most
# runtimes. The bytes a generated input may take are bounded separately (verify.inputs.MAX_GENERATED_BYTES).
MAX_DIM = 2**31 - 1
DEVICE_KINDS = ("cpu", "cuda", "mps", "xpu")


# Dim names that mean "batch": without an example size they are traced at 2 (the dynamo exporter specializes a dim
# traced at 0 or 1 to a constant).
BATCH_NAMES = frozenset({"b", "batch", "n", "batch_size", "bs"})
# The export strategies of the ladder (export/strategies.py holds one exporter per name).
STRATEGIES = ("dynamo", "torchscript")


@dataclass(frozen=True)
class Dim:
    """A named dynamic dimension. ``example`` is the size used for tracing; None = take it from the model."""

    name: str
    min: int = 1
    max: int | None = None
    example: int | None = None
    # Only multiples of this size (a verified domain's granularity: a stride or patch size); None = any size.
    multiple_of: int | None = None
    # Whether the user declared a range (``H=32..512``, ``H=1..``): True/False as parsed; None = inferred (a dim
    # at min 1 with no max and no granularity has none). A dim without a range means "wherever the PyTorch
    # reference runs": a size PyTorch itself rejects bounds its verified domain instead of failing it
    # (verify/domain.py). Init-only: not part of equality (``H=1..`` and ``H`` describe the same sizes), nor of
    # ``asdict`` (the recorded ``onnxgate.dims`` keep their form). ``dataclasses.replace`` forgets it unless given
    # again (``replace(dim, example=224, declared=dim.ranged)``); forgotten, it is inferred.
    declared: InitVar[bool | None] = None

    def __post_init__(self, declared: bool | None) -> None:
        object.__setattr__(self, "_declared", declared)

    @property
    def ranged(self) -> bool:
        """The user declared a range (or a granularity) for this dim."""
        declared = getattr(self, "_declared", None)
        if declared is not None:
            return declared
        return self.min != 1 or self.max is not None or self.multiple_of is not None

    def contains(self, value: int) -> bool:
        return (value >= self.min and (self.max is None or value <= self.max)
                and (not self.multiple_of or value % self.multiple_of == 0))


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int | str, ...]  # int = static, str = name of a dynamic Dim
    dtype: str = "float32"
    value_range: tuple[float, float] | None = None  # inclusive; integer inputs default to 0..9

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def __str__(self) -> str:
        """The ``--input`` form; dims are joined with ',' when a dim name holds an 'x' (``max_len``), so the text
        parses back to the same spec."""
        sep = "," if any(isinstance(d, str) and "x" in d for d in self.shape) else "x"
        text = f"{self.name}:{sep.join(str(d) for d in self.shape)}:{self.dtype}"
        if self.value_range:
            text += f":{_num(self.value_range[0])}..{_num(self.value_range[1])}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The structured form stored in a model's ``onnxgate.inputs`` metadata (never the display string)."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "value_range": list(self.value_range) if self.value_range else None}


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def parse_dtype(text: str, *, where: str) -> str:
    dtype = DTYPE_ALIASES.get(text.lower(), text.lower())
    if dtype not in DTYPES:
        raise BadInputError(
            f"{where}: unknown dtype '{text}'.", hint=f"Use one of: {', '.join(DTYPES)}."
        )
    return dtype


def parse_input(text: str, *, where: str | None = None) -> InputSpec:
    """Parse ``NAME:SHAPE:DTYPE[:LOW..HIGH]``. ``where`` names the input's origin in errors (default: the flag)."""
    where = where or f"--input '{text}'"
    hint = "Write it as NAME:SHAPE:DTYPE, for example x:1x3x224x224:float32 or x:Bx3xHxW:float32."
    parts = text.split(":")
    if len(parts) < 2 or len(parts) > 4:
        raise BadInputError(f"{where} does not parse: expected 2 to 4 fields separated by ':'.", hint=hint)
    name, shape_text = parts[0], parts[1]
    if not re.fullmatch(_NAME, name):
        raise BadInputError(f"{where}: '{clip(name)}' is not a valid input name.", hint=hint)
    dtype = parse_dtype(parts[2], where=where) if len(parts) >= 3 and parts[2] else "float32"
    sep = "," if "," in shape_text else "x"
    shape: list[int | str] = []
    if shape_text.strip():
        for token in shape_text.split(sep):
            token = token.strip()
            if re.fullmatch(r"[0-9]+", token):
                shape.append(_size(token, where=where, what="dim", hint=hint))
            elif _DIM_NAME.match(token):
                shape.append(token)
            else:
                raise BadInputError(
                    f"{where}: the shape '{clip(shape_text)}' does not parse at '{clip(token)}': each dim must be a "
                    "positive integer or a name.",
                    hint=hint,
                )
    value_range = None
    if len(parts) == 4:
        value_range = _parse_range(parts[3], where=where)
    return InputSpec(name, tuple(shape), dtype, value_range)


def clip(text: str, limit: int = 80) -> str:
    """``text`` cut at ``limit`` characters: what an error message quotes of a value the user (or a file) gave."""
    return text if len(text) <= limit else text[:limit] + "..."


def describe_value(value: Any, *, mapping: str = "an object", limit: int = 30) -> str:
    """A parsed JSON or TOML value as an error message names it ("the string 'abc'", "an empty array");
    ``mapping``: what the format calls a mapping ("a table" in TOML)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string '{clip(value, limit)}'"
    if isinstance(value, (int, float)):
        return f"the number {clip(str(value), limit)}"
    if isinstance(value, list):
        return "an array" if value else "an empty array"
    if isinstance(value, dict):
        return mapping
    return f"a {type(value).__name__}"


def _size(token: str, *, where: str, what: str, hint: str) -> int:
    """A dim size written as decimal digits, bounded by MAX_DIM (and never an int() of a 10,000-digit string)."""
    if len(token) > len(str(MAX_DIM)) or int(token) > MAX_DIM:
        raise BadInputError(f"{where}: the {what} {clip(token, 24)} is larger than onnxgate accepts ({MAX_DIM:,}).",
                            hint=hint)
    return int(token)


def _parse_range(text: str, *, where: str) -> tuple[float, float]:
    m = re.fullmatch(r"\s*(-?[0-9.eE+-]{1,40})\s*\.\.\s*(-?[0-9.eE+-]{1,40})\s*", text)
    try:
        low, high = float(m.group(1)), float(m.group(2))  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        raise BadInputError(f"{where}: the value range '{clip(text)}' does not parse.",
                            hint="Write LOW..HIGH, e.g. 0..30521.") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise BadInputError(f"{where}: the value range '{clip(text)}' is not finite.",
                            hint="Write LOW..HIGH with finite numbers, e.g. 0..30521.")
    if low > high:
        raise BadInputError(f"{where}: the value range '{clip(text)}' is empty (LOW > HIGH).",
                            hint="Write LOW..HIGH with LOW <= HIGH.")
    return low, high


def parse_dim(text: str, *, where: str | None = None) -> Dim:
    """Parse ``NAME=MIN..MAX[@EXAMPLE][%MULTIPLE]`` or ``NAME=EXAMPLE``."""
    where = where or f"--dim '{text}'"
    hint = ("Write it as NAME=MIN..MAX, NAME=MIN..MAX@EXAMPLE or NAME=EXAMPLE, for example B=1..64 or H=32..512@224 "
            "(add %64 for multiples of 64 only).")
    m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(?:([0-9]+)\.\.([0-9]+)?)?(?:@?([0-9]+))?(?:%([0-9]+))?", text.strip())
    if not m or (m.group(2) is None and m.group(4) is None) or (m.group(5) is not None and m.group(2) is None):
        raise BadInputError(f"{where} does not parse.", hint=hint)
    name, lo, hi, ex, mult = m.groups()
    lo_i, hi_i, ex_i, mult_i = (None if t is None else _size(t, where=where, what="size", hint=hint)
                                for t in (lo, hi, ex, mult))
    if mult_i is not None and mult_i < 1:
        raise BadInputError(f"{where}: the granularity %{mult_i} must be at least 1.", hint=hint)
    # NAME=EXAMPLE keeps min 1; a granularity of 1 is no granularity
    dim = (Dim(name, example=ex_i, declared=False) if lo_i is None
           else Dim(name, lo_i, hi_i, ex_i, mult_i if mult_i != 1 else None, declared=True))
    if dim.min < 0 or (dim.max is not None and dim.max < dim.min):
        raise BadInputError(f"{where}: the range is empty.", hint=hint)
    if dim.multiple_of and dim.max is not None and dim.max // dim.multiple_of * dim.multiple_of < max(dim.min, 1):
        raise BadInputError(f"{where}: no multiple of {dim.multiple_of} lies in the range.", hint=hint)
    if dim.example is not None and not dim.contains(dim.example):
        raise BadInputError(f"{where}: the example size {dim.example} lies outside the range"
                            + (f" or is not a multiple of {dim.multiple_of}." if dim.multiple_of else "."), hint=hint)
    return dim


def parse_meta(items: list[str], *, where: str = "--meta") -> dict[str, str]:
    """``KEY=VALUE`` items. Keys under ``onnxgate.`` are onnxgate's own records (input specs, source, dims) and
    cannot be set by hand: verification reads them back."""
    meta = {}
    for item in items:
        if "=" not in item:
            raise BadInputError(f"{where} '{clip(item)}' does not parse.", hint="Write it as KEY=VALUE.")
        key, value = item.split("=", 1)
        meta[_meta_key(key.strip(), where=f"{where} '{clip(item)}'")] = value
    return meta


def _meta_key(key: str, *, where: str) -> str:
    if not key:
        raise BadInputError(f"{where}: the key is empty.", hint="Write it as KEY=VALUE, e.g. owner=vision-team.")
    if key.startswith("onnxgate."):
        raise BadInputError(f"{where}: keys under 'onnxgate.' are reserved for what onnxgate records itself "
                            "(input specs, dims, source), which verification reads back.",
                            hint="Choose another key, e.g. team.owner=vision.")
    return key


def parse_device(text: str, *, where: str | None = None) -> str:
    """``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``xpu[:N]`` (the syntax only: whether the device exists is checked
    where torch is loaded, see ``cli.export_cmd``)."""
    where = where or f"--device '{text}'"
    if not re.fullmatch(rf"(?:{'|'.join(DEVICE_KINDS)})(?::[0-9]{{1,3}})?", text):
        raise BadInputError(f"{where} is not a device onnxgate can export on.",
                            hint="Use cpu (the default), cuda, cuda:N, mps or xpu.")
    return text


@dataclass(frozen=True)
class ExportConfig:
    """Everything ``export`` needs besides the model. ``None`` means the library default."""

    inputs: tuple[InputSpec, ...] = ()
    dims: tuple[Dim, ...] = ()
    strategy: str | None = None  # pin one of STRATEGIES
    opset: int | None = None  # pin one opset
    device: str = "cpu"
    meta: dict[str, str] = field(default_factory=dict)
    labels: tuple[str, ...] = ()
    allow_static: tuple[str, ...] = ()  # dims the user accepts as frozen
    check_determinism: bool = True
    # Re-initialize all-zero weights (a zero-init head) with seeded noise before export, so parity on random-weight
    # models proves something. Recorded in the model's metadata; verify applies the same to its reference.
    reinit_degenerate: bool = False
    # Runtime releases the model must run on ("onnxruntime==1.17"): the ladder exports at the opset and IR version
    # they support and rejects an attempt whose operators one of them lacks (export/ladder.py).
    targets: tuple[str, ...] = ()
    # Accept the verified shape domain when it is narrower than the declared one (verify/domain.py): the model's
    # metadata, the bundle and the report then claim the verified domain instead of failing.
    accept_domain: bool = False
    # The repair rung and the exporter's other capture variants, tried after the plain rungs fail or freeze a dim
    # (export/repair/). --no-repair turns both off.
    repair: bool = True
    # Each export attempt runs in a worker process (worker.py): stopped past this many seconds, or past this much
    # private memory (None: 90% of the memory available when it starts).
    attempt_timeout_s: float | None = 1800.0
    attempt_memory_mb: int | None = None
    # At most this many export attempts run (skipped rungs do not count); the rest are skipped, named (None: all).
    ladder_budget: int | None = None

    def __post_init__(self) -> None:
        for name in ("attempt_timeout_s", "attempt_memory_mb", "ladder_budget"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise BadInputError(f"{name} must be a positive number, not {value!r}.",
                                    hint="Leave it out for the default, or give seconds / megabytes above zero.")
        if self.strategy is not None and self.strategy not in STRATEGIES:
            close = difflib.get_close_matches(str(self.strategy), STRATEGIES, n=1)
            raise BadInputError(f"Export strategy '{self.strategy}' is not one onnxgate has."
                                + (f" Did you mean '{close[0]}'?" if close else ""),
                                hint=f"Use one of: {', '.join(STRATEGIES)} (or none, to let the ladder try each).")

    def dim(self, name: str) -> Dim:
        for d in self.dims:
            if d.name == name:
                return d
        return Dim(name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = [str(s) for s in self.inputs]
        return data


@dataclass(frozen=True)
class VerifyConfig:
    """How ``verify`` judges a model (the model's inputs and dims live in ``ExportConfig``). Built once, from
    ``onnxgate verify`` flags or a Python call; ``None`` tolerances mean the per-dtype defaults."""

    runtimes: tuple[str, ...] = ("onnxruntime",)
    targets: tuple[str, ...] = ()  # runtime releases that must run the model, e.g. "onnxruntime==1.16"
    data: tuple[str, ...] = ()  # real inputs: .npz/.npy files or file.py:fn callables (--data)
    rtol: float | None = None
    atol: float | None = None
    seeds: tuple[int, ...] = (0, 1)
    localize: bool = True
    reinit_degenerate: bool = False
    trust_source: bool = False  # use a recorded source that is code (see verify.api.recorded_reference)
    weights: str | None = None  # state-dict file for the reference
    arch: str | None = None  # architecture of a state-dict reference
    trust_pickle: bool = False
    accept_domain: bool = False  # a verified shape domain narrower than the declared one passes (and is claimed)

    def __post_init__(self) -> None:
        for flag, value in (("--rtol", self.rtol), ("--atol", self.atol)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise BadInputError(f"{flag} {value:g} is not a tolerance: it must be a finite number >= 0.",
                                    hint=f"Pass e.g. {flag} 1e-3, or leave it out for the per-dtype default.")
        unknown = [r for r in self.runtimes if r not in VERIFY_RUNTIMES]
        if unknown:
            raise BadInputError(f"--runtime '{unknown[0]}' is not a runtime onnxgate can verify on.",
                                hint=f"Use {' or '.join(VERIFY_RUNTIMES)} (a bundle also takes onnxruntime==X.Y.Z).")

    @property
    def default_tolerance(self) -> Tolerance | None:
        """One tolerance for every output when --rtol/--atol is given (the other defaults to 1e-3 / 1e-4)."""
        if self.rtol is None and self.atol is None:
            return None
        return user_tolerance(self.rtol, self.atol)


VERIFY_RUNTIMES = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class QuantizeConfig:
    """The INT8 stage: ``calib``/``eval_data`` are DATA (npz, image folder, file.py:fn) or in-memory feeds."""

    mode: str = "static"
    calib: object = None
    eval_data: object = None
    labels: object = None
    method: str = "minmax"
    preprocess: str | None = None  # image folders: resize=256,crop=224,mean=...,std=... (default: the metadata)
    per_channel: bool = True
    max_accuracy_drop: float | None = None
    max_error: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in QUANTIZE_MODES:
            raise BadInputError(f"--quantize '{self.mode}' is not a quantization mode.",
                                hint=f"Use {' or '.join(QUANTIZE_MODES)}.")
        if self.method not in CALIBRATION_METHODS:
            raise BadInputError(f"--method '{self.method}' is not a calibration method.",
                                hint=f"Use one of: {', '.join(CALIBRATION_METHODS)}.")


QUANTIZE_MODES = ("static", "dynamic")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
BENCH_MODES = ("quick", "full", "none")


@dataclass(frozen=True)
class RunConfig:
    """A whole job (``onnxgate run``) as read from ``onnxgate.toml`` and the command line: one object the
    pipeline takes, built by ``configure.run_config`` (flags win over the file, the file over the defaults)."""

    ref: str | None = None
    export: ExportConfig = field(default_factory=ExportConfig)
    weights: str | None = None
    arch: str | None = None
    trust_pickle: bool = False
    output: str | None = None
    targets: tuple[str, ...] = ()  # runtimes the model must run on, e.g. "onnxruntime==1.16"
    data: tuple[str, ...] = ()  # real inputs verified besides the random ones (--data)
    bench: str = "quick"  # quick | full | none
    optimize: bool = True
    bundle: bool = True
    quantize: QuantizeConfig | None = None
    deploy: tuple[str, ...] = ()  # deploy targets (--deploy / `deploy = [...]`): see onnxgate.deploy

    def __post_init__(self) -> None:
        if self.bench not in BENCH_MODES:
            raise BadInputError(f"--bench '{self.bench}' is not a benchmark mode.",
                                hint=f"Use {', '.join(BENCH_MODES)}.")


def read_labels(path: str | Path, *, where: str | None = None) -> tuple[str, ...]:
    """Class labels, one a line, read as UTF-8 (so non-ASCII labels survive into the model's metadata)."""
    where = where or f"--labels '{path}'"
    p = Path(path)
    try:
        if not p.is_file():
            raise BadInputError(f"{where}: no such file.", hint="Give a UTF-8 text file with one class label a line.")
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{where} is not valid UTF-8 ({exc.reason} at byte {exc.start}).",
                            hint="Save the labels file as UTF-8.") from None
    except (OSError, ValueError) as exc:  # unreadable, a NUL in the path
        raise BadInputError(f"{where} cannot be read: {exc}.", hint="Give a readable UTF-8 text file.") from None
    return tuple(line.strip() for line in text.splitlines() if line.strip())


__all__ = ["Dim", "InputSpec", "ExportConfig", "VerifyConfig", "QuantizeConfig", "RunConfig", "parse_input", "parse_dim", "parse_meta",
           "parse_dtype", "parse_device", "read_labels", "replace", "MAX_DIM"]
