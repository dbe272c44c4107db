"""One error tree for onnxgate.

Every error a user must act on is an ``OnnxgateError``: it carries a one-paragraph message that names the
input at fault, a ``hint`` naming the fix, and the process ``exit_code`` the CLI returns. Errors of the
libraries underneath (torch.onnx, onnx, onnxruntime) are wrapped where they enter and chained with ``from``.
Expected outcomes (an export attempt that fails, a parity mismatch) are *values* in results, not exceptions;
they become errors only at the very end, when the CLI turns a failed report into an exit code.

    OnnxgateError
    ├── BadInputError          exit 2   a ref, shape, flag, path or config the user must correct
    │   ├── ModelSourceError   exit 2   the model reference cannot be resolved or loaded
    │   └── OutputExistsError  exit 2   refusing to overwrite without --force
    ├── UnsafeInputError       exit 7   pickles without --trust-pickle, external data leaving the model folder
    ├── MissingExtraError      exit 8   an optional dependency (torch, timm, openvino, ...) is not installed
    ├── ExportError            exit 3   every export attempt failed (carries the diagnosis)
    ├── ParityError            exit 4   the ONNX model does not compute what PyTorch computes
    ├── AccuracyBudgetError    exit 5   a quantized model misses its accuracy budget
    ├── RuntimeIncompatibleError exit 6 the target runtime cannot load or run the model
    └── IntegrityError         exit 9   a bundle file does not match its recorded checksum

    ModelCodeExit (a plain Exception, not an OnnxgateError): the model's own code called ``sys.exit()`` or raised
    ``KeyboardInterrupt``. ``user_code()`` turns those BaseExceptions into this value-like failure where user code
    runs, so the stage reports it like any other model error and a model can never make onnxgate exit 0.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes. Documented in the README; CI pipelines gate on them."""

    OK = 0
    INTERNAL = 1  # a bug in onnxgate: the only case where a traceback is shown
    BAD_INPUT = 2
    EXPORT_FAILED = 3
    PARITY_FAILED = 4
    ACCURACY_BUDGET = 5
    RUNTIME_INCOMPATIBLE = 6
    UNSAFE_INPUT = 7
    MISSING_DEPENDENCY = 8
    INTEGRITY = 9


class OnnxgateError(Exception):
    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, hint: str | None = None, result=None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.result = result  # the stage's result object, when there is one (e.g. every export attempt)

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class BadInputError(OnnxgateError):
    exit_code = ExitCode.BAD_INPUT


class ModelSourceError(BadInputError):
    pass


class OutputExistsError(BadInputError):
    pass


class UnsafeInputError(OnnxgateError):
    exit_code = ExitCode.UNSAFE_INPUT


class MissingExtraError(OnnxgateError):
    exit_code = ExitCode.MISSING_DEPENDENCY

    def __init__(self, module: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the Python package '{module}', which is not installed.",
            hint=f"Install it with: pip install 'onnxgate[{extra}]'",
        )


class ExportError(OnnxgateError):
    exit_code = ExitCode.EXPORT_FAILED


class ParityError(OnnxgateError):
    exit_code = ExitCode.PARITY_FAILED


class AccuracyBudgetError(OnnxgateError):
    exit_code = ExitCode.ACCURACY_BUDGET


class RuntimeIncompatibleError(OnnxgateError):
    exit_code = ExitCode.RUNTIME_INCOMPATIBLE


class IntegrityError(OnnxgateError):
    exit_code = ExitCode.INTEGRITY


def first_line(exc: BaseException, limit: int = 400) -> str:
    """The first line of an exception's message (its type name when the message is empty), cut at ``limit``: what
    results and reports record of a library error without its multi-line dumps."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency or raise MissingExtraError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module, extra, purpose) from exc


class ModelCodeExit(Exception):
    """The model's own code tried to end the process (``sys.exit``, ``exit()``, ``KeyboardInterrupt``)."""


_user_interrupts = 0  # SIGINTs really delivered (Ctrl-C); counted by the handler install_interrupt_tracker sets


def install_interrupt_tracker() -> None:
    """Count real Ctrl-C presses, so ``user_code`` can tell them from a ``KeyboardInterrupt`` the model raised."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        global _user_interrupts
        _user_interrupts += 1
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)


@contextmanager
def user_code(what: str) -> Iterator[None]:
    """Run the user's model code (import, construction, forward, export tracing): a ``sys.exit()`` or a
    ``KeyboardInterrupt`` the model raises itself becomes ``ModelCodeExit``; a real Ctrl-C still interrupts."""
    seen = _user_interrupts
    try:
        yield
    except SystemExit as exc:
        raise ModelCodeExit(f"the model's code called sys.exit({exc.code!r}) while {what}") from None
    except KeyboardInterrupt:
        if _user_interrupts != seen:
            raise
        raise ModelCodeExit(f"the model's code raised KeyboardInterrupt while {what}") from None
