"""Security: a ``.pt2`` archive runs no code and is read one way only (issue 22, findings 1 and 8).

Python's ``zipfile`` (which a pre-check could use) and torch's archive reader (miniz) disagree on archives no
writer produces: with two entries of one name zipfile reads the last and miniz the first. Each variant below hides
a pickled ``__reduce__`` payload (or Python code in the program's JSON) where one of the two readers would find it;
every one must be refused with exit 7 before torch opens it, and the payload's marker file must never appear. A
genuine archive, static or with a dynamic dim, still exports (finding 8: it failed with "kwarg keyword mismatch").
"""

from __future__ import annotations

import json
import pickle
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

from onnxgate.cli.main import main
from onnxgate.errors import ExitCode, UnsafeInputError
from onnxgate.safe_load import check_pt2_archive
from helpers import Payload, tiny_linear


class _Dynamic(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x) * 2


@pytest.fixture(scope="module")
def good_pt2(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "good.pt2"
    torch.export.save(torch.export.export(tiny_linear(), (torch.randn(2, 4),)), path)
    return path


@pytest.fixture(scope="module")
def dynamic_pt2(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "dynamic.pt2"
    batch = torch.export.Dim("B", min=1, max=64)
    torch.export.save(torch.export.export(_Dynamic(), (torch.randn(4, 3),), dynamic_shapes={"x": {0: batch}}), path)
    return path


def entries(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, archive.read(info.filename)) for info in archive.infolist()]


def raw_zip(items: list[tuple[str, bytes]], *, prepend: bytes = b"", comment: bytes = b"", flags: int = 0,
            hidden: tuple[str, ...] = (), local_names: dict[str, str] | None = None,
            offsets: dict[str, str] | None = None, zip64_marker: bool = False) -> bytes:
    """A stored zip written byte by byte, so each test can break exactly one rule: ``hidden`` entries have a local
    header but no central record, ``local_names`` rename a local header only, ``offsets`` point an entry's central
    record at another entry's local header, ``zip64_marker`` claims zip64 in the end record without its records."""
    local_names, offsets = local_names or {}, offsets or {}
    body, central, where = bytearray(prepend), bytearray(), {}
    for name, data in items:
        where[name] = len(body)
        local = local_names.get(name, name).encode()
        crc = zlib.crc32(data)
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, 0, 0, 0, crc, len(data), len(data), len(local), 0)
        body += local + data
        if name in hidden:
            continue
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, flags, 0, 0, 0, crc, len(data), len(data),
                               len(name.encode()), 0, 0, 0, 0, 0, where[name]) + name.encode()
    for name, other in offsets.items():  # rewrite the offset field of name's central record
        record = central.find(struct.pack("<I", 0x02014B50))
        while record >= 0:
            name_len = struct.unpack_from("<H", central, record + 28)[0]
            if central[record + 46:record + 46 + name_len] == name.encode():
                struct.pack_into("<I", central, record + 42, where[other])
            record = central.find(struct.pack("<I", 0x02014B50), record + 46)
    count = len(items) - len(hidden)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF if zip64_marker else count,
                      0xFFFF if zip64_marker else count, len(central), len(body), len(comment))
    return bytes(body + central + end + comment)


def poisoned_items(good: Path, marker: Path) -> tuple[list, list]:
    """(evil, benign) copies of the weights config and first weight: the evil config stores the weight with
    use_pickle and the evil weight is a pickle whose __reduce__ creates ``marker``."""
    items = entries(good)
    config_name = next(n for n, _ in items if n.endswith("model_weights_config.json"))
    weight_name = next(n for n, _ in items if n.endswith("data/weights/weight_0"))
    config = json.loads(dict(items)[config_name])
    next(iter(config["config"].values()))["use_pickle"] = True
    evil = [(config_name, json.dumps(config).encode()), (weight_name, pickle.dumps(Payload(marker)))]
    benign = [(n, d) for n, d in items if n in (config_name, weight_name)]
    return evil, benign


