"""A file's fingerprint: the sha256 of its bytes, which names a backbone's weights (recorded in every checkpoint
and checked on load), a model folder's and a data file's content (genbound.checkpoints.provenance) and keys the
converted ONNX backbone's cache.

Each file is hashed once by a streaming reader (4 MiB at a time, so a 15 GB weights file needs no memory) and
its digest cached per process and on disk under ``$GENBOUND_CACHE/fingerprints`` (``~/.cache/genbound``;
``GENBOUND_CACHE=off`` disables the disk cache), keyed by the file's absolute path, size, modification time and
inode: a file rewritten in place gets a new modification time and is hashed again."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from .atomic import write_text
from .cachedir import cache_dir

CHUNK = 1 << 22


# -- hashing ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _digest(path: str, size: int, mtime_ns: int, ino: int, dev: int) -> str:
    key = hashlib.sha256(f"v1|{path}|{size}|{mtime_ns}|{ino}|{dev}".encode()).hexdigest()
    cache = cache_dir("fingerprints")
    entry = cache / key if cache is not None else None
    if entry is not None:
        try:
            text = entry.read_text().strip()
            if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
                return text
        except OSError:
            pass  # absent or unreadable: hash the file
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    hexdigest = h.hexdigest()
    if entry is not None:
        try:
            write_text(entry, hexdigest + "\n")
        except OSError:
            pass  # a read-only or full disk: the cache is an optimisation only
    return hexdigest


def file_sha256(path: str | Path) -> str:
    """The sha256 (hex) of a file's bytes, streamed and cached by path, size, modification time and inode."""
    p = os.path.abspath(path)
    st = os.stat(p)
    return _digest(p, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def file_fingerprint(path: Path) -> str:
    """``sha256:<hex>`` of a weights file (:func:`file_sha256`: streamed and cached)."""
    return "sha256:" + file_sha256(path)


def weights_fingerprint(path: Path) -> str:
    """:func:`file_fingerprint` of a weights file; of a sharded checkpoint's index, ``sha256:<hex>`` of the
    index's and every shard's sha256, each with its file name, so that changing any shard changes it."""
    from .shards import is_index, weight_paths

    if not is_index(path):
        return file_fingerprint(path)
    h = hashlib.sha256()
    for f in weight_paths(Path(path)):
        h.update(f.name.encode("utf-8", "surrogatepass") + b"\0" + file_sha256(f).encode() + b"\n")
    return "sha256:" + h.hexdigest()
