"""Issue 10 item 5: a bundle is contained by onnxgate itself, whoever wrote it and whichever runtime runs it.

Every bundle here is real (built with the helpers of test_bundle.py) and then edited the way an attacker
would: links out of the bundle, a manifest that lies about sizes or is malformed, external-data locations
that leave the folder, tar archives that are bombs. Each must be refused with its documented exit code (2 bad
input, 7 unsafe, 9 integrity) and a message naming the file, never a traceback; the files outside the bundle
are never opened, which an audit hook (sys.addaudithook: it observes every open, it changes nothing) proves.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import bundle_of, edit_manifest, make_model, rehash

from onnxgate.bundle import verify_bundle, verify_matrix
from onnxgate.bundle import unpack
from onnxgate.bundle._onnx_refs import ProtoError, external_data_refs
from onnxgate.cli.main import main
from onnxgate.errors import BadInputError, UnsafeInputError

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------- shared helpers

_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event in ("open", "os.open") and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


class opened_paths:
    """Every path opened (open / os.open) inside the ``with`` block, as a list of strings."""

    def __enter__(self) -> list[str]:
        global _OPENED
        _OPENED = []
        return _OPENED

    def __exit__(self, *exc) -> None:
        global _OPENED
        _OPENED = None


def cli(args: list[str], capsys) -> tuple[int, dict]:
    """Exit code and JSON report of `onnxgate ARGS --json`, run in-process; a traceback fails the test."""
    code = main([*args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def verify_cli(path: Path, capsys) -> tuple[int, dict]:
    return cli(["verify-bundle", str(path)], capsys)


def entry_for(path: Path) -> dict:
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory) -> Path:
    return bundle_of(model, tmp_path_factory.mktemp("bundle") / "tiny-bundle", tarball=True)


@pytest.fixture(scope="module")
def ext_bundle(tmp_path_factory) -> Path:
    """A bundle whose weights live in an external-data file, model.onnx.data."""
    root = tmp_path_factory.mktemp("ext")
    model = make_model(root / "m.onnx", external_data="m.onnx.data")
    return bundle_of(model, root / "ext-bundle")


@pytest.fixture
def copy(bundle, tmp_path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "copy"))


@pytest.fixture
def ext_copy(ext_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(ext_bundle, tmp_path / "ext-copy"))


@pytest.fixture
def private_tmpdir(tmp_path, monkeypatch) -> Path:
    """$TMPDIR of this test alone, so what staging leaves behind can be counted."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


# ------------------------------------------------------------------------------------------------ symlinks


def test_a_listed_symlink_to_a_file_outside_is_refused_unread(copy, tmp_path, capsys):
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (copy / "notes.txt").symlink_to(secret)
    edit_manifest(copy, lambda m: m["files"].__setitem__("notes.txt", entry_for(secret)))  # a "perfect" forgery
    with opened_paths() as opened:
        code, report = verify_cli(copy, capsys)
    assert code == 7 and report["error"]["type"] == "UnsafeInputError"
    assert "notes.txt" in report["error"]["message"] and "symbolic link" in report["error"]["message"]
    assert not any(p.endswith("notes.txt") or p == str(secret) for p in opened), opened
    assert not any(p.endswith(".npz") or p.endswith("model.onnx") for p in opened)  # refused before hashing


def test_model_onnx_as_a_symlink_out_of_the_bundle_is_refused(copy, tmp_path, capsys):
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(copy / "model.onnx", outside)
    (copy / "model.onnx").symlink_to(outside)  # same bytes: its checksum would match
    with opened_paths() as opened:
        code, report = verify_cli(copy, capsys)
    assert code == 7 and "model.onnx" in report["error"]["message"]
    assert str(outside) not in opened and not any(p.endswith("model.onnx") for p in opened)


@pytest.mark.parametrize("kind", ["link inside the bundle", "linked folder", "dangling link"])
def test_every_symlink_is_refused_even_one_resolving_inside(copy, tmp_path, kind):
    if kind == "link inside the bundle":
        (copy / "again.txt").symlink_to("requirements.txt")
    elif kind == "linked folder":
        outside = tmp_path / "outside-folder"
        outside.mkdir()
        (outside / "w.bin").write_bytes(b"weights")
        (copy / "weights").symlink_to(outside, target_is_directory=True)
    else:
        (copy / "gone.txt").symlink_to(tmp_path / "does-not-exist")
    with pytest.raises(UnsafeInputError, match="symbolic link"):
        verify_bundle(copy)


