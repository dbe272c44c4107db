"""What the user asks for, parsed: input specs, dynamic dims, export configuration.

Torch-free on purpose: the CLI parses flags before deciding whether torch is needed at all.

Input syntax (``--input``):   NAME:SHAPE:DTYPE[:LOW..HIGH]
    x:1x3x224x224:float32        static shape
    x:Bx3xHxW:float32            named dims are dynamic (ranges and example sizes from --dim)
    ids:Bx128:int64:0..30521     integer inputs take a value range (inclusive) for random data
    mask:B,S:int64               commas separate dims too (use them when a dim name contains 'x')
Dim syntax (``--dim``):       NAME=MIN..MAX[@EXAMPLE] | NAME=EXAMPLE
    B=1..64                      batch from 1 to 64, example size from the model or a default
    H=32..512@224                range and the size to trace/export with
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import BadInputError

DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
DTYPE_ALIASES = {"float": "float32", "fp32": "float32", "half": "float16", "fp16": "float16", "double": "float64",
                 "long": "int64", "int": "int32", "bf16": "bfloat16"}
_NAME = r"[A-Za-z_][A-Za-z0-9_.\-]*"
_DIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# Dim names that mean "batch": without an example size they are traced at 2 (the dynamo exporter specializes a dim
# traced at 0 or 1 to a constant).
BATCH_NAMES = frozenset({"b", "batch", "n", "batch_size", "bs"})


@dataclass(frozen=True)
class Dim:
    """A named dynamic dimension. ``example`` is the size used for tracing; None = take it from the model."""

    name: str
    min: int = 1
    max: int | None = None
    example: int | None = None

    def contains(self, value: int) -> bool:
        return value >= self.min and (self.max is None or value <= self.max)


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
        text = f"{self.name}:{'x'.join(str(d) for d in self.shape)}:{self.dtype}"
        if self.value_range:
            text += f":{_num(self.value_range[0])}..{_num(self.value_range[1])}"
        return text


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def parse_dtype(text: str, *, where: str) -> str:
    dtype = DTYPE_ALIASES.get(text.lower(), text.lower())
    if dtype not in DTYPES:
        raise BadInputError(
            f"{where}: unknown dtype '{text}'.", hint=f"Use one of: {', '.join(DTYPES)}."
        )
    return dtype


def parse_input(text: str) -> InputSpec:
    """Parse ``NAME:SHAPE:DTYPE[:LOW..HIGH]``."""
    where = f"--input '{text}'"
    hint = "Write it as NAME:SHAPE:DTYPE, for example x:1x3x224x224:float32 or x:Bx3xHxW:float32."
    parts = text.split(":")
    if len(parts) < 2 or len(parts) > 4:
        raise BadInputError(f"{where} does not parse: expected 2 to 4 fields separated by ':'.", hint=hint)
    name, shape_text = parts[0], parts[1]
    if not re.fullmatch(_NAME, name):
        raise BadInputError(f"{where}: '{name}' is not a valid input name.", hint=hint)
    dtype = parse_dtype(parts[2], where=where) if len(parts) >= 3 and parts[2] else "float32"
    sep = "," if "," in shape_text else "x"
    shape: list[int | str] = []
    if shape_text.strip():
        for token in shape_text.split(sep):
            token = token.strip()
            if token.isdigit():
                shape.append(int(token))
            elif _DIM_NAME.match(token):
                shape.append(token)
            else:
                raise BadInputError(
                    f"{where}: the shape '{shape_text}' does not parse at '{token}': each dim must be a "
                    "positive integer or a name.",
                    hint=hint,
                )
    value_range = None
    if len(parts) == 4:
        value_range = _parse_range(parts[3], where=where)
    return InputSpec(name, tuple(shape), dtype, value_range)


def _parse_range(text: str, *, where: str) -> tuple[float, float]:
    m = re.fullmatch(r"\s*(-?[0-9.eE+-]+)\s*\.\.\s*(-?[0-9.eE+-]+)\s*", text)
    try:
        low, high = float(m.group(1)), float(m.group(2))  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        raise BadInputError(f"{where}: the value range '{text}' does not parse.", hint="Write LOW..HIGH, e.g. 0..30521.") from None
    if low > high:
        raise BadInputError(f"{where}: the value range '{text}' is empty (LOW > HIGH).", hint="Write LOW..HIGH with LOW <= HIGH.")
    return low, high


def parse_dim(text: str) -> Dim:
    """Parse ``NAME=MIN..MAX[@EXAMPLE]`` or ``NAME=EXAMPLE``."""
    where = f"--dim '{text}'"
    hint = "Write it as NAME=MIN..MAX, NAME=MIN..MAX@EXAMPLE or NAME=EXAMPLE, for example B=1..64 or H=32..512@224."
    m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(?:(\d+)\.\.(\d+)?)?(?:@?(\d+))?", text.strip())
    if not m or (m.group(2) is None and m.group(4) is None):
        raise BadInputError(f"{where} does not parse.", hint=hint)
    name, lo, hi, ex = m.groups()
    if lo is None:  # NAME=EXAMPLE
        return Dim(name, example=int(ex))
    dim = Dim(name, int(lo), int(hi) if hi else None, int(ex) if ex else None)
    if dim.min < 0 or (dim.max is not None and dim.max < dim.min):
        raise BadInputError(f"{where}: the range is empty.", hint=hint)
    if dim.example is not None and not dim.contains(dim.example):
        raise BadInputError(f"{where}: the example size {dim.example} lies outside the range.", hint=hint)
    return dim


def parse_meta(items: list[str]) -> dict[str, str]:
    meta = {}
    for item in items:
        if "=" not in item:
            raise BadInputError(f"--meta '{item}' does not parse.", hint="Write it as KEY=VALUE.")
        key, value = item.split("=", 1)
        meta[key.strip()] = value
    return meta


@dataclass(frozen=True)
class ExportConfig:
    """Everything ``export`` needs besides the model. ``None`` means the library default."""

    inputs: tuple[InputSpec, ...] = ()
    dims: tuple[Dim, ...] = ()
    strategy: str | None = None  # pin one: "dynamo" | "torchscript"
    opset: int | None = None  # pin one opset
    device: str = "cpu"
    meta: dict[str, str] = field(default_factory=dict)
    labels: tuple[str, ...] = ()
    allow_static: tuple[str, ...] = ()  # dims the user accepts as frozen
    check_determinism: bool = True
    # Re-initialize all-zero weights (a zero-init head) with seeded noise before export, so parity on random-weight
    # models proves something. Recorded in the model's metadata; verify applies the same to its reference.
    reinit_degenerate: bool = False

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
class RunConfig:
    """A whole job as read from ``onnxgate.toml`` or the command line."""

    ref: str | None = None
    export: ExportConfig = field(default_factory=ExportConfig)
    weights: str | None = None
    arch: str | None = None
    trust_pickle: bool = False
    output: str | None = None
    targets: tuple[str, ...] = ()  # runtimes the model must run on, e.g. "onnxruntime==1.16"


def read_labels(path: str | Path) -> tuple[str, ...]:
    """Class labels, one a line, read as UTF-8 (so non-ASCII labels survive into the model's metadata)."""
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"--labels '{path}': no such file.", hint="Give a UTF-8 text file with one class label a line.")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BadInputError(f"--labels '{path}' is not valid UTF-8 ({exc.reason} at byte {exc.start}).",
                            hint="Save the labels file as UTF-8.") from None
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def load_toml(path: str | Path) -> RunConfig:
    """Read ``onnxgate.toml``. Keys mirror the CLI flags::

        ref = "torchvision:resnet18"
        input = ["x:Bx3x224x224:float32"]
        dim = ["B=1..64"]
        [export]
        strategy = "dynamo"
        opset = 18
        [meta]
        owner = "vision-team"
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"Config file '{path}' does not exist.", hint="Check the path.") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"Config file '{path}' is not valid TOML: {exc}.", hint="Fix the syntax at that line.") from None
    export = data.get("export", {})
    known = {"ref", "input", "dim", "export", "meta", "labels", "weights", "arch", "trust_pickle", "output",
             "allow_static", "device", "target"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BadInputError(f"Config file '{path}' has unknown keys: {', '.join(unknown)}.",
                            hint=f"Known keys: {', '.join(sorted(known))}.")
    labels: tuple[str, ...] = ()
    if data.get("labels"):
        labels = read_labels((p.parent / data["labels"]) if not Path(data["labels"]).is_absolute() else data["labels"])
    cfg = ExportConfig(
        inputs=tuple(parse_input(s) for s in data.get("input", [])),
        dims=tuple(parse_dim(s) for s in data.get("dim", [])),
        strategy=export.get("strategy"),
        opset=export.get("opset"),
        device=data.get("device", "cpu"),
        meta={str(k): str(v) for k, v in data.get("meta", {}).items()},
        labels=labels,
        allow_static=tuple(data.get("allow_static", [])),
    )
    return RunConfig(ref=data.get("ref"), export=cfg, weights=data.get("weights"), arch=data.get("arch"),
                     trust_pickle=bool(data.get("trust_pickle", False)), output=data.get("output"),
                     targets=tuple(data.get("target", [])))


__all__ = ["Dim", "InputSpec", "ExportConfig", "RunConfig", "parse_input", "parse_dim", "parse_meta",
           "parse_dtype", "read_labels", "load_toml", "replace"]
