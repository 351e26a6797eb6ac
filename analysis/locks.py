"""Per-run lock files, so that several sweep processes can share one output directory.

A lock is a file created with ``O_CREAT | O_EXCL`` (atomic: exactly one process creates it) holding the
owner's host, pid and process start time. It is removed when the run is done. A lock whose owner is dead is
stale and may be taken over; dead means: same host and no process with that pid, or a process with that pid
that started at another time (the pid was reused). The liveness of a process on another host cannot be
checked from here, so while a lock is held its owner touches the file every ``heartbeat`` seconds (recorded in
the owner record); a lock from another host whose file has not been touched for :data:`STALE_BEATS`
heartbeats is stale. That is what lets a cluster executor (analysis.executors) retry a run on another node
after the node that held it died, on any shared filesystem (only the file's mtime is used, not flock, which
some network filesystems emulate per client). A lock from another host without a heartbeat (an older
genbound) is never judged stale: taking it is refused in one line that names the owner and says to delete the
lock file once its owner is gone (rather than waiting for it forever, silently).

Taking over is the one racy step (two processes could both find the lock stale, one removes it and creates
its own, and the other would then remove that live lock). It is therefore done under an exclusive ``flock``
on the directory, with the lock re-read inside, so only one process can replace a given stale lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from genbound.core.atomic import pid_alive
from genbound.core.errors import GenboundError


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) counts after the command name, which is in parentheses and may hold spaces.
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


# The owner touches its lock every HEARTBEAT seconds; another host takes it over after STALE_BEATS missed
# beats (minutes: a slow shared filesystem or a paused process must not lose a live lock).
HEARTBEAT = 30.0
STALE_BEATS = 10


def owner_record() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid), "heartbeat": HEARTBEAT}


def read_owner(path: Path) -> dict | None:
    """The lock's owner record; None when the file is gone. An unreadable record is returned as {}."""
    try:
        data = path.read_bytes()[: 1 << 16]
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        rec = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # invalid UTF-8, not JSON, nested too deep: garbage, like a torn write
        return {}
    if not isinstance(rec, dict) or not isinstance(rec.get("host"), str) or not _is_int(rec.get("pid")) \
            or not isinstance(rec.get("start"), (str, type(None))) \
            or not (rec.get("heartbeat") is None or _is_number(rec.get("heartbeat"))):
        return {}  # a record of the wrong shape cannot be a live owner's (it writes the right one at once)
    return rec


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def unjudgeable(owner: dict | None) -> bool:
    """True for a lock held on another host that records no heartbeat (an older genbound): whether its owner
    is alive cannot be told from here, so waiting for it could last forever."""
    if not owner or owner.get("host") == socket.gethostname():
        return False
    beat = owner.get("heartbeat")
    return not isinstance(beat, (int, float)) or isinstance(beat, bool) or beat <= 0


def is_stale(owner: dict | None, path: Path | None = None) -> bool:
    """True when the recorded owner is provably gone (see the module docstring); ``path`` is the lock file,
    whose age decides for an owner on another host."""
    if owner is None:
        return True
    if not owner:
        # A half-written record (the owner died between create and write) or garbage: it cannot belong to a
        # live sweep, since a live owner writes its record right after creating the file.
        return True
    if owner.get("host") != socket.gethostname():
        beat = owner.get("heartbeat")
        if path is None or not isinstance(beat, (int, float)) or isinstance(beat, bool) or beat <= 0:
            return False
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True
        return age > STALE_BEATS * beat
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    if not pid_alive(pid):
        return True
    start = owner.get("start")
    now = _start_time(pid)
    return start is not None and now is not None and start != now


@contextlib.contextmanager
def _directory_flock(directory: Path) -> Iterator[None]:
    import fcntl

    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(owner_record()))
        fh.flush()
        os.fsync(fh.fileno())
    return True


def try_acquire(path: str | os.PathLike) -> bool:
    """Create the lock ``path`` for this process; take it over if its owner is dead. False if held."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() or (path.exists() and not path.is_file()):
        raise GenboundError(f"the lock {path} is not a file (a folder or a special file is in its place); remove "
                            "it to run")
    if _create(path):
        return True
    # Held, or stale: decide and replace under the directory flock (see the module docstring). The grace
    # for an empty record covers a live owner caught between its O_EXCL create and its write.
    with _directory_flock(path.parent):
        owner = read_owner(path)
        if owner == {} and _young(path):
            return False
        if unjudgeable(owner):
            raise GenboundError(
                f"{path} is held by pid {_short(owner.get('pid'))} on host {_short(owner.get('host'))}, which records "
                "no heartbeat (an older genbound), so whether it is alive cannot be told from here; if that process "
                f"has ended, delete {path} to take the run over")
        if not is_stale(owner, path):
            return False
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return _create(path)


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _young(path: Path, seconds: float = 5.0) -> bool:
    try:
        return time.time() - path.stat().st_mtime < seconds
    except FileNotFoundError:
        return False


def release(path: str | os.PathLike) -> None:
    """Remove the lock if this process owns it."""
    path = Path(path)
    owner = read_owner(path)
    if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def held(path: str | os.PathLike) -> Iterator[bool]:
    """``with held(p) as ok:`` ok is True when this process holds the lock (released on exit)."""
    ok = try_acquire(path)
    stop = threading.Event()
    beat = None
    if ok:
        beat = threading.Thread(target=_beat, args=(Path(path), stop, HEARTBEAT), daemon=True,
                                name=f"lock-heartbeat {Path(path).name}")
        beat.start()
    try:
        yield ok
    finally:
        stop.set()
        if beat is not None:
            beat.join()
        if ok:
            release(path)


def _beat(path: Path, stop: threading.Event, interval: float) -> None:
    """Touch ``path`` every ``interval`` seconds until ``stop`` (see the module docstring)."""
    while not stop.wait(interval):
        try:
            os.utime(path)
        except FileNotFoundError:
            return
        except OSError:
            continue  # a transient error of a network filesystem; the next beat tries again
