"""The one loading policy for model and weights files: every ``torch.load`` and ``.pt2`` load goes through here.

Array files (``.npz``/``.npy``) are read with ``allow_pickle=False`` everywhere; ``load_npz`` below serves the
``bundle`` command's ``--golden``/``--reference``, while feeds (``verify/inputs.py``) and bundle golden files
(``bundle/verify.py``, which also bounds every allocation) have readers of their own.

A pickle is a program, and so is a TorchScript archive: unpickling runs whatever callables the file names, and
TorchScript's ``__setstate__`` and ``forward`` can create or overwrite files (``torch.from_file``). So nothing here
runs code from a file unless the user passed ``--trust-code`` (``--trust-pickle``, ``trust_pickle=True``):

* ``torch_load``: ``torch.load(weights_only=True)`` (tensors and plain containers only); a refused file is a
  clear ``UnsafeInputError`` (exit 7) unless trusted.
* ``check_pt2_archive``: a ``torch.export`` archive (``.pt2``) is inspected *before* torch touches it, because
  ``torch.export.load`` unpickles with ``weights_only=False`` in several places (weights or constants stored
  with ``use_pickle``, the sample inputs when ``weights_only`` refuses them, opaque and TorchBind constants,
  legacy archives) and turns text of the program's JSON into code (``guards_code`` through ``exec``, symbolic
  expressions through ``sympy.sympify``, node targets looked up from ``torch``, ``math`` and ``operator``). The
  file is read once; ``StrictZip`` parses those bytes so that no two zip readers can see different entries
  (duplicate names, prepended or trailing data, headers that disagree are refused); entries must follow the
  archive's layout; every pickled member must pass ``weights_only``; opaque objects, compiled code and legacy
  layouts are refused; the JSON's guard code, expressions and operators must fit narrow grammars. ``load_pt2``
  then hands torch's archive reader exactly the checked bytes, never through ``torch.export.load``'s fallback to
  the pre-2.7 format (which would unpickle whatever a look-alike zip holds).
* ``confine_untrusted_code``: where the user consented, the console script's child process (or a zoo worker)
  loads and runs that code under Linux Landlock, able to write only in a scratch folder and the outputs' folders.
* ``read_regular_file``/``require_regular_file``: a FIFO, socket or device given as a model is refused (exit 2)
  without blocking on it.
* ``load_npz``: ``numpy.load(allow_pickle=False)``; object arrays are refused.

Torch is imported lazily (the npz path is used on torch-free machines).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import stat
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BadInputError, ModelSourceError, UnsafeInputError
from .sources._text import describe  # the sources' one error description (type + first line)

SAFE_FORMATS_HINT = (
    "Save it instead as a state dict (torch.save(model.state_dict(), PATH), then load it with --arch) or as a "
    "torch.export archive (torch.export.save, .pt2): neither needs consent."
)
_TRUST_HINT = ("Pass --trust-code (trust_pickle=True; --trust-pickle is the older name) only if the file comes from "
               "a source you trust. ")

# torch.export archive layout (torch/export/pt2_archive/constants.py), relative to the archive's root folder.
_PT2_DATA_FILES = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
_TENSOR_CONSTANT_PREFIX = "tensor_"  # constants stored as tensors; "custom_obj_" / "opaque_obj_" are objects

_SIMPLE_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
# Where a torch.export archive's entries may lie, relative to its root folder; anything else is refused.
_PT2_LAYOUT = re.compile(r"models/[A-Za-z0-9_.\-]+\.json|data/(weights|constants)/[A-Za-z0-9_.\-]+"
                         r"|data/sample_inputs/[A-Za-z0-9_.\-]+\.pt|extra/[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")


class _ZipDamaged(Exception):
    """Not a readable zip at all (truncated, no end record)."""


class _ZipAmbiguous(Exception):
    """A zip whose structure different readers may interpret differently."""


@dataclass(frozen=True)
class _ZipEntry:
    name: str
    method: int  # 0 stored, 8 deflated
    crc: int
    size: int
    compressed: int
    data_start: int


class StrictZip:
    """A zip archive read from its bytes under rules strict enough that every zip reader sees the same entries.

    Python's ``zipfile`` and torch's reader (miniz) disagree on archives a writer never produces: with two entries
    of one name zipfile reads the last and miniz the first (and miniz matches names ignoring ASCII case); data
    before the first entry, between entries or after the end record, local headers that disagree with the central
    directory, overlapping entries or zip64 records out of place can all make two readers see different bytes. So
    the archive must be laid out canonically: entries back to back from offset 0, each local header agreeing with
    its central-directory record (name, flags, method, CRC, sizes; a data descriptor where bit 3 says so), then
    the central directory, then the end record with no comment, nothing else. Names are unique ignoring ASCII
    case, valid UTF-8, relative, without empty, ``.`` or ``..`` components or backslashes; no entry is encrypted;
    methods are stored or deflate, and every entry's CRC is checked. Anything else raises ``_ZipAmbiguous``
    (exit 7 upstream); bytes that are no zip at all raise ``_ZipDamaged`` (exit 2).
    """

    _EOCD, _EOCD64, _LOCATOR = 0x06054B50, 0x06064B50, 0x07064B50
    _CENTRAL, _LOCAL, _DESCRIPTOR = 0x02014B50, 0x04034B50, 0x08074B50
    _ALLOWED_FLAGS = 0x0002 | 0x0004 | 0x0008 | 0x0800  # deflate options, data descriptor, UTF-8 names

    def __init__(self, data: bytes):
        self.data = data
        self.entries: dict[str, _ZipEntry] = {}
        cd_offset, cd_size, count, cd_end = self._end_records()
        records = self._central_directory(cd_offset, cd_size, count)
        if cd_offset + cd_size != cd_end:
            raise _ZipAmbiguous("bytes between the central directory and the end record")
        position = 0
        for record in sorted(records, key=lambda r: r["offset"]):
            if record["offset"] != position:
                raise _ZipAmbiguous(f"entry '{record['name']}' does not start where the previous one ends "
                                    f"(offset {record['offset']}, expected {position}): prepended data, a gap or "
                                    "overlapping entries")
            position = self._local_record(record)
        if position != cd_offset:
            raise _ZipAmbiguous("bytes between the last entry and the central directory")
        for record in records:  # central-directory order, which is the order readers list them in
            self.entries[record["name"]] = _ZipEntry(record["name"], record["method"], record["crc"],
                                                     record["size"], record["compressed"], record["data_start"])
            self.read(record["name"])  # CRC and size check of every entry, once

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def read(self, name: str) -> bytes:
        entry = self.entries[name]
        raw = self.data[entry.data_start:entry.data_start + entry.compressed]
        if entry.method == 8:
            inflater = zlib.decompressobj(-15)
            try:
                raw = inflater.decompress(raw, entry.size + 1)
            except zlib.error as exc:
                raise _ZipAmbiguous(f"entry '{name}' is not valid deflate data ({exc})") from None
            if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
                raise _ZipAmbiguous(f"entry '{name}' deflates to more or less than its recorded size")
        if len(raw) != entry.size or zlib.crc32(raw) != entry.crc:
            raise _ZipAmbiguous(f"entry '{name}' does not match its recorded size and CRC")
        return raw

    # ---------------------------------------------------------------------------------------------- parsing

    def _unpack(self, fmt: str, offset: int) -> tuple:
        size = struct.calcsize(fmt)
        if offset < 0 or offset + size > len(self.data):
            raise _ZipAmbiguous(f"a record at offset {offset} runs past the end of the file")
        return struct.unpack_from(fmt, self.data, offset)

    def _end_records(self) -> tuple[int, int, int, int]:
        """(central directory offset, its size, entry count, where it must end) from the end records."""
        data = self.data
        eocd = len(data) - 22
        if eocd < 0 or struct.unpack_from("<I", data, eocd)[0] != self._EOCD:
            if data.rfind(struct.pack("<I", self._EOCD), max(0, len(data) - 65557)) >= 0:
                raise _ZipAmbiguous("the end record is followed by a comment or other data")
            raise _ZipDamaged("no zip end record at the end of the file")
        _, disk, cd_disk, here, count, cd_size, cd_offset, comment = struct.unpack_from("<IHHHHIIH", data, eocd)
        if disk or cd_disk or here != count:
            raise _ZipAmbiguous("it is a multi-disk archive")
        if comment:
            raise _ZipAmbiguous("the end record has a comment")
        zip64 = 0xFFFF in (here, count) or 0xFFFFFFFF in (cd_size, cd_offset)
        has_locator = eocd >= 20 and struct.unpack_from("<I", data, eocd - 20)[0] == self._LOCATOR
        if not zip64 and not has_locator:
            return cd_offset, cd_size, count, eocd
        if not has_locator:
            raise _ZipAmbiguous("the end record says zip64 but no zip64 locator precedes it")
        _, disk64, record_offset, disks = self._unpack("<IIQI", eocd - 20)
        if disk64 or disks != 1 or record_offset + 56 != eocd - 20:
            raise _ZipAmbiguous("the zip64 end record is not immediately before its locator")
        (signature, record_size, _, _, disk, cd_disk, here64, count64, cd_size64,
         cd_offset64) = self._unpack("<IQHHIIQQQQ", record_offset)
        if signature != self._EOCD64 or record_size != 44 or disk or cd_disk or here64 != count64:
            raise _ZipAmbiguous("the zip64 end record is malformed or carries extra data")
        for small, big in ((count, count64), (cd_size, cd_size64), (cd_offset, cd_offset64)):
            if small not in (0xFFFF, 0xFFFFFFFF) and small != big:
                raise _ZipAmbiguous("the end record and the zip64 end record disagree")
        return cd_offset64, cd_size64, count64, record_offset

    def _central_directory(self, offset: int, size: int, count: int) -> list[dict]:
        records, seen, position = [], set(), offset
        for _ in range(count):
            (signature, _, _, flags, method, _, _, crc, compressed, usize, name_len, extra_len, comment_len,
             disk, _, _, local) = self._unpack("<IHHHHHHIIIHHHHHII", position)
            if signature != self._CENTRAL:
                raise _ZipAmbiguous(f"the central directory is malformed at offset {position}")
            name_bytes = self.data[position + 46:position + 46 + name_len]
            extra = self.data[position + 46 + name_len:position + 46 + name_len + extra_len]
            position += 46 + name_len + extra_len + comment_len
            name = self._name(name_bytes, flags)
            if comment_len or disk:
                raise _ZipAmbiguous(f"entry '{name}' has a comment or lies on another disk")
            if flags & 0x0001 or flags & ~self._ALLOWED_FLAGS:
                raise _ZipAmbiguous(f"entry '{name}' is encrypted or uses unsupported flags ({flags:#06x})")
            if method not in (0, 8) or (method == 0 and compressed != usize):
                raise _ZipAmbiguous(f"entry '{name}' uses compression method {method}")
            usize, compressed, local = self._zip64_fields(name, extra, usize, compressed, local)
            folded = name_bytes.lower()  # miniz matches names ignoring ASCII case
            if folded in seen:
                raise _ZipAmbiguous(f"the entry name '{name}' occurs more than once (ignoring case)")
            seen.add(folded)
            records.append({"name": name, "name_bytes": name_bytes, "flags": flags, "method": method, "crc": crc,
                            "compressed": compressed, "size": usize, "offset": local})
        if position != offset + size:
            raise _ZipAmbiguous("the central directory's recorded size does not match its entries")
        return records

    def _zip64_fields(self, name: str, extra: bytes, usize: int, compressed: int, local: int) -> tuple[int, int, int]:
        fields = self._extra_fields(name, extra)
        wanted = [value == 0xFFFFFFFF for value in (usize, compressed, local)]
        if 1 not in fields:
            if any(wanted):
                raise _ZipAmbiguous(f"entry '{name}' has zip64 markers but no zip64 extra field")
            return usize, compressed, local
        payload = fields[1]
        if len(payload) != 8 * sum(wanted):
            raise _ZipAmbiguous(f"entry '{name}' has a zip64 extra field that does not match its markers")
        values = iter(struct.unpack(f"<{sum(wanted)}Q", payload))
        usize, compressed, local = (next(values) if want else value
                                    for want, value in zip(wanted, (usize, compressed, local)))
        return usize, compressed, local

    @staticmethod
    def _extra_fields(name: str, extra: bytes) -> dict[int, bytes]:
        fields, position = {}, 0
        while position < len(extra):
            if position + 4 > len(extra):
                raise _ZipAmbiguous(f"entry '{name}' has a truncated extra field")
            tag, size = struct.unpack_from("<HH", extra, position)
            if position + 4 + size > len(extra) or tag in fields:
                raise _ZipAmbiguous(f"entry '{name}' has a malformed extra field")
            fields[tag] = extra[position + 4:position + 4 + size]
            position += 4 + size
        return fields

    @staticmethod
    def _name(raw: bytes, flags: int) -> str:
        try:
            name = raw.decode("utf-8" if flags & 0x0800 else "ascii")
        except UnicodeDecodeError:
            raise _ZipAmbiguous(f"an entry name is not valid {'UTF-8' if flags & 0x0800 else 'ASCII'}") from None
        parts = name.split("/")
        if (not name or name.startswith("/") or "\\" in name or any(ord(c) < 32 for c in name)
                or any(part in ("", ".", "..") for part in parts)):
            raise _ZipAmbiguous(f"the entry name {name!r} is not a plain relative file path")
        return name

    def _local_record(self, record: dict) -> int:
        """Check the local header of ``record`` against it; return where the entry (with its descriptor) ends."""
        offset, name = record["offset"], record["name"]
        (signature, _, flags, method, _, _, crc, compressed, usize, name_len,
         extra_len) = self._unpack("<IHHHHHIIIHH", offset)
        if signature != self._LOCAL:
            raise _ZipAmbiguous(f"entry '{name}' has no local header where the central directory points")
        name_bytes = self.data[offset + 30:offset + 30 + name_len]
        if name_bytes != record["name_bytes"] or flags != record["flags"] or method != record["method"]:
            raise _ZipAmbiguous(f"entry '{name}': its local header disagrees with the central directory "
                                "(name, flags or method)")
        local_fields = self._extra_fields(name, self.data[offset + 30 + name_len:offset + 30 + name_len + extra_len])
        record["data_start"] = start = offset + 30 + name_len + extra_len
        end = start + record["compressed"]
        if end > len(self.data):
            raise _ZipAmbiguous(f"entry '{name}' runs past the end of the file")
        zip64 = 1 in local_fields
        if zip64:
            values = local_fields[1]
            if len(values) < 16:
                raise _ZipAmbiguous(f"entry '{name}' has a malformed zip64 local field")
            big_usize, big_compressed = struct.unpack_from("<QQ", values)
        if flags & 0x0008:
            if crc or (compressed, usize) not in ((0, 0), (0xFFFFFFFF, 0xFFFFFFFF)) and not (
                    crc == record["crc"] and compressed == record["compressed"] and usize == record["size"]):
                raise _ZipAmbiguous(f"entry '{name}': its local header disagrees with the central directory")
            has_signature = self._unpack("<I", end)[0] == self._DESCRIPTOR
            position = end + (4 if has_signature else 0)
            big = zip64 or record["compressed"] >= 0xFFFFFFFF or record["size"] >= 0xFFFFFFFF
            d_crc, d_compressed, d_usize = self._unpack("<IQQ" if big else "<III", position)
            if (d_crc, d_compressed, d_usize) != (record["crc"], record["compressed"], record["size"]):
                raise _ZipAmbiguous(f"entry '{name}': its data descriptor disagrees with the central directory")
            return position + (20 if big else 12)
        if zip64 and (compressed, usize) == (0xFFFFFFFF, 0xFFFFFFFF):
            compressed, usize = big_compressed, big_usize
        if (crc, compressed, usize) != (record["crc"], record["compressed"], record["size"]):
            raise _ZipAmbiguous(f"entry '{name}': its local header disagrees with the central directory "
                                "(CRC or sizes)")
        return end


def torch_load(path: Path, *, trust_pickle: bool) -> Any:
    """``torch.load`` that unpickles arbitrary objects only when the user trusts the file."""
    import torch

    try:
        with warnings.catch_warnings():
            # Plain pickle.dump files make torch warn about their protocol just before it refuses them anyway.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refusal = exc  # weights_only refused the content: custom objects, or bytes that are no pickle at all
    except Exception as exc:
        raise unreadable(path, describe(exc)) from exc
    if not trust_pickle:
        if not _holds_pickle(path, refusal):
            raise unreadable(path, "it is neither an archive written by torch.save nor a pickle") from refusal
        raise UnsafeInputError(
            f"'{path}' is a full Python pickle rather than plain weights{_named_global(refusal)}, and unpickling it "
            "runs code stored in the file, which can do anything on this machine; onnxgate refuses to load it by "
            "default.",
            hint=_TRUST_HINT + SAFE_FORMATS_HINT,
        ) from refusal
    confine_untrusted_code(f"the pickle '{path}'")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ImportError, AttributeError) as exc:
        raise ModelSourceError(
            f"'{path}' is a pickled model whose classes cannot be imported here: {describe(exc)}.",
            hint="A pickle stores only the module and class names, not their code: make the package that defines "
            f"the model importable (install it or add it to PYTHONPATH). {SAFE_FORMATS_HINT}",
        ) from exc
    except Exception as exc:
        raise unreadable(path, describe(exc)) from exc


def check_pt2_archive(path: Path, data: bytes | None = None) -> StrictZip:
    """Refuse a ``.pt2`` archive that ``torch.export.load`` could only read by unpickling arbitrary objects, or
    whose zip structure different readers could read differently; return the validated archive.

    Called before the archive is loaded whenever the user did not pass ``--trust-code``. ``data`` is the file's
    bytes (read once by ``read_regular_file``): ``load_pt2`` then hands torch exactly these bytes, never the path,
    so what torch reads is what was checked. The zip is parsed by ``StrictZip`` (every byte accounted for, one
    reading only); the archive's JSON payload configs are read and every pickled member is tried with
    ``weights_only`` semantics; nothing is executed.
    """
    if data is None:
        data = read_regular_file(path, what="Model file")
    try:
        archive = StrictZip(data)
    except _ZipDamaged as exc:
        raise unreadable(path, f"it is a damaged zip archive ({exc})") from None
    except _ZipAmbiguous as exc:
        raise UnsafeInputError(
            f"'{path}' is a zip archive whose structure zip readers can read differently ({exc}); the check "
            "onnxgate runs and torch's own reader could then see different files, so onnxgate refuses it. "
            "torch.export.save never writes such an archive.",
            hint=_TRUST_HINT + "Or re-save the program with torch.export.save.",
        ) from None
    members = {name: None for name in archive.names}
    root = _pt2_root(path, members)
    _check_pt2_layout(path, archive.names, root)
    checked = {name for name, _ in _payload_configs(members, root)}
    for config_name, kind in _payload_configs(members, root):
        checked |= _check_payload_config(path, archive, root, config_name, kind, members)
    for name in members:
        relative = name[len(root):]
        if relative.startswith("models/"):
            _check_program_json(path, archive, name)
        if name in checked or relative in _PT2_DATA_FILES or relative.startswith(("models/", "extra/")):
            continue  # raw tensor bytes, text and JSON (read by torch's JSON deserializer): no pickle
        # Anything else (sample inputs, a legacy weights file) is a torch.save pickle or worse: it must load as
        # plain tensors.
        _require_weights_only(path, archive, name, what=relative)
    return archive


def load_pt2(path: Path, data: bytes | None = None) -> Any:
    """Load a checked ``.pt2`` archive's program with torch's archive reader (no legacy-format fallback), from
    the bytes that were checked when given."""
    from torch.export.pt2_archive._package import load_pt2 as _torch_load_pt2

    contents = _torch_load_pt2(io.BytesIO(data) if data is not None else str(path))
    programs = contents.exported_programs
    if not programs:
        raise unreadable(path, "the archive holds no exported program")
    return programs.get("model") or next(iter(programs.values()))


def read_regular_file(path: Path, *, what: str) -> bytes:
    """The bytes of ``path``, which must be a regular file; a FIFO, socket or device is refused without blocking
    (exit 2). Read once, so later checks and the load see the same bytes even if the file changes meanwhile."""
    require_regular_file(path, what=what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise BadInputError(f"{what} '{path}' cannot be read: {exc.strerror or describe(exc)}.",
                            hint="Check the path and its permissions.") from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):  # swapped for a FIFO between stat and open
            raise _not_regular(path, what, os.fstat(file.fileno()).st_mode)
        return file.read()


def require_regular_file(path: Path, *, what: str) -> None:
    """Raise BadInputError (exit 2) unless ``path`` is a regular file (following symlinks). A named pipe would
    block the reader forever; a device could be endless."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ModelSourceError(f"{what} '{path}' does not exist (no such file).",
                               hint=f"Check the path; a relative path is resolved against {Path.cwd()}.") from None
    except OSError as exc:
        raise BadInputError(f"{what} '{path}' cannot be read: {exc.strerror or describe(exc)}.",
                            hint="Check the path and its permissions.") from None
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise _not_regular(path, what, mode)