def duplicate_exploit(good: Path, folder: Path, marker: Path) -> bytes:
    """Duplicate entries ordered so that torch's reader (miniz, which finds names by binary search over a sorted
    index) gets both payload copies while zipfile (the last copy of a name wins) gets both benign ones. Which
    order does that depends on the names, so it is searched for, with torch's own reader as the judge."""
    evil, benign = poisoned_items(good, marker)
    rest = [(n, d) for n, d in entries(good) if n not in {n for n, _ in evil}]
    probe = folder / "probe.pt2"
    for i in range(len(rest) + 1):
        for j in range(i, len(rest) + 1):
            data = raw_zip(rest[:i] + [evil[0]] + rest[i:j] + [evil[1]] + rest[j:] + benign)
            probe.write_bytes(data)
            reader = torch._C.PyTorchFileReader(str(probe))
            if all(reader.get_record(name.split("/", 1)[1]) == payload for name, payload in evil):
                probe.unlink()
                return data
    raise AssertionError("no order of duplicate entries makes torch's reader see the payload")


def variants(good: Path, folder: Path, marker: Path) -> dict[str, Path]:
    """Every ambiguous-zip variant, as files in ``folder``."""
    items = entries(good)
    evil, benign = poisoned_items(good, marker)
    names = {n for n, _ in evil}
    rest = [(n, d) for n, d in items if n not in names]
    root = items[0][0].split("/")[0]
    built = {
        # zipfile reads the last copy (benign), torch's reader the payload: the exploit
        "duplicate names, payload first": duplicate_exploit(good, folder, marker),
        # miniz matches names ignoring ASCII case: a second config spelled differently is a duplicate to it
        "duplicate names ignoring case": raw_zip(rest + benign + [(evil[0][0].upper().replace(root.upper(), root),
                                                                   evil[0][1])]),
        "data before the first entry": raw_zip(items, prepend=b"PK\x03\x04" + b"\0" * 60),
        "a comment after the end record": raw_zip(items, comment=b"trailing"),
        "a local entry the central directory hides": raw_zip([(f"{root}/extra/hidden", evil[1][1])] + items,
                                                             hidden=(f"{root}/extra/hidden",)),
        "local header name differs from the central one": raw_zip(items, local_names={
            benign[1][0]: benign[1][0][:-1] + "9"}),
        "overlapping entries": raw_zip(items, offsets={items[1][0]: items[0][0]}),
        "an encrypted entry": raw_zip(items, flags=0x0001),
        "zip64 markers without zip64 records": raw_zip(items, zip64_marker=True),
        "an entry outside the archive's folder": raw_zip(items + [("elsewhere/evil.pt", pickle.dumps(Payload(marker)))]),
        "an entry outside the pt2 layout": raw_zip(items + [(f"{root}/data/aotinductor/model/evil.so", b"\x7fELF")]),
        "a '..' path component": raw_zip(items + [(f"{root}/extra/../../evil.pt", b"x")]),
    }
    paths = {}
    for label, data in built.items():
        paths[label] = folder / (label.replace(" ", "_").replace("'", "").replace(",", "") + ".pt2")
        paths[label].write_bytes(data)
    return paths


def program_json_variant(source: Path, folder: Path, label: str, edit) -> Path:
    """Copy ``source`` (written by zipfile: canonical) with its program JSON changed by ``edit``."""
    items = entries(source)
    out = []
    for name, data in items:
        if name.endswith("models/model.json"):
            program = json.loads(data)
            edit(program)
            data = json.dumps(program).encode()
        out.append((name, data))
    path = folder / f"{label}.pt2"
    path.write_bytes(raw_zip(out))
    return path


