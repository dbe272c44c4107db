"""The worker process (onnxgate/worker.py): whatever the work does — return, raise, segfault, abort, hang, allocate
without end — the caller gets an outcome and goes on."""

from __future__ import annotations

import ctypes
import os
import sys
import time

import numpy as np
import pytest

from onnxgate.worker import CRASHED, ERROR, MEMORY, OK, TIMEOUT, run_in_worker


def _add(a, b):
    return a + b


def _raise():
    raise ValueError("the model said no")


def _exit():
    sys.exit(0)  # a model calling sys.exit must not pass for a result


def _segfault():
    ctypes.string_at(0)  # null dereference


def _abort():
    os.abort()


def _hang():
    time.sleep(60)


def _hog():
    chunks = []
    while True:
        chunks.append(np.ones(2**25, dtype=np.uint8))  # 32 MB at a time, written so the pages are private


def test_a_value_comes_back():
    outcome = run_in_worker(_add, 2, 3)
    assert outcome.status == OK and outcome.value == 5 and outcome.seconds >= 0


@pytest.mark.parametrize("fn, kind", [(_raise, "ValueError"), (_exit, "SystemExit")])
def test_an_exception_is_an_error_outcome(fn, kind):
    outcome = run_in_worker(fn)
    assert outcome.status == ERROR and outcome.error_type == kind


@pytest.mark.parametrize("fn, sig", [(_segfault, "SIGSEGV"), (_abort, "SIGABRT")])
def test_a_native_crash_is_a_crashed_outcome_naming_the_signal(fn, sig):
    outcome = run_in_worker(fn, label="the TorchScript exporter")
    assert outcome.status == CRASHED and outcome.signal == sig
    assert sig in outcome.error and "the TorchScript exporter" in outcome.error


def test_a_hang_is_stopped_at_the_timeout():
    start = time.monotonic()
    outcome = run_in_worker(_hang, timeout_s=1.0)
    assert outcome.status == TIMEOUT and time.monotonic() - start < 30  # generous: CI boxes are loaded
    assert "timeout of 1 s" in outcome.error


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="the cap needs Linux /proc")
def test_memory_past_the_cap_is_stopped_and_reported():
    outcome = run_in_worker(_hog, memory_mb=300, timeout_s=60)
    assert outcome.status == MEMORY, outcome
    assert outcome.peak_mb >= 300  # how far past the cap depends on how fast the hog writes between samples
    assert "memory cap of 300 MB" in outcome.error


# ---- the whole process tree (security issue 22, findings 3 and 4) ---------------------------------------------------

_HOG = "import sys, time; x = b'\\1' * (400 * 2**20); open(sys.argv[1], 'w').write('full'); time.sleep(60)"


def _pid_gone(pid: int, within_s: float = 2.0) -> bool:
    """Gone, or a zombie (killed; reaped by whoever inherits it)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def _subprocess_hog(flag: str, pid_file: str) -> None:
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", _HOG, flag], start_new_session=True)  # leaves the process group
    with open(pid_file, "w") as f:
        f.write(str(child.pid))
    child.wait()


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="the cap needs Linux /proc")
def test_the_cap_covers_a_subprocess_that_left_the_process_group(tmp_path):
    flag, pid_file = tmp_path / "full", tmp_path / "hog.pid"
    outcome = run_in_worker(_subprocess_hog, str(flag), str(pid_file), memory_mb=150, timeout_s=30, label="model 'm'")
    assert outcome.status == MEMORY, outcome
    assert "memory cap of 150 MB" in outcome.error and "model 'm'" in outcome.error
    assert outcome.peak_mb >= 150
    assert _pid_gone(int(pid_file.read_text())), "the subprocess over the cap was left running"


def _daemon(pid_file: str) -> str:
    """Starts a daemon the classic way (fork, setsid, fork; the middle one exits) and returns at once."""
    import subprocess

    code = ("import os, sys, time\n"
            "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)\n    os._exit(0)\n")
    subprocess.run([sys.executable, "-c", code, pid_file], check=True)
    for _ in range(100):
        if os.path.getsize(pid_file) if os.path.exists(pid_file) else 0:
            return "done"
        time.sleep(0.05)
    return "no pid"


def test_a_daemon_the_work_started_does_not_outlive_the_worker(tmp_path):
    pid_file = tmp_path / "daemon.pid"
    outcome = run_in_worker(_daemon, str(pid_file), timeout_s=30)
    assert outcome.status == OK and outcome.value == "done", outcome
    assert _pid_gone(int(pid_file.read_text())), "the worker's setsid daemon outlived it"



def _parallel_work():
    import torch

    x = torch.randn(8, 3, 64, 64)
    conv = torch.nn.Conv2d(3, 16, 3)
    for _ in range(3):
        conv(x)
    return torch.get_num_threads(), len(os.listdir("/proc/self/task"))


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: a worker has nothing to use a second thread on")
def test_a_worker_uses_the_parents_threads_after_the_parent_ran_parallel_code():
    """GNU OpenMP's pool does not survive fork: the parent pauses it before forking, so the worker (an export
    attempt) builds its own pool and runs with the parent's thread count instead of one thread, and does not hang."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = torch.randn(512, 512)
        (a @ a).sum()  # the parent's pool exists now: a naive fork would hang in the child's first parallel region
        outcome = run_in_worker(_parallel_work, timeout_s=120)
        assert outcome.ok, outcome.to_dict()
        threads, tasks = outcome.value
        assert threads == 2 and tasks >= 2, outcome.value
        (a @ a).sum()  # and the parent's own parallel code still runs
    finally:
        torch.set_num_threads(previous)


def _collect():
    import gc

    gc.collect()  # torch.export does this in an export attempt
    return "collected"


def test_a_session_the_parent_dropped_in_a_reference_cycle_is_not_destroyed_in_the_worker():
    """An onnxruntime session the parent no longer reaches, but whose reference cycle its collector has not broken
    yet (a traceback's frames hold it), must not be destroyed in the forked worker: the copy has none of the
    session's pool threads, and its destructor hung there forever (seen in the export ladder: an attempt worker
    stuck in torch.export's gc.collect(), inside onnxruntime's pthread_cond_destroy)."""
    import gc

    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMul", ["x", "x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256, 256])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, {"x": np.ones((256, 256), np.float32)})
    time.sleep(0.5)  # the pool's threads stop spinning and wait on their condition variable
    cycle = {"session": session}
    cycle["self"] = cycle
    gc.disable()  # the cycle stays garbage, uncollected, until the fork
    try:
        del session, cycle
        outcome = run_in_worker(_collect, timeout_s=20)
    finally:
        gc.enable()
        gc.collect()  # destroyed here, in the parent, with its threads
    assert outcome.ok and outcome.value == "collected", outcome.to_dict()
