"""Seeded fuzzing of bundle verification (issue 10 items 4-6): no mutated bundle crashes it or exits undocumented.

One real bundle (built once), then 640 mutants, each run in-process through the verification entry point:
field deletions and type swaps in the manifest, truncations and bit flips of the manifest JSON and of every
bundled file (with the manifest left stale, so checksums must catch it, and re-hashed, so the npz and model
parsers and onnxruntime see the damage), files removed, renamed, slipped in or replaced by links, and damaged
tar archives. Each must end in
a verdict or an onnxgate error with a documented exit code; an uncaught exception fails the test and names the
case, so a failure here can be replayed from its seed and index.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from helpers import bundle_of, make_model

from onnxgate.bundle import verify_bundle
from onnxgate.cli.main import main
from onnxgate.errors import OnnxgateError

SEED = 20_240_610
CASES = 640
DOCUMENTED = {0, 2, 4, 6, 7, 9}
FILES = ["model.onnx", "golden_inputs.npz", "reference_outputs.npz", "requirements.txt",
         "requirements-runtime.txt", "environment.yml"]
ODD_VALUES = [None, True, False, 0, -1, 1.5, -1e308, 1e308, 2**70, "", "x", "NaN", "../../etc/passwd", [], {},
              [None], {"": None}, "0" * 64]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-base")
    return bundle_of(make_model(root / "m.onnx", external_data="m.onnx.data"), root / "bundle", tarball=True)


def exit_code(path: Path) -> int:
    """What `onnxgate verify-bundle PATH` would exit with, from the library entry point."""
    try:
        return int(verify_bundle(path).exit_code)
    except OnnxgateError as exc:
        return int(exc.exit_code)


def rehash(folder: Path) -> None:
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
        files = {p.relative_to(folder).as_posix(): {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                                                    "bytes": p.stat().st_size}
                 for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json"}
        manifest["files"] = files
        path.write_text(json.dumps(manifest))
    except (ValueError, TypeError, AttributeError):
        pass  # a manifest already mutated past JSON: leave it


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 8])):
        if out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))] if data else data


def mutate_json(manifest: dict, rng: random.Random) -> str:
    """Delete or retype one node of the manifest tree (nested fields included)."""
    manifest = copy.deepcopy(manifest)
    paths = []

    def walk(node, trail):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for key, value in items:
            paths.append((*trail, key))
            walk(value, (*trail, key))

    walk(manifest, ())
    trail = rng.choice(paths)
    parent = manifest
    for key in trail[:-1]:
        parent = parent[key]
    if rng.random() < 0.35:
        del parent[trail[-1]]
    else:
        parent[trail[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
    return json.dumps(manifest)


def make_case(index: int, base: Path, work: Path, rng: random.Random) -> tuple[Path, str]:
    """Build mutant ``index`` under ``work``; return the path to verify and a description for failures."""
    folder = Path(shutil.copytree(base, work / "b"))
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    kind = rng.choice(["json-field", "json-field", "json-bytes", "file-stale", "file-rehashed", "file-rehashed",
                       "files", "tar"])
    if kind == "json-field":
        manifest_path.write_text(mutate_json(manifest, rng))
        return folder, f"manifest field mutation #{index}"
    if kind == "json-bytes":
        data = manifest_path.read_bytes()
        manifest_path.write_bytes(flip_bits(data, rng) if rng.random() < 0.6 else truncate(data, rng))
        return folder, f"manifest bytes mutation #{index}"
    if kind in ("file-stale", "file-rehashed"):
        name = rng.choice([*FILES, "m.onnx.data", "model.onnx", "model.onnx"])
        data = (folder / name).read_bytes()
        how = rng.choice(["flip", "flip", "truncate", "append"])
        data = flip_bits(data, rng) if how == "flip" else truncate(data, rng) if how == "truncate" \
            else data + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        (folder / name).write_bytes(data)
        if kind == "file-rehashed":
            rehash(folder)
        return folder, f"{how} of {name}, manifest {'re-hashed' if kind == 'file-rehashed' else 'stale'} #{index}"
    if kind == "files":
        how = rng.choice(["remove", "add", "rename", "symlink"])
        name = rng.choice(FILES + ["m.onnx.data"])
        if how == "remove":
            (folder / name).unlink()
        elif how == "symlink":  # the same bytes, outside the bundle: checksums would match
            outside = work / f"outside-{name}"
            (folder / name).rename(outside)
            (folder / name).symlink_to(outside)
        elif how == "add":
            target = folder / rng.choice(["extra.bin", "model.onnx.data", "sub/x.txt"])
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(b"slipped in")
        else:
            (folder / name).rename(folder / (name + ".renamed"))
        if rng.random() < 0.5:
            rehash(folder)
        return folder, f"{how} {name} #{index}"
    tar_path = work / "b.tar.gz"
    data = base.with_name(base.name + ".tar.gz").read_bytes()
    if rng.random() < 0.5:
        tar_path.write_bytes(flip_bits(data, rng) if rng.random() < 0.6 else truncate(data, rng))
    else:  # an uncompressed tar with one member damaged: headers and data the gzip CRC does not guard
        raw = work / "raw.tar"
        with tarfile.open(raw, "w") as tar:
            tar.add(folder, arcname="b")
        tar_path = work / "b.tar"
        tar_path.write_bytes(flip_bits(raw.read_bytes(), rng))
    return tar_path, f"tar mutation #{index}"


def test_seeded_mutants_never_crash_and_exit_with_documented_codes(base, tmp_path, capsys):
    rng = random.Random(SEED)
    seen: Counter[int] = Counter()
    for index in range(CASES):
        work = tmp_path / f"case{index % 2}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        path, what = make_case(index, base, work, rng)
        try:
            code = exit_code(path)
            if index % 16 == 0:  # the CLI too: its JSON on stdout must parse and agree
                cli_code = main(["verify-bundle", str(path), "--json"])
                captured = capsys.readouterr()
                assert captured.out.strip().startswith("{"), (what, cli_code, captured.out[:3000])
                report = json.loads(captured.out)
                assert cli_code == code and report["ok"] is (code == 0), (what, report)
        except Exception as exc:  # noqa: BLE001  the point: nothing may escape, and the case is named
            raise AssertionError(f"{what} (seed {SEED}) escaped as {type(exc).__name__}: {exc}") from exc
        assert code in DOCUMENTED, f"{what} exited {code}"
        seen[code] += 1
    # The mutants reach every layer: intact ones pass, damage is caught as bad input, unsafe or integrity.
    assert seen[0] > 0 and seen[2] > 20 and seen[7] > 0 and seen[9] > 100 and sum(seen.values()) == CASES, seen
