"""Issue 10 item 7: what a killed onnxgate leaves behind is recognizably its own, and the next run removes it.

Dead owners are real: a process that ran and exited (its PID is free), or an onnxgate write killed with
SIGKILL in the middle. Live owners are real too (this process, a sleeping child): their staging must stay.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from onnxgate.cli.main import main
from onnxgate.fsutil import (STAGING_PREFIX, atomic_dir, atomic_write_text, host_tag, parse_staging_name, pid_alive,
                             staging_dir, sweep)


def dead_pid() -> int:
    """The PID of a process that has exited and been reaped: nothing runs under it now."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not pid_alive(proc.pid)
    return proc.pid


def leftover(folder: Path, pid: int, kind: str = "tmp", name: str = "model.onnx", *, host: str | None = None,
             folder_kind: bool = False) -> Path:
    """A staging entry as onnxgate names it, owned by ``pid``."""
    path = folder / (f"{STAGING_PREFIX}{pid}-{host or host_tag()}-{os.urandom(4).hex()}.{kind}"
                     + (f".{name}" if name else ""))
    if folder_kind:
        path.mkdir()
        (path / "model.onnx").write_bytes(b"\0" * 4096)
    else:
        path.write_bytes(b"")
    return path


@pytest.fixture
def live_child():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def private_tmpdir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return folder


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_the_next_write_removes_dead_owners_staging_and_keeps_live_ones(tmp_path, live_child):
    out = tmp_path / "out"
    out.mkdir()
    dead = dead_pid()
    dead_file = leftover(out, dead)
    dead_folder = leftover(out, dead, name="bundle", folder_kind=True)
    mine = leftover(out, os.getpid(), name="report.json")
    child = leftover(out, live_child, name="bundle", folder_kind=True)
    foreign = leftover(out, dead, host="abcdef" if host_tag() != "abcdef" else "fedcba")
    (out / ".hidden-but-not-ours").write_text("keep")
    atomic_write_text(out / "lock.txt", "x")
    assert not dead_file.exists() and not dead_folder.exists()
    assert mine.exists() and child.exists() and (child / "model.onnx").exists()
    assert foreign.exists()  # another machine's PID means nothing here
    assert names(out) == {mine.name, child.name, foreign.name, ".hidden-but-not-ours", "lock.txt"}


