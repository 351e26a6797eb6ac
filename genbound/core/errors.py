"""User-facing errors.

A :class:`GenboundError` carries a one-line message that names the problem and what to do about it.
The command line prints it without a traceback and exits with code 2; the Python API raises it.
"""

from __future__ import annotations


class GenboundError(Exception):
    """Bad input or an unusable artefact: a one-line message for the user, exit code 2 from the CLI."""

    exit_code = 2

    def __init__(self, message: str):
        # Keep the message to one line: it is printed as-is after "genbound: error:". Control characters
        # (from a hostile file's names: ANSI escape sequences) are shown escaped, never sent to a terminal.
        text = " ".join(str(message).split())
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in text))


class CheckpointError(GenboundError):
    """A checkpoint that is missing, malformed, hostile or made for another backbone."""


class NonFiniteError(GenboundError):
    """A loss, tensor or spectrum that is NaN or infinite, with the place where it arose."""


# Why an OS call failed, as the user can act on it (errno -> what to do).
_OS_HINTS = {
    "ENOSPC": "the disk is full; free space or choose a location on another disk",
    "EDQUOT": "the disk quota is exhausted; free space or choose another location",
    "EROFS": "the location is on a read-only filesystem; choose a writable location",
    "EACCES": "permission denied; choose a location you may write to (or read a file you may read)",
    "EPERM": "operation not permitted; choose a location you may write to",
    "ENAMETOOLONG": "the file name is too long; choose a shorter name",
    "ENOTDIR": "a component of the path is a file, not a directory; choose another path",
    "EISDIR": "the path is a directory where a file was expected; choose a file name",
    "ENOENT": "no such file or directory; check the path",
    "EEXIST": "the path exists already; choose another one or remove it",
    "ENOTEMPTY": "the directory is not empty; choose another one or empty it",
    "ELOOP": "too many levels of symbolic links; check the path",
    "EIO": "an input/output error from the device; check the disk",
    "EMFILE": "too many open files; raise the limit (ulimit -n)",
    "ENOMEM": "not enough memory",
    "EBUSY": "the path is busy (a mount point or in use); choose another one",
    "EXDEV": "the path crosses filesystems; choose a location on the same filesystem",
}


def os_error_message(exc: OSError) -> str:
    """One line for an OSError: what failed, on which path, and what to do about it."""
    import errno as _errno

    name = _errno.errorcode.get(exc.errno or -1, "")
    what = exc.strerror or str(exc) or exc.__class__.__name__
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(str(p) for p in paths)
    hint = _OS_HINTS.get(name, "check the path and try again")
    return f"{where + ': ' if where else ''}{what} ({hint})"
