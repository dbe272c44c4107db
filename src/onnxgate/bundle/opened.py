"""``bundle.open(path) -> VerifiedBundle``: a bundle folder read once, its files checked, its claim decoded.

Every reader of a bundle that acts on it (serve, ``deploy_bundle``) opens it here: the manifest is read with the
checks ``manifest.read_manifest`` makes (types, ranges, sizes; exit 2), the folder is scanned without following
links (exit 7), each file's size and then its sha256 is compared with the manifest and the model's external-data
references with the files the manifest vouches for (exit 9 naming what changed), and the claim is decoded once
through ``claim.from_manifest``. What comes back is the folder, the checked manifest and the ``Claim``: nobody
after this reads the manifest's domain or tolerances again.

``opened(path)`` does the same for a ``.tar.gz`` too (unpacked into owner-tagged staging by
``bundle.verify.opened_bundle``, removed when the block ends). Torch-free, onnx-free.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import claim as cl
from ..errors import IntegrityError
from ..npz import load_npz
from . import manifest as mf
from .verify import check_external_data, opened_bundle


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


@contextmanager
def opened(path: str | Path, *, purpose: str = "uses") -> Iterator[VerifiedBundle]:
    """``open`` for a bundle folder or a tar archive (unpacked for the block's duration)."""
    with opened_bundle(Path(path)) as folder:
        yield open(folder, purpose=purpose)


__all__ = ["VerifiedBundle", "FileCheck", "check", "open", "opened"]
