"""Atomic writes, and staging that the next run cleans up after a kill.

A bundle or lock file that is half written (disk full, Ctrl-C, a crash in the middle) would later fail its
checksum or, worse, pass a sloppy check. So every output is built under a temporary name in the same folder
(same filesystem, so the final rename is atomic) and renamed into place only once complete. Existing outputs
are never replaced without ``force``; temporary files are removed on any failure.

``finally`` does not run after ``kill -9`` (or a power cut), so a temporary name can outlive its process. Every
staging name onnxgate creates is therefore recognizably its own and says who owns it::

    .onnxgate-staging-<pid>-<host>-<random>.<kind>.<name>

``pid`` is the creating process, ``host`` a short tag of the machine (and PID namespace) it runs on, ``kind``
says what the entry is (``tmp``: an output being written, ``old``: an output being replaced, anything else: a
scratch folder) and ``name`` the destination, for people reading a directory listing. :func:`sweep` removes
such entries once their owner process is gone; it runs before every atomic write into a folder and before
staging in ``$TMPDIR``, and `onnxgate clean` runs it on demand. It never touches a live process's staging, an
entry of another machine or container sharing the folder (its PIDs mean nothing here), or another user's files.

A process that works for another one (the ``onnxgate`` command's isolated child, a worker) registers the parent it
must still have (:func:`expect_parent`); every move into place first checks that it has (:func:`ensure_parent_alive`)
and exits without a word otherwise: an output the user cancelled with ``kill -9`` never appears after the fact, even
in the moment before the kernel's parent-death signal arrives.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import BadInputError, OutputExistsError

STAGING_PREFIX = ".onnxgate-staging-"
_STAGING_NAME = re.compile(r"^\.onnxgate-staging-(?P<pid>[1-9][0-9]{0,9})-(?P<host>[0-9a-f]{6})-[0-9a-f]{8}"
                           r"\.(?P<kind>[a-z]{1,16})(?:(?P<cut>[.~])(?P<name>.*))?$", re.DOTALL)
# What onnxgate before owner-tagged staging left behind: `.NAME.HEX.tmp` / `.NAME.HEX.old` beside outputs and
# `onnxgate-*` folders from tempfile in $TMPDIR. Nobody knows whether their owner still runs; see sweep(legacy=).
_LEGACY_SIBLING = re.compile(r"^\..+\.[0-9a-f]{8}\.(?:tmp|old)$", re.DOTALL)
_LEGACY_TMPDIR = re.compile(r"^onnxgate-(?:bundle|run|export|ortopt|quant|localize|bench)-[a-z0-9_]{8}$")
LEGACY_MIN_AGE_S = 3600  # a legacy entry younger than this may belong to an older onnxgate still running
_NAME_BUDGET = 120  # bytes of the destination name kept in a staging name (file names stop at 255 bytes)


_EXPECTED: tuple[int, tuple[int, ...]] | None = None  # (this process, its ancestors as they must still be)


def expect_parent(*ancestors: int | None) -> None:
    """From now on, this process moves no output into place unless its ancestry is still ``ancestors``: its parent,
    that one's parent, ... (a worker's keeper, then the process that started the keeper). The chain an ancestor
    registered itself is appended, so a worker of a worker checks the whole line up to the process the user started:
    killing that one stops every output below it even before the kernel's parent-death signals have run through.
    Forked children inherit the record but not the check: it holds for the process that registered it."""
    global _EXPECTED
    chain = [a for a in ancestors if a is not None]
    if not chain:
        _EXPECTED = None
        return
    if _EXPECTED is not None and _EXPECTED[0] == chain[-1]:
        chain += _EXPECTED[1]
    _EXPECTED = (os.getpid(), tuple(chain))


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
        return int(text[text.rfind(b")") + 2:].split(b" ", 2)[1])
    except (OSError, ValueError, IndexError):
        return None


def parent_gone() -> bool:
    """Whether an ancestor registered with :func:`expect_parent` is gone (this process or one above was
    re-parented)."""
    if _EXPECTED is None or os.name == "nt":
        return False
    me, chain = _EXPECTED
    if me != os.getpid():
        return False
    if os.getppid() != chain[0]:
        return True
    for child, ancestor in zip(chain, chain[1:]):
        parent = _parent_of(child)
        if parent is None:  # the ancestor is gone, or there is no /proc to tell (then what could be checked was)
            return os.path.isdir("/proc/self") and not os.path.exists(f"/proc/{child}")
        if parent != ancestor:
            return True
    return False


def ensure_parent_alive(staging: Path | None = None) -> None:
    """Right before ``staging`` is moved into place: exit at once (status 1, nothing written, nobody left to tell;
    ``staging`` removed) when the process this one works for, or any above it, is gone — its user killed it and does
    not expect the output."""
    if parent_gone():
        if staging is not None:
            if staging.is_dir() and not staging.is_symlink():
                shutil.rmtree(staging, ignore_errors=True)
            else:
                staging.unlink(missing_ok=True)
        os._exit(1)


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
    sweep_quietly(path.parent)
    tmp = _temp_sibling(path)
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # 0o666 & umask, unlike mkstemp's 0o600
    try:
        yield tmp
        ensure_parent_alive(tmp)
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
    sweep_quietly(path.parent)
    tmp = _temp_sibling(path)
    os.mkdir(tmp, 0o777)
    try:
        yield tmp
        _move_into_place(tmp, path, force=force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def staging_dir(label: str, *, parent: str | Path | None = None) -> Iterator[Path]:
    """A private scratch folder (``$TMPDIR`` unless ``parent``), owner-tagged, removed when the body ends.

    Use it instead of ``tempfile.TemporaryDirectory``: after a kill the folder carries its owner's PID, so the
    next onnxgate run (or `onnxgate clean`) can tell it is abandoned and delete it. Dead owners' staging in
    ``parent`` is swept first.
    """
    folder = Path(tempfile.gettempdir() if parent is None else parent)
    sweep_quietly(folder)
    path = folder / staging_name(label)
    os.mkdir(path, 0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _move_into_place(tmp: Path, path: Path, *, force: bool) -> None:
    ensure_parent_alive(tmp)
    if not (force and (path.exists() or path.is_symlink())):
        try:
            os.rename(tmp, path)
        except OSError as exc:  # someone created `path` after our check
            raise _exists_error(path, "folder") from exc
        return
    # Between these two renames `path` is absent; a kill there leaves the previous version under the "old"
    # staging name, and sweep() puts it back rather than deleting it.
    old = _temp_sibling(path, kind="old")
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
    check_writable(path)
    if path.exists() or path.is_symlink():
        if not force:
            raise _exists_error(path, kind)
        if kind == "file" and path.is_dir():
            raise BadInputError(
                f"Cannot write the output file '{path}': a folder of that name exists, and --force replaces "
                "files only, never folders.",
                hint="Remove the folder yourself or choose another output path.",
            )


def check_writable(output: str | Path) -> None:
    """Fail before any work when the output's folder cannot be written (read-only folder or file system). A
    missing folder is reported by ``check_target``."""
    parent = Path(output).parent
    if not parent.is_dir():
        return
    why = None if os.access(parent, os.W_OK | os.X_OK) else "permission denied"
    if why is None:  # root passes os.access on any folder: try it (an unnamed O_TMPFILE file where supported)
        try:
            with tempfile.TemporaryFile(dir=parent, prefix=".onnxgate-probe-"):
                pass
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
    if why:
        raise BadInputError(f"Cannot write the output '{output}': its folder '{parent}' is not writable ({why}).",
                            hint="Choose an output path in a folder you can write to, or fix the folder's permissions.")


def _exists_error(path: Path, kind: str) -> OutputExistsError:
    return OutputExistsError(
        f"The output {kind} '{path}' already exists; onnxgate does not overwrite outputs by default.",
        hint="Pass --force (force=True) to replace it, or choose another output path.",
    )


def _temp_sibling(path: Path, *, kind: str = "tmp") -> Path:
    """An owner-tagged name in the same folder as ``path`` (same filesystem, so renames are atomic)."""
    return path.with_name(staging_name(kind, path.name))


# ------------------------------------------------------------------------------------------- staging names


def host_tag() -> str:
    """Six hex digits naming this machine and PID namespace: PIDs are only comparable within one of them.

    A folder on a network share or a volume mounted into several containers holds staging from processes
    this one cannot see; ``os.kill`` would call them dead. Entries with another tag are never swept here.
    """
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = ""
    return hashlib.sha256(f"{socket.gethostname()}|{namespace}".encode()).hexdigest()[:6]


def staging_name(kind: str, name: str = "") -> str:
    """``.onnxgate-staging-<pid>-<host>-<random>.<kind>[.<name>]`` for this process (see the module docstring).

    A destination name longer than ``_NAME_BUDGET`` bytes is cut, and then follows a ``~`` instead of a ``.``:
    a cut name must never be mistaken for the destination when an ``old`` entry is restored.
    """
    if not re.fullmatch(r"[a-z]{1,16}", kind):
        raise ValueError(f"staging kind must be 1..16 lowercase letters, not {kind!r}")
    encoded = name.encode("utf-8", "surrogateescape")
    cut = len(encoded) > _NAME_BUDGET
    short = encoded[:_NAME_BUDGET].decode("utf-8", "ignore") if cut else name
    return (f"{STAGING_PREFIX}{os.getpid()}-{host_tag()}-{secrets.token_hex(4)}.{kind}"
            + (f"{'~' if cut else '.'}{short}" if short else ""))


@dataclass(frozen=True)
class StagingName:
    """What a staging name says about its entry."""

    pid: int
    host: str
    kind: str
    name: str | None  # the destination's name (None when not recorded)
    name_complete: bool = True  # False when the name was cut short (see _NAME_BUDGET)


def parse_staging_name(name: str) -> StagingName | None:
    """The owner and purpose encoded in an onnxgate staging name; None for any other name."""
    match = _STAGING_NAME.match(name)
    if match is None:
        return None
    return StagingName(int(match["pid"]), match["host"], match["kind"], match["name"], match["cut"] != "~")


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (possibly another user's: EPERM means it exists).

    On Windows ``os.kill`` terminates the process instead of probing it, so there every owner counts as alive
    and nothing is swept.
    """
    if pid <= 0:
        return False
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno != errno.ESRCH
    except OverflowError:  # a PID beyond the C int range cannot exist
        return False
    return True


