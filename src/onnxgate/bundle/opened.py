"""``bundle.open(path) -> VerifiedBundle``: a bundle folder read once, its files checked, its claim decoded.

Every reader of a bundle that acts on it (serve, ``deploy_bundle``) opens it here: the manifest is read with the
checks ``manifest.read_manifest`` makes (types, ranges, sizes; exit 2), the folder is scanned without following
links (exit 7), each file's size and then its sha256 is compared with the manifest and the model's external-data
references with the files the manifest vouches for (exit 9 naming what changed), and the claim is decoded once
through ``claim.from_manifest``. What comes back is the folder, the checked manifest and the ``Claim``: nobody
after this reads the manifest's domain or tolerances again.

``check_external_data`` is the one check of what the model makes a runtime open (every runtime, old onnxruntime
releases included, is handed only a bundle it passed). ``opened(path)`` does the same for a ``.tar.gz`` too
(unpacked into owner-tagged staging by ``bundle.unpack.opened_bundle``, removed when the block ends). Torch-free,
onnx-free.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import claim as cl
from ..errors import BadInputError, IntegrityError, UnsafeInputError
from ..npz import load_npz
from . import manifest as mf
from ._onnx_refs import ProtoError, external_data_refs
from .unpack import opened_bundle

_ORT_MEMORY_TAG = "_ORT_MEM_ADDR_"  # onnxruntime reads "*/_ORT_MEM_ADDR_/*" locations from a memory address


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose files match their checksums: ``folder``, its checked ``manifest`` and its ``claim``."""

    folder: Path
    manifest: dict[str, Any]
    claim: cl.Claim

    @property
    def model(self) -> Path:
        return self.folder / mf.MODEL

    @property
    def source_ref(self) -> str | None:
        ref = self.manifest.get("source_ref")
        return ref if isinstance(ref, str) else None

    def golden(self) -> tuple[dict, dict]:
        """The golden inputs and the reference outputs (bounded reads, no pickle)."""
        return (load_npz(self.folder / mf.GOLDEN_INPUTS, bundle=True),
                load_npz(self.folder / mf.REFERENCE_OUTPUTS, bundle=True))


@dataclass(frozen=True)
class FileCheck:
    """The manifest (checked) and what proves the files changed since it was written (empty when intact): ``what``
    says which check found it ("the bundle changed since it was written", or the external data's)."""

    manifest: dict[str, Any]
    problems: list[str]
    what: str = ""


def check(folder: Path) -> FileCheck:
    """The bundle's manifest and its files' problems, without raising for them (``verify BUNDLE`` reports a
    tampered bundle per runtime; ``open`` refuses it): links and special files (exit 7) and a malformed manifest
    (exit 2) still raise."""
    manifest = mf.read_manifest(folder)
    problems = mf.check_files(folder, manifest, mf.scan_bundle(folder))
    if problems:
        return FileCheck(manifest, problems, "the bundle changed since it was written")
    problems = check_external_data(folder, manifest)
    return FileCheck(manifest, problems, "the model's external data does not match the bundle" if problems else "")


def open(path: str | Path, *, purpose: str = "uses") -> VerifiedBundle:  # noqa: A001  bundle.open, as the issue names it
    """The bundle folder at ``path``, checked (see the module docstring); IntegrityError (exit 9) when a file
    changed, saying that onnxgate ``purpose`` (e.g. "serves") only a bundle whose files match their checksums."""
    folder = Path(path)
    checked = check(folder)
    if checked.problems:
        raise IntegrityError(f"The bundle '{folder}' changed since it was written: {'; '.join(checked.problems[:5])}. "
                             f"onnxgate {purpose} only a bundle whose files match their checksums.",
                             hint="Do not use this bundle: re-create it, or fetch it again from its source.")
    return VerifiedBundle(folder, checked.manifest,
                          cl.from_manifest(checked.manifest, where=f"The manifest '{folder / mf.MANIFEST}'"))