def _not_regular(path: Path, what: str, mode: int) -> BadInputError:
    kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
            else "not a regular file")
    return BadInputError(f"{what} '{path}' is {kind}, not a regular file; onnxgate reads models only from "
                         "regular files (it does not wait on pipes or read devices).",
                         hint="Save the model to a file first and give that file's path.")


def load_npz(path: str | Path, *, what: str) -> dict[str, Any]:
    """Every array of an ``.npz`` file, read without pickle (object arrays are refused: exit 7)."""
    import numpy as np

    if not zipfile.is_zipfile(path):  # also False for a missing file; np.load would try it as a pickle
        raise BadInputError(f"{what} '{path}' is not an .npz archive (missing, or not a zip file).",
                            hint="Save it with numpy.savez(PATH, name=array, ...): one array per model input/output.")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except ValueError as exc:  # object arrays: would need pickle
        raise UnsafeInputError(f"{what} '{path}' holds pickled object arrays, which onnxgate does not load.",
                               hint="Save plain numeric arrays (numpy.savez with numeric dtypes).") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise BadInputError(f"{what} '{path}' is not a readable .npz file ({describe(exc)}).",
                            hint="Give a file written by numpy.savez.") from exc


# ------------------------------------------------------------------------------------- untrusted model code

_CONFINEMENT: dict[str, Any] | None = None
_OUTPUT_FLAGS = ("-o", "--output", "--out", "--out-dir", "--output-dir")
_LANDLOCK_FILE_RIGHTS = (1 << 1) | (1 << 14)  # WRITE_FILE, TRUNCATE: the rights a rule on a plain file may grant