# ------------------------------------------------------------------------------------------------ sweeping


@dataclass
class SweptEntry:
    """One entry :func:`sweep` looked at: ``action`` is removed | restored | kept | failed."""

    path: str
    action: str
    reason: str
    pid: int | None = None
    bytes: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def sweep(folder: str | Path, *, legacy: bool = False, now: float | None = None) -> list[SweptEntry]:
    """Remove the staging entries in ``folder`` (not below it) whose owner process is gone; report every one seen.

    An abandoned ``old`` entry is the previous version of an output that was being replaced when the process
    died; if the output is now missing it is renamed back instead of deleted. Entries of live processes, of
    other hosts or PID namespaces, and of other users are kept. With ``legacy``, names left by onnxgate
    versions before owner tags (no owner known) are removed too once older than ``LEGACY_MIN_AGE_S``;
    without it they are reported as kept.
    """
    folder = Path(folder)
    try:
        with os.scandir(folder) as it:
            entries = [entry for entry in it if entry.name.startswith((".", "onnxgate-"))]
    except OSError:
        return []
    me, uid, now = host_tag(), os.getuid() if hasattr(os, "getuid") else None, time.time() if now is None else now
    report = []
    for entry in entries:
        path = Path(entry.path)
        owner = parse_staging_name(entry.name)
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # removed meanwhile
        if owner is None:
            is_legacy = _LEGACY_SIBLING.match(entry.name) or (
                _LEGACY_TMPDIR.match(entry.name) and stat.S_ISDIR(info.st_mode)
                and os.path.realpath(folder) == os.path.realpath(tempfile.gettempdir()))
            if not is_legacy:
                continue
            if uid is not None and info.st_uid != uid:
                continue
            if not legacy or now - info.st_mtime < LEGACY_MIN_AGE_S:
                report.append(SweptEntry(str(path), "kept", "left by an older onnxgate: owner unknown"
                                         + (", modified within the last hour" if legacy else
                                            " (`onnxgate clean --legacy` removes it)")))
                continue
            report.append(_remove(path, info, None, "left by an older onnxgate, unmodified for over an hour"))
            continue
        if owner.host != me:
            report.append(SweptEntry(str(path), "kept", "created on another machine or container (its PID "
                                     "cannot be checked from here)", owner.pid))
            continue
        if uid is not None and info.st_uid != uid:
            continue  # another user's: not ours to judge, and a sticky $TMPDIR would refuse anyway
        if owner.pid == os.getpid() or pid_alive(owner.pid):
            report.append(SweptEntry(str(path), "kept", "its owner process is running", owner.pid))
            continue
        if owner.kind == "old":
            if not owner.name or not owner.name_complete:
                report.append(SweptEntry(str(path), "kept", "the previous version of an output that was being "
                                         "replaced; its name is too long to restore it safely: move it back by "
                                         "hand or delete it", owner.pid))
                continue
            destination = folder / owner.name
            if not (destination.exists() or destination.is_symlink()):
                try:
                    os.rename(path, destination)
                except FileNotFoundError:
                    continue  # another sweep restored it first
                except OSError as exc:
                    report.append(SweptEntry(str(path), "failed", f"could not restore it: {exc.strerror}",
                                             owner.pid))
                else:
                    report.append(SweptEntry(str(destination), "restored", "the replaced output's previous "
                                             "version: its replacement never arrived", owner.pid))
                continue
        report.append(_remove(path, info, owner.pid, f"its owner process {owner.pid} is gone"))
    return report


def sweep_quietly(folder: str | Path) -> None:
    """:func:`sweep` for housekeeping before a write: never lets a cleanup problem stop the real work."""
    try:
        sweep(folder)
    except Exception:  # noqa: BLE001  (best effort: the write that follows reports real problems itself)
        pass


def _remove(path: Path, info: os.stat_result, pid: int | None, reason: str) -> SweptEntry:
    size = _size(path, info)
    try:
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(path)  # never follows symlinks inside
        else:
            path.unlink()  # a symlink named like staging: remove the link, never its target
    except FileNotFoundError:
        return SweptEntry(str(path), "removed", reason + " (already gone)", pid)
    except OSError as exc:
        return SweptEntry(str(path), "failed", f"{reason}, but removing it failed: {exc.strerror or exc}", pid)
    return SweptEntry(str(path), "removed", reason, pid, size)


def _size(path: Path, info: os.stat_result) -> int:
    """Bytes held by an entry (a folder: its files, symlinks not followed)."""
    if not stat.S_ISDIR(info.st_mode):
        return info.st_size if stat.S_ISREG(info.st_mode) else 0
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total
