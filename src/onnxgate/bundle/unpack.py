"""Bundle archives: a ``.tar`` / ``.tar.gz`` / ``.tar.bz2`` / ``.tar.xz`` unpacked by onnxgate itself, never by
``extractall``.

Every header is read and checked before anything is written (regular files and folders only; no absolute paths,
'..' or duplicates; one top-level folder; caps on members, member size, total size and header size; enough free
space), then the members are written one by one into owner-tagged staging (``fsutil.staging_dir``), removed when
the block ends. ``opened_bundle`` is the one door: ``bundle.open``/``bundle.opened``, ``verify BUNDLE``, serve and
the Triton/KServe export pass through it. Standard library only (plus onnxgate's errors, staging and the
manifest's path rules); torch-free, onnx-free.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import shutil
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInputError, IntegrityError, UnsafeInputError
from ..fsutil import staging_dir
from . import manifest as mf


@dataclass(frozen=True)
class TarLimits:
    """What a bundle archive may unpack to, checked from its headers before anything is written."""

    max_members: int = 10_000
    max_member_bytes: int = 32 << 30
    max_total_bytes: int = 64 << 30
    max_header_bytes: int = 1 << 20  # one PAX or GNU long-name header; tarfile reads it whole into memory


class _HeaderTooLarge(Exception):
    pass


class _BoundedReads(io.RawIOBase):
    """A decompressed archive stream whose single reads are bounded.

    tarfile reads a PAX or GNU long-name header's whole content with one ``read(size)`` while listing members,
    before onnxgate sees the member: a gzip of zeros could declare a multi-gigabyte header. Refusing any read
    larger than the largest block onnxgate itself asks for turns that into a clean refusal.
    """

    def __init__(self, raw, limit: int):
        self._raw, self._limit = raw, limit

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self._limit:
            raise _HeaderTooLarge(size)
        return self._raw.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


_COPY_BLOCK = 1 << 20


@contextmanager
def opened_bundle(path: Path, *, limits: TarLimits | None = None) -> Iterator[Path]:
    """The bundle folder at ``path``; a tar archive (.tar, .tar.gz, .tar.bz2, .tar.xz) is unpacked first.

    Unpacking is onnxgate's own, never ``extractall``: every header is read and checked first (regular files
    and folders only — no links, devices or FIFOs; no absolute paths or '..'; one top-level folder; caps on
    member count, member size and total size; enough free space), then the members are written one by one
    into an owner-tagged staging folder in ``$TMPDIR`` (see ``fsutil.staging_dir``), which is removed when
    verification ends, or by the next run if this one is killed.
    """
    if path.is_dir():
        yield path
        return
    if not path.exists():
        raise BadInputError(f"The bundle '{path}' does not exist.",
                            hint="Pass a bundle folder or .tar.gz written by `onnxgate bundle`.")
    if not path.is_file():
        raise BadInputError(f"'{path}' is neither a bundle folder nor a tar archive (it is not a regular file).",
                            hint="Pass a bundle folder or .tar.gz written by `onnxgate bundle`.")
    limits = limits or TarLimits()
    with staging_dir("bundle") as staging:
        yield _unpack(path, staging, limits)


def _unpack(path: Path, staging: Path, limits: TarLimits) -> Path:
    hint = "Only unpack bundles written by `onnxgate bundle --tar`; re-create or re-download this one."
    with open(path, "rb") as raw, _decompressed(raw) as stream:
        bounded = _BoundedReads(stream, max(limits.max_header_bytes + tarfile.BLOCKSIZE, _COPY_BLOCK))
        try:
            tar = tarfile.open(fileobj=bounded, mode="r:")
            members = _checked_members(tar, path, limits, hint)
        except _HeaderTooLarge:
            raise UnsafeInputError(f"The archive '{path}' holds a member header larger than "
                                   f"{limits.max_header_bytes:,} bytes; onnxgate does not read it.",
                                   hint=hint) from None
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
            raise BadInputError(f"'{path}' is neither a bundle folder nor a readable tar archive "
                                f"({str(exc)[:200] or type(exc).__name__}).",
                                hint="Pass a bundle folder or .tar.gz written by `onnxgate bundle`.") from None
        tops = {rel.split("/", 1)[0] for rel, _member in members}
        if len(tops) != 1 or any(rel == next(iter(tops)) and not m.isdir() for rel, m in members):
            raise BadInputError(f"The archive '{path}' does not hold exactly one bundle folder.",
                                hint="Pass a .tar.gz written by `onnxgate bundle --tar`.")
        total = sum(m.size for _rel, m in members)
        free = shutil.disk_usage(staging).free
        if total + (16 << 20) > free:
            raise BadInputError(f"Unpacking '{path}' needs {total:,} bytes, but '{staging.parent}' has {free:,} "
                                "free.", hint="Point TMPDIR at a folder with more space, or unpack the bundle "
                                "yourself and verify the folder.")
        for rel, member in members:
            _extract_one(tar, member, staging / rel, path, hint)
        return staging / tops.pop()


@contextmanager
def _decompressed(raw):
    """The archive's tar stream, whatever compression its magic bytes name."""
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        opened = gzip.GzipFile(fileobj=raw, mode="rb")
    elif magic.startswith(b"BZh"):
        opened = bz2.BZ2File(raw, mode="rb")
    elif magic.startswith(b"\xfd7zXZ\x00"):
        opened = lzma.LZMAFile(raw, mode="rb")
    else:
        opened = raw
    try:
        yield opened
    finally:
        if opened is not raw:
            opened.close()