def test_a_write_killed_with_sigkill_leaves_only_tagged_staging_that_the_next_write_removes(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    script = textwrap.dedent(f"""
        import os, signal
        from onnxgate.fsutil import atomic_dir, atomic_file
        with atomic_file({str(out / 'model.onnx')!r}) as tmp:
            with atomic_dir({str(out / 'bundle')!r}) as folder:
                (folder / "model.onnx").write_bytes(b"\\0" * 100_000)
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = sorted(out.iterdir())
    assert len(left) == 2 and not (out / "model.onnx").exists() and not (out / "bundle").exists()
    assert not pid_alive(owner_of(left))
    assert {parse_staging_name(p.name).name for p in left} == {"model.onnx", "bundle"}
    atomic_write_text(out / "report.json", "{}")
    assert names(out) == {"report.json"}


def owner_of(entries: list[Path]) -> int:
    (pid,) = {parse_staging_name(p.name).pid for p in entries}
    return pid


def test_a_replaced_output_killed_between_renames_is_restored_not_deleted(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = dead_pid()
    old = leftover(out, dead, kind="old", name="bundle", folder_kind=True)  # the previous bundle, moved aside
    report = sweep(out)
    assert (out / "bundle" / "model.onnx").exists() and not old.exists()
    assert [e.action for e in report] == ["restored"]
    # When the replacement did arrive, the previous version is only garbage.
    old_again = leftover(out, dead, kind="old", name="bundle", folder_kind=True)
    sweep(out)
    assert not old_again.exists() and (out / "bundle").exists()
    # A destination name cut short (`~`) cannot be restored safely: kept, and said so.
    cut = out / f"{STAGING_PREFIX}{dead}-{host_tag()}-{os.urandom(4).hex()}.old~{'x' * 120}"
    cut.mkdir()
    (entry,) = sweep(out)
    assert cut.exists() and entry.action == "kept" and "by hand" in entry.reason


def test_a_symlink_named_like_staging_is_unlinked_never_followed(tmp_path):
    out, precious = tmp_path / "out", tmp_path / "precious"
    out.mkdir()
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    link = out / f"{STAGING_PREFIX}{dead_pid()}-{host_tag()}-{os.urandom(4).hex()}.tmp.bundle"
    link.symlink_to(precious, target_is_directory=True)
    sweep(out)
    assert not link.is_symlink() and (precious / "thesis.txt").read_text() == "years of work"


def test_tmpdir_staging_is_owner_tagged_and_swept_when_the_next_staging_starts(private_tmpdir, live_child):
    dead = leftover(private_tmpdir, dead_pid(), kind="bundle", name="", folder_kind=True)
    live = leftover(private_tmpdir, live_child, kind="bundle", name="", folder_kind=True)
    with staging_dir("bundle") as folder:
        assert folder.parent == private_tmpdir and parse_staging_name(folder.name).pid == os.getpid()
        assert not dead.exists() and live.exists()
    assert names(private_tmpdir) == {live.name}


def test_tar_verification_sweeps_tmpdir_first(private_tmpdir, tmp_path):
    from helpers import bundle_of, make_model

    from onnxgate.bundle import verify_bundle

    bundle = bundle_of(make_model(tmp_path / "m.onnx"), tmp_path / "b", tarball=True)
    dead = leftover(private_tmpdir, dead_pid(), kind="bundle", name="", folder_kind=True)
    assert verify_bundle(tmp_path / "b.tar.gz").passed
    assert not dead.exists() and not [p for p in private_tmpdir.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_clean_command_removes_dead_staging_from_folders_and_tmpdir_and_reports_it(tmp_path, private_tmpdir,
                                                                                     live_child, capsys):
    out = tmp_path / "out"
    (out / "nested").mkdir(parents=True)
    dead = dead_pid()
    removed = [leftover(out, dead), leftover(private_tmpdir, dead, kind="run", name="", folder_kind=True)]
    nested = leftover(out / "nested", dead)
    kept = leftover(out, live_child, name="bundle", folder_kind=True)
    assert main(["clean", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and str(out) in report["result"]["folders"] and str(private_tmpdir) in report["result"]["folders"]
    assert sorted(e["path"] for e in report["result"]["removed"]) == sorted(str(p) for p in removed)
    assert all(e["pid"] == dead for e in report["result"]["removed"]) and report["result"]["bytes_freed"] == 4096
    assert [e["path"] for e in report["result"]["kept"]] == [str(kept)] and "running" in report["result"]["kept"][0]["reason"]
    assert not any(p.exists() for p in removed) and kept.exists() and nested.exists()  # not recursive by default
    assert main(["clean", str(out), "-r"]) == 0
    assert not nested.exists() and "removed 1 leftover(s)" in capsys.readouterr().err


def test_clean_leaves_legacy_leftovers_unless_asked_and_then_only_old_ones(tmp_path, private_tmpdir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    old = out / ".model.onnx.1a2b3c4d.tmp"
    young = out / ".bundle.5e6f7a8b.tmp"
    legacy_tmp = private_tmpdir / "onnxgate-bundle-k3j4h5g6"
    old.write_bytes(b"")
    young.mkdir()
    legacy_tmp.mkdir()
    two_hours_ago = time.time() - 7200
    for path in (old, legacy_tmp):
        os.utime(path, (two_hours_ago, two_hours_ago))
    assert main(["clean", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["result"]["removed"] == [] and {e["path"] for e in report["result"]["kept"]} == {str(old), str(young), str(legacy_tmp)}
    assert "--legacy" in report["result"]["kept"][0]["reason"]
    assert main(["clean", str(out), "--legacy", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {e["path"] for e in report["result"]["removed"]} == {str(old), str(legacy_tmp)}
    assert young.exists() and not old.exists() and not legacy_tmp.exists()


def test_clean_refuses_a_missing_folder(tmp_path, capsys):
    assert main(["clean", str(tmp_path / "nope"), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["type"] == "BadInputError"


def test_an_atomic_dir_never_shows_a_half_built_output_under_any_name_but_staging(tmp_path):
    with atomic_dir(tmp_path / "bundle") as tmp:
        staged = parse_staging_name(tmp.name)
        assert staged is not None and staged.pid == os.getpid() and staged.name == "bundle" and staged.kind == "tmp"
        assert sweep(tmp_path)[0].action == "kept"  # our own staging, while we build it
    assert names(tmp_path) == {"bundle"}
