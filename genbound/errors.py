"""User-facing errors.

A :class:`GenboundError` carries a one-line message that names the problem and what to do about it.
The command line prints it without a traceback and exits with code 2; the Python API raises it.
"""

from __future__ import annotations


class GenboundError(Exception):
    """Bad input or an unusable artefact: a one-line message for the user, exit code 2 from the CLI."""

    exit_code = 2

    def __init__(self, message: str):
        # Keep the message to one line: it is printed as-is after "genbound: error:".
        super().__init__(" ".join(str(message).split()))


class CheckpointError(GenboundError):
    """A checkpoint that is missing, malformed, hostile or made for another backbone."""


class NonFiniteError(GenboundError):
    """A loss, tensor or spectrum that is NaN or infinite, with the place where it arose."""
