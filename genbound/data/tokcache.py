"""An on-disk cache of tokenized text, so that a second process does not tokenize the same data again.

Key: sha256 over the tokenizer's files (tokenizer.json, vocab, config: any change of tokenizer changes it) and
the model's config.json (AutoTokenizer picks the tokenizer class by the model type: the same tokenizer files
in a Qwen2 folder and a Llama folder tokenize differently),
the exact texts (pairs included, in order), the max length and a format version. Value: a safetensors file
with every tensor the tokenizer returned (``input_ids``, ``attention_mask``, ``token_type_ids`` where it gives
them; int64), written atomically; a file that does not parse or does not
have the expected shapes is ignored and rewritten. Nothing is executed on load. The cache is an optimisation:
an entry that cannot be read or written (a full or read-only disk, a folder in its place) is skipped with a
warning, never fatal.

Location: ``$GENBOUND_CACHE/tokens`` or ``~/.cache/genbound/tokens``; ``GENBOUND_CACHE=off`` disables it.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ..core.atomic import atomic_file
from ..core.cachedir import cache_dir

VERSION = "2"  # 2: the tokenizer's whole output, not input_ids and attention_mask only
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "spiece.model", "tokenizer.model", "config.json")


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
    directory = cache_dir("tokens")
    if directory is None:
        return tokenize()
    try:
        path = directory / f"{cache_key(folder, raw, max_length, variant)}.safetensors"
    except OSError as exc:  # an unreadable tokenizer file: tokenizing reports it better than the cache could
        _skip(f"cannot fingerprint the tokenizer ({exc.strerror or exc})")
        return tokenize()
    out = _read_entry(path, len(raw), max_length)
    if out is not None:
        return out
    out = tokenize()
    try:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            save_file({k: v.contiguous().to(torch.int64) for k, v in out.items()}, str(tmp))
    except Exception as exc:  # noqa: BLE001 - a read-only or full disk (safetensors wraps it): the cache is optional
        _skip(f"cannot write {path} ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})")
    return out


def _skip(why: str) -> None:
    """Say once per cause that the token cache was skipped: it is an optimisation, never a reason to fail."""
    warnings.warn(f"genbound: token cache skipped: {why}; tokenizing without it", RuntimeWarning, stacklevel=3)


# What a tokenizer returns that genbound keeps (the model's forward then takes what it accepts).
TOKEN_TENSORS = ("input_ids", "attention_mask", "token_type_ids")


def _read_entry(path: Path, rows: int, max_length: int) -> dict[str, Tensor] | None:
    """A cache entry with the expected tensors, or None: a missing, damaged, hostile or mistyped entry (or a
    folder, FIFO or device in its place) is tokenized again and replaced, never fatal."""
    import stat

    try:
        if not stat.S_ISREG(path.stat().st_mode):
            if path.is_dir():
                _skip(f"{path} is a folder")
            return None
    except OSError:
        return None
    from ..core.errors import GenboundError
    from ..core.readers import read_header, read_safetensors

    shape = (rows, max_length)
    # The entry's claimed size is bounded by what these rows can hold (int64 ids, mask and segment ids), plus
    # its header; its tensors are the tokenizer's own outputs, input_ids always among them.
    try:
        bound = len(TOKEN_TENSORS) * 8 * rows * max_length
        keys = set(read_header(path, bound))
        if "input_ids" not in keys or not keys <= set(TOKEN_TENSORS):
            return None
        expected = {k: (shape, torch.int64) for k in keys}
        out = read_safetensors(path, expected=expected, max_abs=None, max_bytes=bound)
    except (GenboundError, OSError, ValueError, RuntimeError):
        return None
    return out
