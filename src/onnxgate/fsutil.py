"""Atomic writes: an output either appears whole or not at all.

A bundle or lock file that is half written (disk full, Ctrl-C, a crash in the middle) would later fail its
checksum or, worse, pass a sloppy check. So every output is built under a hidden temporary name in the
same folder (same filesystem, so the final rename is atomic) and renamed into place only once complete.
Existing outputs are never replaced without ``force``; temporary files are removed on any failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import BadInputError, OutputExistsError


def atomic_write_bytes(path: str | Path, data: bytes, *, force: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; refuse to replace an existing file unless ``force``."""
    with atomic_file(path, force=force) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | Path, text: str, *, force: bool = False, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode(encoding), force=force)


@contextmanager
def atomic_file(path: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; whatever the body writes there is renamed onto ``path``.

    For outputs written by another library (a tarball, an npz) that cannot hand over bytes in memory.
    """
    path = Path(path)
    check_target(path, force=force, kind="file")
    tmp = _temp_sibling(path)
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # 0o666 & umask, unlike mkstemp's 0o600
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; on success it is renamed to ``path``.

    With ``force`` an existing ``path`` is first moved aside and deleted only after the new folder is in
    place, so at no moment does ``path`` hold a mix of old and new files. If the body raises, the temporary
    folder is deleted and ``path`` is left exactly as it was.
    """
    path = Path(path)
    check_target(path, force=force, kind="folder")
    tmp = _temp_sibling(path)
    os.mkdir(tmp, 0o777)
    try:
        yield tmp
        _move_into_place(tmp, path, force=force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, path: Path, *, force: bool) -> None:
    if not (force and (path.exists() or path.is_symlink())):
        try:
            os.rename(tmp, path)
        except OSError as exc:  # someone created `path` after our check
            raise _exists_error(path, "folder") from exc
        return
    old = _temp_sibling(path, tag="old")
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except OSError:
        os.rename(old, path)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def check_target(path: Path, *, force: bool, kind: str = "file") -> None:
    """Raise unless ``path`` may be written: its parent exists, and it is absent or ``force`` is given.

    Callers writing several outputs check them all first, so a refusal leaves nothing half written.
    """
    parent = path.parent
    if not parent.is_dir():
        raise BadInputError(
            f"Cannot write the output {kind} '{path}': its parent folder '{parent}' does not exist.",
            hint=f"Create it first (mkdir -p '{parent}') or choose an output path inside an existing folder.",
        )
    if path.exists() or path.is_symlink():
        if not force:
            raise _exists_error(path, kind)
        if kind == "file" and path.is_dir():
            raise BadInputError(
                f"Cannot write the output file '{path}': a folder of that name exists, and --force replaces "
                "files only, never folders.",
                hint="Remove the folder yourself or choose another output path.",
            )


def _exists_error(path: Path, kind: str) -> OutputExistsError:
    return OutputExistsError(
        f"The output {kind} '{path}' already exists; onnxgate does not overwrite outputs by default.",
        hint="Pass --force (force=True) to replace it, or choose another output path.",
    )


def _temp_sibling(path: Path, *, tag: str = "tmp") -> Path:
    """A hidden, unique name in the same folder (same filesystem, so renames are atomic)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.{tag}")
