"""Inputs to verify with: seeded random data, saved arrays, image folders, or a user's function.

Torch-free on purpose (numpy and Pillow only): bundles are verified on machines without torch. Every loader
returns a list of *feeds*, each a dict from input name to array.

``load_dataset`` is the one reader of a DATA argument, for every command that takes one (``verify --data``,
``optimize --data``, ``quantize --calib/--eval``, ``run``): an ``.npz``/``.npy``, an image folder (preprocessed as
``--preprocess`` or the model's metadata says), or ``file.py:fn``. Labels come with it where the data has them; an
image folder's class sub-folders are *matched by name* to the model's class labels (``match_classes``), never
numbered in sorted order behind the user's back: numbering folders 0..N-1 scores a real ImageNet model 0%.
A folder may also be named by class index ("474", "474_cardigan") or WordNet id ("n02963159", resolved through a
``labels.csv`` beside the class folders): ImageNet repeats a few names (``Cardigan``/``cardigan``, ``crane``,
``maillot``), and an ambiguous name is refused with that fix. A labelled CSV (``file,wnid,class_index,class_name``,
paths relative to it) is a DATA argument too, whole or as one fixed half: ``FILE.csv:calib`` is its even rows
(0, 2, 4, ...), ``FILE.csv:eval`` its odd rows, so calibration never sees an evaluation image; a flat image folder
holding a ``labels.csv`` is labelled by it (``FOLDER:calib`` / ``FOLDER:eval`` name its halves).

numpy has no bfloat16, so bfloat16 inputs are produced as float32; runners cast at their boundary.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError
from ..preprocess import Preprocess  # noqa: F401  (it lives there; re-exported)
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


#: Value variants of a random feed that every verification adds for float inputs, besides the standard-normal seeds:
#: a branch on values (``if x.sum() > 0``, a threshold, a size from ``.item()``) cannot hide behind one distribution.
VARIANTS = ("all-negative", "all-positive", "zeros", "scaled x10", "scaled x0.01")


def variant_feeds(specs: list[InputSpec], sizes: dict[str, int], *, seed: int = 0) -> list[tuple[str, Feed]]:
    """(label, feed) for each of ``VARIANTS``, made from the standard-normal feed of ``seed``: float inputs negated
    (``-|x|``), made positive (``|x|``), zeroed, scaled up and down; integer and bool inputs as drawn. An input
    with a value range stays inside it (its lower half, upper half, 0 clipped into it, its two ends, its middle).
    None when no input is a float: there is nothing to vary."""
    if not any(np.issubdtype(numpy_dtype(s.dtype), np.floating) for s in specs):
        return []
    base = random_inputs(specs, sizes, seed=seed)
    out = []
    for variant in VARIANTS:
        feed = {}
        for spec in specs:
            a = base[spec.name]
            feed[spec.name] = (_vary(a, variant, spec.value_range).astype(a.dtype)
                               if np.issubdtype(a.dtype, np.floating) else a)
        out.append((variant, feed))
    return out


def _vary(a: np.ndarray, variant: str, value_range) -> np.ndarray:
    if value_range is None:
        return {"all-negative": lambda: -np.abs(a), "all-positive": lambda: np.abs(a),
                "zeros": lambda: np.zeros_like(a), "scaled x10": lambda: a * 10,
                "scaled x0.01": lambda: a * 0.01}[variant]()
    low, high = (float(v) for v in value_range)
    mid, half = (low + high) / 2, (high - low) / 2
    unit = (a - mid) / half if half else np.zeros_like(a)  # uniform in -1..1
    return {"all-negative": lambda: mid - np.abs(unit) * half, "all-positive": lambda: mid + np.abs(unit) * half,
            "zeros": lambda: np.full_like(a, min(max(0.0, low), high)),
            "scaled x10": lambda: np.where(unit < 0, low, high), "scaled x0.01": lambda: mid + unit * half * 0.01}[variant]()


def value_probes(example: Feed, specs: list[InputSpec] | None = None) -> list[tuple[str, Feed]]:
    """(label, feed) built from the example inputs to send a decision on their values the other way: float inputs
    negated, scaled by 10 and 0.1, negated and scaled, made all-positive, all-negative and large. The sign, the
    magnitude and comparisons against the traced value each flip in one of them. Integer and bool inputs are kept:
    their declared ranges mean what the model's code makes of them (a mask of all 2s is no mask a caller sends),
    and a decision on them is left to the random draws (a rung whose decision none of them flips is refused)."""
    floats = [n for n, a in example.items() if np.issubdtype(a.dtype, np.floating)]
    if not floats:
        return []
    return [(label, {n: fn(a).astype(a.dtype) if n in floats else a for n, a in example.items()})
            for label, fn in (("example x-1", lambda a: -a), ("example x10", lambda a: a * 10),
                              ("example x0.1", lambda a: a * 0.1), ("example x-10", lambda a: a * -10),
                              ("example |x|", np.abs), ("example -|x|", lambda a: -np.abs(a)),
                              ("example 10|x|", lambda a: np.abs(a) * 10))]


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


def load_image_folder(path: str | Path, *, size: int, resize: int | None = None,
                      mean: Iterable[float] = (0.0, 0.0, 0.0), std: Iterable[float] = (1.0, 1.0, 1.0),
                      channel_order: str = "RGB", batch: int = 4, limit: int | None = None,
                      input_name: str = "input", preprocess: Preprocess | None = None) -> list[Feed]:
    """Images of a folder (sorted by name, sub-folders included) as NCHW float32 feeds of up to ``batch``,
    preprocessed by ``onnxgate.preprocess`` (torchvision's rounding; ``preprocess`` overrides the other arguments)."""
    pre = preprocess or Preprocess(size, resize, tuple(mean), tuple(std), channel_order.upper())
    return pre.load_folder(path, input_name=input_name, batch=batch, limit=limit)


def load_feeds(items: list[str], specs: list[InputSpec], *, meta: Mapping[str, str] | None = None,
               preprocess: str | None = None) -> list[Feed]:
    """The feeds of every ``--data`` item: ``.npz``/``.npy`` files, image folders (preprocessed as ``preprocess``
    or the model metadata ``meta`` says) or ``file.py:fn`` / ``pkg.mod:fn`` callables; see ``load_dataset``."""
    feeds: list[Feed] = []
    for item in items:
        feeds += load_dataset(item, specs, meta=meta, preprocess=preprocess, labelled=False).feeds
    return feeds


# ---- DATA arguments: one reader for every command -----------------------------------------------------------------

@dataclass
class Dataset:
    """Feeds and, where the data has them, one label per sample. ``classes``: an image folder's class folder ->
    label index, as matched; ``notes``: what the reader assumed, for the caller's warnings."""

    feeds: list[Feed]
    labels: np.ndarray | None  # one per sample, across all feeds in order
    source: str
    notes: list[str] = field(default_factory=list)
    classes: dict[str, int] | None = None

    @property
    def samples(self) -> int:
        """Samples along axis 0 of each feed's first input."""
        return sum(len(next(iter(f.values()))) if f else 0 for f in self.feeds)


DataArg = str | Path | list[Feed] | None


def load_dataset(data: DataArg, specs: list[InputSpec], *, meta: Mapping[str, str] | None = None,
                 labels: Any = None, class_names: Sequence[str] | None = None, num_classes: int | None = None,
                 labels_key: str = "labels", preprocess: str | None = None, what: str = "data",
                 labelled: bool = True) -> Dataset:
    """Load ``data`` — an ``.npz``/``.npy`` (arrays named after the inputs, labels under ``labels_key``), an image
    folder, a ``file.py:fn`` / ``pkg.mod:fn`` returning feeds (labels under ``labels_key`` in each), or feeds already
    in memory — as feeds conformed to ``specs``.

    ``meta``: the model's metadata (``preprocess`` and ``labels`` entries). ``labels``: one label per sample, which
    wins over labels found in the data. An image folder with class sub-folders is labelled by matching the folder
    names to the model's classes (``class_names``, else the ``labels`` metadata; see ``match_classes``);
    ``num_classes`` is the model's class count, when known. ``labelled=False`` (verification and calibration
    data): labels are not needed, so class folders are just images and nothing is matched.
    """
    if isinstance(data, (str, Path)):
        text = str(data)
        csv_path, split = split_csv_ref(text)
        if csv_path is not None:
            dataset = _labelled_csv(Path(csv_path), split, specs, meta or {}, preprocess, what,
                                    class_names if class_names is not None else labels_from_meta(meta or {}),
                                    num_classes)
        elif text.endswith((".npz", ".npy")):
            dataset = Dataset(load_npz(text, specs), _npz_labels(text, labels_key), text)
        elif Path(text).is_dir():
            dataset = _image_folder(Path(text), specs, meta or {}, preprocess, what,
                                    class_names if class_names is not None else labels_from_meta(meta or {}),
                                    num_classes, labelled and labels is None)
        elif ":" in text:
            dataset = _callable(text, specs, labels_key)
        else:
            raise BadInputError(f"The {what} '{text}' is not an .npz/.npy file, an image folder or a file.py:fn"
                                + ("" if Path(text).exists() else " (no such file or folder)") + ".",
                                hint="Give one of those: arrays named after the inputs, a folder of images "
                                     "(class sub-folders named by class), or a function returning feeds.")
    else:
        feeds = [conform(f, specs, where=f"The {what}") for f in data or []]
        dataset = Dataset(feeds, None, f"{len(feeds)} in-memory feeds")
    if not dataset.feeds:
        raise BadInputError(f"The {what} '{dataset.source}' holds no samples.", hint="Give at least one feed.")
    if labels is not None:
        dataset.labels = np.asarray(labels).reshape(-1)
    if dataset.labels is not None and len(dataset.labels) != dataset.samples:
        raise BadInputError(f"The {what} '{dataset.source}' has {dataset.samples} samples but "
                            f"{len(dataset.labels)} labels.", hint="Give exactly one label per sample.")
    return dataset


def labels_from_meta(meta: Mapping[str, str], *, model: str | Path = "the model") -> tuple[str, ...] | None:
    """The class labels ``onnxgate export --labels`` recorded (metadata ``labels``: a JSON list of strings), or
    None. A malformed entry is a BadInputError naming it."""
    from ..metadata import entry, malformed

    hint = "Give the class labels yourself with --labels FILE (UTF-8, one a line, in the model's class order)."
    text = entry(meta, "labels", model=model, hint=hint)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise malformed(model, "labels", "it is not a JSON list of strings", hint=hint)
    return tuple(value)


def _npz_labels(path: str, key: str) -> np.ndarray | None:
    if not path.endswith(".npz"):
        return None
    with np.load(path, allow_pickle=False) as data:
        return data[key].reshape(-1) if key in data.files else None


def _callable(ref: str, specs: list[InputSpec], labels_key: str) -> Dataset:
    feeds, labels = [], []
    for feed in load_callable(ref):
        if labels_key in feed:
            labels.append(np.asarray(feed.pop(labels_key)).reshape(-1))
        feeds.append(conform(feed, specs, where=f"Input function '{ref}'"))
    if labels and len(labels) != len(feeds):
        raise BadInputError(f"Input function '{ref}' gives '{labels_key}' in some feeds but not in others.",
                            hint=f"Put '{labels_key}' in every feed, or in none.")
    return Dataset(feeds, np.concatenate(labels) if labels else None, ref)


def _image_folder(root: Path, specs: list[InputSpec], meta: Mapping[str, str], preprocess: str | None, what: str,
                  class_names: Sequence[str] | None, num_classes: int | None, labelled: bool) -> Dataset:
    if len(specs) != 1:
        raise BadInputError(f"The {what} '{root}' is an image folder, but the model has {len(specs)} inputs.",
                            hint="Give an .npz with one array per input instead.")
    pre = Preprocess.parse(preprocess) if preprocess else Preprocess.from_meta(meta)
    if pre is None:
        raise BadInputError(f"The {what} '{root}' is an image folder, and neither --preprocess nor the model's "
                            "metadata says how to turn images into inputs.",
                            hint="Pass --preprocess resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225.")
    name = specs[0].name
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = [f for f in root.iterdir() if f.is_file() and not f.name.startswith(".")
             and f.suffix.lower() in IMAGE_SUFFIXES]
    if labelled and not folders and (root / LABELS_CSV).is_file():  # a flat folder labelled by its labels.csv
        return _labelled_csv(root / LABELS_CSV, None, specs, meta, preprocess, what, class_names, num_classes)
    if not labelled or not folders or loose:  # no class layout (or no labels wanted): unlabelled images
        return Dataset(pre.load_folder(root, input_name=name), None, str(root))
    wnids = _wnid_table(root)
    mapping, note = match_classes([f.name for f in folders], class_names, num_classes, root=root, what=what,
                                  wnids=wnids)
    feeds, labels = [], []
    for folder in folders:
        class_feeds = pre.load_folder(folder, input_name=name)
        feeds += class_feeds
        labels += [mapping[folder.name]] * sum(len(f[name]) for f in class_feeds)
    return Dataset(feeds, np.asarray(labels, dtype=np.int64), f"{root} ({len(folders)} classes)",
                   [note] if note else [], mapping)


# ---- labelled CSVs and their fixed split -------------------------------------------------------------------------

LABELS_CSV = "labels.csv"
#: ``FILE.csv:calib`` / ``FILE.csv:eval``: the fixed, disjoint halves of a labelled CSV (rows in file order, counted
#: from 0): calibration takes the even rows, evaluation the odd ones, so no image is ever in both.
SPLITS = {"calib": 0, "even": 0, "eval": 1, "odd": 1}
INDEX_COLUMNS = ("class_index", "index", "label")
NAME_COLUMNS = ("class_name", "name")
WNID_RE = re.compile(r"^n\d{8}$")


def split_csv_ref(text: str) -> tuple[str | None, str | None]:
    """(csv path, split) when ``text`` names a labelled CSV (``labels.csv``, ``labels.csv:eval``), else (None,
    None). A folder holding a ``labels.csv`` with a split (``FOLDER:calib``) names that CSV's half."""
    base, sep, split = text.rpartition(":")
    if not sep or split.lower() not in SPLITS:
        base, split = text, None
    if base.lower().endswith(".csv"):
        return base, split
    if split is not None and Path(base).is_dir() and (Path(base) / LABELS_CSV).is_file():
        return str(Path(base) / LABELS_CSV), split
    return None, None


def csv_files(path: Path, rows: list[dict[str, str]]) -> list[Path]:
    """The image files a labelled CSV's rows name, each inside the CSV's folder: a row naming an absolute path or one
    that leaves the folder (``../``, a symlink out) is refused, so a downloaded CSV cannot make onnxgate read files
    elsewhere."""
    root = path.parent.resolve()
    files, outside = [], []
    for row in rows:
        file = (path.parent / row["file"]).resolve()
        (files if file.is_relative_to(root) and not Path(row["file"]).is_absolute() else outside).append(file)
    if outside:
        raise BadInputError(f"The labelled CSV '{path}' names {len(outside)} file(s) outside its folder: "
                            f"{_listed([str(f) for f in outside])}.",
                            hint="List images by their path inside the CSV's folder.")
    return files


def read_labels_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a labelled CSV (header ``file`` plus ``class_index``/``index``/``label``, ``wnid`` and/or
    ``class_name``/``name``), as dicts with lower-cased keys."""
    import csv

    if not path.is_file():
        raise BadInputError(f"The labelled CSV '{path}' does not exist.",
                            hint="Give a CSV file: file,wnid,class_index,class_name (a header row, one image a row).")
    with open(path, newline="", encoding="utf-8") as f:
        rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(f)]
    if not rows or "file" not in rows[0]:
        raise BadInputError(f"The labelled CSV '{path}' has no 'file' column (or no rows).",
                            hint="Its header must name 'file' and one of class_index, wnid or class_name.")
    return rows


def _wnid_table(root: Path) -> dict[str, int] | None:
    """WordNet id -> class index from a ``labels.csv`` in ``root`` (or its parent), when one has both columns."""
    for folder in (root, root.parent):
        path = folder / LABELS_CSV
        if path.is_file():
            rows = read_labels_csv(path)
            column = next((c for c in INDEX_COLUMNS if c in rows[0]), None)
            if "wnid" in rows[0] and column:
                return {r["wnid"]: int(r[column]) for r in rows if r["wnid"] and r[column].isdigit()}
    return None


def _labelled_csv(path: Path, split: str | None, specs: list[InputSpec], meta: Mapping[str, str],
                  preprocess: str | None, what: str, class_names: Sequence[str] | None,
                  num_classes: int | None) -> Dataset:
    """Images listed in a labelled CSV (paths relative to the CSV's folder), labelled by the row's class index;
    without one, by its class name matched to the model's labels (``match_classes``; a name two classes share is
    refused). ``split``: one fixed half (``SPLITS``)."""
    if len(specs) != 1:
        raise BadInputError(f"The {what} '{path}' lists images, but the model has {len(specs)} inputs.",
                            hint="Give an .npz with one array per input instead.")
    pre = Preprocess.parse(preprocess) if preprocess else Preprocess.from_meta(meta)
    if pre is None:
        raise BadInputError(f"The {what} '{path}' lists images, and neither --preprocess nor the model's metadata "
                            "says how to turn images into inputs.",
                            hint="Pass --preprocess resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225.")
    rows = read_labels_csv(path)
    if split is not None:
        rows = rows[SPLITS[split.lower()]::2]
    index_col = next((c for c in INDEX_COLUMNS if c in rows[0]), None)
    name_col = next((c for c in NAME_COLUMNS if c in rows[0]), None)
    count = len(class_names) if class_names is not None else num_classes
    if index_col is not None:
        bad = [r["file"] for r in rows if not r[index_col].isdigit() or (count and int(r[index_col]) >= count)]
        if bad:
            raise BadInputError(f"The {what} '{path}': {len(bad)} row(s) have no class index in 0..{(count or 1) - 1}"
                                f" in '{index_col}': {_listed(bad)}.", hint="Give each row its class index.")
        labels = [int(r[index_col]) for r in rows]
        mapping = None
    elif name_col is not None:
        mapping, _ = match_classes(sorted({r[name_col] for r in rows}), class_names, num_classes, root=path,
                                   what=what, wnids=_wnid_table(path.parent))
        labels = [mapping[r[name_col]] for r in rows]
    else:
        raise BadInputError(f"The {what} '{path}' has no label column.",
                            hint=f"Add one of {', '.join(INDEX_COLUMNS + NAME_COLUMNS)}.")
    feeds = _load_files(pre, csv_files(path, rows), specs[0].name)
    half = f", {split} half: rows {SPLITS[split.lower()]}, {SPLITS[split.lower()] + 2}, ..." if split else ""
    return Dataset(feeds, np.asarray(labels, dtype=np.int64), f"{path} ({len(rows)} images{half})", [], mapping)


def _load_files(pre: Preprocess, files: Sequence[Path], input_name: str, batch: int = 4) -> list[Feed]:
    from PIL import Image

    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                images.append(pre.array(im, 3))
        except OSError as exc:
            raise BadInputError(f"Image '{f}' cannot be read: {exc}.", hint="Remove or replace it.") from None
    return [{input_name: np.ascontiguousarray(np.stack(images[i:i + batch]), dtype=np.float32)}
            for i in range(0, len(images), batch)]


def _norm(name: str) -> str:
    """A class name as people write it in folder names: case, '_', '-' and repeated spaces do not matter."""
    return re.sub(r"[\s_\-]+", " ", name).strip().casefold()


def match_classes(folders: Sequence[str], class_names: Sequence[str] | None, num_classes: int | None, *,
                  root: Path | str = "the folder", what: str = "data",
                  wnids: Mapping[str, int] | None = None) -> tuple[dict[str, int], str | None]:
    """Each class folder's label index, and a note on what was assumed (or None).

    With the model's class names (``--labels`` or its metadata): each folder must name one class — exactly, or
    ignoring case, ``_``, ``-`` and spaces ("egyptian_cat" is "Egyptian cat"); a name two classes share is
    ambiguous. Folders named by index ("281") are the index. Without class names, only index-named folders, or
    exactly ``num_classes`` folders taken in sorted order (torchvision's ImageFolder convention, which is how a model
    trained on such a folder numbers its classes) are accepted. Anything else is a BadInputError naming the folders
    that match nothing: numbering them 0..N-1 would grade the model against classes it never learned.
    """
    count = len(class_names) if class_names is not None else num_classes
    hint = ("Name each class folder after one of the model's labels (or its index), or give the labels with "
            "--labels FILE (UTF-8, one a line, in the model's class order).")

    def as_index(name: str) -> int | None:
        """"281", "281_tabby", "n02123045" or "n02123045_tabby" (a WordNet id, given ``wnids``)."""
        head = re.split(r"[_\- ]", name, maxsplit=1)[0]
        if head.isdigit() and (count is None or int(head) < count) and (head == name or class_names is None
                                                                         or _names_one(name[len(head) + 1:], head)):
            return int(head)
        if wnids and WNID_RE.match(head) and head in wnids:
            return wnids[head]
        return None

    def _names_one(rest: str, head: str) -> bool:  # "134_crane": the name after the index agrees with it
        return _norm(rest) == _norm(class_names[int(head)]) if class_names is not None else True

    if class_names is not None:
        exact = {n: i for i, n in reversed(list(enumerate(class_names)))}
        loose: dict[str, list[int]] = {}
        for i, n in enumerate(class_names):
            loose.setdefault(_norm(n), []).append(i)
        mapping, unmatched, ambiguous = {}, [], []
        for folder in folders:
            if as_index(folder) is not None and not (folder in exact or len(loose.get(_norm(folder), [])) == 1):
                mapping[folder] = as_index(folder)  # type: ignore[assignment]  # "134_crane", "n02012849"
            elif folder in exact and len(loose.get(_norm(folder), [])) <= 1:
                mapping[folder] = exact[folder]
            elif len(loose.get(_norm(folder), [])) == 1:
                mapping[folder] = loose[_norm(folder)][0]
            elif loose.get(_norm(folder)):
                ambiguous.append(f"'{folder}' ({', '.join(str(i) for i in loose[_norm(folder)])})")
            elif as_index(folder) is not None:
                mapping[folder] = as_index(folder)  # type: ignore[assignment]
            else:
                unmatched.append(folder)
        if ambiguous:
            first = next((f, loose[_norm(f)][0]) for f in folders if len(loose.get(_norm(f), [])) > 1)
            raise BadInputError(f"The {what} '{root}': the class folder(s) {', '.join(ambiguous)} name more than one "
                                "of the model's labels.",
                                hint=f"Name those folders by class index (e.g. '{first[1]}' or "
                                     f"'{first[1]}_{first[0]}') or WordNet id (with a labels.csv of file,wnid,"
                                     "class_index,class_name beside them), or give a labelled CSV with a "
                                     "class_index column as the data (FILE.csv, FILE.csv:calib, FILE.csv:eval).")
        if unmatched:
            raise BadInputError(f"The {what} '{root}': {len(unmatched)} of {len(folders)} class folder(s) match none "
                                f"of the model's {len(class_names)} labels: {_listed(unmatched)}.", hint=hint)
        return mapping, None
    indices = {f: as_index(f) for f in folders}
    if all(i is not None for i in indices.values()):
        return indices, None  # type: ignore[return-value]
    if num_classes is not None and len(folders) == num_classes:
        return ({f: i for i, f in enumerate(folders)},
                f"The model records no class labels; the {len(folders)} class folders of '{root}' were taken as its "
                "classes in sorted order (torchvision's ImageFolder convention). Give --labels FILE if the model "
                "numbers its classes otherwise.")
    unnamed = [f for f, i in indices.items() if i is None]
    raise BadInputError(f"The {what} '{root}' has class folders named {_listed(unnamed)}, and the model records no "
                        "class labels to match them to"
                        + (f" (it has {num_classes} classes, the folder {len(folders)})" if num_classes else "")
                        + ".", hint=hint)


def _listed(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


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