def json_variants(good: Path, dynamic: Path, folder: Path, marker: Path) -> dict[str, Path]:
    code = f"open({str(marker)!r}, 'w').close() is None"

    def guard(program):
        program["guards_code"] = [code]

    def target(name):
        def edit(program):
            program["graph_module"]["graph"]["nodes"][0]["target"] = name
        return edit

    def sympy_expression(program):
        text = json.dumps(program)
        assert '"expr_str": "' in text
        start = text.index('"expr_str": "') + len('"expr_str": "')
        end = text.index('"', start)
        program.clear()
        program.update(json.loads(text[:start] + f"__import__('os').system('touch {marker}')" + text[end:]))

    def enum_import(program):  # torch's pytree loader imports the module an "__enum__" context names
        signature = program["graph_module"]["module_call_graph"][0]["signature"]
        spec = json.loads(signature["in_spec"])
        spec[1]["children_spec"][1]["context"] = json.dumps([{"__enum__": True, "fqn": "evil_module:X", "name": "x"}])
        signature["in_spec"] = json.dumps(spec)

    return {
        "an input spec importing a module": program_json_variant(good, folder, "enum", enum_import),
        "guard code that writes a file": program_json_variant(good, folder, "guard", guard),
        "a node calling torch.os.system": program_json_variant(good, folder, "os_system", target("torch.os.system")),
        "a node calling aten.from_file": program_json_variant(good, folder, "from_file",
                                                             target("torch.ops.aten.from_file.default")),
        "a sympy expression that is Python": program_json_variant(dynamic, folder, "sympy", sympy_expression),
    }


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_duplicate_name_exploit_is_real(tmp_path, good_pt2):
    """The premise: zipfile reads the benign copies while torch's own loader unpickles the payload."""
    from torch.export.pt2_archive._package import load_pt2

    marker = tmp_path / "PWNED"
    path = variants(good_pt2, tmp_path, marker)["duplicate names, payload first"]
    with zipfile.ZipFile(path) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
        assert '"use_pickle": true' not in archive.read(config).decode()  # zipfile: the benign last copy
    with pytest.raises(Exception):
        load_pt2(str(path))  # the payload returns None where a tensor belongs, after running
    assert marker.exists()


@pytest.mark.parametrize("command", ["export", "run", "bundle", "bench", "verify --against"])
def test_every_ambiguous_zip_is_refused_before_torch_reads_it(capsys, tmp_path, good_pt2, dynamic_pt2, command):
    marker = tmp_path / "PWNED"
    archives = {**variants(good_pt2, tmp_path, marker), **json_variants(good_pt2, dynamic_pt2, tmp_path, marker)}
    onnx_file = tmp_path / "m.onnx"
    if command == "verify --against":
        assert run_cli(capsys, "export", good_pt2, "-o", onnx_file)[0] == ExitCode.OK
    for label, path in archives.items():
        argv = {"export": ["export", path, "-o", tmp_path / "out.onnx"],
                "run": ["run", path, "-o", tmp_path / "run-out", "--bench", "none"],
                "bundle": ["bundle", path, "-o", tmp_path / "bundle-out"],
                "bench": ["bench", path, "--quick"],
                "verify --against": ["verify", onnx_file, "--against", path]}[command]
        code, out, err = run_cli(capsys, *argv)
        assert not marker.exists(), f"{label}: the payload ran through {command}"
        assert code == ExitCode.UNSAFE_INPUT, f"{label} via {command}: exit {code}\n{err}"
        assert "Traceback" not in err and "--trust-code" in err, err


def test_each_variant_names_what_is_wrong(tmp_path, good_pt2, dynamic_pt2):
    marker = tmp_path / "PWNED"
    expected = {
        "duplicate names, payload first": "more than once",
        "duplicate names ignoring case": "ignoring case",
        "data before the first entry": "prepended data",
        "a comment after the end record": "comment",
        "a local entry the central directory hides": "does not start where the previous one ends",
        "local header name differs from the central one": "local header disagrees",
        "overlapping entries": "overlapping",
        "an encrypted entry": "encrypted",
        "zip64 markers without zip64 records": "zip64",
        "an entry outside the archive's folder": "outside the archive's folder",
        "an entry outside the pt2 layout": "compiled code",
        "a '..' path component": "plain relative file path",
        "guard code that writes a file": "guard code",
        "an input spec importing a module": "names Python modules to import",
        "a node calling torch.os.system": "torch.os.system",
        "a node calling aten.from_file": "from_file",
        "a sympy expression that is Python": "sympy",
    }
    archives = {**variants(good_pt2, tmp_path, marker), **json_variants(good_pt2, dynamic_pt2, tmp_path, marker)}
    assert set(archives) == set(expected)
    for label, path in archives.items():
        with pytest.raises(UnsafeInputError) as caught:
            check_pt2_archive(path)
        assert expected[label] in str(caught.value), f"{label}: {caught.value}"
    assert not marker.exists()


def test_guard_code_would_run_in_torch(tmp_path, good_pt2, dynamic_pt2):
    """The premise of the JSON checks: torch compiles guards_code with exec when the program becomes a module."""
    from torch.export.pt2_archive._package import load_pt2

    marker = tmp_path / "PWNED"
    path = json_variants(good_pt2, dynamic_pt2, tmp_path, marker)["guard code that writes a file"]
    program = load_pt2(str(path)).exported_programs["model"]
    program.module()(torch.randn(2, 4))
    assert marker.exists()


