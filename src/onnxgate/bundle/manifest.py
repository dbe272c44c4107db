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

A bundle usually comes from someone else, so nothing in it is trusted before it is checked:

* every manifest field onnxgate reads is validated (types, ranges, sizes) before use; a malformed manifest —
  a bad field, or not JSON at all — is bad input (exit 2, as the README documents), in every command;
* the bundle may hold only regular files and folders: a symbolic link (to ``/etc/passwd``, or a ``model.onnx``
  leading out of the bundle) or a device/FIFO is refused (exit 7) before any file is opened;
* each file's size is compared with its declared ``bytes`` before it is read, so a swapped-in huge file is
  never hashed; then its sha256 (exit 9 on any difference).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from .. import claim as cl
from ..errors import BadInputError, UnsafeInputError
from ..fsutil import atomic_write_text

FORMAT = "onnxgate-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL = "model.onnx"
GOLDEN_INPUTS = "golden_inputs.npz"
REFERENCE_OUTPUTS = "reference_outputs.npz"
SIGNATURE = "onnxgate.sig"  # `onnxgate sign`: covers the manifest and every file, so no manifest lists it
REQUIRED_FILES = (MODEL, GOLDEN_INPUTS, REFERENCE_OUTPUTS)

# Bounds on what a manifest may declare: generous for real bundles (a 1 TiB external-data file, ten thousand
# files), small enough that a crafted manifest cannot make onnxgate allocate or walk without end.
MAX_MANIFEST_BYTES = 16 << 20
MAX_FILES = 10_000
MAX_FILE_BYTES = 1 << 40
MAX_PATH_CHARS = 1024
MAX_PATH_DEPTH = 32
MAX_NAMES = 10_000  # model inputs / outputs
MAX_NAME_CHARS = 4096
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REMAKE = cl.REMAKE_HINT


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entries(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under ``folder`` except the manifest, keyed by POSIX relative path."""
    return {rel: {"sha256": sha256_file(folder / rel), "bytes": info.st_size}
            for rel, info in sorted(scan_bundle(folder).items())}


def list_files(folder: Path) -> list[str]:
    """Every file under ``folder`` (POSIX relative paths, sorted), the manifest excluded."""
    return sorted(scan_bundle(folder))


def safe_relative(rel: str, *, where: str) -> PurePosixPath:
    """``rel`` as a path that stays inside its folder; UnsafeInputError for absolute paths or ``..``."""
    path = PurePosixPath(rel.replace("\\", "/"))
    if not rel or path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]) \
            or _CONTROL.search(rel):
        raise UnsafeInputError(
            f"{where} names the path {rel[:200]!r}, which leaves its folder (absolute, a drive, '..', or a "
            "control character).",
            hint="Only paths relative to the bundle/model folder, without '..', are accepted; re-create the "
                 "file with onnxgate instead of editing it.",
        )
    return path


def bundle_path(rel: Any, *, where: str) -> str:
    """A path as a bundle records it: relative, '/'-separated, canonical (no '.', '..', '//', backslash).

    Canonical so that one file has exactly one name: the manifest entry, the file found on disk and an
    external-data location are compared as strings. Leaving the folder is unsafe (exit 7); any other
    malformation is bad input (exit 2).
    """
    if not isinstance(rel, str):
        raise _malformed(where, f"a path must be a string, not {_kind(rel)}")
    safe_relative(rel, where=where)
    if len(rel) > MAX_PATH_CHARS or rel.count("/") >= MAX_PATH_DEPTH:
        raise _malformed(where, f"the path {rel[:80]!r}... is longer than {MAX_PATH_CHARS} characters or deeper "
                                f"than {MAX_PATH_DEPTH} folders")
    if "\\" in rel or PurePosixPath(rel).as_posix() != rel or rel.endswith("/") or rel in ("", "."):
        raise _malformed(where, f"the path {rel!r} is not in canonical form (relative, '/'-separated, no '.', "
                                "'//' or backslash)")
    return rel


# ------------------------------------------------------------------------------------------------ reading


def read_manifest(folder: Path) -> dict[str, Any]:
    """Load ``folder/manifest.json`` and validate every field bundle verification reads.

    Returns the manifest with ``files``, ``inputs``, ``outputs`` and the claim's tolerance table in checked form
    (the rest of the claim: ``claim.from_manifest``, or ``bundle.open``).
    """
    raw = _read_raw(folder)
    return validate_manifest(raw, where=f"The manifest '{folder / MANIFEST}'", folder=folder)


def _read_raw(folder: Path) -> Any:
    """``folder/manifest.json`` parsed as strict JSON (a regular file, size-capped, no duplicate keys or NaN)."""
    path = folder / MANIFEST
    try:
        info = path.lstat()
    except OSError:
        raise BadInputError(
            f"'{folder}' is not an onnxgate bundle: it has no {MANIFEST}.",
            hint="Point at a folder (or .tar.gz) written by `onnxgate bundle`.",
        ) from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise _link_or_special(folder, MANIFEST, info)
    if info.st_size > MAX_MANIFEST_BYTES:
        raise _malformed(f"The manifest '{path}'", f"it is {info.st_size:,} bytes, more than the "
                                                   f"{MAX_MANIFEST_BYTES:,} any bundle needs")
    data = _read_regular(path, limit=MAX_MANIFEST_BYTES)
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except _Malformed as exc:
        raise _malformed(f"The manifest '{path}'", str(exc)) from None
    except RecursionError:
        raise _malformed(f"The manifest '{path}'", "its JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # malformed like any other bad field: exit 2, as documented
        raise BadInputError(
            f"The manifest '{path}' is malformed: it is not valid JSON ({str(exc)[:200]}); the bundle is damaged or "
            "was edited.", hint="Re-create or re-download the bundle.",
        ) from None


def validate_manifest(raw: Any, *, where: str, folder: Path | str = "") -> dict[str, Any]:
    """Check the types, ranges and sizes of the fields onnxgate reads; BadInputError naming the first bad one."""
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BadInputError(f"{where} is not an onnxgate bundle manifest (no \"format\": \"{FORMAT}\").",
                            hint="Point at a folder written by `onnxgate bundle`.")
    version = raw.get("format_version")
    if not _is_int(version) or version < 1:
        raise _malformed(where, f"'format_version' must be a whole number >= 1, not {_show(version)}")
    if version > FORMAT_VERSION:
        raise BadInputError(
            f"The bundle '{folder}' has format version {version}; this onnxgate reads up to {FORMAT_VERSION}.",
            hint="Upgrade onnxgate on this machine (pip install -U onnxgate).",
        )
    for key in ("files", "inputs", "outputs", cl.MANIFEST_TOLERANCES):
        if key not in raw:
            raise _malformed(where, f"it lacks its '{key}' section")
    manifest = dict(raw)
    manifest["files"] = _files(raw["files"], where)
    manifest["inputs"] = _value_specs(raw["inputs"], "inputs", where)
    manifest["outputs"] = _value_specs(raw["outputs"], "outputs", where)
    if not manifest["outputs"]:
        raise _malformed(where, "'outputs' is empty: there is nothing to verify")
    tolerances = cl.manifest_tolerances(raw[cl.MANIFEST_TOLERANCES], [o["name"] for o in manifest["outputs"]], where)
    manifest[cl.MANIFEST_TOLERANCES] = cl.tolerance_table(tolerances)
    return manifest


def _files(files: Any, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(files, dict):
        raise _malformed(where, f"'files' must be a mapping of path to {{sha256, bytes}}, not {_kind(files)}")
    if len(files) > MAX_FILES:
        raise _malformed(where, f"'files' lists {len(files):,} files, more than the {MAX_FILES:,} allowed")
    checked = {}
    for rel, entry in files.items():
        at = f"{where} (files entry {str(rel)[:200]!r})"
        rel = bundle_path(rel, where=at)
        if rel == MANIFEST:
            raise _malformed(at, "the manifest cannot list itself")
        if not isinstance(entry, dict):
            raise _malformed(at, f"an entry must be a mapping with 'sha256' and 'bytes', not {_kind(entry)}")
        digest, size = entry.get("sha256"), entry.get("bytes")
        if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise _malformed(at, f"'sha256' must be 64 lowercase hex digits, not {_show(digest)}")
        if not _is_int(size) or not 0 <= size <= MAX_FILE_BYTES:
            raise _malformed(at, f"'bytes' must be a whole number from 0 to {MAX_FILE_BYTES:,}, not {_show(size)}")
        checked[rel] = {"sha256": digest, "bytes": size}
    missing = [name for name in REQUIRED_FILES if name not in checked]
    if missing:
        raise _malformed(where, f"'files' does not list {', '.join(missing)}, which every bundle holds")
    return checked


def _value_specs(specs: Any, key: str, where: str) -> list[dict[str, Any]]:
    if not isinstance(specs, list):
        raise _malformed(where, f"'{key}' must be a list of {{name, shape, dtype}}, not {_kind(specs)}")
    if len(specs) > MAX_NAMES:
        raise _malformed(where, f"'{key}' lists {len(specs):,} entries, more than the {MAX_NAMES:,} allowed")
    seen = set()
    for index, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise _malformed(where, f"'{key}'[{index}] must be a mapping, not {_kind(spec)}")
        name = spec.get("name")
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
            raise _malformed(where, f"'{key}'[{index}].name must be a non-empty string of at most "
                                    f"{MAX_NAME_CHARS} characters, not {_show(name)}")
        if name in seen:
            raise _malformed(where, f"'{key}' names {name[:200]!r} twice")
        seen.add(name)
    return specs


# ------------------------------------------------------------------------------------------------ writing


def manifest_text(manifest: dict[str, Any]) -> str:
    """The manifest as a bundle stores it (``write_bundle`` and ``record_targets`` write exactly this)."""
    return json.dumps(manifest, indent=2, default=str) + "\n"


def record_targets(folder: Path, targets: dict[str, Any]) -> dict[str, Any]:
    """Set the manifest's ``targets`` section (what each deployed artifact is and how it was verified) and re-list
    every file of ``folder`` with its checksum, so the artifacts just written under ``targets/`` are covered and a
    tampered one is caught. The manifest is read with the same checks as ``read_manifest`` and replaced
    atomically; its other fields are kept as they were. Returns the manifest written."""
    raw = _read_raw(folder)
    validate_manifest(raw, where=f"The manifest '{folder / MANIFEST}'", folder=folder)
    raw["files"] = file_entries(folder)
    raw["targets"] = targets
    atomic_write_text(folder / MANIFEST, manifest_text(raw), force=True)
    return raw


# ----------------------------------------------------------------------------------------- files on disk


def scan_bundle(folder: Path) -> dict[str, os.stat_result]:
    """Every regular file under ``folder`` (the manifest excepted) with its ``lstat``, keyed by POSIX path.

    Links are never followed: a symbolic link anywhere (to a file or a folder, pointing in or out of the
    bundle) and anything that is not a regular file or folder (FIFO, socket, device) is refused with
    UnsafeInputError before any file is opened.
    """
    found: dict[str, os.stat_result] = {}
    pending = [("", 0)]
    entries_seen = 0
    while pending:
        prefix, depth = pending.pop()
        try:
            with os.scandir(folder / prefix if prefix else folder) as it:
                entries = list(it)
        except OSError as exc:
            raise BadInputError(f"Cannot read the bundle folder '{folder / prefix}': {exc.strerror or exc}.",
                                hint="Check the folder's permissions.") from exc
        for entry in entries:
            entries_seen += 1
            if entries_seen > MAX_FILES + 100:
                raise UnsafeInputError(
                    f"The bundle '{folder}' holds more than {MAX_FILES:,} entries; onnxgate stops reading it "
                    "there.", hint="A bundle holds a handful of files: " + _REMAKE)
            rel = f"{prefix}/{entry.name}" if prefix else entry.name
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # removed while we looked: check_files reports it missing if it was listed
            if stat.S_ISDIR(info.st_mode):
                if depth + 1 >= MAX_PATH_DEPTH:
                    raise UnsafeInputError(f"The bundle '{folder}' nests folders deeper than {MAX_PATH_DEPTH} "
                                           f"levels at '{rel[:200]}'.", hint=_REMAKE)
                pending.append((rel, depth + 1))
            elif not stat.S_ISREG(info.st_mode):
                raise _link_or_special(folder, rel, info)
            elif rel not in (MANIFEST, SIGNATURE):
                found[rel] = info
    return found


def check_files(folder: Path, manifest: dict[str, Any], found: dict[str, os.stat_result] | None = None) -> list[str]:
    """Problems that prove the bundle changed since it was written: one line per file, empty when intact.

    Every recorded file must exist with its recorded size and sha256, and no unrecorded file may be present:
    a file slipped in beside the model (an external-data file, say) could change what the model loads. Sizes
    are compared first, from ``lstat``: a file of the wrong size is reported without being read.
    """
    found = scan_bundle(folder) if found is None else found
    problems = []
    recorded = manifest["files"]
    for rel, entry in sorted(recorded.items()):
        info = found.get(rel)
        if info is None:
            problems.append(f"{rel}: missing")
        elif info.st_size != entry["bytes"]:
            problems.append(f"{rel}: {info.st_size:,} bytes, the manifest says {entry['bytes']:,}")
        elif hash_checked(folder / rel, entry["bytes"]) != entry["sha256"]:
            problems.append(f"{rel}: content changed (sha256 differs from the manifest)")
    problems += [f"{rel}: not listed in the manifest" for rel in sorted(found) if rel not in recorded]
    return problems


def hash_checked(path: Path, size: int) -> str | None:
    """sha256 of the regular file ``path``, opened without following a link, read up to ``size`` + 1 bytes.

    None when it is no longer the regular file of that size the scan saw (replaced in between): the
    caller reports a changed file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size != size:
            return None
        digest, left = hashlib.sha256(), size + 1
        while left > 0:
            block = fh.read(min(1 << 20, left))
            if not block:
                break
            digest.update(block)
            left -= len(block)
        return digest.hexdigest()


def _read_regular(path: Path, *, limit: int) -> bytes:
    """At most ``limit`` + 1 bytes of a regular file, opened without following a link."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise _link_or_special(path.parent, path.name, os.fstat(fh.fileno()))
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise _malformed(f"'{path}'", f"it is larger than {limit:,} bytes")
    return data


def _link_or_special(folder: Path, rel: str, info: os.stat_result) -> UnsafeInputError:
    if stat.S_ISLNK(info.st_mode):
        try:
            target = os.readlink(folder / rel)  # the link's text only; the target is never opened
        except OSError:
            target = "?"
        return UnsafeInputError(
            f"The bundle '{folder}' contains '{rel}', a symbolic link (to '{target[:200]}'). onnxgate refuses "
            "links in bundles without reading them: a link can make a bundle's checksum cover a file elsewhere "
            "on this machine (a secret, or a model that is not the one shipped).",
            hint="Replace the link with the file itself (cp --dereference), or " + _REMAKE[0].lower() + _REMAKE[1:],
        )
    kind = ("a FIFO" if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode)
            else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "not a regular file")
    return UnsafeInputError(f"The bundle '{folder}' contains '{rel}', which is {kind}; a bundle holds only "
                            "regular files and folders, and onnxgate does not open it.", hint=_REMAKE)


class _Malformed(ValueError):
    pass


def _no_constant(name: str):
    raise _Malformed(f"it contains {name}, which JSON does not allow")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = {}
    for key, value in pairs:
        if key in result:
            raise _Malformed(f"it gives the key {key[:200]!r} twice in one object (which one counts is ambiguous)")
        result[key] = value
    return result


def _malformed(where: str, what: str) -> BadInputError:
    return BadInputError(f"{where} is malformed: {what}.", hint=_REMAKE)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else _kind(value)
    return text if len(text) <= 80 else text[:77] + "..."
