"""Inputs to verify with: seeded random data, saved arrays, image folders, or a user's function.

Torch-free on purpose (numpy and Pillow only): bundles are verified on machines without torch. Every loader
returns a list of *feeds*, each a dict from input name to array.

numpy has no bfloat16, so bfloat16 inputs are produced as float32; runners cast at their boundary.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError
from ..spec import MAX_DIM, Dim, InputSpec

Feed = dict[str, np.ndarray]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_INT_RANGE = (0, 9)
# The most bytes one generated input may take. Sizes come from flags, but also from a model's metadata, which its
# author controls: without a bound, one crafted onnxgate.dims entry asks for terabytes.
MAX_GENERATED_BYTES = 2**31
MAX_IMAGE_SIDE = 16384


def numpy_dtype(dtype: str) -> np.dtype:
    return np.dtype("float32" if dtype == "bfloat16" else dtype)


def concrete_shape(spec: InputSpec, sizes: dict[str, int]) -> tuple[int, ...]:
    """The spec's shape with named dims replaced by ``sizes``."""
    missing = [d for d in spec.shape if isinstance(d, str) and d not in sizes]
    if missing:
        raise BadInputError(f"Input '{spec.name}': no size for the dynamic dim(s) {', '.join(missing)}.",
                            hint=f"Give an example size with --dim, e.g. --dim {missing[0]}=1..64@4.")
    return tuple(sizes[d] if isinstance(d, str) else d for d in spec.shape)


def generated_bytes(spec: InputSpec, sizes: dict[str, int]) -> int:
    """How many bytes the input would take at ``sizes`` (plain integers: no overflow, no allocation)."""
    return math.prod(concrete_shape(spec, sizes)) * numpy_dtype(spec.dtype).itemsize


def _check_shape(spec: InputSpec, sizes: dict[str, int], *, model: str | Path | None = None) -> tuple[int, ...]:
    shape = concrete_shape(spec, sizes)
    where = f"'{model}': input '{spec.name}'" if model else f"Input '{spec.name}'"
    hint = ("Verify at smaller sizes: give the dims yourself with --dim NAME=MIN..MAX@SIZE (or the whole input "
            "with --input NAME:SHAPE:DTYPE).")
    if any(not 0 <= d <= MAX_DIM for d in shape):
        raise BadInputError(f"{where} would have the shape {shape}: every size must lie in 0..{MAX_DIM:,}.", hint=hint)
    nbytes = math.prod(shape) * numpy_dtype(spec.dtype).itemsize
    if nbytes > MAX_GENERATED_BYTES:
        raise BadInputError(
            f"{where} at {'x'.join(map(str, shape))} ({spec.dtype}) would take {_human_bytes(nbytes)} of generated "
            f"data; onnxgate generates at most {_human_bytes(MAX_GENERATED_BYTES)} per input.", hint=hint)
    return shape