def test_an_enum_spec_would_import_a_module_in_torch(tmp_path, good_pt2, dynamic_pt2, monkeypatch):
    """The premise of the spec check: torch's loader imports whatever module an "__enum__" context names (one
    beside the archive, in the working folder, is on sys.path under ``python -m``)."""
    from torch.export.pt2_archive._package import load_pt2

    marker = tmp_path / "PWNED"
    (tmp_path / "evil_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = json_variants(good_pt2, dynamic_pt2, tmp_path, marker)["an input spec importing a module"]
    with pytest.raises(AttributeError):
        load_pt2(str(path))
    assert marker.exists()


def test_genuine_archives_pass_the_strict_reading(good_pt2, dynamic_pt2, tmp_path):
    from onnxgate.safe_load import StrictZip

    for path in (good_pt2, dynamic_pt2):
        archive = check_pt2_archive(path)
        with zipfile.ZipFile(path) as reference:
            assert archive.names == reference.namelist()
            assert all(archive.read(n) == reference.read(n) for n in archive.names)
    rewritten = tmp_path / "rewritten.pt2"  # zipfile's own layout (sizes in the local header, no descriptor)
    with zipfile.ZipFile(good_pt2) as src, zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    assert StrictZip(rewritten.read_bytes()).names == [name for name, _ in entries(good_pt2)]
    check_pt2_archive(rewritten)


def test_a_genuine_pt2_exports(capsys, tmp_path, good_pt2):
    """Finding 8: exit 2 'kwarg keyword mismatch: Got the following keywords ['x'] but expected []' before."""
    code, _, err = run_cli(capsys, "export", good_pt2, "-o", tmp_path / "m.onnx")
    assert code == ExitCode.OK, err
    assert (tmp_path / "m.onnx").is_file()
    code, _, err = run_cli(capsys, "export", good_pt2, "-o", tmp_path / "m2.onnx", "--input", "x:2x4:float32")
    assert code == ExitCode.OK, err


def test_a_genuine_dynamic_pt2_exports_with_its_dynamic_dim(capsys, tmp_path, dynamic_pt2):
    code, _, err = run_cli(capsys, "export", dynamic_pt2, "-o", tmp_path / "d.onnx", "--input", "x:Bx3:float32",
                           "--dim", "B=1..64@4")
    assert code == ExitCode.OK, err


class _Guarded(torch.nn.Module):
    def forward(self, x, y):
        if x.shape[0] > 4:
            return x.reshape(-1, 2).sum() + y[: x.shape[0] // 2].sum()
        return x.sum()


def test_a_genuine_archive_with_guards_passes(tmp_path):
    """Real guard code (shape checks over L['x'].size()) is accepted; it is what the grammar is modelled on."""
    auto = torch.export.Dim.AUTO
    program = torch.export.export(_Guarded(), (torch.randn(8), torch.randn(10)),
                                  dynamic_shapes={"x": {0: auto}, "y": {0: auto}})
    assert program._guards_code, "this torch writes no guard code for the model: the test proves nothing"
    path = tmp_path / "guarded.pt2"
    torch.export.save(program, path)
    check_pt2_archive(path)


@pytest.mark.parametrize("guard", [
    "__import__('os').system('id')", "L['x'].size.__self__", "(lambda: 1)()", "math.__dict__",
    "torch.load('x')", "[c for c in ()]", "L['x'].size()[0] == open('f').read()", "torch", "getattr(L, 'x')",
    "L['__class__']", "L['x'].size()[0] if 1 else 0",
])
def test_guard_code_beyond_shape_checks_is_refused(guard):
    from onnxgate.safe_load import _safe_guard

    assert not _safe_guard(guard)


@pytest.mark.parametrize("expression", [
    "__import__('os').system('id')", "s0.__class__", "open('f')", "Symbol('s0').__class__", "eval('1')",
    "lambdify(s0, s0)", "s0 + 'x'", "preview(s0)",
])
def test_sympy_text_beyond_shape_arithmetic_is_refused(expression):
    from onnxgate.safe_load import _safe_sympy

    assert not _safe_sympy(expression)
    assert _safe_sympy("Symbol('s77', positive=True, integer=True)") and _safe_sympy("FloorDiv(s0, 2) + 3*s1 <= 64")
