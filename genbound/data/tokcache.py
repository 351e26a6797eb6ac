"""An on-disk cache of tokenized text, so that a second process does not tokenize the same data again.

Key: sha256 over the tokenizer's files (tokenizer.json, vocab, config: any change of tokenizer changes it),
the exact texts (pairs included, in order), the max length and a format version. Value: a safetensors file
with ``input_ids`` and ``attention_mask`` (int64), written atomically; a file that does not parse or does not
have the expected shapes is ignored and rewritten. Nothing is executed on load.

Location: ``$GENBOUND_CACHE/tokens`` or ``~/.cache/genbound/tokens``; ``GENBOUND_CACHE=off`` disables it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ..core.atomic import atomic_file

VERSION = "1"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "spiece.model", "tokenizer.model")


def cache_dir() -> Path | None:
    root = os.environ.get("GENBOUND_CACHE")
    if root and root.lower() in ("off", "0", "none"):
        return None
    return (Path(root) if root else Path.home() / ".cache" / "genbound") / "tokens"


def cache_key(folder: Path, raw: list, max_length: int, variant: str = "") -> str:
    h = hashlib.sha256(f"genbound-tokens-v{VERSION}|{max_length}|".encode() + (f"{variant}|".encode() if variant
                                                                                 else b""))
    for name in TOKENIZER_FILES:
        f = Path(folder) / name
        if f.is_file():
            h.update(name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    h.update(str(len(raw)).encode())
    for item in raw:
        parts = item if isinstance(item, tuple) else (item,)
        h.update(b"\x1e".join(p.encode("utf-8", "surrogatepass") for p in parts) + b"\x1f")
    return h.hexdigest()


def cached_tokens(folder: Path, raw: list, max_length: int,
                  tokenize: Callable[[], dict[str, Tensor]], variant: str = "") -> dict[str, Tensor]:
    """``tokenize()``'s result for these texts, read from the cache when present, else computed and stored;
    ``variant`` names a tokenizer setting outside its files (the padding side)."""
    directory = cache_dir()
    if directory is None:
        return tokenize()
    path = directory / f"{cache_key(folder, raw, max_length, variant)}.safetensors"
    if path.is_file():
        try:
            from safetensors.torch import load_file

            out = load_file(str(path))
            shape = (len(raw), max_length)
            if set(out) == {"input_ids", "attention_mask"} and all(tuple(v.shape) == shape and
                                                                   v.dtype == torch.int64 for v in out.values()):
                return out
        except (OSError, ValueError, RuntimeError):
            pass  # a damaged entry: tokenize again and replace it
    out = tokenize()
    try:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            save_file({k: v.contiguous().to(torch.int64) for k, v in out.items()}, str(tmp))
    except OSError:
        pass  # a read-only or full disk: the cache is an optimisation only
    return out
