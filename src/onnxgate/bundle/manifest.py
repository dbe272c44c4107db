"""The bundle's manifest.json: what is in a bundle, and the checksums that make tampering evident.

Layout of a bundle folder (format version 1)::

    model.onnx                  the model (+ its external-data files, at the paths the model names)
    golden_inputs.npz           inputs, one array per model input
    reference_outputs.npz       what PyTorch computed on them, one array per model output
    requirements.txt            the export environment, exact versions
    requirements-runtime.txt    what a target machine needs to re-verify (no torch), exact versions
    environment.yml             the same runtime environment for conda
    manifest.json               everything below, and the sha256 of every other file

Reading a manifest needs only the standard library: it runs on production machines without torch or onnx.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import BadInputError, IntegrityError, UnsafeInputError

FORMAT = "onnxgate-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL = "model.onnx"
GOLDEN_INPUTS = "golden_inputs.npz"
REFERENCE_OUTPUTS = "reference_outputs.npz"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entries(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under ``folder`` except the manifest, keyed by POSIX relative path."""
    return {rel: {"sha256": sha256_file(folder / rel), "bytes": (folder / rel).stat().st_size}
            for rel in list_files(folder)}


def list_files(folder: Path) -> list[str]:
    """Every file under ``folder`` (POSIX relative paths, sorted), the manifest excluded."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if (p.is_file() or p.is_symlink()) and p.relative_to(folder).as_posix() != MANIFEST)


def safe_relative(rel: str, *, where: str) -> PurePosixPath:
    """``rel`` as a path that stays inside its folder; UnsafeInputError for absolute paths or ``..``."""
    path = PurePosixPath(rel.replace("\\", "/"))
    if not rel or path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise UnsafeInputError(
            f"{where} names the path '{rel}', which leaves its folder (absolute, a drive, or '..').",
            hint="Only paths relative to the bundle/model folder, without '..', are accepted; re-create the "
                 "file with onnxgate instead of editing it.",
        )
    return path


def read_manifest(folder: Path) -> dict[str, Any]:
    """Load and sanity-check ``folder/manifest.json``."""
    path = folder / MANIFEST
    if not path.is_file():
        raise BadInputError(
            f"'{folder}' is not an onnxgate bundle: it has no {MANIFEST}.",
            hint="Point at a folder (or .tar.gz) written by `onnxgate bundle`.",
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(
            f"The manifest '{path}' is not valid JSON ({exc}); the bundle is damaged or was edited.",
            hint="Re-create or re-download the bundle.",
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadInputError(f"'{path}' is not an onnxgate bundle manifest (no \"format\": \"{FORMAT}\").",
                            hint="Point at a folder written by `onnxgate bundle`.")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BadInputError(
            f"The bundle '{folder}' has format version {version!r}; this onnxgate reads up to {FORMAT_VERSION}.",
            hint="Upgrade onnxgate on this machine (pip install -U onnxgate).",
        )
    for key in ("files", "inputs", "outputs", "tolerances"):
        if not isinstance(manifest.get(key), (dict, list)):
            raise IntegrityError(f"The manifest '{path}' lacks its '{key}' section; the bundle is damaged or "
                                 "was edited.", hint="Re-create or re-download the bundle.")
    for rel in manifest["files"]:
        safe_relative(rel, where=f"The manifest '{path}'")
    return manifest


def check_files(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """Problems that prove the bundle changed since it was written: one line per file, empty when intact.

    Every recorded file must exist with its recorded sha256, and no unrecorded file may be present: a file
    slipped in beside the model (an external-data file, say) could change what the model loads.
    """
    problems = []
    recorded = manifest["files"]
    for rel, entry in sorted(recorded.items()):
        path = folder / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(path) != entry.get("sha256"):
            problems.append(f"{rel}: content changed (sha256 differs from the manifest)")
    problems += [f"{rel}: not listed in the manifest" for rel in list_files(folder) if rel not in recorded]
    return problems
