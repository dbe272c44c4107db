"""`onnxgate` entry point. Commands live one per module in this folder and register themselves on ``app``."""

from __future__ import annotations

import importlib
import sys

import typer

try:  # typer >= 0.20 vendors click as typer._click; older typer uses the click package itself
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

from .._version import __version__
from .common import console, render_error

app = typer.Typer(
    name="onnxgate",
    help="Take a PyTorch model to a proven ONNX artifact: export, verify, optimize, benchmark, bundle.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# One module per command group; each defines register(app). A module whose optional dependency is missing
# must still import (it imports heavy packages inside the command), so `--help` never breaks.
COMMAND_MODULES = ["run_cmd", "export_cmd", "inspect_cmd", "verify_cmd", "bundle_cmd", "env_cmd", "bench_cmd", "optimize_cmd", "clean_cmd",
                   "deploy_cmd", "serve_cmd", "zoo_cmd", "sign_cmd"]


def _version(value: bool) -> None:
    if value:
        print(f"onnxgate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """onnxgate: export → verify → optimize → quantize → benchmark → bundle."""


def _register() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__package__}.{name}":
                continue  # command not built yet
            raise
        module.register(app)


_register()


def main(argv: list[str] | None = None) -> int:
    from ..errors import ExitCode, OnnxgateError

    from ..errors import install_interrupt_tracker

    from .common import COMMAND

    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    COMMAND["name"] = next((a for a in argv if not a.startswith("-")), "onnxgate")
    install_interrupt_tracker()
    try:
        # With standalone_mode=False, a typer.Exit(code) raised by a command comes back as the return value.
        rv = app(args=argv, prog_name="onnxgate", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except OnnxgateError as exc:
        render_error(exc, as_json=as_json)
        return int(exc.exit_code)
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except typer.Abort:
        console.print("aborted")
        return 130
    except ClickException as exc:  # usage errors: unknown flag, missing argument
        exc.show(file=sys.stderr)
        if as_json:  # the one envelope on stdout, whatever went wrong
            from .common import emit_json

            emit_json(_usage_envelope(exc))
        return int(ExitCode.BAD_INPUT)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug in onnxgate: exit 1 with its traceback, but --json still gets its envelope
        if as_json:
            from ..outcome import envelope
            from .common import emit_json

            emit_json(envelope(COMMAND["name"], error=exc))
        raise
    except SystemExit as exc:
        # onnxgate's own commands end with typer.Exit, never SystemExit: this one came from code it called (a
        # model's sys.exit() that no user_code() guard caught). Never let it pass for a verdict, least of all 0.
        render_error(_foreign_exit(exc), as_json=as_json)
        return int(ExitCode.INTERNAL)


def _usage_envelope(exc: ClickException) -> dict:
    """The ``--json`` envelope of a usage error (an unknown option, a missing argument): exit 2, like any bad input."""
    from ..errors import BadInputError
    from ..outcome import envelope
    from .common import COMMAND

    command = COMMAND["name"]
    hint = f"Run `onnxgate {command} --help` for its arguments and options." if command != "onnxgate" else \
        "Run `onnxgate --help` for the commands."
    error = BadInputError(f"onnxgate {command}: {exc.format_message()}".replace("onnxgate onnxgate", "onnxgate"),
                          hint=hint)
    return envelope(command, error=error)


def _foreign_exit(exc: SystemExit):
    from ..errors import OnnxgateError

    error = OnnxgateError(f"Code that onnxgate called (most likely the model's own code) called sys.exit({exc.code!r}); "
                          "onnxgate stopped without a verdict.",
                          hint="Remove the sys.exit()/exit() call from the model's code path (import, __init__, "
                          "forward), or keep it under `if __name__ == '__main__':`.")
    return error


def entry() -> None:
    """The ``onnxgate`` console script: commands that run model code go to a child process (see isolate.py)."""
    from .isolate import run_isolated, wants_isolation

    argv = sys.argv[1:]
    sys.exit(run_isolated(argv) if wants_isolation(argv) else main(argv))


if __name__ == "__main__":
    sys.exit(main())
