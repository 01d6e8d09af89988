"""The `toolchain` command: one typer app, one module per command group.

Errors a user can cause are `ToolchainError`s: printed as one line of what went wrong and one line
of what to do, exit code 1 (usage errors 2); a traceback only with `--debug`.
"""

from __future__ import annotations

import signal
import sys
import traceback
from typing import Annotated

import typer

from toolchain import __version__, interrupts
from toolchain.cli import models as models_cli
from toolchain.cli.output import last_message, plain
from toolchain.errors import ToolchainError
from toolchain.fsutil import disk_error

app = typer.Typer(name="toolchain", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="PyTorch CNN -> verified INT8 ONNX -> measured on an embedded ARM target.")


def _version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """toolchain: train, export, quantize, deploy and benchmark small CNNs."""


app.command("models")(models_cli.models)


def _register_optional_groups() -> None:
    # Command groups of later pipeline stages register themselves here as they land.
    import importlib

    for module_name in ("train", "pipeline", "bench", "deploy", "target", "simulate", "report", "rtmaps", "fleet",
                        "sweep", "profile", "optimize"):
        try:
            module = importlib.import_module(f"toolchain.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"toolchain.cli.{module_name}":
                raise
            continue
        module.register(app)


_register_optional_groups()


def _fail(message: str, hint: str | None, exit_code: int) -> None:
    print(f"error: {plain(message)}", file=sys.stderr)
    if hint:
        print(f"hint: {plain(hint)}", file=sys.stderr)
    sys.exit(exit_code)


def _interrupted() -> None:
    step = last_message()
    _fail("interrupted" + (f" during: {step}" if step else ""),
          "nothing half-written was kept (temporary files and staging folders are removed, here and on the "
          "target); rerun the same command to finish: finished work is reused", 130)


def _on_interrupt(signum: int, _frame: object) -> None:
    # typer turns KeyboardInterrupt into a silent exit 130, and a library may swallow it or turn it into its own
    # error: remember that it was one
    interrupts.record(signum)
    raise KeyboardInterrupt


def run(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    interrupts.clear()
    signal.signal(signal.SIGINT, _on_interrupt)
    try:
        result = app(args=args, prog_name="toolchain", standalone_mode=False)
        if interrupts.seen():
            _interrupted()
    except ToolchainError as error:
        if debug:
            traceback.print_exc()
        if interrupts.seen() and error.exit_code != 130:
            _interrupted()  # an error a Ctrl-C caused (a storage commit cut short) was the interruption
        _fail(error.message, error.hint, error.exit_code)
    except typer.Abort:
        _interrupted()
    except typer.TyperException as error:  # usage errors from the (vendored) click parser
        show = getattr(error, "show", None)
        if show:
            show()
            sys.exit(error.exit_code)
        _fail(error.message, None, error.exit_code)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        _interrupted()
    except Exception as error:  # a bug, not a user error: say so, keep the detail behind --debug
        if debug:
            traceback.print_exc()
        if interrupts.seen():
            _interrupted()
        disk = disk_error(error)  # a full or read-only disk met where no boundary expected it
        if disk is not None:
            _fail(disk.message, disk.hint, disk.exit_code)
        _fail(f"internal error: {type(error).__name__}: {error}", "rerun with --debug and report the traceback", 1)
    sys.exit(result if isinstance(result, int) else 0)
