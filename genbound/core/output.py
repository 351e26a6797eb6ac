"""Where a command writes its output folder: every check that can be made before the work, one lock per output,
and one policy for what ``--overwrite`` may replace, shared by every command that writes a folder (``train``'s
checkpoint, ``export``'s peft adapter): an empty directory or an output genbound itself wrote of the same kind,
never a file, a device, a FIFO, a directory holding anything else (a user's files, a git work tree), the
source being read or a folder that contains it.

A training run is minutes to hours of work, so everything that would make its final write fail is decided
before the first step: the output path (a dangling symbolic link, a file, a component that is a file, a name
too long for the filesystem once genbound's temporary suffixes are added), whether the location accepts a
new file at all (read-only filesystem, permissions: probed by creating and removing a temporary file), the
free space against an estimate of what the run writes, and what ``--overwrite`` may replace: an empty
directory or a genbound checkpoint, never a directory holding anything else (a user's files).

The lock is an ``flock`` on ``<parent>/.<name>.train.lock``, held from before the first check to after the
output is written, so two runs on one output (one of them ``--resume``, or two exports) never write against
each other: the second is refused at once. The lock file is removed when the run ends; a killed run's file
holds no lock and is reused.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import GenboundError
from .files import file_kind

# The files of a genbound checkpoint (genbound.checkpoints.checkpoint): only a directory holding nothing else may be
# replaced by --overwrite.
CHECKPOINT_FILES = frozenset({"genbound.json", "tensors.safetensors", "trajectory.safetensors",
                              "subspace.safetensors"})  # genbound.methods.subspace.SUBSPACE_FILE
# The longest name genbound derives from --out's name: the state's temporary ".<name>.state.<pid>-XXXXXXXX.tmp"
# adds at most this many characters (pids have at most 7 digits on Linux).
_SUFFIX_CHARS = len("..state.") + 7 + len("-xxxxxxxx.tmp")


def resolve_out(out: str | os.PathLike, option: str = "--out") -> Path:
    """The absolute output path; a symbolic link is followed to its target (which then is the output), a
    dangling one is refused. ``.`` names the current directory itself."""
    p = Path(os.path.abspath(out))
    if p.is_symlink():
        if not p.exists():
            raise GenboundError(f"{option} {out} is a symbolic link to {os.readlink(p)}, which does not exist; "
                                f"remove the link or choose another {option}")
        p = Path(os.path.realpath(p))
    if p == Path(p.anchor):
        raise GenboundError(f"{option} {out} is the filesystem root; choose a directory for the output")
    return p


@dataclass(frozen=True)
class OutputKind:
    """A kind of folder a command writes: its files, and how genbound recognises a folder it wrote itself."""

    what: str  # "a genbound checkpoint"
    option: str  # the command-line option naming the folder
    files: frozenset[str]
    is_own: Callable[[Path], bool]  # genbound wrote this folder (checked besides "holds only our files")
    folders: frozenset[str] = frozenset()  # subfolders it writes (a report's figures/), replaced with it


def _is_export(path: Path) -> bool:
    """A peft adapter folder written by ``genbound export``: its adapter_config.json carries a "genbound" record."""
    cfg = path / "adapter_config.json"
    try:
        if not cfg.is_file() or cfg.stat().st_size > 2**20:
            return False
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("genbound"), dict)


CHECKPOINT = OutputKind("a genbound checkpoint", "--out", CHECKPOINT_FILES,
                        lambda p: (p / "genbound.json").is_file())
PEFT_EXPORT = OutputKind("a peft adapter written by genbound export", "--peft",
                         frozenset({"adapter_config.json", "adapter_model.safetensors"}), _is_export)


def foreign_entries(path: Path, kind: OutputKind = CHECKPOINT) -> list[str]:
    """The entries of directory ``path`` that are not ``kind``'s files (what --overwrite would destroy)."""
    return sorted(e.name for e in os.scandir(path)
                  if not (e.name in kind.files and e.is_file(follow_symlinks=False))
                  and not (e.name in kind.folders and e.is_dir(follow_symlinks=False)))


