"""The stages of the main job, and the ways a process running one can end without a result.

The pipeline announces each stage it enters through a structured call (``run(..., on_stage=...)``), never only as
a progress message: the zoo's worker and the console script's child record it in a small file (``StageFile``), so
when the process dies (a crash, a timeout, a memory kill) whoever watched it knows which stage it was in and asks
the one judge (``outcome.killed_code``) for the exit code. Light on purpose: no torch, no onnx.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path


class Stage(str, Enum):
    """The stages of ``onnxgate run``, in order. ``LOAD`` is the model's import and construction."""

    LOAD = "load"
    EXPORT = "export"  # the ladder, its attempts and its winner's own verification
    VERIFY = "verify"
    ACCURACY = "accuracy"
    OPTIMIZE = "optimize"
    QUANTIZE = "quantize"
    BENCH = "bench"
    BUNDLE = "bundle"
    DEPLOY = "deploy"

    def __str__(self) -> str:
        return self.value


class Ending(str, Enum):
    """How a process running a stage ended without a result."""

    CRASH = "crash"  # died from a signal (segfault, abort), or exited without a result
    TIMEOUT = "timeout"  # ran past its time limit and was stopped
    MEMORY = "memory"  # stopped at its memory cap, or killed by the kernel's out-of-memory killer
    ERROR = "error"  # raised an exception onnxgate did not expect: a bug in onnxgate

    def __str__(self) -> str:
        return self.value


STAGE_FILE_ENV = "ONNXGATE_STAGE_FILE"  # the console script's child records its stage in this file


class StageFile:
    """The stage a process is in, kept in a file its watcher reads after the process died (a callable: pass it as
    the pipeline's ``on_stage``). Each announcement replaces the file's content: one word, the stage's value."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __call__(self, stage: Stage) -> None:
        try:  # the record is for a watcher after a crash: failing to write it must not fail the work itself
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError:
            return  # the watcher then books the command's first stage (see read's default)
        try:
            os.write(fd, Stage(stage).value.encode())
        finally:
            os.close(fd)

    def read(self, default: Stage = Stage.LOAD) -> Stage:
        """The last stage announced; ``default`` when none was (the process died before the first)."""
        try:
            return Stage(self.path.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return default


def stage_file_from_env() -> StageFile | None:
    """In the console script's child (``cli/isolate.py``): the file its parent reads when the child dies."""
    path = os.environ.get(STAGE_FILE_ENV)
    return StageFile(path) if path else None
