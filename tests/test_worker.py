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
