"""The one array-file reader (onnxgate/npz.py): what it refuses, before reading, and with which exit code."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest

from onnxgate.errors import BadInputError, ExitCode, IntegrityError, UnsafeInputError
from onnxgate.npz import load_npy, load_npz


def _member(path, name: str, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}.npy", payload)


def test_reads_every_array_by_name(tmp_path):
    x, y = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64)
    np.savez(tmp_path / "a.npz", **{"x": x, "y.z": y})  # any name a model gives an input
    arrays = load_npz(tmp_path / "a.npz")
    assert set(arrays) == {"x", "y.z"} and np.array_equal(arrays["x"], x) and arrays["y.z"].dtype == np.int64
    np.save(tmp_path / "x.npy", x)
    assert np.array_equal(load_npy(tmp_path / "x.npy"), x)


def test_object_arrays_are_refused_unpickled(tmp_path):
    payload = io.BytesIO()
    np.save(payload, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _member(tmp_path / "o.npz", "o", payload.getvalue())
    with pytest.raises(UnsafeInputError, match="pickled") as info:
        load_npz(tmp_path / "o.npz", what="--golden")
    assert info.value.exit_code == ExitCode.UNSAFE_INPUT and "--golden" in info.value.message
    (tmp_path / "o.npy").write_bytes(payload.getvalue())
    with pytest.raises(UnsafeInputError, match="pickled"):
        load_npy(tmp_path / "o.npy")


def test_sizes_are_refused_from_the_headers(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)})
    _member(tmp_path / "big.npz", "x", header.getvalue() + b"\0" * 64)
    with pytest.raises(BadInputError, match="declares 4,398,046,511,104 bytes"):
        load_npz(tmp_path / "big.npz")
    with pytest.raises(IntegrityError, match="declares 4,398,046,511,104 bytes"):  # a bundle's file: exit 9
        load_npz(tmp_path / "big.npz", bundle=True)
    np.savez(tmp_path / "two.npz", a=np.zeros(100), b=np.zeros(100))
    with pytest.raises(UnsafeInputError, match="beyond what onnxgate unpacks"):
        load_npz(tmp_path / "two.npz", max_bytes=1000)


@pytest.mark.parametrize("make, match", [
    (lambda p: p.write_bytes(b"not a zip"), "not an .npz archive"),
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "not a regular file"),
    (lambda p: os.mkfifo(p), "not a regular file"),  # refused from stat: opening a FIFO would block
    (lambda p: _member(p, "x", b"\x93NUMPY\x01\x00\x10\x00{not a header} \n"), "cannot be read"),
])
def test_unreadable_files_are_bad_input(tmp_path, make, match):
    path = tmp_path / "f.npz"
    make(path)
    with pytest.raises(BadInputError, match=match) as info:
        load_npz(path, what="--reference")
    assert info.value.exit_code == ExitCode.BAD_INPUT


def test_members_must_be_one_array_per_name(tmp_path):
    with zipfile.ZipFile(tmp_path / "m.npz", "w") as archive:
        archive.writestr("notes.txt", b"hello")
    with pytest.raises(IntegrityError, match="not one array per name"):
        load_npz(tmp_path / "m.npz", bundle=True)