def _human_bytes(n: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if n < 2**80 else f"{n:.3g} bytes"
    return f"{n} bytes"


def check_generated_size(specs: list[InputSpec], dims: dict[str, Dim], *, model: str | Path | None = None) -> None:
    """Refuse, before anything is allocated, sizes at which verification would generate an input over
    MAX_GENERATED_BYTES: the traced sizes, and each dynamic dim at each of its probe sizes (the others traced)."""
    from .shapes import probe_sizes

    traced = {n: d.example or 2 for n, d in dims.items()}
    for spec in specs:
        _check_shape(spec, traced, model=model)
        for name in dict.fromkeys(spec.dynamic_axes.values()):
            if name in dims:
                for size in probe_sizes(dims[name]):
                    _check_shape(spec, {**traced, name: size}, model=model)


def random_inputs(specs: list[InputSpec], sizes: dict[str, int], *, seed: int) -> Feed:
    """One seeded random feed. Floats are standard normal (uniform in ``value_range`` when the spec has one),
    integers uniform in ``value_range`` inclusive (default 0..9, valid for most embedding and index inputs),
    bools fair coin flips. Refuses (BadInputError) an input over MAX_GENERATED_BYTES before allocating it."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in specs:
        shape, dtype = _check_shape(spec, sizes), numpy_dtype(spec.dtype)
        if dtype == np.bool_:
            feed[spec.name] = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            low, high = spec.value_range or DEFAULT_INT_RANGE
            feed[spec.name] = rng.integers(int(low), int(high), size=shape, endpoint=True, dtype=dtype)
        elif spec.value_range:
            feed[spec.name] = rng.uniform(*spec.value_range, size=shape).astype(dtype)
        else:
            feed[spec.name] = rng.standard_normal(shape).astype(dtype)
    return feed


def load_npz(path: str | Path, specs: list[InputSpec]) -> list[Feed]:
    """Feeds from a ``.npz`` (keys = input names) or a ``.npy`` (single-input models only).

    An array with the spec's rank is one feed. An array with one extra leading axis is a stack of feeds, split
    along that axis (all inputs must then be stacked, with the same count): ``x`` of shape [K, 1, 3, 224, 224]
    for spec ``x:Bx3x224x224`` gives K feeds. Arrays are cast to the spec dtype within their kind (float64 ->
    float32); a cast across kinds (float -> int) is refused.
    """
    p = Path(path)
    where = f"Input data '{path}'"
    if not p.is_file():
        raise BadInputError(f"{where}: no such file.", hint="Give a .npz (keys = input names) or a .npy file.")
    try:
        loaded = np.load(p, allow_pickle=False)  # pickled object arrays could run code: refused
        if isinstance(loaded, np.ndarray):  # a .npy
            if len(specs) != 1:
                raise BadInputError(f"{where}: a .npy holds one array but the model has {len(specs)} inputs.",
                                    hint="Save a .npz with one array per input name (np.savez).")
            arrays = {specs[0].name: loaded}
        else:
            with loaded as data:
                arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError) as exc:
        raise BadInputError(f"{where} cannot be read: {exc}.", hint="Save it with np.save or np.savez.") from None
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise BadInputError(f"{where} has no array for input(s) {', '.join(missing)} (it has: "
                            f"{', '.join(arrays) or 'nothing'}).", hint="Name the arrays after the inputs.")
    stacked = {s.name: arrays[s.name].ndim == len(s.shape) + 1 for s in specs}
    if not any(stacked.values()):
        return [conform({s.name: arrays[s.name] for s in specs}, specs, where=where)]
    counts = {len(arrays[s.name]) for s in specs}
    if not all(stacked.values()) or len(counts) != 1:
        raise BadInputError(f"{where}: some arrays have a leading stack axis and others do not, or the stacks "
                            "differ in length.", hint="Stack every input along a new axis 0, or none.")
    return [conform({s.name: arrays[s.name][k] for s in specs}, specs, where=where) for k in range(counts.pop())]


def conform(feed: Mapping[str, Any], specs: list[InputSpec], *, where: str) -> Feed:
    """Check a feed against the specs (names, rank, static dims) and cast within dtype kind."""
    out = {}
    for spec in specs:
        if spec.name not in feed:
            raise BadInputError(f"{where}: the feed has no '{spec.name}' (it has: {', '.join(feed)}).",
                                hint="Name the arrays after the model's inputs.")
        arr = np.asarray(feed[spec.name])
        bad_dims = len(arr.shape) != len(spec.shape) or any(
            isinstance(d, int) and d != n for d, n in zip(spec.shape, arr.shape))
        if bad_dims:
            raise BadInputError(f"{where}: '{spec.name}' has shape {tuple(arr.shape)}, the input is {spec}.",
                                hint="Match the input's rank and static dims.")
        want = numpy_dtype(spec.dtype)
        if arr.dtype != want:
            if not (arr.dtype.kind == want.kind or {arr.dtype.kind, want.kind} <= {"i", "u"}):
                raise BadInputError(f"{where}: '{spec.name}' is {arr.dtype.name}, the input is {spec.dtype}.",
                                    hint=f"Save the array as {spec.dtype}.")
            arr = arr.astype(want)
        out[spec.name] = arr
    return out


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing: resize the shorter side to ``resize`` (default: ``crop``), centre-crop ``crop`` x
    ``crop``, scale to 0..1, normalize with ``mean``/``std`` per channel, NCHW float32.

    Written as text (CLI flag, metadata key ``preprocess``)::

        resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,order=RGB
    """

    crop: int
    resize: int | None = None
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    order: str = "RGB"

    @classmethod
    def parse(cls, text: str) -> "Preprocess":
        hint = "Write it as resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,order=RGB."
        fields: dict[str, Any] = {}
        try:
            for item in filter(None, (t.strip() for t in text.split(","))):
                key, value = (s.strip() for s in item.split("=", 1))
                if key in ("crop", "resize"):
                    fields[key] = int(value)
                elif key in ("mean", "std"):
                    fields[key] = tuple(float(v) for v in value.split("/"))
                elif key == "order":
                    fields[key] = value.upper()
                else:
                    raise BadInputError(f"Preprocessing '{text}': unknown key '{key}'.", hint=hint)
        except ValueError:
            raise BadInputError(f"Preprocessing '{text[:200]}' does not parse.", hint=hint) from None
        if "crop" not in fields:
            raise BadInputError(f"Preprocessing '{text[:200]}' names no crop size.", hint=hint)
        pre = cls(**fields)
        if pre.order not in ("RGB", "BGR") or len(pre.mean) != 3 or len(pre.std) != 3 or 0 in pre.std \
                or not all(math.isfinite(v) for v in (*pre.mean, *pre.std)):
            raise BadInputError(f"Preprocessing '{text[:200]}': order must be RGB or BGR, mean and std three finite "
                                "numbers each (std non-zero).", hint=hint)
        if not all(1 <= v <= MAX_IMAGE_SIDE for v in (pre.crop, pre.resize or pre.crop)):
            raise BadInputError(f"Preprocessing '{text[:200]}': crop and resize must lie in 1..{MAX_IMAGE_SIDE}.",
                                hint=hint)
        return pre

    @classmethod
    def from_meta(cls, meta: Mapping[str, str], *, model: str | Path | None = None) -> "Preprocess | None":
        """From model metadata: the ``preprocess`` key, else separate ``crop``/``resize``/``mean``/``std``/``order``
        keys in the same syntax. None when the metadata says nothing about preprocessing. A malformed entry is a
        BadInputError naming it (the user can pass --preprocess instead)."""
        from ..metadata import entry, malformed

        hint = "Pass --preprocess resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225 to override it."
        keys = ["preprocess"] if "preprocess" in meta else [k for k in ("crop", "resize", "mean", "std", "order")
                                                             if k in meta]
        if not keys or (keys != ["preprocess"] and "crop" not in keys):
            return None
        where = model or "the model"
        values = {k: entry(meta, k, model=where, limit=4096, hint=hint) for k in keys}
        text = values["preprocess"] if keys == ["preprocess"] else ",".join(f"{k}={values[k]}" for k in keys)
        try:
            return cls.parse(text)  # type: ignore[arg-type]
        except BadInputError as exc:
            raise malformed(where, "/".join(keys), exc.message.rstrip("."), hint=hint) from None

    def __str__(self) -> str:
        text = f"resize={self.resize}," if self.resize else ""
        return (text + f"crop={self.crop},mean={'/'.join(map(str, self.mean))},"
                f"std={'/'.join(map(str, self.std))},order={self.order}")

    def load_folder(self, path: str | Path, *, input_name: str, batch: int = 4, limit: int | None = None) -> list[Feed]:
        return load_image_folder(path, size=self.crop, resize=self.resize, mean=self.mean, std=self.std,
                                 channel_order=self.order, batch=batch, limit=limit, input_name=input_name)


def load_image_folder(path: str | Path, *, size: int, resize: int | None = None,
                      mean: Iterable[float] = (0.0, 0.0, 0.0), std: Iterable[float] = (1.0, 1.0, 1.0),
                      channel_order: str = "RGB", batch: int = 4, limit: int | None = None,
                      input_name: str = "input") -> list[Feed]:
    """Images of a folder (sorted by name, sub-folders included) as NCHW float32 feeds of up to ``batch``."""
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise BadInputError(f"Image folder '{path}' does not exist.", hint="Give a folder of .jpg/.png images.")
    files = sorted(f for f in root.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise BadInputError(f"Image folder '{path}' holds no images ({', '.join(IMAGE_SUFFIXES)}).",
                            hint="Put some images in it or point to another folder.")
    mean_a = np.asarray(tuple(mean), dtype=np.float32).reshape(3, 1, 1)
    std_a = np.asarray(tuple(std), dtype=np.float32).reshape(3, 1, 1)
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                img = _resize_and_crop(im.convert("RGB"), resize or size, size)
        except OSError as exc:
            raise BadInputError(f"Image '{f}' cannot be read: {exc}.", hint="Remove or replace it.") from None
        chw = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
        if channel_order.upper() == "BGR":
            chw = chw[::-1]
        images.append((chw - mean_a) / std_a)
    return [{input_name: np.ascontiguousarray(np.stack(images[i:i + batch]), dtype=np.float32)}
            for i in range(0, len(images), batch)]


def _resize_and_crop(img, shorter: int, crop: int):
    from PIL import Image

    w, h = img.size
    scale = shorter / min(w, h)
    img = img.resize((max(crop, round(w * scale)), max(crop, round(h * scale))), Image.Resampling.BILINEAR)
    w, h = img.size
    left, top = (w - crop) // 2, (h - crop) // 2
    return img.crop((left, top, left + crop, top + crop))


def load_feeds(items: list[str], specs: list[InputSpec]) -> list[Feed]:
    """The feeds of every ``--data`` item: ``.npz``/``.npy`` files, or ``file.py:fn`` / ``pkg.mod:fn`` callables."""
    feeds: list[Feed] = []
    for item in items:
        feeds += load_npz(item, specs) if item.endswith((".npz", ".npy")) else load_callable(item, specs)
    return feeds


def load_callable(ref: str, specs: list[InputSpec] | None = None, *, limit: int | None = None) -> list[Feed]:
    """Feeds from the user's function ``file.py:fn`` or ``pkg.mod:fn``.

    The function takes no arguments and returns one feed (a dict of arrays) or an iterable of feeds. Values
    may be anything ``np.asarray`` accepts (torch tensors included). With ``specs`` each feed is checked.
    """
    module_ref, sep, fn_name = ref.rpartition(":")
    hint = "Write it as path/to/file.py:function or package.module:function."
    if not sep or not module_ref or not fn_name:
        raise BadInputError(f"Input function '{ref}' does not parse.", hint=hint)
    fn = getattr(_import(module_ref, ref, hint), fn_name, None)
    if not callable(fn):
        raise BadInputError(f"Input function '{ref}': '{module_ref}' has no function '{fn_name}'.", hint=hint)
    produced = fn()
    feeds_iter = [produced] if isinstance(produced, Mapping) else produced
    feeds = []
    for feed in feeds_iter:
        if limit is not None and len(feeds) >= limit:
            break
        if not isinstance(feed, Mapping):
            raise BadInputError(f"Input function '{ref}' yielded a {type(feed).__name__}, not a dict of arrays.",
                                hint="Return or yield dicts mapping input names to arrays.")
        feed = {k: np.asarray(v) for k, v in feed.items()}
        feeds.append(conform(feed, specs, where=f"Input function '{ref}'") if specs else feed)
    return feeds


def _import(module_ref: str, ref: str, hint: str):
    if module_ref.endswith(".py") or "/" in module_ref or "\\" in module_ref:
        path = Path(module_ref)
        if not path.is_file():
            raise BadInputError(f"Input function '{ref}': no such file '{module_ref}'.", hint=hint)
        spec = importlib.util.spec_from_file_location(f"onnxgate_user_inputs_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module
    try:
        return importlib.import_module(module_ref)
    except ImportError as exc:
        raise BadInputError(f"Input function '{ref}': cannot import '{module_ref}' ({exc}).", hint=hint) from None
