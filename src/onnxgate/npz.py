"""The one reader of array files (``.npz``, ``.npy``): a bundle's golden data, ``--golden``/``--reference`` files,
input data. numpy and the standard library only: it runs on production boxes without torch or onnx.

An array file may come from anyone, so nothing in it is trusted before it is checked, and every allocation is
bounded before it happens: an npz is a zip, and a few kilobytes can declare gigabytes.

* only a regular file is opened (a FIFO would block, a device never ends);
* the member count and the declared uncompressed sizes are held to ``MAX_ARRAYS`` and ``MAX_NPZ_BYTES`` before
  anything is read (too much: UnsafeInputError, exit 7);
* every member is one ``NAME.npy``; its header is read first: object arrays (which need pickle, and unpickling
  can run code) are refused (exit 7), and an array declaring more data than its entry holds is refused;
* arrays are read with ``allow_pickle=False``.

A file that cannot be read is bad input (exit 2), or, with ``bundle=True``, an integrity error (exit 9): a
bundle's checksums already vouched for the file, so its author shipped a broken one.
"""

from __future__ import annotations

import math
import stat
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from .errors import BadInputError, IntegrityError, OnnxgateError, UnsafeInputError

MAX_NPZ_BYTES = 8 << 30  # uncompressed, all arrays of one file together
MAX_ARRAYS = 10_000
_BUNDLE_HINT = "Re-create the bundle with `onnxgate bundle`."
_FILE_HINT = "Save plain numeric arrays with numpy.savez(PATH, name=array, ...): one array per name."


def load_npz(path: str | Path, *, what: str = "", bundle: bool = False,
             max_bytes: int = MAX_NPZ_BYTES) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``, by name, after the checks above. ``what`` names the file in
    messages (``"--golden"``); ``bundle`` makes an unreadable file an integrity error."""
    path = Path(path)
    reader = _Reader(path, what, bundle)
    reader.regular_file()
    if not zipfile.is_zipfile(path):  # np.load would try anything else as a pickle
        raise reader.broken("is not an .npz archive (not a zip file)")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            declared = sum(info.file_size for info in infos)
            if len(infos) > MAX_ARRAYS or declared > max_bytes:
                raise UnsafeInputError(
                    f"{reader.subject} declares {len(infos):,} arrays and {declared:,} bytes uncompressed, beyond "
                    f"what onnxgate unpacks ({MAX_ARRAYS:,} arrays, {max_bytes:,} bytes).", hint=reader.hint)
            arrays: dict[str, np.ndarray] = {}
            for info in infos:
                name = info.filename[:-4]
                if not info.filename.endswith(".npy") or name in arrays:
                    raise reader.broken(f"holds '{info.filename[:200]}', which is not one array per name (.npy)")
                with archive.open(info) as fh:
                    arrays[name] = reader.array(fh, info.file_size, info.filename)
            return arrays
    except OnnxgateError:
        raise
    except Exception as exc:  # noqa: BLE001  a damaged zip or .npy: zlib, EOF, struct and value errors alike
        raise reader.broken(f"cannot be read as an npz archive: {str(exc)[:300]}") from exc


def load_npy(path: str | Path, *, what: str = "", max_bytes: int = MAX_NPZ_BYTES) -> np.ndarray:
    """The array of the ``.npy`` at ``path``, with the checks of ``load_npz`` (header first, no pickle)."""
    path = Path(path)
    reader = _Reader(path, what, False)
    size = reader.regular_file()
    try:
        with open(path, "rb") as fh:
            return reader.array(fh, min(size, max_bytes), path.name)
    except OnnxgateError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise reader.broken(f"cannot be read as a .npy array: {str(exc)[:300]}") from exc


class _Reader:
    """The messages and checks of one file."""

    def __init__(self, path: Path, what: str, bundle: bool):
        self.path = path
        self.subject = f"{what} '{path}'" if what else f"'{path}'"
        self.bundle = bundle
        self.hint = _BUNDLE_HINT if bundle else _FILE_HINT

    def broken(self, why: str) -> OnnxgateError:
        return (IntegrityError if self.bundle else BadInputError)(f"{self.subject} {why}.", hint=self.hint)

    def regular_file(self) -> int:
        """The file's size; an error for a missing file, a FIFO, a device or a folder (never opened)."""
        try:
            info = self.path.stat()
        except OSError:
            raise self.broken("does not exist or cannot be read") from None
        if not stat.S_ISREG(info.st_mode):
            raise self.broken("is not a regular file (a folder, a FIFO or a device)")
        return info.st_size

    def array(self, fh: IO[bytes], limit: int, member: str) -> np.ndarray:
        """One .npy from ``fh``: its header checked against ``limit`` (the bytes its entry holds), then its data."""
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise self.broken(f"holds '{member[:200]}' in .npy format {version}, which onnxgate does not read")
        if dtype.hasobject:
            raise UnsafeInputError(f"{self.subject} holds pickled arrays ('{member[:200]}'), which onnxgate never "
                                   "loads: unpickling could run code.", hint=self.hint)
        nbytes = math.prod(int(d) for d in shape) * dtype.itemsize
        if nbytes > limit:
            raise self.broken(f"declares {nbytes:,} bytes of data in the array '{member[:200]}' but its entry holds "
                              f"{limit:,}")
        fh.seek(0)
        return np.lib.format.read_array(fh, allow_pickle=False)
