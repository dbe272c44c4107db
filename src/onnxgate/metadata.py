"""Validated reading of the ``onnxgate.*`` entries of an ONNX model's metadata.

``onnxgate export`` records what verification needs later in the model's ``metadata_props``: the input specs
(``onnxgate.inputs``), the dynamic dims (``onnxgate.dims``), the source model (``onnxgate.source``). A file from
elsewhere carries whatever its author wrote there, so nothing is used before it is checked: text that is not
UTF-8, JSON that does not decode or nests without end, values of the wrong type, negative or huge sizes. A
malformed entry is a BadInputError naming the model, the entry and what is wrong with it, and saying how to go on
without it (``--input``/``--dim``). Sizes are bounded here; the bytes a generated input would take are bounded in
``verify.inputs`` (``check_generated_size``), before any array is allocated.

Torch-free, numpy-free: `onnxgate inspect` lists these problems on a production box.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from .errors import BadInputError
from .spec import MAX_DIM, Dim, InputSpec, clip, describe_value, parse_input

INPUTS = "onnxgate.inputs"
DIMS = "onnxgate.dims"
SOURCE = "onnxgate.source"
REINIT = "onnxgate.reinit_degenerate"

MAX_ENTRY_CHARS = 1 << 20  # a JSON entry larger than 1 MiB is not something onnxgate wrote
MAX_INPUTS = 1024
MAX_SOURCE_CHARS = 4096
_DIM_KEYS = ("name", "min", "max", "example", "multiple_of")
_DIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

OVERRIDE_HINT = ("The file's onnxgate metadata is damaged or was not written by onnxgate. Describe the inputs "
                 "yourself to verify it anyway: --input NAME:SHAPE:DTYPE (and --dim NAME=MIN..MAX@SIZE for each "
                 "dynamic dim).")


def malformed(model: str | Path, key: str, why: str, *, hint: str = OVERRIDE_HINT) -> BadInputError:
    return BadInputError(f"'{model}': its metadata entry '{key}' is malformed: {why}.", hint=hint)


def entry(meta: Mapping[str, Any], key: str, *, model: str | Path, invalid_utf8: Collection[str] = (),
          limit: int = MAX_ENTRY_CHARS, hint: str = OVERRIDE_HINT) -> str | None:
    """The text of metadata entry ``key`` (None when absent), refused when it is not valid UTF-8 or too large."""
    if key not in meta:
        return None
    value = meta[key]
    if key in invalid_utf8 or isinstance(value, (bytes, bytearray)):
        raise malformed(model, key, "it is not valid UTF-8 text", hint=hint)
    if not isinstance(value, str):
        raise malformed(model, key, f"it is a {type(value).__name__}, not text", hint=hint)
    if len(value) > limit:
        raise malformed(model, key, f"it is {len(value):,} characters long (onnxgate writes far less; the limit "
                                    f"is {limit:,})", hint=hint)
    return value


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def json_entry(meta: Mapping[str, Any], key: str, *, model: str | Path, invalid_utf8: Collection[str] = ()) -> Any:
    """Metadata entry ``key`` decoded as strict JSON (no NaN/Infinity); None when absent."""
    text = entry(meta, key, model=model, invalid_utf8=invalid_utf8)
    if text is None:
        return None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise malformed(model, key, "its JSON nests too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, an integer of more than 4300 digits
        raise malformed(model, key, f"it is not valid JSON ({clip(str(exc).splitlines()[0], 120)})") from None


def input_specs(meta: Mapping[str, Any], *, model: str | Path,
                invalid_utf8: Collection[str] = ()) -> tuple[list[InputSpec], dict[str, Dim]] | None:
    """The input specs and dynamic dims ``onnxgate export`` recorded; None when the model records no input specs."""
    raw = json_entry(meta, INPUTS, model=model, invalid_utf8=invalid_utf8)
    if raw is None:
        return None
    return specs_from_raw(raw, model=model), dims(meta, model=model, invalid_utf8=invalid_utf8)


def specs_from_raw(raw: Any, *, model: str | Path, key: str = INPUTS) -> list[InputSpec]:
    """The input specs of an already decoded ``onnxgate.inputs`` value, every one checked (see ``input_specs``)."""
    form = ('a JSON array of input specs such as [{"name": "x", "shape": ["B", 3, 224, 224], "dtype": "float32", '
            '"value_range": null}]')
    if not isinstance(raw, list) or not raw:
        raise malformed(model, key, f"it must be {form}, not {describe_value(raw)}")
    if len(raw) > MAX_INPUTS:
        raise malformed(model, key, f"it lists {len(raw):,} inputs (at most {MAX_INPUTS:,})")
    specs: list[InputSpec] = []
    for i, item in enumerate(raw):
        try:
            if isinstance(item, dict):  # the structured form onnxgate writes
                spec = _spec_from_dict(item, where=f"item {i + 1}")
            elif isinstance(item, str):  # files written before the structured form: the --input text
                spec = parse_input(item, where=f"item {i + 1} ('{clip(item, 60)}')")
            else:
                raise malformed(model, key, f"item {i + 1} is {describe_value(item)}; it must be {form}")
        except BadInputError as exc:
            if exc.message.startswith(f"'{model}'"):
                raise
            raise malformed(model, key, exc.message.rstrip(".")) from None
        if any(s.name == spec.name for s in specs):
            raise malformed(model, key, f"the input '{spec.name}' is listed twice")
        specs.append(spec)
    return specs


def _spec_from_dict(item: dict, *, where: str) -> InputSpec:
    """An ``InputSpec.to_dict()`` read back, every field checked (the dims through the same rules as --input)."""
    unknown = set(item) - {"name", "shape", "dtype", "value_range"}
    if unknown:
        raise BadInputError(f"{where} has unknown fields {', '.join(sorted(map(str, unknown)))}")
    name, shape, dtype, value_range = item.get("name"), item.get("shape"), item.get("dtype", "float32"), \
        item.get("value_range")
    if not isinstance(name, str) or not isinstance(shape, list) or not isinstance(dtype, str):
        raise BadInputError(f"{where} needs a string name, a list shape and a string dtype")
    if len(shape) > 64 or not all(isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool))
                                  for d in shape):
        raise BadInputError(f"{where}: each dim must be an integer or a name, at most 64 dims")
    text = f"{name}:{','.join(str(d) for d in shape)}:{dtype}"
    if value_range is not None:
        if not (isinstance(value_range, list) and len(value_range) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value_range)):
            raise BadInputError(f"{where}: value_range must be [low, high] or null")
        text += f":{value_range[0]}..{value_range[1]}"
    return parse_input(text, where=where)


def dims(meta: Mapping[str, Any], *, model: str | Path, invalid_utf8: Collection[str] = ()) -> dict[str, Dim]:
    """The dynamic dims ``onnxgate export`` recorded (``{}`` when none): ``{"B": {"name": "B", "min": 1, "max":
    64, "example": 2}}``, every size an integer in 0..MAX_DIM, the example inside the range; ``"multiple_of": 64``
    (or null) when the model claims only multiples of a size (an accepted verified domain)."""
    raw = json_entry(meta, DIMS, model=model, invalid_utf8=invalid_utf8)
    return {} if raw is None else dims_from_raw(raw, model=model)


def dims_from_raw(raw: Any, *, model: str | Path, key: str = DIMS) -> dict[str, Dim]:
    """``dims`` on an already decoded value (the bundle manifest's ``domain`` through ``onnxgate.claim``): the same
    checks, the same messages, naming ``key``."""
    form = 'a JSON object such as {"B": {"name": "B", "min": 1, "max": 64, "example": 2}}'
    if not isinstance(raw, dict):
        raise malformed(model, key, f"it must be {form}, not {describe_value(raw)}")
    if len(raw) > MAX_INPUTS:
        raise malformed(model, key, f"it lists {len(raw):,} dims (at most {MAX_INPUTS:,})")
    out: dict[str, Dim] = {}
    for name, fields in raw.items():
        where = f"dim '{clip(name, 40)}'"
        if not isinstance(name, str) or not _DIM_NAME.fullmatch(name):
            raise malformed(model, key, f"{where} is not a dim name (letters, digits, underscores)")
        if not isinstance(fields, dict):
            raise malformed(model, key, f"{where} is {describe_value(fields)}; it must be {form}")
        unknown = sorted(set(fields) - set(_DIM_KEYS))
        if unknown:
            raise malformed(model, key, f"{where} has unknown fields {', '.join(repr(clip(k, 20)) for k in unknown[:3])} "
                                         f"(known: {', '.join(_DIM_KEYS)})")
        if fields.get("name", name) != name:
            raise malformed(model, key, f"{where} names itself '{clip(str(fields.get('name')), 40)}'")
        sizes = {}
        for field in ("min", "max", "example", "multiple_of"):
            value = fields.get(field, 1 if field == "min" else None)
            if value is None and field != "min":
                sizes[field] = None
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise malformed(model, key, f"{where}: '{field}' is {describe_value(value)}; it must be an integer")
            if not 0 <= value <= MAX_DIM:
                raise malformed(model, key, f"{where}: '{field}' is {clip(str(value), 30)}, outside 0..{MAX_DIM:,}")
            sizes[field] = value
        if sizes["multiple_of"] is not None and sizes["multiple_of"] < 1:
            raise malformed(model, key, f"{where}: 'multiple_of' is {sizes['multiple_of']}; it must be at least 1")
        dim = Dim(name, sizes["min"], sizes["max"], sizes["example"], sizes["multiple_of"] or None)
        if dim.max is not None and dim.max < dim.min:
            raise malformed(model, key, f"{where}: the range {dim.min}..{dim.max} is empty")
        if dim.example is not None and (dim.example < 1 or not dim.contains(dim.example)):
            raise malformed(model, key, f"{where}: the example size {dim.example} lies outside "
                                         f"{dim.min}..{'' if dim.max is None else dim.max} (or is 0"
                                         + (f", or is not a multiple of {dim.multiple_of})" if dim.multiple_of else ")"))
        out[name] = dim
    return out


def recorded_source(meta: Mapping[str, Any], *, model: str | Path, invalid_utf8: Collection[str] = ()) -> str | None:
    """The ``onnxgate.source`` the model records, as text fit to show (None when absent). Checked only as data:
    whether it may be *used* is ``verify.api.recorded_reference``'s decision."""
    hint = "Name the PyTorch model yourself with --against REF."
    text = entry(meta, SOURCE, model=model, invalid_utf8=invalid_utf8, limit=MAX_SOURCE_CHARS, hint=hint)
    if text is not None and (not text.strip() or any(ord(c) < 32 or ord(c) == 127 for c in text)):
        raise malformed(model, SOURCE, "it is empty or holds control characters, so it names no model", hint=hint)
    return text


def reinit_degenerate(meta: Mapping[str, Any]) -> bool:
    """Whether the export re-initialized degenerate weights (``onnxgate.reinit_degenerate = "true"``)."""
    return meta.get(REINIT) == "true"


def problems(meta: Mapping[str, Any], *, model: str | Path, invalid_utf8: Collection[str] = ()) -> list[str]:
    """Every malformed onnxgate entry of the metadata, as messages (for `inspect`: the model itself may be fine)."""
    found = []
    for check in (input_specs, dims, recorded_source):
        try:
            check(meta, model=model, invalid_utf8=invalid_utf8)
        except BadInputError as exc:
            if exc.message not in found:
                found.append(exc.message)
    for key in sorted(k for k in invalid_utf8 if k.startswith("onnxgate.") and k not in (INPUTS, DIMS, SOURCE)):
        found.append(malformed(model, key, "it is not valid UTF-8 text").message)
    return found


__all__ = ["INPUTS", "DIMS", "SOURCE", "REINIT", "input_specs", "dims", "dims_from_raw", "specs_from_raw",
           "recorded_source", "reinit_degenerate",
           "problems", "entry", "json_entry", "malformed", "OVERRIDE_HINT"]