def _not_a_folder(path: Path) -> str | None:
    """What ``path`` is when it exists and is not a directory (a file, a device, a FIFO, a socket)."""
    mode = os.stat(path).st_mode if os.path.exists(path) else os.lstat(path).st_mode
    return None if stat.S_ISDIR(mode) else file_kind(mode)


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_replaceable(out: Path, overwrite: bool, kind: OutputKind = CHECKPOINT,
                      sources: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse an output that may not be written: one that is not a directory; the source being read or a
    folder that contains it (``sources``); a non-empty directory without ``overwrite``; with it, a directory
    holding anything besides ``kind``'s files, or not recognisably written by genbound as ``kind``."""
    opt = kind.option
    if not os.path.lexists(out):
        return
    what = _not_a_folder(out)
    if what:
        raise GenboundError(f"{opt} {out} is {what}, not a folder; genbound writes a folder there, so choose "
                            f"another {opt}")
    real = Path(os.path.realpath(out))
    for src in sources:
        s = Path(os.path.realpath(src))
        if _within(s, real):
            how = "is" if s == real else "contains"
            raise GenboundError(f"{opt} {out} {how} {s}, which this command reads; choose another {opt}")
    entries = [e.name for e in os.scandir(out)]
    if not entries:
        return  # an empty directory is replaced atomically and loses nothing
    own = kind.is_own(out)
    if not overwrite:
        raise GenboundError(f"{out} already holds {kind.what if own else 'files'}; pass --overwrite "
                            f"(overwrite=True from Python) or choose another {opt}")
    foreign = foreign_entries(out, kind)
    if foreign or not own:
        first = foreign[0] if foreign else entries[0]
        raise GenboundError(f"--overwrite replaces only an empty directory or {kind.what}, but {out} holds "
                            f"'{first}' ({len(foreign) or len(entries)} entries that genbound did not write "
                            f"there); choose another {opt} or move them away")


def replaceable(kind: OutputKind = CHECKPOINT) -> Callable[[Path], bool]:
    """For :func:`genbound.core.atomic.atomic_directory`: the same rule, checked again under its lock just before
    the swap, so a file a user put there meanwhile is never deleted."""

    def may(path: Path) -> bool:
        try:
            return (path.is_dir() and not path.is_symlink() and not foreign_entries(path, kind)
                    and kind.is_own(path))
        except OSError:
            return False

    return may


def may_replace(path: Path) -> bool:
    """:func:`replaceable` for checkpoints."""
    return replaceable(CHECKPOINT)(path)


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not os.path.lexists(p):
        p = p.parent
    return p


def check_writable(out: Path, option: str = "--out") -> None:
    """Refuse, before any work, an output location that cannot take the checkpoint: a path component that
    is a file, a name too long once genbound's temporary suffixes are added, a read-only or unwritable
    directory (probed by creating a temporary file there)."""
    anc = _existing_ancestor(out.parent)
    if not anc.is_dir():
        raise GenboundError(f"{option} {out}: {anc} is a file, not a directory; choose another {option}")
    try:
        name_max = os.pathconf(anc, "PC_NAME_MAX")
        path_max = os.pathconf(anc, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    rest = out.relative_to(anc).parts
    too_long = [c for c in rest[:-1] if len(os.fsencode(c)) > name_max]
    if too_long or len(os.fsencode(out.name)) + _SUFFIX_CHARS > name_max:
        raise GenboundError(f"{option} {str(out)[:80]}: the name is too long for this filesystem ({name_max} bytes "
                            f"per name, and genbound adds up to {_SUFFIX_CHARS} for its temporaries); choose a "
                            "shorter name")
    if len(os.fsencode(str(out))) + _SUFFIX_CHARS + 64 > path_max:
        raise GenboundError(f"{option} {str(out)[:80]}...: the path is too long for this filesystem; choose a "
                            "shorter one")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{out.name[:40]}.{os.getpid()}-", suffix=".tmp", dir=anc)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        why = {errno.EROFS: "is on a read-only filesystem", errno.ENOSPC: "is on a full disk",
               errno.EDQUOT: "is over its disk quota"}.get(exc.errno or 0, f"is not writable ({exc.strerror})")
        raise GenboundError(f"{option} {out}: {anc} {why}; choose a writable location with free space") from None


def check_free_space(out: Path, need_bytes: int, option: str = "--out") -> None:
    """Refuse a run whose checkpoint and saved state (``need_bytes``, estimated by the caller) cannot fit."""
    anc = _existing_ancestor(out.parent)
    try:
        st = os.statvfs(anc)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if free < need_bytes:
        raise GenboundError(f"{option} {out}: {anc} has {free / 2**20:.1f} MiB free but this run writes about "
                            f"{need_bytes / 2**20:.1f} MiB (checkpoint and saved training state); free space or "
                            "choose another location")


def lock_path(out: Path) -> Path:
    # Not ".<name>.lock": analysis.sweep holds that file (an O_EXCL owner record) around its own train() calls.
    return out.parent / f".{out.name}.train.lock"


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold ``<parent>/.<name>.train.lock`` exclusively for the whole run; another run of the same ``out`` is
    refused at once (it would train against the same saved state)."""
    import fcntl

    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = ""
            with contextlib.suppress(OSError, ValueError):
                owner = f" (pid {int(path.read_text().strip())})"
            raise GenboundError(f"another genbound run is writing {out}{owner}; wait for it to finish or choose "
                                "another output folder") from None
        except BaseException:
            os.close(fd)
            raise
        # The file may have been removed by the previous holder between our open and our flock: then the
        # lock is on an unlinked inode and protects nothing; take the new file instead.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        with contextlib.suppress(OSError):  # the pid is for the message above only
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still held: a waiting opener sees the inode change and retries
        os.close(fd)
