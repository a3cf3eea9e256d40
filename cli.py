"""micro command line: a thin Typer layer over ``pipeline`` (no math, no storage logic here)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from pipeline.errors import MicroError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Personalised reward modelling (MiCRo): embed once, fit mixture heads, route per user.")
data_app = typer.Typer(no_args_is_help=True, help="Prepare preference data into the canonical pair table.")
app.add_typer(data_app, name="data")


# --- data prepare -------------------------------------------------------------------------------


# --- embed --------------------------------------------------------------------------------------


# --- fit ----------------------------------------------------------------------------------------


# --- route / eval / score -----------------------------------------------------------------------


# --- demo ---------------------------------------------------------------------------------------


def main() -> None:
    """Entry point: run the app; a MicroError becomes one line on stderr and exit code 2."""
    try:
        app(standalone_mode=False)
    except MicroError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
