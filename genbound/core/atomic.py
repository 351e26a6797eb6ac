"""Atomic writes: every file genbound produces appears whole or not at all.

A file is written to a temporary sibling, flushed and fsynced, then renamed over the target
(``os.replace`` is atomic on POSIX within one filesystem). A directory (a checkpoint) is assembled in a
temporary sibling directory and renamed into place, so an interrupted run never leaves half of one.

Replacing an existing directory uses Linux's ``renameat2(RENAME_EXCHANGE)`` where the filesystem has it, so
the target path always names a complete directory, old or new; elsewhere the old one is moved aside first
(a moment without either). The swap holds an exclusive ``flock`` on the parent directory, so two processes
writing one target serialize there: without ``overwrite`` the first one wins and the second gets
``FileExistsError``; with it the last one wins, whole. Temporaries carry the writer's pid
(``.<name>.<pid>-XXXX.tmp``), so :func:`clean_stale` can remove those that a killed process left behind;
every writer here calls it before it writes, so a kill never leaves an orphan for longer than until the next
write of the same target.

An existing *empty* directory counts as absent for :func:`atomic_directory` (renaming a directory over an
empty one is atomic on POSIX and loses nothing). Whether a non-empty directory may be replaced is decided
under the lock by the caller's ``may_replace``, so a file that a user puts into it meanwhile is never deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _umask_mode(base: int = 0o666) -> int:
    # mkstemp/mkdtemp create private 0600/0700 entries; give artefacts the permissions that an
    # ordinary open() or mkdir() would.
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries (``.<name>.<pid>-*.tmp`` / ``.old``) that a killed writer of ``path`` left
    beside it; those of a live process are kept. Returns what was removed."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d+)-[a-z0-9_]{8}\.(tmp|old)(\.\w+)?$")
    for entry in path.parent.iterdir():
        m = pattern.match(entry.name)
        if m and not pid_alive(int(m.group(1))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            removed.append(entry)
    return removed


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """An exclusive flock on ``directory`` (serializes swaps into it between processes)."""
    import fcntl

    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _umask_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (NaN refused: a report must not hide a non-finite number)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path for a writer that wants a file name (matplotlib, safetensors);
    on success it is renamed over ``path``; on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    # The name ends in the target's suffix (writers such as matplotlib pick the format from it).
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp" + (suffix or path.suffix), dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _umask_mode())  # after the writer: some writers recreate the file
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def is_empty_dir(path: str | os.PathLike) -> bool:
    """A real (not symlinked) directory with no entries."""
    path = Path(path)
    try:
        return path.is_dir() and not path.is_symlink() and next(os.scandir(path), None) is None
    except OSError:
        return False


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False,
                     may_replace: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` whole.

    An empty directory at ``path`` is replaced in any case. Without ``overwrite`` any other existing
    ``path`` (also one another process put there meanwhile) raises ``FileExistsError`` and is left untouched.
    With it the old directory is swapped out atomically (see the module docstring) and deleted after the new
    one is in place, provided ``may_replace(path)`` (checked under the lock, just before the swap) is true;
    otherwise ``FileExistsError`` again.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, _umask_mode(0o777))
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                # Some writers (safetensors) create private 0600 files: give every file of the directory
                # the permissions an ordinary open() would.
                os.chmod(child, _umask_mode())
                with open(child, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        with _dir_lock(path.parent):
            if not os.path.lexists(path) or is_empty_dir(path):
                try:
                    os.replace(tmp, path)  # over an empty directory: atomic, and nothing is lost
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    raise FileExistsError(f"{path} already exists") from None  # filled meanwhile: kept
            elif not overwrite or (may_replace is not None and not may_replace(path)):
                raise FileExistsError(f"{path} already exists")
            elif path.is_dir() and not path.is_symlink() and _exchange(tmp, path):
                pass  # tmp now holds the old directory; removed below
            else:
                old = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".old", dir=path.parent))
                os.replace(path, old / "x")
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
