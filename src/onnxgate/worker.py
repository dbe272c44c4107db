"""Run one piece of untrusted work (an export attempt, a zoo model) in a worker process it cannot take down.

``run_in_worker(fn, *args, timeout_s=..., memory_mb=...)`` forks a child, runs ``fn(*args)`` there and returns a
``WorkerOutcome``: the value, or why there is none — the function raised (``error``), the process died from a signal
(``crashed``: a segfault in a custom op, ``os.abort()`` in an exporter), it ran past its timeout (``timeout``) or it
allocated past its memory cap (``memory``). The parent is never at risk; each of those is an ordinary outcome the
caller records (the export ladder moves on to its next rung, the zoo to its next model).

Why fork, not spawn: the worker needs the user's model, already built and warmed up in the parent. A spawned
interpreter would re-import torch and rebuild (or unpickle) the model for every attempt — seconds each, more than a
small model's whole export — while a fork shares its memory copy-on-write and starts in milliseconds. Two rules make
fork safe with PyTorch: the child sets ``torch.set_num_threads(1)`` before any work (GNU OpenMP's thread pool does not
survive a fork; a parallel region in the child would wait forever for threads that do not exist), and the parent holds
no lock-holding helper threads while forking (the sampler thread below lives in the parent only).

The memory cap is on the child's *private* memory (``Private_*`` in ``/proc/PID/smaps_rollup``): pages the attempt
allocated or wrote, not the model it shares with the parent. A watchdog in the parent samples the child's resident
memory every few milliseconds (``statm``, cheap) and reads its private memory (``smaps_rollup``, a tenth of a second
for a process holding torch) only while the resident memory — an upper bound — is over the cap; it kills the child
with SIGKILL when the private memory passes the cap, which is then reported as such (the kernel's OOM
killer, if it struck first, shows up as ``crashed: SIGKILL``). Linux only (``/proc``); elsewhere the cap is not
enforced and the outcome says so.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

OK, ERROR, CRASHED, TIMEOUT, MEMORY = "ok", "error", "crashed", "timeout", "memory"
_POLL_S = 0.01


@dataclass
class WorkerOutcome:
    status: str  # ok | error | crashed | timeout | memory
    value: Any = None  # fn's return value (status ok)
    error_type: str | None = None  # the exception's class name (status error)
    error: str | None = None  # one paragraph: the exception's message, or what killed the worker
    signal: str | None = None  # SIGSEGV, SIGABRT, SIGKILL... (status crashed or memory)
    seconds: float = 0.0
    peak_mb: float = 0.0  # the worker's peak private memory (what it added to the machine)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("value")
        return data


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def private_bytes(pid: int) -> int | None:
    """Private (not shared with the parent) resident memory of ``pid``; None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(line.split()[1]) * 1024 for line in f if line.startswith(("Private_Clean", "Private_Dirty")))
    except (OSError, ValueError, IndexError):
        return None


