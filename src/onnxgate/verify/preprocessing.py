"""Image bytes to label, proven on the user's photos: the one place ``verify --data PHOTOS`` and ``run`` (its image
DATA: ``--data``, ``--eval``, the quantize stage's ``--calib``/``--eval``) prove the preprocessing (issue 27).

The preprocessing the server will run is the one the model records (``preprocess=`` in its metadata), or, when it
records none, the one the user gave (``run --preprocess``). Photos are taken from every image folder and labelled
CSV (``labels.csv``, ``labels.csv:eval``) among the sources, each once, at most ``limit`` spread evenly over them,
and go through both implementations of the spec (``preprocess.prove``): the server's (numpy/Pillow + onnxruntime)
and torchvision's transforms + PyTorch eager. A given spec that differs from the recorded one is what torchvision's
side runs, so the proof shows whether serving the recorded spec gives the model's answer.

The proof needs one NCHW image input taking the crop size and batches of 1.. within its proven batch dim, and a
``[batch, classes]`` first output; otherwise it is skipped, and the caller says so (never a silent pass).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import claim as cl
from ..preprocess import Preprocess, image_files, prove
from .inputs import SPLITS, csv_files, read_labels_csv, split_csv_ref

SERVER = "numpy/Pillow (onnxgate.preprocess.Preprocess.array) + onnxruntime"
REFERENCE = "torchvision transforms + PyTorch eager"
VERIFY_IMAGES = 500  # ``verify --data PHOTOS``: every photo of a sample this size
RUN_IMAGES = 100  # ``run``: a sample, so that a run on a large evaluation set stays a run


@dataclass
class PreprocessingProof:
    """The proof's entry for the report (``entry``: ``preprocess.PreprocessProof.to_dict`` plus where the photos came
    from and who implements each side), or why it was ``skipped``; ``claim``: the claim with its ``preprocess``
    stating the figures (unchanged when skipped)."""

    entry: dict | None
    skipped: str | None
    claim: cl.Claim | None


def prove_on_photos(model_path: str | Path, module, metadata: dict, claim: cl.Claim | None, output_shapes,
                    sources: Sequence[str], *, given: str | None = None, limit: int = VERIFY_IMAGES,
                    note: Callable[[str], None] | None = None) -> PreprocessingProof | None:
    """Prove the served preprocessing on the photos behind ``sources`` (None: no photos or no preprocessing to
    prove). ``output_shapes``: the model's output shapes (the first must be ``[batch, classes]``)."""
    import time

    recorded = Preprocess.from_meta(metadata, model=str(model_path))
    server = recorded or (Preprocess.parse(given) if given else None)
    files, total, used = photos(sources, limit)
    if server is None or not files:
        return None
    expected = Preprocess.parse(given) if given else server
    skipped = unprovable(claim, output_shapes, server)
    if skipped:
        return PreprocessingProof({"spec": str(server), "skipped": skipped}, skipped, claim)
    if note is not None:
        note(f"proving the preprocessing on {len(files)} photo(s) (server's implementation vs torchvision)")
    start = time.perf_counter()
    channels = int(claim.inputs[0].shape[1])
    proof = prove(server, model_path, module, [(str(f), f.read_bytes()) for f in files], channels=channels,
                  batch=proof_batch(claim), reference=expected if expected != server else None)
    entry = {**proof.to_dict(), "sources": list(used), "sampled": f"{len(files)} of {total} photos",
             "server": SERVER, "reference": REFERENCE, "seconds": round(time.perf_counter() - start, 2)}
    stated = {"spec": str(server), "implementation": SERVER, "proven_against": REFERENCE,
              "reference_spec": str(expected), "images": proof.images, "max_pixel_error": proof.max_pixel_error,
              "pixel_bound": proof.pixel_bound, "top1_agree": proof.top1_agree, "top5_agree": proof.top5_agree,
              "passed": proof.passed}
    return PreprocessingProof(entry, None, replace(claim, preprocess=stated))


def photos(sources: Sequence[str], limit: int) -> tuple[list[Path], int, tuple[str, ...]]:
    """The photos behind ``sources`` (image folders and labelled CSVs; other DATA is skipped), each once: at most
    ``limit`` spread evenly over them, their total, and the sources they came from."""
    files: dict[Path, None] = {}
    used = []
    for item in dict.fromkeys(str(s) for s in sources):
        csv_path, split = split_csv_ref(item)
        if csv_path is not None:
            rows = read_labels_csv(Path(csv_path))
            rows = rows[SPLITS[split.lower()]::2] if split else rows
            found = csv_files(Path(csv_path), rows)
        elif Path(item).is_dir():
            found = image_files(item)
        else:
            continue
        used.append(item)
        files.update(dict.fromkeys(found))
    every = list(files)
    if len(every) > limit:
        every = [every[int(i)] for i in np.linspace(0, len(every) - 1, limit).round()]
    return every, len(files), tuple(used)


def unprovable(claim: cl.Claim | None, output_shapes, pre: Preprocess) -> str | None:
    """Why the proof cannot run on this model (None: it can): one NCHW image input with 1 or 3 channels taking the
    crop size, batches of 1.. within its proven batch dim, a ``[batch, classes]`` first output."""
    specs = list(claim.inputs) if claim is not None else []
    if len(specs) != 1 or len(specs[0].shape) != 4 or specs[0].shape[1] not in (1, 3):
        return "the model does not take one NCHW image input with 1 or 3 channels"
    for side in specs[0].shape[2:]:
        dim = claim.dim(side) if isinstance(side, str) else None
        if (isinstance(side, int) and side != pre.crop) or (dim is not None and not dim.allows(pre.crop)):
            return f"the model's input {specs[0].name} does not take the crop size {pre.crop}"
    if not output_shapes or len(output_shapes[0]) != 2:
        return "the model's first output is not [batch, classes] logits"
    if proof_batch(claim) is None:
        return f"it runs batches of 1 to 8 images, outside the model's batch dim {specs[0].shape[0]}"
    return None


def proof_batch(claim: cl.Claim) -> int | None:
    """The largest of 8, 4, 2, 1 whose every smaller batch the model's proven batch dim takes (the proof's last
    batch may be smaller)."""
    first = claim.inputs[0].shape[0]
    dim = claim.dim(first) if isinstance(first, str) else None
    return next((b for b in (8, 4, 2, 1) if (first == 1 if dim is None else
                                             all(dim.allows(n) for n in range(1, b + 1)))), None)
