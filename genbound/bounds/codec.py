"""A real prefix-free code for a quantized subspace vector w (docs/concepts.md, section "Certificates").

The message, written bit by bit (:class:`BitWriter`), is

1. the run's configuration in a hyperparameter grid declared before training (:class:`HyperGrid`, the
   versioned file genbound/assets/certificate-grid.json): per axis, the value's position, in ceil(log2 |axis|)
   bits ("uniform") or as the Elias gamma code of the 1-based position ("gamma"). It fixes the method, chain
   length k, subspace dimension d, the number of quantization levels L (hence every link's dimension d_j,
   genbound.methods.subspace.link_dims) and every other setting the decoder needs (max length, rank, alpha, seed);
2. for each link j:
   * the number of codebook levels used, L_j in 1..L: ceil(log2 L) bits;
   * the codebook: L_j float16 values, 16 bits each, ascending;
   * the symbol counts n_1..n_{L_j} (each >= 1, summing to d_j): the rank of this composition among all
     C(d_j - 1, L_j - 1) of them, in ceil(log2 C(d_j - 1, L_j - 1)) bits;
   * the length of the arithmetic-coded stream in 32-bit words, m, as an Elias gamma code of m + 1
     (2 floor(log2(m + 1)) + 1 bits);
   * the stream: the d_j symbols range-coded (PyPI ``constriction``, ``stream.queue.RangeEncoder``) under the
     categorical model p_c = n_c / d_j, 32 m bits.

Every part's length is known from the parts before it, so the code is prefix-free and the Kraft sum over all
messages is at most 1: K, the length of the message, can be used directly in the Occam bound
kl(R_hat || R) <= (K ln 2 + ln(2 sqrt(N) / delta)) / N. :func:`decode` reads the message back with nothing
but the grid, and the test suite checks decode(encode(w)) == w bit for bit.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.errors import GenboundError
from ..methods.subspace import link_dims

FLOAT_BITS = 16  # codebook values are sent as IEEE half-precision floats


# -- bits ------------------------------------------------------------------------------------------------


class BitWriter:
    def __init__(self) -> None:
        self.value = 0  # the message as one big integer, first bit most significant
        self.nbits = 0

    def write(self, value: int, width: int) -> None:
        if width == 0:
            if value:
                raise GenboundError(f"cannot write {value} in 0 bits")
            return
        if not 0 <= value < (1 << width):
            raise GenboundError(f"{value} does not fit in {width} bits")
        self.value = (self.value << width) | int(value)
        self.nbits += width

    def gamma(self, n: int) -> None:
        """Elias gamma code of n >= 1: floor(log2 n) zeros, then n in binary."""
        if n < 1:
            raise GenboundError(f"Elias gamma codes positive integers, got {n}")
        b = n.bit_length()
        self.write(0, b - 1)
        self.write(n, b)

    def delta(self, n: int) -> None:
        """Elias delta code of n >= 1: the gamma code of its bit length, then n without its leading 1
        (Elias 1975; length floor(log2 n) + 2 floor(log2(floor(log2 n) + 1)) + 1)."""
        if n < 1:
            raise GenboundError(f"Elias delta codes positive integers, got {n}")
        b = n.bit_length()
        self.gamma(b)
        self.write(n - (1 << (b - 1)), b - 1)

    def to_bytes(self) -> bytes:
        pad = (-self.nbits) % 8
        return (self.value << pad).to_bytes((self.nbits + pad) // 8, "big")


class BitReader:
    def __init__(self, data: bytes, nbits: int):
        self.value = int.from_bytes(data, "big") >> ((-nbits) % 8)
        self.nbits = nbits
        self.pos = 0

    def read(self, width: int) -> int:
        if width == 0:
            return 0
        if self.pos + width > self.nbits:
            raise GenboundError("the message ended early; it is truncated or was not written by this codec")
        self.pos += width
        return (self.value >> (self.nbits - self.pos)) & ((1 << width) - 1)

    def gamma(self) -> int:
        zeros = 0
        while self.read(1) == 0:
            zeros += 1
            if zeros > 64:
                raise GenboundError("corrupt message: an Elias gamma code longer than 64 bits")
        return (1 << zeros) | self.read(zeros)

    def delta(self) -> int:
        b = self.gamma()
        if b > 4096:
            raise GenboundError("corrupt message: an Elias delta code of a number over 4096 bits")
        return (1 << (b - 1)) | self.read(b - 1)


def gamma_length(n: int) -> int:
    """Bits of the Elias gamma code of n >= 1: 2 floor(log2 n) + 1."""
    return 2 * (int(n).bit_length() - 1) + 1


def delta_length(n: int) -> int:
    """Bits of the Elias delta code of n >= 1: floor(log2 n) + 2 floor(log2(floor(log2 n) + 1)) + 1."""
    b = int(n).bit_length()
    return (b - 1) + gamma_length(b)


def width(choices: int) -> int:
    """Bits of a fixed-length index among ``choices`` values."""
    return (choices - 1).bit_length() if choices > 1 else 0


def rank_composition(counts: list[int]) -> int:
    """Rank of a composition (all parts >= 1) among those of its sum and length: the cut points
    c_0 < .. < c_{L-2} in 0..n-2 ranked by the combinatorial number system, sum_i C(c_i, i + 1)."""
    cuts = np.cumsum(counts[:-1]) - 1
    return sum(math.comb(int(c), i + 1) for i, c in enumerate(cuts))


def unrank_composition(rank: int, n: int, parts: int) -> list[int]:
    cuts = []
    for i in range(parts - 2, -1, -1):
        c = i
        while math.comb(c + 1, i + 1) <= rank:
            c += 1
        cuts.append(c)
        rank -= math.comb(c, i + 1)
    cuts = sorted(cuts)
    bounds = [-1, *cuts, n - 1]
    return [bounds[j + 1] - bounds[j] for j in range(parts)]


# -- the grid ----------------------------------------------------------------------------------------------


CODES = ("uniform", "gamma")
GRID_FORMAT = "genbound-certificate-grid"


def _same(a: Any, v: Any) -> bool:
    if a is None or v is None:
        return a is None and v is None
    if isinstance(a, (list, tuple)) or isinstance(v, (list, tuple)):
        return list(a) == list(v) if isinstance(a, (list, tuple)) and isinstance(v, (list, tuple)) else False
    if isinstance(a, float) and isinstance(v, (int, float)) and not isinstance(v, bool):
        return math.isclose(a, v, rel_tol=1e-9)
    return a == v


@dataclass(frozen=True)
class HyperGrid:
    """Hyperparameter values declared before training: name -> the allowed values, in order, each axis with
    its prefix code ("uniform": a ceil(log2 |axis|)-bit index; "gamma": the Elias gamma code of the 1-based
    position, 2 floor(log2 i) + 1 bits). Each axis' code is prefix-free and the axes come in a fixed order,
    so the whole configuration's code is prefix-free (Kraft sum <= 1)."""

    values: tuple[tuple[str, tuple[Any, ...]], ...]
    codes: tuple[str, ...] = ()
    version: int | None = None
    digest: str | None = None  # sha256 of the grid file the grid was read from
    defaults: tuple[tuple[str, Any], ...] = ()  # declared training defaults (train --subspace-dim)

    def __post_init__(self) -> None:
        if not self.codes:
            object.__setattr__(self, "codes", tuple("uniform" for _ in self.values))
        if len(self.codes) != len(self.values) or any(c not in CODES for c in self.codes):
            raise GenboundError(f"a grid needs one code per axis from {', '.join(CODES)}, got {self.codes}")

    @classmethod
    def of(cls, mapping: dict[str, list], codes: dict[str, str] | None = None) -> HyperGrid:
        codes = codes or {}
        return cls(tuple((k, tuple(v)) for k, v in mapping.items()), tuple(codes.get(k, "uniform") for k in mapping))

    @classmethod
    def from_file(cls, path) -> HyperGrid:
        """The grid of a declared grid file (genbound/assets/certificate-grid.json), with its version and the
        sha256 of its bytes; a file of another format is refused."""
        import hashlib
        import json
        from pathlib import Path

        raw = Path(path).read_bytes()
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise GenboundError(f"{path} is not a JSON grid file: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != GRID_FORMAT or not isinstance(data.get("axes"), list):
            raise GenboundError(f"{path} is not a {GRID_FORMAT} file (format, version and axes)")
        axes = data["axes"]
        for ax in axes:
            if not isinstance(ax, dict) or not isinstance(ax.get("name"), str) or not ax.get("values"):
                raise GenboundError(f"{path}: every axis needs a name and a non-empty list of values")
        return cls(tuple((ax["name"], tuple(tuple(v) if isinstance(v, list) else v for v in ax["values"]))
                         for ax in axes),
                   tuple(ax.get("code", "uniform") for ax in axes), int(data.get("version", 0)),
                   "sha256:" + hashlib.sha256(raw).hexdigest(), tuple(dict(data.get("train_defaults", {})).items()))

    @property
    def size(self) -> int:
        return math.prod(len(v) for _, v in self.values)

    @property
    def _uniform_size(self) -> int:
        return math.prod(len(v) for (_, v), c in zip(self.values, self.codes) if c == "uniform")

    @property
    def bits(self) -> int:
        """The longest configuration code: the uniform axes' joint index, then each gamma axis' last value."""
        return width(self._uniform_size) + sum(gamma_length(len(v)) for (_, v), c in zip(self.values, self.codes)
                                               if c == "gamma")

    def positions(self, config: dict[str, Any]) -> list[int]:
        """The position of each axis' value; a value outside the grid is refused with the axis' values."""
        out = []
        for name, allowed in self.values:
            v = config.get(name)
            hits = [i for i, a in enumerate(allowed) if _same(a, v)]
            if not hits:
                shown = ", ".join("none" if a is None else str(a) for a in allowed)
                raise GenboundError(f"{name} = {v!r} is not in the hyperparameter grid declared before training "
                                    f"({shown}); train with a declared value")
            out.append(hits[0])
        return out

    def index(self, config: dict[str, Any]) -> int:
        idx = 0
        for (_, allowed), i in zip(self.values, self.positions(config)):
            idx = idx * len(allowed) + i
        return idx

    def config(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.size:
            raise GenboundError(f"grid index {index} is outside the grid of {self.size} choices")
        out = {}
        for name, allowed in reversed(self.values):
            index, i = divmod(index, len(allowed))
            out[name] = allowed[i]
        return dict(reversed(list(out.items())))

    def _uniform_index(self, pos: list[int]) -> int:
        idx = 0
        for (_, allowed), c, i in zip(self.values, self.codes, pos):
            if c == "uniform":
                idx = idx * len(allowed) + i
        return idx

    def length(self, config: dict[str, Any]) -> int:
        """Bits of ``config``'s code."""
        pos = self.positions(config)
        return width(self._uniform_size) + sum(gamma_length(i + 1) for c, i in zip(self.codes, pos) if c == "gamma")

    def write(self, out: BitWriter, config: dict[str, Any]) -> None:
        """The uniform axes' joint mixed-radix index in ceil(log2 prod |axis|) bits, then each gamma axis'
        Elias gamma code, in the file's order."""
        pos = self.positions(config)
        out.write(self._uniform_index(pos), width(self._uniform_size))
        for c, i in zip(self.codes, pos):
            if c == "gamma":
                out.gamma(i + 1)

    def read(self, inp: BitReader) -> dict[str, Any]:
        idx = inp.read(width(self._uniform_size))
        if idx >= self._uniform_size:
            raise GenboundError(f"corrupt message: grid index {idx} is outside the {self._uniform_size} declared "
                                "choices")
        pos: dict[str, int] = {}
        for name, allowed in reversed([(n, v) for (n, v), c in zip(self.values, self.codes) if c == "uniform"]):
            idx, pos[name] = divmod(idx, len(allowed))
        out = {}
        for (name, allowed), c in zip(self.values, self.codes):
            i = pos[name] if c == "uniform" else inp.gamma() - 1
            if not 0 <= i < len(allowed):
                raise GenboundError(f"corrupt message: position {i} of grid axis {name} (it has {len(allowed)} "
                                    "values)")
            out[name] = allowed[i]
        return out

    def kraft_sum(self) -> float:
        """sum over every configuration of 2^-length (at most 1 for a prefix-free code; a check)."""
        total = self._uniform_size * 2.0 ** -width(self._uniform_size)
        for (_, v), c in zip(self.values, self.codes):
            if c == "gamma":
                total *= sum(2.0 ** -gamma_length(i) for i in range(1, len(v) + 1))
        return total

    def to_dict(self) -> dict[str, list]:
        return {k: list(v) for k, v in self.values}

    def describe(self) -> dict[str, Any]:
        """What a certificate records of the grid: version, digest, axes with their codes."""
        return {"version": self.version, "digest": self.digest,
                "axes": {k: {"values": list(v), "code": c} for (k, v), c in zip(self.values, self.codes)}}

    def __iter__(self):
        names = [k for k, _ in self.values]
        for combo in product(*(v for _, v in self.values)):
            yield dict(zip(names, combo))


# -- one quantized vector ------------------------------------------------------------------------------


@dataclass
class QuantizedVector:
    """w_hat = centers[symbols]: ascending centers (float16 values held as float32), every one used."""

    centers: np.ndarray  # (L,) float32 holding float16 values, ascending, distinct
    symbols: np.ndarray  # (d,) int32 in 0..L-1

    def __post_init__(self) -> None:
        self.centers = np.asarray(self.centers, dtype=np.float32)
        self.symbols = np.asarray(self.symbols, dtype=np.int32)

    @classmethod
    def from_tensors(cls, centers: Tensor, symbols: Tensor) -> QuantizedVector:
        """Normalize: centers rounded to float16, sorted, unused ones dropped, symbols remapped."""
        c = centers.detach().to("cpu", torch.float32).numpy().astype(np.float16).astype(np.float32)
        s = symbols.detach().to("cpu").numpy().astype(np.int64)
        used = np.unique(s)
        c = c[used]
        remap = np.full(int(centers.numel()), -1, dtype=np.int64)
        remap[used] = np.arange(used.size)
        s = remap[s]
        order = np.argsort(c, kind="stable")
        inv = np.empty_like(order)
        inv[order] = np.arange(order.size)
        c, s = c[order], inv[s]
        # Two centres rounding to one float16 value would be two symbols for one value: merge them.
        uniq, first = np.unique(c, return_inverse=True)
        return cls(uniq, first[s])

    @property
    def counts(self) -> list[int]:
        return [int(x) for x in np.bincount(self.symbols, minlength=self.centers.size)]

    def values(self) -> Tensor:
        return torch.from_numpy(self.centers[self.symbols].copy())

    def entropy_bits(self) -> float:
        c = np.asarray(self.counts, dtype=np.float64)
        p = c / c.sum()
        return float(-(c * np.log2(p)).sum())


def _model(counts: list[int]):
    import constriction

    p = np.asarray(counts, dtype=np.float64)
    return constriction.stream.model.Categorical(p / p.sum(), perfect=False)


@dataclass
class Bits:
    """Where the bits of a message go."""

    hyperparameters: int = 0
    levels: int = 0  # L_j per link
    codebook: int = 0
    counts: int = 0
    length: int = 0  # the stream lengths' gamma codes
    symbols: int = 0  # the range-coded streams
    ideal_symbols: float = 0.0  # sum_j d_j H(counts_j): what an ideal coder would need (for comparison)

    @property
    def total(self) -> int:
        return self.hyperparameters + self.levels + self.codebook + self.counts + self.length + self.symbols

    def to_dict(self) -> dict[str, float]:
        return {"hyperparameters": self.hyperparameters, "levels": self.levels, "codebook": self.codebook,
                "counts": self.counts, "stream_length": self.length, "symbols": self.symbols,
                "ideal_symbols": self.ideal_symbols, "total": self.total}


@dataclass
class Message:
    data: bytes
    nbits: int
    bits: Bits = field(default_factory=Bits)


def encode(links: list[QuantizedVector], grid: HyperGrid, config: dict[str, Any]) -> Message:
    """The message of module docstring for ``links`` (one quantized vector per chain link) run with
    ``config`` (its grid values)."""
    import constriction

    cfg = grid.config(grid.index(config))
    dims = link_dims(int(cfg["subspace_dim"]), int(cfg["chain"]))
    max_levels = int(cfg["levels"])
    if [q.symbols.size for q in links] != dims:
        raise GenboundError(f"the links have {[q.symbols.size for q in links]} numbers, the grid's d and k say {dims}")
    out, bits = BitWriter(), Bits()
    grid.write(out, config)
    bits.hyperparameters = out.nbits
    for q in links:
        L, n = int(q.centers.size), int(q.symbols.size)
        if not 1 <= L <= max_levels:
            raise GenboundError(f"a link uses {L} levels, the configuration allows at most {max_levels}")
        before = out.nbits
        out.write(L - 1, width(max_levels))
        bits.levels += out.nbits - before
        before = out.nbits
        for c in q.centers:
            out.write(struct.unpack(">H", struct.pack(">e", float(c)))[0], FLOAT_BITS)
        bits.codebook += out.nbits - before
        before = out.nbits
        out.write(rank_composition(q.counts), width(math.comb(n - 1, L - 1)))
        bits.counts += out.nbits - before
        words = np.zeros(0, dtype=np.uint32)
        if L > 1:
            enc = constriction.stream.queue.RangeEncoder()
            enc.encode(q.symbols, _model(q.counts))
            words = enc.get_compressed()
        before = out.nbits
        out.gamma(int(words.size) + 1)
        bits.length += out.nbits - before
        before = out.nbits
        for wd in words:
            out.write(int(wd), 32)
        bits.symbols += out.nbits - before
        bits.ideal_symbols += q.entropy_bits()
    return Message(out.to_bytes(), out.nbits, bits)


def decode(message: Message | tuple[bytes, int], grid: HyperGrid) -> tuple[dict[str, Any], list[QuantizedVector]]:
    """(the configuration, the quantized links) read back from the message alone."""
    import constriction

    data, nbits = (message.data, message.nbits) if isinstance(message, Message) else message
    inp = BitReader(data, nbits)
    cfg = grid.read(inp)
    dims = link_dims(int(cfg["subspace_dim"]), int(cfg["chain"]))
    max_levels = int(cfg["levels"])
    links = []
    for n in dims:
        L = inp.read(width(max_levels)) + 1
        centers = np.array([struct.unpack(">e", struct.pack(">H", inp.read(FLOAT_BITS)))[0] for _ in range(L)],
                           dtype=np.float32)
        counts = unrank_composition(inp.read(width(math.comb(n - 1, L - 1))), n, L)
        m = inp.gamma() - 1
        words = np.array([inp.read(32) for _ in range(m)], dtype=np.uint32)
        if L > 1:
            dec = constriction.stream.queue.RangeDecoder(words)
            symbols = np.asarray(dec.decode(_model(counts), n), dtype=np.int32)
        else:
            symbols = np.zeros(n, dtype=np.int32)
        links.append(QuantizedVector(centers, symbols))
    if inp.pos != nbits:
        raise GenboundError(f"the message has {nbits - inp.pos} bits after its end; it was not written by this codec")
    return cfg, links