def default_memory_mb() -> int | None:
    """The default cap: 90% of the memory available when the worker starts (the OOM killer would strike near
    there anyway, without a message); None where /proc/meminfo cannot tell."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(int(fields["MemAvailable"].split()[0]) / 1024 * 0.9)
    except (OSError, KeyError, ValueError):
        return None


def _child(conn, fn: Callable, args: tuple, kwargs: dict, parent: int | None = None) -> None:
    import faulthandler

    # A fatal signal must reach the parent as itself: an inherited faulthandler (pytest enables one) dumps stacks
    # from a signal handler first, which in a forked child holding torch can itself crash (an abort seen as SIGSEGV).
    faulthandler.disable()
    _die_with_parent(parent)
    # A worker may run workers of its own (a zoo model's worker runs the ladder's export attempts); multiprocessing
    # refuses children to a daemonic process, and this one's children die with it anyway (see _die_with_parent).
    multiprocessing.current_process().daemon = False
    try:
        import torch

        torch.set_num_threads(1)  # see the module docstring: OpenMP's pool does not survive fork
    except ImportError:
        pass
    try:
        message = (OK, fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - everything the work raises is its outcome, SystemExit included
        message = (ERROR, _describe(exc))
    try:
        conn.send(message)
    except Exception as exc:  # an unpicklable return value: say so rather than die silently
        conn.send((ERROR, {"type": type(exc).__name__, "message": f"the worker's result could not be sent back: {exc}",
                           "traceback": ""}))
    conn.close()
    os._exit(0)  # no atexit handlers, no flushing of buffers inherited from the parent


def _die_with_parent(parent: int | None) -> None:
    """SIGKILL this worker when the thread that forked it dies (Linux's PR_SET_PDEATHSIG): a parent killed with
    SIGKILL, or one whose own watchdog stopped it, leaves no worker running on (nor the workers' own workers)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: a killed parent's worker runs to its end
        return
    if parent is not None and os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _describe(exc: BaseException) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__,
            "traceback": "".join(traceback.format_exception(exc))[-4000:],
            "attrs": {k: v for k, v in vars(exc).items() if isinstance(v, (str, int, float, bool, type(None)))}
            if hasattr(exc, "__dict__") else {}}


def run_in_worker(fn: Callable, *args: Any, timeout_s: float | None = None, memory_mb: float | None = None,
                  label: str = "the worker", **kwargs: Any) -> WorkerOutcome:
    """Run ``fn(*args, **kwargs)`` in a forked child; never raises for what happens in the child."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    start = time.monotonic()
    process = ctx.Process(target=_child, args=(send, fn, args, kwargs, os.getpid()), daemon=True)
    process.start()
    send.close()
    outcome = _watch(process, receive, start, timeout_s, memory_mb, label)
    outcome.seconds = round(time.monotonic() - start, 2)
    receive.close()
    return outcome


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` from /proc/PID/statm: cheap (microseconds), unlike smaps_rollup, which walks every
    mapping (a tenth of a second for a process that has imported torch)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


_PRIVATE_EVERY_S = 0.25  # how often private memory is read while resident memory is over the cap


def _watch(process, receive, start: float, timeout_s, memory_mb, label: str) -> WorkerOutcome:
    """Wait for the worker's result, sampling its memory: resident memory every poll (cheap); private memory (the
    cap's measure, which resident memory bounds from above) only while resident memory is over the cap. The peak
    reported is the larger of the resident growth since the fork and the private memory read."""
    cap = None if memory_mb is None else memory_mb * 2**20
    base, peak, checked = rss_bytes(process.pid), 0, 0.0
    notes = [] if base is not None or cap is None else [
        "the memory cap was not enforced: /proc cannot tell this worker's memory"]
    while True:
        if receive.poll(_POLL_S):
            try:
                status, payload = receive.recv()
            except EOFError:  # died while sending
                break
            process.join()
            outcome = _finished(status, payload)
            outcome.peak_mb, outcome.notes = round(peak / 2**20, 1), notes
            return outcome
        rss = rss_bytes(process.pid) or 0
        peak = max(peak, rss - (base or 0))
        if cap is not None and rss > cap and time.monotonic() - checked > _PRIVATE_EVERY_S:
            checked, used = time.monotonic(), private_bytes(process.pid) or 0
            peak = max(peak, used)
            if used > cap:
                _kill(process)
                return WorkerOutcome(MEMORY, signal="SIGKILL", peak_mb=round(peak / 2**20, 1), notes=notes, error=(
                    f"{label} allocated more than its memory cap of {memory_mb:.0f} MB (it had {used / 2**20:.0f} MB "
                    "of its own when it was stopped)"))
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            _kill(process)
            return WorkerOutcome(TIMEOUT, peak_mb=round(peak / 2**20, 1), notes=notes,
                                 error=f"{label} ran past its timeout of {timeout_s:g} s and was stopped")
        if not process.is_alive() and not receive.poll(0):
            break
    process.join()
    code = process.exitcode
    name = signal_name(-code) if code is not None and code < 0 else None
    return WorkerOutcome(CRASHED, signal=name, peak_mb=round(peak / 2**20, 1), notes=notes,
                         error=f"{label} crashed: " + (f"the process died from {name} ({SIGNAL_CAUSES.get(name, 'a fatal signal')})"
                                                      if name else f"the process exited with status {code} without a result"))


SIGNAL_CAUSES = {  # what each fatal signal most often means (also cli/isolate.py's crash message)
    "SIGKILL": "killed from outside, most often by the kernel's out-of-memory killer",
    "SIGSEGV": "a segmentation fault in native code: a custom op, an exporter or a runtime bug",
    "SIGABRT": "an abort in native code: a failed C++ assertion, or os.abort()",
    "SIGBUS": "a bus error in native code",
    "SIGFPE": "a floating-point exception in native code",
}


def _finished(status: str, payload: Any) -> WorkerOutcome:
    if status == OK:
        return WorkerOutcome(OK, value=payload)
    return WorkerOutcome(ERROR, error_type=payload["type"], error=payload["message"], value=payload)


def _kill(process) -> None:
    try:
        os.kill(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.join()