def test_a_fifo_in_the_bundle_is_refused_without_blocking(copy):
    os.mkfifo(copy / "pipe.bin")  # opening it for reading would block forever
    edit_manifest(copy, lambda m: m["files"].__setitem__("pipe.bin", {"sha256": "0" * 64, "bytes": 0}))
    with pytest.raises(UnsafeInputError, match="FIFO"):
        verify_bundle(copy)


def test_a_symlinked_manifest_is_refused(copy, tmp_path):
    shutil.move(copy / "manifest.json", tmp_path / "manifest.json")
    (copy / "manifest.json").symlink_to(tmp_path / "manifest.json")
    with pytest.raises(UnsafeInputError, match="manifest.json"):
        verify_bundle(copy)


# ------------------------------------------------------------------------------------------- declared sizes


def test_declared_bytes_are_checked_before_the_file_is_read(copy, capsys):
    edit_manifest(copy, lambda m: m["files"]["requirements.txt"].__setitem__(
        "bytes", m["files"]["requirements.txt"]["bytes"] + 1))
    with open(copy / "golden_inputs.npz", "ab") as fh:  # a file grown after writing: sha256 left as it was
        fh.write(b"\0" * 4096)
    with opened_paths() as opened:
        code, report = verify_cli(copy, capsys)
    assert code == 9 and report["result"]["results"][0]["status"] == "tampered"
    reason = report["result"]["results"][0]["reason"]
    assert "requirements.txt: " in reason and "the manifest says" in reason
    assert "golden_inputs.npz: " in reason and "bytes, the manifest says" in reason
    assert not any(p.endswith(("requirements.txt", "golden_inputs.npz")) for p in opened), opened
    assert any(p.endswith("model.onnx") for p in opened)  # files of the right size are still hashed


# ------------------------------------------------------------------------------------------ malformed manifests


