"""Calibration, evaluation and verification data for transforms: the same sources verification reads.

A DATA argument is an ``.npz``/``.npy`` file (arrays named after the inputs, labels under ``labels_key``), an image
folder (class sub-folders give labels, in sorted order, as in torchvision's ImageFolder), a ``file.py:fn`` /
``pkg.mod:fn`` function returning feeds (labels under ``labels_key`` in each feed), or feeds already in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import BadInputError
from ..spec import Dim, ExportConfig, InputSpec
from ..verify.inputs import Feed, Preprocess, conform, load_callable, load_npz

DataArg = str | Path | list[Feed] | None


@dataclass
class Dataset:
    feeds: list[Feed]
    labels: np.ndarray | None  # one per sample, across all feeds in order
    source: str

    @property
    def samples(self) -> int:
        """Samples along axis 0 of each feed's first input."""
        return sum(len(next(iter(f.values()))) if f else 0 for f in self.feeds)


def model_specs(path: str | Path) -> tuple[list[InputSpec], dict[str, Dim]]:
    """Input specs and dynamic dims of an ONNX file: from onnxgate's metadata, else from the graph inputs."""
    from ..verify.api import specs_from_model
    from ..verify.structure import check_structure

    return specs_from_model(check_structure(path, try_ort=False), ExportConfig())


def load_data(data: DataArg, specs: list[InputSpec], *, model: onnx.ModelProto, labels: Any = None,
              labels_key: str = "labels", preprocess: str | None = None, what: str = "data") -> Dataset:
    """Load ``data`` (see the module docstring) as feeds conformed to ``specs``. ``labels`` given explicitly win
    over labels found in the data."""
    if isinstance(data, (str, Path)):
        text = str(data)
        if text.endswith((".npz", ".npy")):
            dataset = Dataset(load_npz(text, specs), _npz_labels(text, labels_key), text)
        elif Path(text).is_dir():
            dataset = _image_folder(Path(text), specs, model, preprocess, what)
        elif ":" in text:
            dataset = _callable(text, specs, labels_key)
        else:
            raise BadInputError(f"The {what} '{text}' is not an .npz/.npy file, an image folder or a file.py:fn.",
                                hint="Give one of those; see `onnxgate quantize --help`.")
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


def _image_folder(root: Path, specs: list[InputSpec], model: onnx.ModelProto, preprocess: str | None,
                  what: str) -> Dataset:
    if len(specs) != 1:
        raise BadInputError(f"The {what} '{root}' is an image folder, but the model has {len(specs)} inputs.",
                            hint="Give an .npz with one array per input instead.")
    meta = {p.key: p.value for p in model.metadata_props}
    pre = Preprocess.parse(preprocess) if preprocess else Preprocess.from_meta(meta)
    if pre is None:
        raise BadInputError(f"The {what} '{root}' is an image folder, and neither --preprocess nor the model's "
                            "metadata says how to turn images into inputs.",
                            hint="Pass --preprocess resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225.")
    classes = sorted(d for d in root.iterdir() if d.is_dir())
    loose = [f for f in root.iterdir() if f.is_file() and not f.name.startswith(".")]
    if not classes or loose:  # no class layout: unlabelled images
        return Dataset(pre.load_folder(root, input_name=specs[0].name), None, str(root))
    feeds, labels = [], []
    for index, folder in enumerate(classes):
        class_feeds = pre.load_folder(folder, input_name=specs[0].name)
        feeds += class_feeds
        labels += [index] * sum(len(f[specs[0].name]) for f in class_feeds)
    return Dataset(feeds, np.asarray(labels, dtype=np.int64), f"{root} ({len(classes)} classes)")


def random_dataset(specs: list[InputSpec], dims: dict[str, Dim], *, count: int = 8) -> Dataset:
    """Seeded random feeds at the traced sizes: only for when no data is given; results on them say little."""
    from ..verify.inputs import random_inputs

    traced = {n: d.example or 2 for n, d in dims.items()}
    return Dataset([random_inputs(specs, traced, seed=s) for s in range(count)], None, f"random ({count} feeds)")
