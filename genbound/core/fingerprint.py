"""A file's fingerprint: the sha256 of its bytes, which names a backbone's weights (recorded in every checkpoint
and checked on load) and keys the converted ONNX backbone's cache."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_fingerprint(path: Path) -> str:
    """sha256 of a weights file (cached per process by path, size and mtime)."""
    st = path.stat()
    return "sha256:" + _sha256(str(path), st.st_size, st.st_mtime_ns)