MALFORMED = {
    "files as a list": (lambda m: m.__setitem__("files", list(m["files"])), 2, "'files' must be a mapping"),
    "tolerance null": (lambda m: m.__setitem__("tolerances", {"logits": None}), 2, "tolerances"),
    "rtol null": (lambda m: m["tolerances"].__setitem__("logits", {"rtol": None, "atol": 1e-5}), 2, "rtol"),
    "negative atol": (lambda m: m["tolerances"].__setitem__("logits", {"rtol": 1e-3, "atol": -1}), 2, "atol"),
    "tolerance for no output": (lambda m: m["tolerances"].__setitem__("probs", {"rtol": 0, "atol": 0}), 2, "probs"),
    "negative bytes": (lambda m: m["files"]["model.onnx"].__setitem__("bytes", -5), 2, "'bytes'"),
    "huge bytes": (lambda m: m["files"]["model.onnx"].__setitem__("bytes", 10**20), 2, "'bytes'"),
    "bytes as a string": (lambda m: m["files"]["model.onnx"].__setitem__("bytes", "1234"), 2, "'bytes'"),
    "bytes as a boolean": (lambda m: m["files"]["model.onnx"].__setitem__("bytes", True), 2, "'bytes'"),
    "sha256 not hex": (lambda m: m["files"]["model.onnx"].__setitem__("sha256", "zz" * 32), 2, "'sha256'"),
    "sha256 missing": (lambda m: m["files"]["model.onnx"].pop("sha256"), 2, "'sha256'"),
    "entry as a list": (lambda m: m["files"].__setitem__("model.onnx", ["abc", 1]), 2, "entry must be a mapping"),
    "output name not a string": (lambda m: m["outputs"][0].__setitem__("name", 5), 2, "name must be"),
    "outputs empty": (lambda m: m.__setitem__("outputs", []), 2, "nothing to verify"),
    "inputs as a mapping": (lambda m: m.__setitem__("inputs", {"input": 1}), 2, "'inputs' must be a list"),
    "duplicate output": (lambda m: m["outputs"].append(dict(m["outputs"][0])), 2, "twice"),
    "no outputs section": (lambda m: m.pop("outputs"), 2, "lacks its 'outputs'"),
    "format_version a string": (lambda m: m.__setitem__("format_version", "1"), 2, "format_version"),
    "format_version from the future": (lambda m: m.__setitem__("format_version", 99), 2, "format version 99"),
    "model.onnx unlisted": (lambda m: m["files"].pop("model.onnx"), 2, "does not list model.onnx"),
    "path not canonical": (lambda m: m["files"].__setitem__("./x.txt", m["files"]["requirements.txt"]), 2, "canonical"),
    "path with '..'": (lambda m: m["files"].__setitem__("../x.txt", m["files"]["requirements.txt"]), 7, "leaves"),
    "absolute path": (lambda m: m["files"].__setitem__("/etc/passwd", m["files"]["requirements.txt"]), 7, "leaves"),
    "manifest lists itself": (lambda m: m["files"].__setitem__("manifest.json", m["files"]["requirements.txt"]), 2,
                              "list itself"),
    "not a manifest": (lambda m: m.pop("format"), 2, "not an onnxgate bundle manifest"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_manifest_fields_are_clean_errors(copy, capsys, case):
    change, expected, words = MALFORMED[case]
    edit_manifest(copy, change)
    code, report = verify_cli(copy, capsys)
    assert code == expected, report
    assert report["ok"] is False and words in report["error"]["message"] and report["error"]["hint"]
    assert str(copy) in report["error"]["message"]  # names the bundle or its manifest


@pytest.mark.parametrize("text, expected, words", [
    ('{"format": "onnxgate-bundle", "format_version": 1, "files": {}, "files": {}}', 2, "twice"),
    ('{"format": "onnxgate-bundle", "format_version": NaN}', 2, "NaN"),
    ("[" * 100_000 + "]" * 100_000, 2, "nested too deeply"),
    ('["onnxgate-bundle"]', 2, "not an onnxgate bundle manifest"),
    ('{"format": "onnxgate-bundle", "format_vers', 2, "not valid JSON"),
    (b'{"format": "\xff\xfe"}', 2, "not valid JSON"),
])
def test_manifest_json_that_does_not_parse_cleanly(copy, capsys, text, expected, words):
    path = copy / "manifest.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, report = verify_cli(copy, capsys)
    assert code == expected and words in report["error"]["message"]


def test_an_oversized_manifest_is_refused_unparsed(copy, capsys):
    path = copy / "manifest.json"
    path.write_bytes(path.read_bytes() + b" " * (17 << 20))
    code, report = verify_cli(copy, capsys)
    assert code == 2 and "bytes, more than" in report["error"]["message"]


# ----------------------------------------------------------------------------------------------- external data


def set_location(folder: Path, location: str, **extra: str) -> None:
    """Point the first initializer's external data at ``location`` and re-hash: a consistent, crafted bundle."""
    path = folder / "model.onnx"
    proto = onnx.load(str(path), load_external_data=False)
    tensor = proto.graph.initializer[0]
    entries = {e.key: e.value for e in tensor.external_data}
    entries.update(location=location, **extra)
    del tensor.external_data[:]
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    path.write_bytes(proto.SerializeToString())
    rehash(folder)


def test_the_external_data_bundle_passes(ext_bundle):
    assert verify_bundle(ext_bundle).passed


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/hostname", "sub/../../outside.bin",
                                      "..\\outside.bin", "*/_ORT_MEM_ADDR_/*"])
def test_external_data_leaving_the_bundle_is_refused_before_any_runtime(ext_copy, tmp_path, capsys, location):
    (tmp_path / "outside.bin").write_bytes((ext_copy / "m.onnx.data").read_bytes())
    set_location(ext_copy, location)
    code, report = verify_cli(ext_copy, capsys)
    assert code == 7 and report["error"]["type"] == "UnsafeInputError"
    assert "model.onnx" in report["error"]["message"] and "external-data" in report["error"]["message"]