def _checked_members(tar: tarfile.TarFile, path: Path, limits: TarLimits,
                     hint: str) -> list[tuple[str, tarfile.TarInfo]]:
    """Every member's header, checked, before anything is written; UnsafeInputError naming the first bad one."""
    members: list[tuple[str, tarfile.TarInfo]] = []
    seen: set[str] = set()
    total = 0
    while (member := tar.next()) is not None:
        if len(members) >= limits.max_members:
            raise UnsafeInputError(f"The archive '{path}' holds more than {limits.max_members:,} members; a bundle "
                                   "holds a handful.", hint=hint)
        name = member.name
        where = f"The archive '{path}' (member {name[:200]!r})"
        if not (member.isreg() or member.isdir()) or member.issparse():
            kind = ("a symbolic link" if member.issym() else "a hard link" if member.islnk() else
                    "a device" if member.isdev() else "a sparse file" if member.issparse() else "a special file")
            target = f" to '{member.linkname[:200]}'" if member.issym() or member.islnk() else ""
            raise UnsafeInputError(f"{where} is {kind}{target}; a bundle holds only regular files and folders, and "
                                   "onnxgate does not unpack it.", hint=hint)
        rel = mf.safe_relative(name, where=where).as_posix() if name not in ("", ".", "./") else "."
        if rel == "." or "\\" in name:
            if rel == "." and member.isdir():
                continue  # the archive's root entry, "./"
            raise BadInputError(f"{where} has no usable name.", hint=hint)
        if len(rel) > mf.MAX_PATH_CHARS or rel.count("/") >= mf.MAX_PATH_DEPTH:
            raise UnsafeInputError(f"{where} has a path longer than {mf.MAX_PATH_CHARS} characters or deeper than "
                                   f"{mf.MAX_PATH_DEPTH} folders.", hint=hint)
        if rel in seen:
            raise UnsafeInputError(f"{where} appears twice; the second copy would silently replace the first.",
                                   hint=hint)
        seen.add(rel)
        if member.size > limits.max_member_bytes:
            raise UnsafeInputError(f"{where} declares {member.size:,} bytes, more than the {limits.max_member_bytes:,} "
                                   "onnxgate unpacks per file.", hint=hint)
        total += member.size
        if total > limits.max_total_bytes:
            raise UnsafeInputError(f"The archive '{path}' declares more than {limits.max_total_bytes:,} bytes in all "
                                   f"(reached at member {name[:200]!r}); onnxgate does not unpack it.", hint=hint)
        members.append((rel, member))
    return members


def _extract_one(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, path: Path, hint: str) -> None:
    """Write one checked member: a folder, or a file created anew (never through a link), exactly its size."""
    try:
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        raise BadInputError(f"The archive '{path}' cannot be unpacked at member '{member.name[:200]}': "
                            f"{exc.strerror or exc} (members that clash with each other?).", hint=hint) from None
    written = 0
    with os.fdopen(fd, "wb") as out:
        source = tar.extractfile(member)
        while written < member.size:
            try:
                block = source.read(min(_COPY_BLOCK, member.size - written))
            except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:  # gzip CRC: OSError
                raise IntegrityError(f"The archive '{path}' is damaged at member '{member.name[:200]}': "
                                     f"{str(exc)[:200] or type(exc).__name__}.", hint=hint) from None
            if not block:
                break
            try:
                out.write(block)
            except OSError as exc:
                raise BadInputError(f"Cannot unpack '{path}' into '{target.parent}': {exc.strerror or exc}.",
                                    hint="Point TMPDIR at a folder with more space, or unpack the bundle yourself "
                                         "and verify the folder.") from None
            written += len(block)
    if written != member.size:
        raise IntegrityError(f"The archive '{path}' ends inside member '{member.name[:200]}' ({written:,} of "
                             f"{member.size:,} bytes).", hint=hint)


__all__ = ["TarLimits", "opened_bundle"]
