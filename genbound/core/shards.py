"""Sharded checkpoints: the index that transformers' ``save_pretrained`` writes for a large model
(model.safetensors.index.json, ``{"weight_map": {tensor key: shard file name}}``) and the shard files it names.

Torch-free, so that the layout and size checks that only need file names and sizes start fast; the tensors'
headers and values are read by :mod:`genbound.core.readers`.
"""

from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError
from .validation import parse_json

MAX_INDEX_TENSORS = 1 << 17  # as many tensors as one safetensors header may list (genbound.core.readers)

INDEX_SUFFIX = ".safetensors.index.json"
INDEX_NAME = "model" + INDEX_SUFFIX  # transformers' sharded checkpoint (save_pretrained of a large model)
MAX_INDEX_BYTES = 64 << 20


def is_index(path: Path | str) -> bool:
    """Whether ``path`` names a sharded checkpoint's index rather than a safetensors file."""
    return str(path).endswith(INDEX_SUFFIX)


def read_index(path: Path) -> dict[str, Path]:
    """tensor key -> shard file, from a sharded checkpoint's index (``{"weight_map": {key: file name}}``, as
    transformers' ``save_pretrained`` writes it). Every shard must be a plain file name beside the index, a
    ``.safetensors`` regular file that exists: a name with a folder in it (``../x``) is refused, so an index
    never points outside its model folder."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    if path.stat().st_size > MAX_INDEX_BYTES:
        raise CheckpointError(f"{path} is over {MAX_INDEX_BYTES >> 20} MiB; the index is corrupt")
    index = parse_json(path.read_bytes(), path, "the sharded checkpoint's index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or len(weight_map) > MAX_INDEX_TENSORS:
        raise CheckpointError(f"{path}: no 'weight_map' of tensor names to shard files; the index is corrupt")
    files: dict[str, Path] = {}
    seen: set[Path] = set()
    for key, name in weight_map.items():
        if (not isinstance(name, str) or Path(name).name != name or name in (".", "..")
                or not name.endswith(".safetensors")):
            raise CheckpointError(f"{path}: tensor '{str(key)[:80]}' is mapped to {str(name)[:80]!r}, not a "
                                  ".safetensors file beside the index")
        shard = path.parent / name
        if shard not in seen and (shard.is_symlink() or not shard.is_file()):
            raise CheckpointError(f"{path}: shard {name} (of tensor '{key}') is missing or not a regular file")
        seen.add(shard)
        files[key] = shard
    return files


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a model's weights: ``path`` itself, or the shards its index names (sorted)."""
    return sorted(set(read_index(path).values())) if is_index(path) else [Path(path)]


def weight_paths(path: Path) -> list[Path]:
    """Every file the weights depend on: ``path`` itself, then, for an index, the shards it names (sorted)."""
    return [Path(path), *weight_files(path)] if is_index(path) else [Path(path)]


def weights_bytes(path: Path) -> int:
    """Bytes of a model's weights: the file, or every shard of an index."""
    return sum(f.stat().st_size for f in weight_files(Path(path)))