def test_the_matrix_never_hands_an_escaping_model_to_an_old_runtime(ext_copy, tmp_path, monkeypatch):
    """onnxruntime 1.16 has its own, weaker checks: onnxgate refuses before it installs or runs any runtime."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    set_location(ext_copy, "../../../../etc/hostname")
    with pytest.raises(UnsafeInputError, match="leaves its folder"):
        verify_matrix(ext_copy, ["onnxruntime==1.16.3", None])
    assert not (tmp_path / "cache").exists()  # no venv was even created


def test_symlinked_external_data_is_refused(ext_copy, tmp_path):
    outside = tmp_path / "weights.bin"
    shutil.move(ext_copy / "m.onnx.data", outside)
    (ext_copy / "m.onnx.data").symlink_to(outside)
    with pytest.raises(UnsafeInputError, match="m.onnx.data.*symbolic link"):
        verify_bundle(ext_copy)


def test_external_data_the_manifest_does_not_vouch_for_is_integrity(ext_copy, capsys):
    set_location(ext_copy, "unlisted.data")
    code, report = verify_cli(ext_copy, capsys)
    assert code == 9 and "'unlisted.data', which the manifest does not list" in report["result"]["results"][0]["reason"]


def test_external_data_offsets_beyond_the_file_are_integrity(ext_copy, capsys):
    size = (ext_copy / "m.onnx.data").stat().st_size
    set_location(ext_copy, "m.onnx.data", offset=str(size), length="16")
    code, report = verify_cli(ext_copy, capsys)
    assert code == 9 and "beyond the end of 'm.onnx.data'" in report["result"]["results"][0]["reason"]


def test_an_unparseable_model_is_bad_input(copy, capsys):
    path = copy / "model.onnx"
    path.write_bytes(path.read_bytes()[:-7])  # truncated inside a field
    rehash(copy)
    code, report = verify_cli(copy, capsys)
    assert code == 2 and "not a readable ONNX model" in report["error"]["message"]


def test_the_reader_finds_what_onnx_finds_everywhere_a_tensor_can_hide(tmp_path):
    """Initializers, sparse initializers, Constant attributes, If subgraphs, functions: the same tensors as onnx."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    sub_w = numpy_helper.from_array(np.full((4,), 2, np.float32), "sub_w")
    const = numpy_helper.from_array(np.full((4,), 3, np.float32), "const_value")
    branch = helper.make_graph([helper.make_node("Add", ["x", "sub_w"], ["y_then"])], "then", [],
                               [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, [4])], [sub_w])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["y_else"])], "else", [],
                              [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, [4])])
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.ones(3, np.float32), "sp"),
                                       numpy_helper.from_array(np.array([0, 5, 9], np.int64), "sp_idx"), [16])
    nodes = [helper.make_node("Constant", [], ["c"], value=const),
             helper.make_node("ReduceSum", ["c"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)]
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [w, zero],
                              sparse_initializer=[sparse])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.data", size_threshold=0)
    saved = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    for tensor in [saved.graph.node[0].attribute[0].t, saved.graph.sparse_initializer[0].values]:
        # onnx externalizes initializers only; a crafted file can externalize any tensor, and runtimes follow it
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.data_location = TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value="m.data")
    (tmp_path / "m.onnx").write_bytes(saved.SerializeToString())
    expected = {t.name for t in _every_tensor(saved.graph) if t.data_location == TensorProto.EXTERNAL}
    refs = external_data_refs((tmp_path / "m.onnx").read_bytes())
    assert {"w", "zero", "sub_w", "const_value", "sp"} == expected
    assert {r.tensor.decode() for r in refs} == expected
    assert all(r.external and r.values(b"location") == [b"m.data"] for r in refs)
    for cut in (1, 7, 40):
        with pytest.raises(ProtoError):
            external_data_refs((tmp_path / "m.onnx").read_bytes()[:-cut])


