"""Run one piece of untrusted work (an export attempt, a zoo model) in a worker process it cannot take down.

``run_in_worker(fn, *args, timeout_s=..., memory_mb=...)`` forks a child, runs ``fn(*args)`` there and returns a
``WorkerOutcome``: the value, or why there is none — the function raised (``error``), the process died from a signal
(``crashed``: a segfault in a custom op, ``os.abort()`` in an exporter), it ran past its timeout (``timeout``) or it
allocated past its memory cap (``memory``). The parent is never at risk; each of those is an ordinary outcome the
caller records (the export ladder moves on to its next rung, the zoo to its next model).

Why fork, not spawn: the worker needs the user's model, already built and warmed up in the parent. A spawned
interpreter would re-import torch and rebuild (or unpickle) the model for every attempt — seconds each, more than a
small model's whole export — while a fork shares its memory copy-on-write and starts in milliseconds. Two rules make
fork safe with PyTorch. GNU OpenMP's thread pool does not survive a fork: a child whose parent ever ran a parallel
region waits forever in its own first one, for threads that do not exist. So right before forking, the parent hands
its pool back (``omp_pause_resource_all``, OpenMP 5.0, in the libgomp torch ships); the child then builds a fresh
pool and runs with the parent's thread count — measured, an export attempt on 2 cores used both, where last turn's
workers were pinned to one thread. Where the pool cannot be paused (no libgomp found, or the call fails) the child
falls back to ``torch.set_num_threads(1)``. And the parent holds no lock-holding helper threads while forking (the
sampler thread below lives in the parent only).

The memory cap is on the child's *private* memory (``Private_*`` in ``/proc/PID/smaps_rollup``): pages the attempt
allocated or wrote, not the model it shares with the parent. A watchdog in the parent samples the child's resident
memory every few milliseconds (``statm``, cheap) and reads its private memory (``smaps_rollup``, a tenth of a second
for a process holding torch) only while the resident memory — an upper bound — is over the cap; it kills the child
with SIGKILL when the private memory passes the cap, which is then reported as such (the kernel's OOM
killer, if it struck first, shows up as ``crashed: SIGKILL``). Linux only (``/proc``); elsewhere the cap is not
enforced and the outcome says so.

The cap, the timeout and the kill cover the worker's whole process tree, not just the worker: ``fn`` may start
processes of its own (a build that runs ``python -c ...``, a ``setsid`` daemon). So the fork is a *keeper*
(``onnxgate-keeper`` in ``ps``), a small process that forks the worker proper and does nothing but wait: it is a
child subreaper (``PR_SET_CHILD_SUBREAPER``), so every descendant — one whose parent exited, one that called
``setsid`` and left the process group — stays below it, where ``/proc``'s parent links find it. The watchdog adds
the resident memory of every process below the keeper (the worker's own measured as above), reads private memory of
each when that sum passes the cap, and stops the tree over the cap or past the timeout with ``kill_tree`` (every
process stopped first, so none forks while the others are killed, then killed). A worker's own workers (the ladder's
export attempts under a zoo model) are keepers with watchdogs and caps of their own; their subtrees are theirs.
When the worker ends, the keeper kills whatever it left running. The keeper dies with the thread that started it
(``PR_SET_PDEATHSIG``, SIGTERM, which it handles by killing its tree) and the worker with the keeper (SIGKILL):
a ``kill -9`` of the parent leaves nothing running below it. No cgroup: it needs a delegated, writable cgroup v2
hierarchy, which containers (CI runners, the one this was built in: cgroup v1 only) rarely give; ``/proc`` works
wherever Linux does.
"""

from __future__ import annotations

import functools
import gc
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

OK, ERROR, CRASHED, TIMEOUT, MEMORY = "ok", "error", "crashed", "timeout", "memory"
_DIED = "died"  # the keeper's message: the worker ended without a result
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


KEEPER_NAME = "onnxgate-keeper"  # the keeper's name in ps and /proc/PID/stat (15 bytes: the kernel's limit)
WORKER_NAME = "onnxgate-worker"
_PR_SET_PDEATHSIG, _PR_SET_NAME, _PR_SET_CHILD_SUBREAPER = 1, 15, 36


_PRCTL: list = []  # libc's prctl, resolved in the parent: a dlopen in a child forked from a threaded parent can hang


def _prctl_fn():
    if not _PRCTL:
        try:
            import ctypes

            _PRCTL.append(ctypes.CDLL(None, use_errno=True).prctl)
        except (OSError, AttributeError):  # not Linux
            _PRCTL.append(None)
    return _PRCTL[0]


def _prctl(option: int, arg) -> bool:
    prctl = _prctl_fn()
    return prctl is not None and prctl(option, arg, 0, 0, 0) == 0


