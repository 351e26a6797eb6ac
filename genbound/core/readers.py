"""Defensive readers of untrusted tensor files (checkpoints, training states, peft adapters, backbones).

A safetensors file is an 8-byte header length, a JSON header naming every tensor's dtype, shape and byte
range, and the raw bytes. Before anything is allocated the header is bounded (:data:`MAX_HEADER_BYTES`,
:data:`MAX_TENSORS`) and checked against the file: every byte range lies inside it and matches its shape and
dtype, and the claimed total is at most what the caller allows (a sparse file can claim gigabytes in
kilobytes). The values are then refused if they are not finite or beyond any trained weight
(:data:`MAX_ABS_VALUE`). Nothing here executes code from the file (docs/checkpoint-format.md, "Safety rules").

Used by :mod:`genbound.checkpoints.checkpoint`, :mod:`genbound.checkpoints.resume`,
:mod:`genbound.sources.peft_import` and the run context
(:mod:`genbound.sources.context`), which reads the pretrained W0 of single layers with :func:`read_tensors`, or,
for a base of gigabytes, one layer at a time as it is used (:class:`LazyTensors`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor

from .errors import CheckpointError
from .shards import is_index, read_index
from .validation import parse_json

MAX_HEADER_BYTES = 64 << 20
MAX_TENSORS = 1 << 17
# No trained or pretrained weight comes near this; a flipped exponent bit of a float32 does (up to 3e38),
# and such a value overflows every product that a model or a spectrum computes from it.
MAX_ABS_VALUE = 1e12
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64}


CHECK_CHUNK = 1 << 18  # elements per block of the value checks


def _blocks(t: Tensor, size: int = CHECK_CHUNK):
    """Flat blocks of ``t``: checking a 7 B model's matrix whole would cost 1.7 float32 copies of temporaries."""
    flat = t.detach().reshape(-1)
    return (flat[i:i + size] for i in range(0, flat.numel(), size))


def all_finite(t: Tensor) -> bool:
    """torch.isfinite(t).all(), block by block."""
    return all(bool(torch.isfinite(b).all()) for b in _blocks(t))


def abs_max(t: Tensor) -> float:
    """max |t| (0 for an empty tensor), block by block."""
    return max((float(b.abs().max()) for b in _blocks(t)), default=0.0)


def check_values(tensors: dict[str, Tensor], where: Path | str, max_abs: float | None = MAX_ABS_VALUE) -> None:
    """Refuse NaN, Inf and (with ``max_abs``) implausibly large values in floating-point tensors."""
    for key, t in tensors.items():
        if not t.is_floating_point() or not t.numel():
            continue
        if not all_finite(t):
            raise CheckpointError(f"{where}: tensor '{key}' contains NaN or Inf")
        if max_abs is not None:
            peak = abs_max(t)
            if peak > max_abs:
                raise CheckpointError(f"{where}: tensor '{key}' holds a value of magnitude {peak:.3g}, beyond any "
                                      f"trained weight ({max_abs:.0e}); the file is corrupt")


def read_header(path: Path, max_bytes: int | None = None, dtypes: dict | None = None) -> dict[str, dict]:
    """The validated safetensors header of ``path`` (without ``__metadata__``): every tensor's dtype (one of
    ``dtypes``, default :data:`DTYPES`), shape and byte range checked against the file's size, the claimed
    total at most ``max_bytes``."""
    dtypes = DTYPES if dtypes is None else dtypes
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: file is truncated (no safetensors header)")
        (hlen,) = struct.unpack("<Q", head)
        if hlen > MAX_HEADER_BYTES or 8 + hlen > size:
            raise CheckpointError(f"{path}: safetensors header claims {hlen} bytes; the file is corrupt")
        header = parse_json(fh.read(hlen), path, "the safetensors header")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    if len(header) > MAX_TENSORS:
        raise CheckpointError(f"{path}: safetensors header lists {len(header)} tensors; the file is corrupt")
    data_len = size - 8 - hlen
    for key, info in header.items():
        if not isinstance(info, dict) or not isinstance(info.get("dtype"), str) or info["dtype"] not in dtypes:
            raise CheckpointError(f"{path}: tensor '{key}' has an unsupported or missing dtype")
        shape, offs = info.get("shape"), info.get("data_offsets")
        if (not isinstance(shape, list) or not all(isinstance(d, int) and 0 <= d <= 1 << 32 for d in shape)
                or not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and 0 <= o <= data_len for o in offs) or offs[0] > offs[1]):
            raise CheckpointError(f"{path}: tensor '{key}' has a malformed shape or byte range")
        nbytes = math.prod(shape) * dtypes[info["dtype"]].itemsize
        if offs[1] - offs[0] != nbytes:
            raise CheckpointError(f"{path}: tensor '{key}' byte range does not match its shape and dtype")
    claimed = sum(info["data_offsets"][1] - info["data_offsets"][0] for info in header.values())
    if max_bytes is not None and claimed > max_bytes:
        raise CheckpointError(f"{path}: the tensors claim {claimed / 2**20:.0f} MiB, more than a file for this "
                              f"backbone can hold ({max_bytes / 2**20:.0f} MiB); the file is corrupt or hostile")
    return header


