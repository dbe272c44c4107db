"""Run a command that executes untrusted code in a child process, so a native crash cannot take onnxgate down.

A model's forward, a custom op, an exporter bug or onnxruntime on a malformed file can crash the interpreter
(segfault, abort) or exhaust memory. In-process, that ends the tool with no message and no JSON: a CI log shows a
bare signal. The ``onnxgate`` console script therefore runs the commands that execute model code or load model files
in a child interpreter with the same arguments, inheriting stdin/stdout/stderr (progress streams through unchanged),
and reports a child that died from a signal as an ordinary onnxgate error with a documented exit code and, under
``--json``, the shared error envelope. That exit code is the one judge's (``outcome.KILLED_CODES``, the table
``onnxgate zoo`` and the Python API use): by the stage the child was in and how it died. The pipeline (``run``,
``demo``, ``deploy`` of a model, ``bundle``) announces each stage it enters into a file named in the child's
environment (``stages.STAGE_FILE_ENV``); a command that announces none, or a child that died before its first
announcement, is booked in the command's first stage (``COMMAND_STAGES``). A SIGKILL is booked as a memory kill
(what the kernel's out-of-memory killer sends), any other signal as a crash. ``main()`` called from Python (the
tests, a notebook) runs in-process, as a library call should.

A ``kill -9`` of ``onnxgate`` cancels everything (security issue 22): the child runs below a *keeper*, a fork of
this small process that is a child subreaper, receives SIGTERM when ``onnxgate`` dies (``PR_SET_PDEATHSIG``) and
then kills every process below it — the child, its export attempts, a benchmark's subprocess, a daemon the model's
code started with ``setsid`` (``worker.kill_tree``). The child itself gets SIGKILL when the keeper dies and, right
before it moves any output into place, checks that the keeper is still its parent and ``onnxgate`` the keeper's
(``fsutil.expect_parent``): the keeper needs a moment to stop the tree, and no output appears in that moment. The
keeper also kills whatever the child left running when it ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

from ..errors import OnnxgateError
from ..stages import STAGE_FILE_ENV, Ending, Stage, StageFile

# Commands that import or run the user's model code, or hand files to a runtime; --help/--version/inspect/env run
# in-process (they are cheap and load nothing executable).
ISOLATED_COMMANDS = frozenset({"export", "run", "demo", "bundle", "bench", "verify", "optimize", "quantize",
                               "deploy"})
# The stage each command starts in: where a child that announced no stage of its own died. The commands that
# start from a model reference load and export it first (bench and deploy of an .onnx file too: a crash there was
# always booked as export); verify, optimize and quantize run an ONNX model in its runtime.
COMMAND_STAGES = {"export": Stage.EXPORT, "run": Stage.LOAD, "demo": Stage.LOAD, "bundle": Stage.LOAD,
                  "bench": Stage.EXPORT, "deploy": Stage.LOAD, "verify": Stage.VERIFY, "optimize": Stage.OPTIMIZE,
                  "quantize": Stage.QUANTIZE}
CHILD_ENV = "ONNXGATE_CHILD"
PARENT_ENV = "ONNXGATE_PARENT_PID"  # "KEEPER,TOP": the child's ancestry, for its checks (removed from its environment)


def wants_isolation(argv: list[str]) -> bool:
    command = next((a for a in argv if not a.startswith("-")), None)
    return (os.environ.get(CHILD_ENV) != "1" and command in ISOLATED_COMMANDS
            and not {"--help", "-h"} & set(argv))


def run_isolated(argv: list[str]) -> int:
    """Run ``onnxgate ARGV`` in a child interpreter; translate a death by signal into an onnxgate error."""
    command = next(a for a in argv if not a.startswith("-"))
    # A folder of its own, not a file in $TMPDIR: a child confined to its writable folders (untrusted code run with
    # --trust-code, safe_load.confine_untrusted_code) may still write its stage there, and nothing else is in it.
    folder = tempfile.mkdtemp(prefix="onnxgate-stage-")
    path = os.path.join(folder, "stage")
    try:
        env = dict(os.environ, **{CHILD_ENV: "1", STAGE_FILE_ENV: path})
        code = run_kept([sys.executable, "-m", "onnxgate.cli.child", *argv], env)
        stage = StageFile(path).read(default=COMMAND_STAGES.get(command, Stage.LOAD))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if code >= 0:
        return code
    error = crash_error(command, -code, stage)
    from .common import COMMAND, render_error

    COMMAND["name"] = command
    render_error(error, as_json="--json" in argv)
    return int(error.exit_code)


def run_kept(cmd: list[str], env: dict[str, str]) -> int:
    """Run ``cmd`` below a keeper (see the module docstring); its return code (negative: killed by that signal).
    Without fork (Windows) the child runs directly, and a killed ``onnxgate`` leaves it running."""
    if not hasattr(os, "fork"):
        child = subprocess.Popen(cmd, env=env)
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return child.wait()
        finally:
            signal.signal(signal.SIGINT, previous)
    read, write = os.pipe()
    top = os.getpid()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child (same process group)
    try:
        keeper = os.fork()
        if keeper == 0:
            os.close(read)
            _keep(cmd, env, top, write)  # never returns
        os.close(write)
        with os.fdopen(read, "rb") as f:
            report = f.read()
        _, status = os.waitpid(keeper, 0)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        return int(report)
    except ValueError:  # the keeper died without a report: killed from outside
        return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else -int(signal.SIGKILL)


def _keep(cmd: list[str], env: dict[str, str], top: int, report: int) -> None:
    """The keeper: start the child, wait for it, hand its return code to ``top``, kill what it left running."""
    from ..worker import _PR_SET_CHILD_SUBREAPER, _PR_SET_NAME, KEEPER_NAME, _prctl, _reap_and_exit, die_with_parent

    me, started = os.getpid(), []
    try:
        _prctl(_PR_SET_NAME, KEEPER_NAME.encode())
        signal.signal(signal.SIGTERM, lambda *_: _reap_and_exit(me, 1, started))
        if not die_with_parent(top, signal.SIGTERM):
            _reap_and_exit(me, 1)
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        child = subprocess.Popen(cmd, env={**env, PARENT_ENV: f"{me},{top}"}, preexec_fn=_child_preexec(me))
        started.append(child.pid)
        code = child.wait()
        os.write(report, str(code).encode())
    finally:
        _reap_and_exit(me, 0)


def _child_preexec(keeper: int):
    from ..worker import preexec_die_with_parent

    die = preexec_die_with_parent(keeper)

    def preexec() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # the keeper ignores Ctrl-C; the child must not inherit that
        die()

    return preexec


def child_prologue() -> None:
    """First thing in the child (``python -m onnxgate.cli.child ARGV``, ``cli/child.py``): die with the keeper, and
    move no output into place once it is gone; the child then runs the command as ``onnxgate`` would in-process."""
    ancestry = [int(p) for p in os.environ.pop(PARENT_ENV, "").split(",") if p.isdigit()]
    if ancestry:
        from .. import fsutil
        from ..worker import die_with_parent

        if not die_with_parent(ancestry[0]):
            os._exit(1)
        fsutil.expect_parent(*ancestry)


def crash_error(command: str, signum: int, stage: Stage | None = None) -> OnnxgateError:
    """The error for a child that died from ``signum`` in ``stage`` (default: the command's first stage); its exit
    code is the judge's (``outcome.KILLED_CODES``)."""
    from ..outcome import Killed, judge
    from ..worker import SIGNAL_CAUSES, signal_name

    stage = Stage(stage or COMMAND_STAGES.get(command, Stage.LOAD))
    name = signal_name(signum)
    cause = SIGNAL_CAUSES.get(name, "a fatal signal")
    ending = Ending.MEMORY if signum == signal.SIGKILL else Ending.CRASH
    verdict = judge(Killed(stage, ending, signal=name))
    error = OnnxgateError(
        f"'onnxgate {command}' crashed while running the model's code or its runtime (during {stage}): the worker "
        f"process died from {name} ({cause}). onnxgate ran it in a child process, so this report is all that was "
        "lost; no output was written.",
        hint="Re-run with the model's own code under a debugger (python -X faulthandler) to find the crashing op; "
        "if it is memory, use smaller --dim ranges or a machine with more memory.",
    )
    error.exit_code = verdict.exit_code
    return error