def _every_tensor(graph):
    """Every TensorProto of a graph, through onnx's own classes: the reference the wire-format reader must match."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in [attr.g] * attr.HasField("g") + list(attr.graphs):
                yield from _every_tensor(sub)


def test_the_reader_needs_no_onnx_package(tmp_path):
    code = ("import sys, importlib.util as u; sys.modules['onnx'] = None; "
            "s = u.spec_from_file_location('refs', sys.argv[1]); m = u.module_from_spec(s); sys.modules['refs'] = m; "
            "s.loader.exec_module(m); "
            "print(len(m.external_data_refs(open(sys.argv[2], 'rb').read())))")
    model = make_model(tmp_path / "probe.onnx", external_data="probe.onnx.data")
    proc = subprocess.run([sys.executable, "-I", "-c", code, str(REPO / "src/onnxgate/bundle/_onnx_refs.py"),
                           str(model)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "4"  # four initializers, each external


# --------------------------------------------------------------------------------------------- golden arrays


def _npz_with(path: Path, name: str, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}.npy", payload)


def test_an_array_declaring_a_terabyte_is_refused_before_allocation(copy, capsys):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)})
    _npz_with(copy / "golden_inputs.npz", "input", header.getvalue() + b"\0" * 64)  # 4 TiB claimed, 64 B given
    rehash(copy)
    code, report = verify_cli(copy, capsys)
    assert code == 9 and "declares 4,398,046,511,104 bytes" in report["error"]["message"]


def test_pickled_object_arrays_are_refused(copy, capsys):
    payload = io.BytesIO()
    np.save(payload, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _npz_with(copy / "reference_outputs.npz", "logits", payload.getvalue())
    rehash(copy)
    code, report = verify_cli(copy, capsys)
    assert code == 7 and "pickled" in report["error"]["message"]


def test_a_reference_that_is_not_numeric_fails_the_comparison_cleanly(copy, capsys):
    payload = io.BytesIO()
    np.save(payload, np.array([["a"] * 5] * 2))
    _npz_with(copy / "reference_outputs.npz", "logits", payload.getvalue())
    rehash(copy)
    code, report = verify_cli(copy, capsys)
    assert code == 4 and "not numeric" in report["result"]["results"][0]["outputs"][0]["reason"]


# ---------------------------------------------------------------------------------------------------- tarballs


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], *, fmt=tarfile.PAX_FORMAT) -> Path:
    with tarfile.open(path, "w:gz", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, **attrs) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.size = kind, size
    for key, value in attrs.items():
        setattr(member, key, value)
    return member


def bundle_members(bundle: Path, top: str = "b") -> list[tuple[tarfile.TarInfo, bytes | None]]:
    members = [(info(top, tarfile.DIRTYPE), None)]
    for p in sorted(bundle.iterdir()):
        data = p.read_bytes()
        members.append((info(f"{top}/{p.name}", size=len(data)), data))
    return members


def test_a_valid_tar_unpacks_into_owner_tagged_staging_that_is_removed(bundle, private_tmpdir):
    tar_path = bundle.with_name(bundle.name + ".tar.gz")
    assert verify_bundle(tar_path).passed
    assert list(private_tmpdir.iterdir()) == []


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink", "hardlink", "device", "fifo", "duplicate"])
def test_unsafe_tar_members_are_refused_before_anything_is_written(bundle, tmp_path, private_tmpdir, capsys, case):
    members = bundle_members(bundle)
    bad = {
        "dotdot": (info("b/../../escaped.txt", size=5), b"owned"),
        "absolute": (info(str(tmp_path / "escaped.txt"), size=5), b"owned"),
        "symlink": (info("b/notes.txt", tarfile.SYMTYPE, linkname="/etc/passwd"), None),
        "hardlink": (info("b/notes.txt", tarfile.LNKTYPE, linkname="/etc/passwd"), None),
        "device": (info("b/mem", tarfile.CHRTYPE, devmajor=1, devminor=1), None),
        "fifo": (info("b/pipe", tarfile.FIFOTYPE), None),
        "duplicate": (info("b/model.onnx", size=5), b"owned"),
    }[case]
    path = write_tar(tmp_path / "evil.tar.gz", [*members, bad])
    code, report = verify_cli(path, capsys)
    assert code == 7 and report["error"]["type"] == "UnsafeInputError", report
    assert "evil.tar.gz" in report["error"]["message"]
    assert not (tmp_path / "escaped.txt").exists() and not (private_tmpdir.parent / "escaped.txt").exists()
    assert list(private_tmpdir.iterdir()) == []  # refused from the headers: nothing unpacked, staging removed


def test_too_many_members_are_refused_from_the_headers(tmp_path, private_tmpdir, capsys):
    members = [(info("b", tarfile.DIRTYPE), None)] + [(info(f"b/f{i}"), b"") for i in range(10_001)]
    path = write_tar(tmp_path / "many.tar.gz", members, fmt=tarfile.USTAR_FORMAT)
    code, report = verify_cli(path, capsys)
    assert code == 7 and "more than 10,000 members" in report["error"]["message"]
    assert list(private_tmpdir.iterdir()) == []


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_a_huge_declared_member_is_refused_without_reading_it(tmp_path, private_tmpdir, capsys, fmt):
    """100 GiB declared, none of it present: the header alone is refused (no 100 GiB read, no disk filled)."""
    huge = info("b/model.onnx.data", size=100 << 30)
    with gzip.open(tmp_path / "bomb.tar.gz", "wb") as fh:
        fh.write(info("b", tarfile.DIRTYPE).tobuf(fmt) + huge.tobuf(fmt))
    code, report = verify_cli(tmp_path / "bomb.tar.gz", capsys)
    assert code == 7 and "declares 107,374,182,400 bytes" in report["error"]["message"]


def test_an_oversized_pax_header_is_refused_before_tarfile_reads_it(tmp_path, private_tmpdir, capsys):
    member = info("b/x.txt", size=1)
    member.pax_headers = {"comment": "x" * (8 << 20)}  # tarfile would read this header whole into memory
    path = write_tar(tmp_path / "pax.tar.gz", [(info("b", tarfile.DIRTYPE), None), (member, b"x")])
    code, report = verify_cli(path, capsys)
    assert code == 7 and "header larger than" in report["error"]["message"]


def test_total_size_cap_counts_every_member(bundle, private_tmpdir):
    tar_path = bundle.with_name(bundle.name + ".tar.gz")
    limits = unpack.TarLimits(max_total_bytes=1000)
    with pytest.raises(UnsafeInputError, match="more than 1,000 bytes in all"):
        verify_matrix(tar_path, [None], limits=limits)
    with pytest.raises(UnsafeInputError, match="more than 3 members"):
        verify_matrix(tar_path, [None], limits=unpack.TarLimits(max_members=3))


@pytest.mark.parametrize("damage", ["not a tar", "truncated", "two folders"])
def test_damaged_archives_are_clean_errors(bundle, tmp_path, private_tmpdir, capsys, damage):
    tar_path = bundle.with_name(bundle.name + ".tar.gz")
    path = tmp_path / "damaged.tar.gz"
    if damage == "not a tar":
        path.write_bytes(b"this is not an archive at all" * 40)
    elif damage == "truncated":
        data = tar_path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        write_tar(path, bundle_members(bundle, "one") + bundle_members(bundle, "two"))
    code, report = verify_cli(path, capsys)
    assert code in (2, 9) and report["ok"] is False and report.get("error"), report
    assert list(private_tmpdir.iterdir()) == []


def test_the_unpacked_tree_holds_only_what_the_headers_said(bundle, tmp_path, private_tmpdir):
    """Setuid bits and odd modes in headers are not carried over; files are created fresh (0o644 & umask)."""
    members = bundle_members(bundle)
    for member, _data in members:
        member.mode = 0o6777 if member.isreg() else 0o777
    path = write_tar(tmp_path / "modes.tar.gz", members)
    with unpack.opened_bundle(path) as folder:
        modes = {p.name: p.stat().st_mode & 0o7777 for p in folder.iterdir()}
        assert folder.parent.parent == private_tmpdir and folder.parent.name.startswith(".onnxgate-staging-")
    assert all(mode & 0o6000 == 0 for mode in modes.values()), modes
    assert list(private_tmpdir.iterdir()) == []


def test_a_path_that_is_no_bundle_is_bad_input(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        verify_bundle(tmp_path / "nothing-here")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(BadInputError, match="not a regular file"):
        verify_bundle(tmp_path / "fifo")