def model_header(path: Path, dtypes: dict | None = None) -> dict[str, dict]:
    """Every tensor's header entry (:func:`read_header`) of a safetensors file or of all the shards of an
    index, each with ``"file"``: the file that holds it. A shard holding a tensor the index maps elsewhere,
    or lacking one it maps to it, is a :class:`~genbound.core.errors.CheckpointError`."""
    if not is_index(path):
        return {k: {**info, "file": Path(path)} for k, info in read_header(Path(path), dtypes=dtypes).items()}
    where = read_index(path)
    out: dict[str, dict] = {}
    for shard in sorted(set(where.values())):
        for key, info in read_header(shard, dtypes=dtypes).items():
            if where.get(key) != shard:
                raise CheckpointError(f"{shard} holds tensor '{key}', which {path.name} maps to "
                                      f"{where[key].name if key in where else 'no shard'}; the index is stale")
            out[key] = {**info, "file": shard}
    lost = [k for k in where if k not in out]
    if lost:
        raise CheckpointError(f"{where[lost[0]]} lacks tensor '{lost[0]}' that {path.name} maps to it "
                              f"({len(lost)} such); the index is stale")
    return out


def read_safetensors(path: Path, expected: dict[str, tuple[tuple[int, ...], torch.dtype]] | None = None,
                     allow_extra_prefix: str | None = None, max_abs: float | None = MAX_ABS_VALUE,
                     max_bytes: int | None = None) -> dict[str, Tensor]:
    """Read a safetensors file defensively: header size bounded and consistent with the file, every
    tensor's byte range inside the file, the claimed total at most ``max_bytes`` (a sparse file can claim
    gigabytes in kilobytes), keys / shapes / dtypes equal to ``expected``, values finite and (unless
    ``max_abs`` is None) at most ``max_abs`` in magnitude."""
    header = read_header(path, max_bytes)
    if expected is not None:
        keys = set(header)
        missing = sorted(set(expected) - keys)
        extra = sorted(k for k in keys - set(expected) if not (allow_extra_prefix and k.startswith(allow_extra_prefix)))
        if missing:
            raise CheckpointError(f"{path}: missing tensor '{missing[0]}' ({len(missing)} missing)")
        if extra:
            raise CheckpointError(f"{path}: unexpected tensor '{extra[0]}' ({len(extra)} extra)")
        for key, (shape, dtype) in expected.items():
            if tuple(header[key]["shape"]) != tuple(shape):
                raise CheckpointError(
                    f"{path}: tensor '{key}' has shape {tuple(header[key]['shape'])}, metadata says {tuple(shape)}"
                )
            if DTYPES[header[key]["dtype"]] != dtype:
                raise CheckpointError(f"{path}: tensor '{key}' has dtype {header[key]['dtype']}, expected {dtype}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, Exception) as exc:  # any parser failure on untrusted bytes is a corrupt file
        first = (str(exc).splitlines() or [exc.__class__.__name__])[0]
        raise CheckpointError(f"{path}: cannot be read as safetensors ({first})") from None
    check_values(tensors, path, max_abs)
    return tensors


def read_tensors(path: Path, keys: Iterable[str], max_abs: float | None = MAX_ABS_VALUE,
                 header: dict | None = None) -> dict[str, Tensor]:
    """Only the tensors ``keys`` of a safetensors file (memory-mapped: the rest is never read), after the
    header checks of :func:`read_header` (``header``: their result, already had) and with the value checks of
    :func:`check_values`. A key the file lacks is a :class:`~genbound.core.errors.CheckpointError`."""
    from safetensors import SafetensorError, safe_open

    header = read_header(path) if header is None else header
    keys = list(keys)
    missing = [k for k in keys if k not in header]
    if missing:
        raise CheckpointError(f"{path}: no tensor '{missing[0]}' ({len(missing)} missing)")
    try:
        with safe_open(str(path), "pt") as fh:
            out = {k: fh.get_tensor(k) for k in keys}
    except (SafetensorError, Exception) as exc:  # any parser failure on untrusted bytes is a corrupt file
        first = (str(exc).splitlines() or [exc.__class__.__name__])[0]
        raise CheckpointError(f"{path}: cannot be read as safetensors ({first})") from None
    check_values(out, path, max_abs)
    return out


class LazyTensors(Mapping):
    """name -> one tensor of a safetensors file, read only when it is asked for and never kept.

    The file is memory-mapped (``safetensors.safe_open``): reading one tensor touches that tensor's bytes only,
    so the W0 of an adapted layer of a 7 B base costs that matrix, not the model, and the layers are held one
    at a time by a caller that uses them in turn (the intruder diagnostic). ``keys`` maps each name to its key
    in the file, ``transposed`` names those stored (in, out) (GPT-2's Conv1D); each tensor is returned as
    ``dtype``, checked like :func:`read_tensors` (finite, at most ``max_abs``). The header is checked once,
    on construction; a key the file lacks is a :class:`~genbound.core.errors.CheckpointError` there.

    ``dtype=None`` (:meth:`as_stored`): each tensor is a read-only view of the mapped file in its stored dtype,
    transposed as a view, with no copy at all: its pages are the file's, which the kernel reads on demand and
    may drop again. For a consumer that reads the matrix in blocks (the Gram path of the intruder
    diagnostic), W0 then costs no memory of its own."""

    def __init__(self, path: Path, keys: Mapping[str, str], transposed: Iterable[str] = (),
                 dtype: torch.dtype | None = torch.float32, max_abs: float | None = MAX_ABS_VALUE):
        self.path = Path(path)  # a safetensors file, or a sharded checkpoint's index (each key read from its shard)
        self.header = model_header(self.path)
        missing = [k for k in keys.values() if k not in self.header]
        if missing:
            raise CheckpointError(f"{self.path}: no tensor '{missing[0]}' ({len(missing)} missing)")
        self.keys = dict(keys)
        self.transposed = set(transposed)
        self.dtype = dtype
        self.max_abs = max_abs

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape as returned (from the header: nothing is read)."""
        shape = tuple(self.header[self.keys[name]]["shape"])
        return shape[::-1] if name in self.transposed else shape

    def as_stored(self) -> LazyTensors:
        """The same names, each a memory-mapped view in the file's dtype (``dtype=None``)."""
        return LazyTensors(self.path, self.keys, self.transposed, None, self.max_abs)

    def _mapped(self, key: str) -> Tensor | None:
        """A view of tensor ``key`` on the mapped file, or None where its bytes are not aligned to its dtype."""
        import numpy as np

        info = self.header[key]
        dtype = DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        with open(info["file"], "rb") as fh:
            offset = 8 + struct.unpack("<Q", fh.read(8))[0] + start
        if offset % dtype.itemsize or end == start:
            return None
        # mode "c" (copy-on-write) gives a writable array, which torch.from_numpy wants, that never writes back
        raw = np.memmap(info["file"], dtype=np.uint8, mode="c", offset=offset, shape=(end - start,))
        return torch.from_numpy(raw).view(dtype).reshape(info["shape"])

    def __getitem__(self, name: str) -> Tensor:
        key = self.keys[name]  # KeyError for a name it does not hold, as a dict
        file = self.header[key]["file"]
        t = self._mapped(key) if self.dtype is None else None
        if t is None:
            own = {k: v for k, v in self.header.items() if v["file"] == file}
            t = read_tensors(file, [key], self.max_abs, header=own)[key]
        else:
            check_values({key: t}, file, self.max_abs)
        t = t.T if name in self.transposed else t
        return t if self.dtype is None else t.to(self.dtype).contiguous()

    def __contains__(self, name: object) -> bool:
        return name in self.keys  # Mapping's default would read the tensor to answer

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)