def _stage_folder() -> list[Path]:
    """The folder of the stage file the console script reads when this child dies (``cli/isolate.py`` makes one
    folder for it alone, so allowing it allows nothing else)."""
    from .stages import STAGE_FILE_ENV

    path = os.environ.get(STAGE_FILE_ENV)
    if path and Path(path).parent.name.startswith("onnxgate-stage-") and Path(path).parent.is_dir():
        return [Path(path).parent]
    return []


def confine_untrusted_code(what: str) -> dict[str, Any]:
    """Before code the user consented to (``--trust-code``) is loaded: confine what this process can write.

    Applied only in the child interpreter the ``onnxgate`` console script runs a command in (``ONNXGATE_CHILD``)
    and in a ``worker.run_in_worker`` process (a zoo model's worker): confining a library caller's own process (a
    notebook, a test runner) would take away its file system. There:

    * a fresh scratch folder becomes ``HOME``, ``TMPDIR`` (also ``tempfile.tempdir``) and the XDG/torch cache
      folders, so caches and temporary files the code writes land there;
    * with Linux Landlock (ABI 1+), the process and every thread and process it starts afterwards may create,
      write, truncate, rename or delete files only beneath that scratch folder, the folders of the command's
      outputs (``-o``/``--output``/``--out`` and the like, whose folder must be written) and ``/dev`` (``/dev/null``,
      ``/dev/shm`` for multiprocessing) and, in a worker, the folders of the files it already writes (a zoo
      model's log, in the model's output folder) and onnxgate's temporary folders this process made before
      (``bench`` exports into one); reading stays allowed. The user's home, the virtual environment and
      everything else become read-only for the rest of the command, so model code cannot plant a ``.pth`` file,
      a shell profile or a tampered package.

    Returns what was enforced (``{"scratch": ..., "mechanism": "landlock ABI N" | None, "writable": [...],
    "why_not": ...}``), also warned about on stderr when nothing could be enforced. Idempotent per process.
    """
    global _CONFINEMENT
    if _CONFINEMENT is not None:
        return _CONFINEMENT
    from . import fsutil

    in_worker = _in_worker_process()
    if os.environ.get("ONNXGATE_CHILD") != "1" and not in_worker:
        _CONFINEMENT = {"scratch": None, "mechanism": None, "writable": [],
                        "why_not": "not the onnxgate console script's child process nor a worker process "
                                   "(a library call): not confined"}
        return _CONFINEMENT
    import sys
    import tempfile

    # A staging name: once confined, this process may empty the folder but not remove it from its parent, so the
    # next onnxgate run's sweep of $TMPDIR removes the (empty) folder after this process is gone.
    original_tmp = Path(tempfile.gettempdir()).resolve()  # before $TMPDIR changes
    earlier = _temp_folders_of_this_process(original_tmp)
    fsutil.sweep_quietly(tempfile.gettempdir())
    scratch = (Path(tempfile.gettempdir()) / fsutil.staging_name("untrusted", "scratch")).resolve()
    scratch.mkdir(mode=0o700)
    import atexit

    atexit.register(_empty_folder, scratch)
    for variable in ("HOME", "TMPDIR", "TMP", "TEMP", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME",
                     "TORCHINDUCTOR_CACHE_DIR", "TORCH_HOME"):
        os.environ[variable] = str(scratch)
    tempfile.tempdir = str(scratch)
    writable = [scratch, Path("/dev")] + _output_folders(sys.argv[1:]) + earlier + _stage_folder()
    removable = original_tmp  # empty folders only: its own scratch, a TemporaryDirectory made before
    if in_worker:  # a zoo model's worker already writes its log into the model's own output folder
        writable += _folders_open_for_writing()
    mechanism, why_not = None, None
    try:
        mechanism = _landlock(writable, removable)
    except OSError as exc:
        why_not = f"Landlock is not available here ({exc.strerror or exc})"
    try:  # Landlock below ABI 8 confines the calling thread and what it starts; threads already running are not
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        threads = None
    _CONFINEMENT = {"scratch": str(scratch), "mechanism": mechanism, "writable": [str(p) for p in writable],
                    "why_not": why_not, "threads_at_confinement": threads}
    if mechanism is None:
        print(f"warning: {what} runs with your permissions: {why_not}, so onnxgate could not make the file system "
              f"read-only for it; only HOME and TMPDIR point at the scratch folder {scratch}.", file=sys.stderr)
    return _CONFINEMENT