_TRIM: list = []  # glibc's malloc_trim, resolved once (None where libc has none: musl, macOS)


def release_freed_memory() -> bool:
    """Hand the heap pages this process freed back to the system (glibc's ``malloc_trim(0)``; the workaround Dask
    documents for "unmanaged memory"). Freed tensors and onnxruntime buffers otherwise stay resident: after the
    export ladder's quick check of vit_b_16 the process kept ~1 GB it no longer used, and the declared-shape audit's
    buffers came on top of it (the export's peak). False where there is no ``malloc_trim``."""
    if not _TRIM:
        try:
            import ctypes

            _TRIM.append(ctypes.CDLL(None).malloc_trim)
        except (OSError, AttributeError):
            _TRIM.append(None)
    if _TRIM[0] is None:
        return False
    _TRIM[0](0)
    return True


def total_memory_mb() -> int | None:
    """The machine's memory (MemTotal), in MB, or the container's limit where a cgroup sets a lower one; None where
    /proc/meminfo cannot tell."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        total = int(fields["MemTotal"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit) as f:
                total = min(total, int(f.read().strip()))
        except (OSError, ValueError):  # absent, or "max"
            continue
    return int(total / 2**20)


def _keeper(conn, fn: Callable, args: tuple, kwargs: dict, parent: int) -> None:
    """The forked process ``run_in_worker`` starts: forks the worker, waits for it, reports a death without a result,
    and kills whatever the worker left running (see the module docstring)."""
    # Nothing the parent left is garbage-collected here: an onnxruntime session the parent no longer reaches but whose
    # reference cycle (a traceback's frames hold the session's wrapper) its collector had not broken yet would be
    # destroyed in this copy, which has none of its pool's threads, and hang forever (py-spy: gc_collect_main ->
    # onnxruntime -> pthread_cond_destroy, inside torch.export's own gc.collect()). Frozen, the parent's objects
    # are never examined (the parent collects its own garbage); what the worker makes is collected as usual.
    # Cheaper than a full gc.collect() before every fork (0.2-0.5 s in a process that imported torch).
    gc.freeze()
    me, worker = os.getpid(), []
    _prctl(_PR_SET_NAME, KEEPER_NAME.encode())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the worker's to report; the keeper outlives it
    signal.signal(signal.SIGTERM, lambda *_: _reap_and_exit(me, 1, worker))
    if not die_with_parent(parent, signal.SIGTERM):
        _reap_and_exit(me, 1)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    pid = os.fork()
    worker.append(pid)
    if pid == 0:
        _prctl(_PR_SET_NAME, WORKER_NAME.encode())  # not a keeper: the watchdog counts this one
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _child(conn, fn, args, kwargs, me, parent)  # never returns
    _, status = os.waitpid(pid, 0)
    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):  # the worker sent no result
        died = {"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}
        try:
            conn.send((_DIED, died))
        except OSError:
            pass
    _reap_and_exit(me, 0)


def _reap_and_exit(me: int, code: int, first: list[int] = ()) -> None:
    """The keeper's end: kill ``first`` at once (the worker: no walk of /proc before it stops), then every process
    still below the keeper (its subreaper role keeps them there, the worker's orphans included), reap, exit."""
    for pid in first:
        if pid > 0:
            _signal(pid, signal.SIGKILL)
    kill_tree(me, include_root=False)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except OSError:
            break
    os._exit(code)


def _child(conn, fn: Callable, args: tuple, kwargs: dict, parent: int | None = None,
           grandparent: int | None = None) -> None:
    import faulthandler

    # A fatal signal must reach the parent as itself: an inherited faulthandler (pytest enables one) dumps stacks
    # from a signal handler first, which in a forked child holding torch can itself crash (an abort seen as SIGSEGV).
    faulthandler.disable()
    if not die_with_parent(parent):
        os._exit(1)
    from . import fsutil

    fsutil.expect_parent(parent, grandparent)  # no output moved into place once the keeper or its parent is gone
    # A worker may run workers of its own (a zoo model's worker runs the ladder's export attempts); multiprocessing
    # refuses children to a daemonic process, and this one's children die with it anyway (see die_with_parent).
    multiprocessing.current_process().daemon = False
    torch = sys.modules.get("torch")  # only where the parent imported it: a worker importing it gets a fresh pool
    if torch is not None:
        torch.set_num_threads(_CHILD_THREADS)  # see the module docstring: 1 unless the parent paused its pool
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


def die_with_parent(parent: int | None, signum: int = signal.SIGKILL) -> bool:
    """Have ``signum`` sent to this process when the thread that forked it dies (Linux's PR_SET_PDEATHSIG): a parent
    killed with SIGKILL, or one whose own watchdog stopped it, leaves no worker running on. False when ``parent``
    (the PID that started this process) is already gone — the caller must then exit. Elsewhere than Linux a killed
    parent's worker runs to its end (True)."""
    _prctl(_PR_SET_PDEATHSIG, int(signum))
    return parent is None or os.getppid() == parent  # the parent may have died before the prctl above


_die_with_parent = die_with_parent


def preexec_die_with_parent(parent: int | None = None, signum: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``subprocess.Popen(preexec_fn=...)`` that makes the child die with the calling thread (PR_SET_PDEATHSIG;
    it survives exec) and exit at once if ``parent`` is already gone."""
    parent = os.getpid() if parent is None else parent
    prctl = _prctl_fn()  # resolved before the fork: nothing to load in the child

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


# ------------------------------------------------------------------------------------------- process trees


def _proc_table() -> dict[int, tuple[int, str]]:
    """PID -> (parent PID, name) of every process /proc shows (about 0.6 ms for a hundred processes)."""
    table = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                text = f.read()
        except OSError:
            continue
        close = text.rfind(b")")
        try:
            table[int(name)] = (int(text[close + 2:].split(b" ", 2)[1]), text[text.find(b"(") + 1:close].decode(
                "utf-8", "replace"))
        except (ValueError, IndexError):
            continue
    return table


def descendants(root: int, *, table: dict[int, tuple[int, str]] | None = None,
                skip_keepers: bool = False) -> list[int]:
    """Every process below ``root`` (breadth first). ``skip_keepers``: not the subtrees of nested keepers (workers
    of the worker, which their own watchdogs cap)."""
    table = _proc_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, queue = [], list(children.get(root, ()))
    while queue:
        pid = queue.pop(0)
        if pid in found or pid == root:
            continue
        if skip_keepers and table.get(pid, (0, ""))[1] == KEEPER_NAME:
            continue
        found.append(pid)
        queue.extend(children.get(pid, ()))
    return found


def kill_tree(root: int, *, include_root: bool = True) -> int:
    """SIGKILL ``root`` and every process below it; returns how many were signalled. Each is stopped (SIGSTOP)
    first and the tree walked again until no new process appears, so nothing forks past the kill, and the parent
    links the walk follows stay in place until the end."""
    stopped: list[int] = []
    for _ in range(100):
        members = descendants(root) + ([root] if include_root else [])
        new = [pid for pid in members if pid not in stopped and pid != os.getpid()]
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        stopped += new
    for pid in stopped:
        _signal(pid, signal.SIGKILL)
    return len(stopped)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _describe(exc: BaseException) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__,
            "traceback": "".join(traceback.format_exception(exc))[-4000:],
            "attrs": {k: v for k, v in vars(exc).items() if isinstance(v, (str, int, float, bool, type(None)))}
            if hasattr(exc, "__dict__") else {}}


_CHILD_THREADS = 1  # set in the parent right before each fork (``_release_openmp_pool``); read by the child


@functools.lru_cache(maxsize=1)
def _libgomp():
    """The GNU OpenMP runtime torch is linked against (torch/lib/libgomp*.so*), or None; looked up once (called only
    once torch is imported, so a None is final)."""
    torch = sys.modules.get("torch")
    if torch is None or not sys.platform.startswith("linux"):
        return None
    import ctypes
    import glob

    for path in sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp*.so*"))):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    try:
        return ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD)  # already loaded by torch from the system
    except OSError:
        return None


def _release_openmp_pool() -> int:
    """Hand the parent's OpenMP pool back so a forked child can build its own; the child's thread count.

    ``omp_pause_resource_all(omp_pause_soft)`` frees the pool's threads; the parent's next parallel region makes new
    ones (measured: no slowdown in the parent beyond that one re-creation). Without torch loaded there is nothing to
    release and the child's threads are its own business."""
    torch = sys.modules.get("torch")
    if torch is None:
        return 1
    threads = max(1, int(torch.get_num_threads()))
    if threads == 1:
        return 1
    gomp = _libgomp()
    try:
        if gomp is not None and gomp.omp_pause_resource_all(1) == 0:  # 1 = omp_pause_soft
            return threads
    except (AttributeError, OSError):  # an OpenMP older than 5.0: no pause
        pass
    return 1


def run_in_worker(fn: Callable, *args: Any, timeout_s: float | None = None, memory_mb: float | None = None,
                  label: str = "the worker", **kwargs: Any) -> WorkerOutcome:
    """Run ``fn(*args, **kwargs)`` in a forked child; never raises for what happens in the child."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    start = time.monotonic()
    _prctl_fn()
    global _CHILD_THREADS
    _CHILD_THREADS = _release_openmp_pool()
    process = ctx.Process(target=_keeper, args=(send, fn, args, kwargs, os.getpid()), daemon=True)
    process.start()
    send.close()
    try:
        outcome = _watch(process, receive, start, timeout_s, memory_mb, label)
    finally:
        if process.is_alive() and process.exitcode is None:  # interrupted (Ctrl-C) while watching: no orphans
            _kill(process)
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
_TREE_EVERY_S = 0.05  # how often /proc is walked for new processes below the keeper (statm of known ones: every poll)


class _Tree:
    """The processes below a keeper and their memory: the worker (the keeper's child, forked with the parent's
    memory: its resident growth since it was first seen, and its private memory) and every other process below it
    (whole resident memory, an upper bound of their private memory), nested keepers' subtrees excluded."""

    def __init__(self, keeper: int):
        self.keeper, self.members, self.bases, self.walked = keeper, [], {}, 0.0
        self.table: dict[int, tuple[int, str]] = {}

    def refresh(self) -> None:
        if time.monotonic() - self.walked < _TREE_EVERY_S:
            return
        self.walked = time.monotonic()
        self.table = _proc_table()
        self.members = descendants(self.keeper, table=self.table, skip_keepers=True)

    def is_worker(self, pid: int) -> bool:
        return self.table.get(pid, (0, ""))[0] == self.keeper

    def resident(self) -> tuple[int, int]:
        """(sum of resident memory, growth: the worker's since first seen plus the others' whole)."""
        total = growth = 0
        for pid in self.members:
            rss = rss_bytes(pid)
            if rss is None:
                continue
            total += rss
            if self.is_worker(pid):
                growth += max(0, rss - self.bases.setdefault(pid, rss))
            else:
                growth += rss
        return total, growth

    def private(self) -> tuple[int, int]:
        """(private memory of the whole tree, how many processes it is spread over)."""
        used = [private_bytes(pid) or 0 for pid in self.members]
        return sum(used), sum(1 for u in used if u)


def _watch(process, receive, start: float, timeout_s, memory_mb, label: str) -> WorkerOutcome:
    """Wait for the worker's result, sampling its tree's memory: resident memory every poll (cheap); private memory
    (the cap's measure, which resident memory bounds from above) only while resident memory is over the cap. The
    peak reported is the larger of the resident growth since the fork and the private memory read."""
    cap = None if memory_mb is None else memory_mb * 2**20
    tree, peak, checked = _Tree(process.pid), 0, 0.0
    notes = [] if os.path.exists(f"/proc/{process.pid}/statm") or cap is None else [
        "the memory cap was not enforced: /proc cannot tell this worker's memory"]
    while True:
        if receive.poll(_POLL_S):
            try:
                status, payload = receive.recv()
            except EOFError:  # died while sending
                break
            process.join()
            outcome = _died(payload, label) if status == _DIED else _finished(status, payload)
            outcome.peak_mb, outcome.notes = round(peak / 2**20, 1), notes
            return outcome
        tree.refresh()
        rss, growth = tree.resident()
        peak = max(peak, growth)
        if cap is not None and rss > cap and time.monotonic() - checked > _PRIVATE_EVERY_S:
            checked, (used, count) = time.monotonic(), tree.private()
            peak = max(peak, used)
            if used > cap:
                _kill(process)
                spread = f", over {count} processes" if count > 1 else ""
                return WorkerOutcome(MEMORY, signal="SIGKILL", peak_mb=round(peak / 2**20, 1), notes=notes, error=(
                    f"{label} allocated more than its memory cap of {memory_mb:.0f} MB (it had {used / 2**20:.0f} MB "
                    f"of its own{spread} when it was stopped)"))
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


def _died(info: dict, label: str) -> WorkerOutcome:
    """The keeper's report of a worker that ended without a result: killed by a signal, or an exit status."""
    signum, code = info.get("signal"), info.get("code")
    name = signal_name(signum) if signum else None
    return WorkerOutcome(CRASHED, signal=name, error=f"{label} crashed: " + (
        f"the process died from {name} ({SIGNAL_CAUSES.get(name, 'a fatal signal')})" if name
        else f"the process exited with status {code} without a result"))


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
    """Kill every process below the keeper (a setsid grandchild included: the keeper is their subreaper); the keeper
    then reaps them and exits by itself (no zombies left to a PID 1 that may not reap them). A keeper that does not
    is killed with its tree."""
    kill_tree(process.pid, include_root=False)
    process.join(5)
    if process.exitcode is None:
        kill_tree(process.pid)
        process.join()
