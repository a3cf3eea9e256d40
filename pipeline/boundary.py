"""The CLI's one error boundary: every exception becomes an exit code and at most one line on stderr.

User and environment errors (MicroError, OSError, usage errors, a ValueError raised by the input checks of ``heads``)
are one line ``error: ...`` with exit code 2, Ctrl-C exit code 130; anything else is a bug, reported in one line with
exit code 1. ``MICRO_DEBUG=1`` or ``--debug`` anywhere on the command line shows the traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.errors import Interrupted, MicroError, first_line, os_error_line, printable

DEBUG_HELP = "Show the Python traceback of an error (for bug reports); also MICRO_DEBUG=1."


def debug_requested(argv: list[str]) -> bool:
    """True if MICRO_DEBUG is set (not 0) or --debug is anywhere on the command line (removed from argv)."""
    on = os.environ.get("MICRO_DEBUG", "").strip() not in ("", "0")
    while "--debug" in argv:
        argv.remove("--debug")
        on = True
    return on


def one_line_warnings() -> None:
    """Warnings (damaged cache shards, convergence notes) as one 'warning: ...' line each."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        text = first_line(message) if isinstance(message, Exception) else message
        print(f"warning: {printable(text, lines=False)}", file=sys.stderr)

    warnings.showwarning = show


def console_log(console):
    """``log(message)`` for the stages and the commands' own lines: printed as plain text on the command's console
    (never parsed as rich markup, control characters escaped: names from data print literally; no highlighting,
    no wrapping)."""
    return lambda message: console.print(printable(message), markup=False, highlight=False, soft_wrap=True)


def raised_in_heads(exc: BaseException) -> bool:
    """True if ``exc`` was raised by code in the ``heads`` package (whose ValueErrors are input checks)."""
    import heads
    from heads.validation import invalid_parameter_error

    if isinstance(exc, invalid_parameter_error()):  # an estimator's parameter check (sklearn's own validation)
        return True
    tb, last = exc.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    root = Path(heads.__file__).resolve().parent
    return last is not None and root in Path(last.tb_frame.f_code.co_filename).resolve().parents


def classify(exc: BaseException) -> tuple[int, str | None]:
    """(exit code, the line to print or None) of an exception that ended a command."""
    if isinstance(exc, MicroError):
        return 2, f"error: {exc}"
    if isinstance(exc, Interrupted):
        return 130, str(exc)
    if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "Abort":
        return 130, "interrupted"
    if isinstance(exc, OSError):  # the environment: permission denied, disk full, a folder in the way, ...
        return 2, f"error: {os_error_line(exc)}"
    if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # usage errors (typer vendors click)
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `micro` alone: the help is the message
            exc.show()
            return exc.exit_code or 2, None
        return exc.exit_code or 2, (
            f"error: {exc.format_message()}" + (f" (see '{ctx.command_path} --help')" if ctx else "")
        )
    if type(exc).__name__ == "Exit" and hasattr(exc, "exit_code"):
        return exc.exit_code, None
    if isinstance(exc, ValueError) and raised_in_heads(exc):  # the math refuses its input: a user error
        return 2, f"error: {first_line(exc)}"
    return 1, (
        f"error: internal error ({type(exc).__name__}: {first_line(exc)}); this is a bug: rerun with "
        "MICRO_DEBUG=1 for the traceback and report it"
    )


def run(app, argv: list[str]) -> None:
    """Run the Typer ``app`` on ``argv`` inside the boundary; exits with the code (nothing on success)."""
    import traceback
    import warnings

    argv = list(argv)
    debug = debug_requested(argv)
    shown = warnings.showwarning
    if not debug:
        one_line_warnings()
    code, line, error = 0, None, None
    try:
        rc = app(args=argv, prog_name="micro", standalone_mode=False)  # typer.Exit(code) is returned, not raised
        code = rc if isinstance(rc, int) else 0
        if code == 130:  # typer turns Ctrl-C into a silent return code
            line = "interrupted"
    except BaseException as exc:  # noqa: BLE001 - the one boundary
        if isinstance(exc, SystemExit):
            raise
        error = exc
        code, line = classify(exc)
    finally:
        warnings.showwarning = shown
    if line is not None:
        if debug and error is not None and code != 130:
            traceback.print_exception(error)
        print(printable(line, lines=False), file=sys.stderr)
    if code:
        sys.exit(code)
