"""Atomic writes: outputs appear whole or not at all, and are never replaced without force."""

from __future__ import annotations

import os
import stat

import pytest

from onnxgate.errors import BadInputError, OutputExistsError
from onnxgate.fsutil import atomic_dir, atomic_write_bytes, atomic_write_text


def test_writes_bytes_and_text_with_umask_permissions(tmp_path):
    old_umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
        atomic_write_text(tmp_path / "b.txt", "héllo")
    finally:
        os.umask(old_umask)
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644  # not mkstemp's private 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt"]


def test_refuses_to_replace_a_file_without_force(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("keep me")
    with pytest.raises(OutputExistsError, match="out.txt") as info:
        atomic_write_text(target, "new")
    assert "--force" in info.value.hint
    assert target.read_text() == "keep me"
    atomic_write_text(target, "new", force=True)
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_missing_parent_folder_is_named(tmp_path):
    with pytest.raises(BadInputError, match="parent folder .*nope' does not exist"):
        atomic_write_bytes(tmp_path / "nope" / "x.bin", b"")
    with pytest.raises(BadInputError, match="nope"):
        with atomic_dir(tmp_path / "nope" / "bundle"):
            pass


def test_force_never_replaces_a_folder_with_a_file(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(BadInputError, match="a folder of that name exists"):
        atomic_write_bytes(tmp_path / "d", b"x", force=True)


def test_atomic_dir_appears_only_when_complete(tmp_path):
    target = tmp_path / "bundle"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("a")
        assert not target.exists()  # nothing visible under the final name while building
    assert (target / "a.txt").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_atomic_dir_failure_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "bundle") as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_only_with_force_and_wholly(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(OutputExistsError, match="bundle"):
        with atomic_dir(target):
            pass
    with pytest.raises(RuntimeError):  # a failed forced rebuild keeps the old folder intact
        with atomic_dir(target, force=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("interrupted")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with atomic_dir(target, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


# ------------------------------------------------------------------ owner-tagged staging (issue 10 item 7)


def test_temporary_names_say_who_owns_them_and_what_they_become(tmp_path):
    from onnxgate.fsutil import atomic_file, parse_staging_name

    with atomic_file(tmp_path / "model.onnx") as tmp:
        owner = parse_staging_name(tmp.name)
        assert tmp.parent == tmp_path and tmp.name.startswith(".onnxgate-staging-")
        assert (owner.pid, owner.kind, owner.name) == (os.getpid(), "tmp", "model.onnx")
        tmp.write_bytes(b"onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    long_name = "m" * 300 + ".onnx"  # 255 bytes is the limit of a file name: the destination part is cut
    with atomic_file(tmp_path / long_name[:250]) as tmp:
        owner = parse_staging_name(tmp.name)
        assert len(tmp.name.encode()) < 255 and owner.pid == os.getpid() and not owner.name_complete
    with atomic_file(tmp_path / ("é" * 100)) as tmp:  # 200 bytes: the budget counts bytes, not characters
        assert len(tmp.name.encode()) < 255 and not parse_staging_name(tmp.name).name_complete
    assert parse_staging_name(".model.onnx.1a2b3c4d.tmp") is None  # an older onnxgate's name: owner unknown
    assert parse_staging_name(".onnxgate-staging-0-abcdef-1a2b3c4d.tmp.x") is None  # PID 0 is no owner


def test_pid_alive_tells_running_from_gone():
    import subprocess

    from onnxgate.fsutil import pid_alive

    proc = subprocess.Popen(["true"])
    proc.wait()
    assert pid_alive(os.getpid()) and pid_alive(1)  # PID 1 exists, whoever owns it (EPERM counts as alive)
    assert not pid_alive(proc.pid) and not pid_alive(0) and not pid_alive(-5) and not pid_alive(2**40)
