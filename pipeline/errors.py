"""User-facing errors: one line, no traceback (the CLI prints them and exits non-zero)."""


class MicroError(Exception):
    """A problem with the user's input or environment, reported as one clear line."""