def _empty_folder(folder: Path) -> None:
    import shutil

    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    try:
        folder.rmdir()  # refused under Landlock (the parent is not writable): the next sweep removes it
    except OSError:
        pass


def _temp_folders_of_this_process(tmp: Path) -> list[Path]:
    """onnxgate's own temporary folders the command made before the model was loaded (bench exports into one):
    named ``onnxgate-*`` or with this process's staging prefix, owned by this user, created since it started."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks after boot
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        started = boot + ticks / os.sysconf("SC_CLK_TCK")
        entries = list(os.scandir(tmp))
    except (OSError, ValueError, IndexError, StopIteration):
        return []
    mine = f".onnxgate-staging-{os.getpid()}-"
    found = []
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if (entry.name.startswith(("onnxgate-", mine)) and stat.S_ISDIR(info.st_mode)
                and info.st_uid == os.getuid() and info.st_ctime >= started - 1):
            found.append(Path(entry.path))
    return found


def _in_worker_process() -> bool:
    """Whether this process is a ``worker.run_in_worker`` worker (it names itself so in /proc)."""
    from .worker import WORKER_NAME

    try:
        with open("/proc/self/comm") as comm:
            return comm.read().strip() == WORKER_NAME
    except OSError:
        return False


def _folders_open_for_writing() -> list[Path]:
    """The folders of the regular files this process holds open for writing (Linux ``/proc``)."""
    found = []
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return []
    for fd in descriptors:
        try:
            with open(f"/proc/self/fdinfo/{fd}") as info:
                flags = next(int(line.split()[1], 8) for line in info if line.startswith("flags:"))
            target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        except (OSError, StopIteration, ValueError):
            continue
        if flags & (os.O_WRONLY | os.O_RDWR) and target.is_file() and target.parent not in found:
            found.append(target.parent)
    return found


def _output_folders(argv: list[str]) -> list[Path]:
    """Where the outputs named on the command line are written: an existing output folder itself, else the
    folder that will hold the output file or folder."""
    found = []
    for i, arg in enumerate(argv):
        value = None
        if arg in _OUTPUT_FLAGS and i + 1 < len(argv):
            value = argv[i + 1]
        elif "=" in arg and arg.split("=", 1)[0] in _OUTPUT_FLAGS:
            value = arg.split("=", 1)[1]
        if value:  # an existing folder is written inside; a file or a new folder is created in its parent
            target = Path(value).expanduser().resolve()
            found.append(target if target.is_dir() else target.parent)
    return [p for p in found if p.is_dir()]


def _landlock(writable: list[Path], removable: Path | None = None) -> str:
    """Allow writes only beneath ``writable`` for this thread and everything it starts from now on (Landlock),
    and the removal of empty folders directly in ``removable``. Raises OSError where the kernel lacks Landlock."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    create, add_rule, restrict = 444, 445, 446  # the same numbers on x86-64 and arm64
    abi = libc.syscall(create, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    handled = sum(1 << bit for bit in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12))  # write, remove and make rights
    if abi >= 2:
        handled |= 1 << 13  # REFER: links and renames across folders
    if abi >= 3:
        handled |= 1 << 14  # TRUNCATE
    attr = ctypes.c_uint64(handled)  # struct landlock_ruleset_attr, first field only (older ABIs' size)
    ruleset = libc.syscall(create, ctypes.byref(attr), ctypes.c_size_t(8), ctypes.c_uint32(0))
    if ruleset < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    remove_dir = 1 << 4
    try:
        rules = [(folder, None) for folder in writable] + ([(removable, remove_dir)] if removable else [])
        for folder, only in rules:
            fd = os.open(folder, os.O_PATH | os.O_CLOEXEC)
            try:
                rights = handled if stat.S_ISDIR(os.fstat(fd).st_mode) else handled & _LANDLOCK_FILE_RIGHTS
                rights = rights if only is None else only
                rule = PathBeneath(rights, fd)
                if libc.syscall(add_rule, ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.byref(rule),
                                ctypes.c_uint32(0)) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"landlock_add_rule({folder}): {os.strerror(errno)}")
            finally:
                os.close(fd)
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, required by landlock_restrict_self
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        if libc.syscall(restrict, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
    finally:
        os.close(ruleset)
    return f"landlock ABI {abi}"


def unreadable(path: Path, reason: str) -> ModelSourceError:
    return ModelSourceError(
        f"'{path}' is not a file PyTorch can load ({reason}).",
        hint="Give a torch.export archive (.pt2) or a state dict with --arch; a TorchScript file or a pickled "
        "nn.Module needs --trust-code.",
    )


def _pt2_root(path: Path, members: dict[str, Any]) -> str:
    """The archive's root folder ("name/"), from its ``archive_format`` entry, which must say pt2."""
    formats = [name for name in members if name.endswith("archive_format") and name.count("/") <= 1]
    if len(formats) != 1:
        raise unreadable(path, "it is a zip archive but not a torch.export archive (no single archive_format entry)")
    root = formats[0][: -len("archive_format")]
    return root


def _payload_configs(members: dict[str, Any], root: str) -> list[tuple[str, str]]:
    found = []
    for name in members:
        relative = name[len(root):]
        if re.fullmatch(r"data/weights/[^/]+_weights_config\.json", relative):
            found.append((name, "weights"))
        elif re.fullmatch(r"data/constants/[^/]+_constants_config\.json", relative):
            found.append((name, "constants"))
    return found


def _check_payload_config(path: Path, archive: StrictZip, root: str, config_name: str, kind: str,
                          members: dict[str, Any]) -> set[str]:
    """Each entry of a weights/constants config: raw tensors are fine; pickled ones must pass weights_only;
    opaque and TorchBind objects are refused (they unpickle arbitrary objects). Returns the members checked."""
    try:
        config = json.loads(archive.read(config_name).decode("utf-8")).get("config", {})
        entries = list(config.items())
    except (ValueError, AttributeError) as exc:
        raise unreadable(path, f"its {kind} config {config_name} is not valid JSON") from exc
    checked = set()
    for fqn, meta in entries:
        if not isinstance(meta, dict) or not isinstance(meta.get("path_name"), str):
            raise unreadable(path, f"its {kind} config {config_name} has a malformed entry for '{fqn}'")
        path_name = meta["path_name"]
        if not _SIMPLE_NAME.fullmatch(path_name) or path_name in (".", ".."):
            raise UnsafeInputError(
                f"'{path}' names the payload '{path_name}' for '{fqn}' in {config_name}: not a plain file name "
                "inside its folder, which torch.export.save never writes; onnxgate refuses the archive.",
                hint=_TRUST_HINT + "Or re-save the program with torch.export.save.",
            )
        if kind == "constants" and not path_name.startswith(_TENSOR_CONSTANT_PREFIX):
            raise UnsafeInputError(
                f"'{path}' stores the constant '{fqn}' as a pickled Python object ({path_name}); loading it would "
                "run code chosen by whoever wrote the file, so onnxgate refuses the archive by default.",
                hint=_TRUST_HINT + "Or export a model whose constants are plain tensors.",
            )
        member = f"{root}data/{kind}/{path_name}"
        if member not in members:
            raise unreadable(path, f"its {kind} config names {path_name}, which the archive lacks")
        if meta.get("use_pickle"):
            _require_weights_only(path, archive, member, what=f"{kind[:-1]} '{fqn}'")
        checked.add(member)
    return checked


# What an exported program's JSON may hold where torch's deserializer turns text into code. Node targets are
# resolved by attribute lookups from ``torch``, ``math`` or ``operator`` (``torch.os.system`` resolves), symbolic
# expressions go through ``sympy.sympify`` (which evaluates Python) and ``guards_code`` is compiled with ``exec``
# when ``program.module()`` is called: each must match a narrow grammar, or the archive is refused.
_OP_TARGET = re.compile(r"torch\.ops\.(aten|prims|higher_order|quantized_decomposed|torchvision)\.\w+(\.\w+)?"
                        r"|torch\._C\._set_grad_enabled|torch\.amp\.autocast_mode\._(enter|exit)_autocast"
                        r"|_operator\.(getitem|add|sub|mul|truediv|floordiv|mod|pow|neg|pos|abs|eq|ne|lt|le|gt|ge"
                        r"|and_|or_|xor|not_|invert|lshift|rshift)"
                        r"|math\.(floor|ceil|trunc|sqrt|exp|log|pow)"
                        r"|torch\.(sym_float|sym_int|sym_max|sym_min|sym_not|sym_ite|sym_sum|_sym_sqrt|sym_sqrt"
                        r"|_check|_check_is_size)")
_FILE_OPS = {"from_file"}  # aten operators that open files by name
_SYMPY_NAMES = {
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "Max", "Min", "Abs", "Eq",
    "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Integer", "Rational", "Float", "oo", "zoo", "nan", "True",
    "False", "true", "false", "floor", "ceiling", "sqrt", "Piecewise", "ITE", "BitwiseFn_bitwise_and",
    "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor", "OpaqueUnaryFn_sqrt", "Symbol",
    # Symbol('s77', positive=True, integer=True): the assumptions a serialized symbol carries
    "positive", "negative", "nonnegative", "nonpositive", "nonzero", "zero", "integer", "real", "finite",
}
_SYMBOL = re.compile(r"[a-z]+\d+")  # s0, u12, c3, ...: how torch names shape symbols
_SYMPY_TOKENS = re.compile(r"\s+|\d+(\.\d+)?(e[+-]?\d+)?|[A-Za-z_]\w*|'[a-z]+\d+'|\*\*|[-+*/%(),<>=!]=?")
_GUARD_METHODS = {"size", "stride", "storage_offset", "dim", "numel"}
_GUARD_CALLS = {"IsNonOverlappingAndDenseIndicator", "cast_symbool_to_symint_guardless"}
_TORCH_GUARD_FUNCTIONS = {"sym_float", "sym_int", "sym_max", "sym_min", "sym_not", "sym_ite", "sym_sqrt", "_sym_sqrt"}
_MATH_FUNCTIONS = {"floor", "ceil", "trunc", "sqrt"}


def _check_program_json(path: Path, archive: StrictZip, name: str) -> None:
    """Refuse an exported program whose JSON would make torch's deserializer run code the archive chose."""
    try:
        program = json.loads(archive.read(name).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise unreadable(path, f"its program {name} is not valid JSON") from exc

    def refuse(what: str) -> UnsafeInputError:
        return UnsafeInputError(
            f"'{path}' holds a program ({name}) with {what}; torch would turn it into code when loading or "
            "running the program, and torch.export.save does not write such a program from an ordinary model, so "
            "onnxgate refuses the archive.",
            hint=_TRUST_HINT + "Or re-export the model with torch.export and save it with torch.export.save.",
        )

    guards = program.get("guards_code", []) if isinstance(program, dict) else []
    if not isinstance(guards, list) or not all(isinstance(g, str) for g in guards):
        raise refuse("malformed guard code")
    for guard in guards:
        if not _safe_guard(guard):
            raise refuse(f"guard code that is not a plain shape check ({guard[:80]!r})")
    stack = [program]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            target = item.get("target")
            if isinstance(target, str) and ("inputs" in item or "outputs" in item):
                op = target.split(".")
                if not _OP_TARGET.fullmatch(target) or _FILE_OPS & set(op):
                    raise refuse(f"the operator '{target[:80]}', which is not a tensor operator onnxgate accepts "
                                 "from an untrusted file (it could reach Python functions or the file system)")
            expr = item.get("expr_str")
            if isinstance(expr, str) and not _safe_sympy(expr):
                raise refuse(f"the symbolic expression {expr[:80]!r}, which sympy would evaluate as Python")
            stack.extend(value for value in item.values() if isinstance(value, (list, dict)))
            for value in item.values():  # pytree specs (in_spec, out_spec) are JSON inside strings
                if isinstance(value, str) and ("__enum__" in value or "default_factory_module" in value):
                    raise refuse("an input or output spec that names Python modules to import (an enum or a "
                                 "defaultdict factory)")
    ranges = program.get("range_constraints", {}) if isinstance(program, dict) else {}
    if isinstance(ranges, dict) and not all(_SYMBOL.fullmatch(k) or _safe_sympy(k) for k in ranges):
        raise refuse("a range constraint on something other than a shape symbol")


def _safe_sympy(text: str) -> bool:
    """A sympy expression of shape symbols, numbers, arithmetic and known functions: nothing ``eval`` could turn
    into attribute access, strings, imports or calls of anything else."""
    position = 0
    while position < len(text):
        token = _SYMPY_TOKENS.match(text, position)
        if token is None:
            return False
        word = token.group()
        if (word[0].isalpha() or word[0] == "_") and not (_SYMBOL.fullmatch(word) or word in _SYMPY_NAMES):
            return False
        position = token.end()
    return len(text) < 10_000


def _safe_guard(text: str) -> bool:
    """A guard torch would compile: comparisons and arithmetic over ``L[...]`` inputs' sizes and strides."""
    import ast

    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return False
    allowed_ops = (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod, ast.Pow, ast.Div, ast.USub, ast.UAdd, ast.Not,
                   ast.And, ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
    allowed = (ast.Expression, ast.Compare, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Load, ast.Subscript, ast.Call,
               ast.Attribute, ast.Name, ast.Constant, *allowed_ops)
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            return False
        if isinstance(node, ast.Constant) and type(node.value) not in (int, float, bool, str):
            return False
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                not _SIMPLE_NAME.fullmatch(node.value) or node.value.startswith("__")):
            return False
        if isinstance(node, ast.Name) and node.id not in {"L", "inf", "math", "torch", *_GUARD_CALLS}:
            return False
        if isinstance(node, ast.Attribute):
            base = node.value.id if isinstance(node.value, ast.Name) else None
            if not (node.attr in _GUARD_METHODS and base not in ("math", "torch")
                    or base == "math" and node.attr in _MATH_FUNCTIONS
                    or base == "torch" and node.attr in _TORCH_GUARD_FUNCTIONS):
                return False
    for node in ast.walk(tree):  # math/torch only as the base of an allowed attribute
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Name) and child.id in ("math", "torch") and not isinstance(node, ast.Attribute):
                return False
    return True


def _check_pt2_layout(path: Path, names: list[str], root: str) -> None:
    """Every entry lies in the archive's one root folder, where torch.export.save puts it; compiled code
    (AOTInductor, ExecuTorch) and unknown entries are refused."""
    for name in names:
        relative = name[len(root):] if name.startswith(root) else None
        if relative is None:
            why = f"the entry '{name}' lies outside the archive's folder '{root}'"
        elif relative.startswith(("data/aotinductor/", "data/executorch/", "data/mtia")):
            why = f"the entry '{name}' is compiled code (AOTInductor/ExecuTorch), which onnxgate never loads"
        elif relative in _PT2_DATA_FILES or _PT2_LAYOUT.fullmatch(relative):
            continue
        else:
            why = f"the entry '{name}' is not part of a torch.export archive's layout"
        raise UnsafeInputError(
            f"'{path}' is not laid out as torch.export.save writes an archive: {why}. A reader could load "
            "such an entry in ways the check does not foresee, so onnxgate refuses the archive.",
            hint=_TRUST_HINT + "Or re-save the program with torch.export.save.",
        )


def _require_weights_only(path: Path, archive: StrictZip, member: str, *, what: str) -> None:
    import torch

    data = archive.read(member)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeInputError(
            f"'{path}' stores its {what} as a Python pickle that is not plain tensors{_named_global(exc)}; "
            "torch.export.load would unpickle it with weights_only=False, running code chosen by whoever wrote "
            "the file, so onnxgate refuses the archive by default.",
            hint=_TRUST_HINT + "Re-save the program with torch.export.save from a model holding plain tensors.",
        ) from exc
    except Exception as exc:  # not a pickle at all: torch would fall back to weights_only=False on it too
        raise UnsafeInputError(
            f"'{path}' holds the member '{member}' ({what}) that is not plain tensor data "
            f"({describe(exc)}); torch.export.load would retry it as an arbitrary pickle, so onnxgate refuses it.",
            hint=_TRUST_HINT + "Re-save the program with torch.export.save using this version of torch.",
        ) from exc


def _holds_pickle(path: Path, refusal: pickle.UnpicklingError) -> bool:
    """Whether a file ``weights_only`` refused is a real pickle (not random bytes): it named a Python global, or
    it is a torch.save zip archive (whose data is always a pickle), or it starts with a pickle protocol opcode."""
    if "GLOBAL " in str(refusal) or zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as file:
        return file.read(1) == pickle.PROTO


def _named_global(refusal: BaseException) -> str:
    found = re.search(r"GLOBAL (\S+)", str(refusal))
    return f" (it references {found.group(1)})" if found else ""
