"""What a path is when it is not what a reader expects: one wording for every refusal of a FIFO, a device or a
socket (a blocking read of a FIFO hangs; a device is never ours to replace)."""

from __future__ import annotations

import stat


def file_kind(mode: int) -> str:
    """'a FIFO (named pipe)', 'a device', 'a socket', 'a folder' or 'a file' for ``os.stat``'s ``st_mode``."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a file" if stat.S_ISREG(mode) else "not a regular file"