def check_external_data(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """The external-data files ``model.onnx`` makes a runtime open, checked by onnxgate for every runtime.

    Raises UnsafeInputError when a location leaves the bundle (absolute, '..', a drive, a backslash path,
    onnxruntime's in-memory address tag) and BadInputError when the model cannot be parsed; returns problems
    (reported as a changed bundle, exit 9) when a location names a file the manifest does not list with a
    checksum, or an offset/length beyond that file. Links were refused by the scan before this runs, so a
    listed path is a regular file inside the bundle. Reads the protobuf without the onnx package.
    """
    model = folder / mf.MODEL
    where = f"The model '{model}'"
    try:
        with model.open("rb") as fh:
            # Mapped, not read: a 2 GB model costs no extra memory. Closed by the garbage collector, since a
            # ProtoError's traceback may still hold a view of it.
            size = os.fstat(fh.fileno()).st_size
            data = b"" if size == 0 else mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        refs = external_data_refs(data)
    except ProtoError as exc:
        raise BadInputError(f"{where} is not a readable ONNX model ({exc}), so onnxgate cannot tell which files it "
                            "would make the runtime open.", hint="Re-create the bundle from a valid model.") from None
    problems = []
    for ref in refs:
        tensor = ref.tensor.decode("utf-8", "replace")[:200]
        locations = ref.values(b"location")
        if ref.external and not locations:
            problems.append(f"{mf.MODEL}: tensor '{tensor}' keeps its data externally but names no location")
        for raw in locations:
            rel = _checked_location(raw, f"{where} (the external-data location of tensor '{tensor}')")
            entry = manifest["files"].get(rel)
            if entry is None:
                problems.append(f"{mf.MODEL}: tensor '{tensor}' reads external data from '{rel}', which the "
                                "manifest does not list with a checksum")
                continue
            problem = _range_problem(ref, entry["bytes"])
            if problem:
                problems.append(f"{mf.MODEL}: tensor '{tensor}' {problem} of '{rel}' ({entry['bytes']:,} bytes)")
    return problems


def _checked_location(raw: bytes, where: str) -> str:
    """An external-data location as the bundle-relative path it names; UnsafeInputError if it leaves the bundle."""
    hint = ("A bundle's model may only name external-data files inside the bundle, by plain relative paths; "
            "re-create the bundle with `onnxgate bundle`.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeInputError(f"{where} names an external-data location that is not UTF-8 text ({raw[:80]!r}).",
                               hint=hint) from None
    if _ORT_MEMORY_TAG in text or "\\" in text:
        raise UnsafeInputError(f"{where} names the external-data location {text[:200]!r}, which onnxruntime would "
                               "not read as a file in the bundle (a memory address, or a Windows path).", hint=hint)
    rel = mf.safe_relative(text, where=where).as_posix()
    if len(rel) > mf.MAX_PATH_CHARS or rel in ("", "."):
        raise UnsafeInputError(f"{where} names the external-data location {text[:200]!r}, which is no file name.",
                               hint=hint)
    return rel


def _range_problem(ref, size: int) -> str | None:
    """Why the tensor's offset/length cannot lie within a file of ``size`` bytes (None when they do)."""
    numbers = {}
    for key in (b"offset", b"length"):
        for raw in ref.values(key):
            text = raw.decode("ascii", "replace")
            if not text.isdigit() or len(text) > 20:
                return f"gives the external-data {key.decode()} {text[:40]!r}, not a whole number,"
            numbers[key] = int(text)
    offset, length = numbers.get(b"offset", 0), numbers.get(b"length", 0)
    if offset + length > size:
        return f"reads bytes {offset:,}..{offset + length:,}, beyond the end"
    return None


@contextmanager
def opened(path: str | Path, *, purpose: str = "uses") -> Iterator[VerifiedBundle]:
    """``open`` for a bundle folder or a tar archive (unpacked for the block's duration)."""
    with opened_bundle(Path(path)) as folder:
        yield open(folder, purpose=purpose)


__all__ = ["VerifiedBundle", "FileCheck", "check", "check_external_data", "open", "opened"]
