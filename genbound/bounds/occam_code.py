"""The prefix-free message of the ``genbound bounds`` Occam route (genbound.bounds.occam): what K counts is the
length of a message that :func:`decode_tensors` reads back, not an ideal entropy length.

The decoder knows, before any data, the checkpoint's data-independent structure (the trained tensors' names and
sizes, in checkpoint order, and theta_0) and the declared quantizer grid. The message is

1. the grid choice (kind, levels L) as a fixed-width index: ceil(log2 |grid|) bits;
2. a header, per tensor t of n_t numbers (n_t > 0):
   * the levels the tensor uses, L_t in 1..L: ceil(log2 L) bits (levels per tensor are coded);
   * the codebook: L_t float32 values, 32 bits each;
   * the symbol counts (each >= 1, summing to n_t): their rank among the C(n_t - 1, L_t - 1) compositions,
     ceil(log2 C(n_t - 1, L_t - 1)) bits;
   * m_t, the number of 32-bit words of the tensor's range-coded stream: the Elias delta code of m_t + 1
     (floor(log2 x) + 2 floor(log2(floor(log2 x) + 1)) + 1 bits for x = m_t + 1);
3. zero bits up to the next byte boundary (their number follows from the header's length);
4. the streams, tensor after tensor: the n_t symbols range-coded (``constriction``) under the categorical model
   of the counts, sum_t 32 m_t bits.

Every part's length follows from what came before, so no message is a prefix of another and Kraft's sum over
all messages is at most 1: K = the message's length in bits enters the Occam bound as it is. The integer codes
are Elias's (1975); Kraft's sum of the Elias delta code, sum_n 2^-len(n) = sum_b 2^-(2 floor(log2 b) + 1) <= 1
over the bit lengths b, is checked in the tests, as is decode(encode(x)) == x.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import GenboundError
from .codec import BitReader, BitWriter, rank_composition, unrank_composition, width


@dataclass
class CodedTensor:
    """w_hat = centers[symbols] of one tensor: float32 centres, every one used; symbols in 0..L-1."""

    centers: np.ndarray
    symbols: np.ndarray

    def __post_init__(self) -> None:
        self.centers = np.asarray(self.centers, dtype=np.float32)
        self.symbols = np.asarray(self.symbols, dtype=np.int32).reshape(-1)

    @property
    def counts(self) -> list[int]:
        return [int(x) for x in np.bincount(self.symbols, minlength=self.centers.size)]


@dataclass
class TensorBits:
    """Where one tensor's bits go (sums to its share of K)."""

    levels: int = 0
    codebook: int = 0
    counts: int = 0
    stream_length: int = 0
    stream: int = 0
    ideal: float = 0.0  # n H(counts), for comparison only

    @property
    def total(self) -> int:
        return self.levels + self.codebook + self.counts + self.stream_length + self.stream


@dataclass
class OccamMessage:
    data: bytes
    nbits: int
    choice_bits: int
    padding: int
    tensors: list[TensorBits] = field(default_factory=list)


def _f32(x: float) -> int:
    return struct.unpack(">I", struct.pack(">f", float(x)))[0]


def _from_f32(b: int) -> float:
    return struct.unpack(">f", struct.pack(">I", int(b)))[0]


def _model(counts: list[int]):
    import constriction

    p = np.asarray(counts, dtype=np.float64)
    return constriction.stream.model.Categorical(p / p.sum(), perfect=False)


def normalize(centers: np.ndarray, symbols: np.ndarray) -> CodedTensor:
    """Centres rounded to float32, unused ones dropped, equal ones merged, symbols remapped (what is sent)."""
    c = np.asarray(centers, dtype=np.float64).astype(np.float32)
    s = np.asarray(symbols, dtype=np.int64).reshape(-1)
    used = np.unique(s)
    uniq, inv = np.unique(c[used], return_inverse=True)
    remap = np.full(c.size, -1, dtype=np.int64)
    remap[used] = inv
    return CodedTensor(uniq, remap[s])


def encode_tensors(tensors: list[CodedTensor], choice: int, choices: int, max_levels: int) -> OccamMessage:
    """The message of the module docstring for ``tensors`` (in the decoder's known order), quantized with grid
    choice ``choice`` of ``choices``, at most ``max_levels`` levels per tensor."""
    import constriction

    if not 0 <= choice < choices:
        raise GenboundError(f"grid choice {choice} is outside the {choices} declared choices")
    head = BitWriter()
    head.write(choice, width(choices))
    streams, parts = [], []
    for t in tensors:
        n, L = int(t.symbols.size), int(t.centers.size)
        tb = TensorBits()
        parts.append(tb)
        if n == 0:
            continue
        if not 1 <= L <= max_levels:
            raise GenboundError(f"a tensor uses {L} levels, the grid choice allows 1..{max_levels}")
        before = head.nbits
        head.write(L - 1, width(max_levels))
        tb.levels = head.nbits - before
        before = head.nbits
        for c in t.centers:
            head.write(_f32(c), 32)
        tb.codebook = head.nbits - before
        before = head.nbits
        counts = t.counts
        head.write(rank_composition(counts), width(math.comb(n - 1, L - 1)))
        tb.counts = head.nbits - before
        words = np.zeros(0, dtype=np.uint32)
        if L > 1:
            enc = constriction.stream.queue.RangeEncoder()
            enc.encode(t.symbols, _model(counts))
            words = enc.get_compressed()
        before = head.nbits
        head.delta(int(words.size) + 1)
        tb.stream_length = head.nbits - before
        tb.stream = 32 * int(words.size)
        c = np.asarray(counts, dtype=np.float64)
        tb.ideal = float(-(c * np.log2(c / n)).sum())
        streams.append(words.astype(">u4").tobytes())
    pad = (-head.nbits) % 8
    data = head.to_bytes() + b"".join(streams)
    return OccamMessage(data, head.nbits + pad + 8 * sum(len(s) for s in streams), width(choices), pad, parts)


def decode_tensors(data: bytes, sizes: list[int], choices: int, levels_of) -> tuple[int, list[CodedTensor]]:
    """(grid choice, tensors) read back from the message alone, given the known tensor sizes, the number of
    grid choices and ``levels_of(choice)``, the grid's maximum levels of a choice."""
    import constriction

    reader = BitReader(data, 8 * len(data))
    choice = reader.read(width(choices))
    if choice >= choices:
        raise GenboundError(f"corrupt message: grid choice {choice} of {choices}")
    max_levels = int(levels_of(choice))
    heads = []
    for n in sizes:
        if n == 0:
            heads.append(None)
            continue
        L = reader.read(width(max_levels)) + 1
        centers = np.array([_from_f32(reader.read(32)) for _ in range(L)], dtype=np.float32)
        counts = unrank_composition(reader.read(width(math.comb(n - 1, L - 1))), n, L)
        m = reader.delta() - 1
        heads.append((centers, counts, m))
    pos = (reader.pos + 7) // 8
    out = []
    for n, h in zip(sizes, heads):
        if h is None:
            out.append(CodedTensor(np.zeros(0, np.float32), np.zeros(0, np.int32)))
            continue
        centers, counts, m = h
        if pos + 4 * m > len(data):
            raise GenboundError("the message ended early; it is truncated or was not written by this code")
        words = np.frombuffer(data[pos:pos + 4 * m], dtype=">u4").astype(np.uint32)
        pos += 4 * m
        if centers.size > 1:
            symbols = np.asarray(constriction.stream.queue.RangeDecoder(words).decode(_model(counts), n),
                                 dtype=np.int32)
        else:
            symbols = np.zeros(n, dtype=np.int32)
        out.append(CodedTensor(centers, symbols))
    if pos != len(data):
        raise GenboundError(f"the message has {len(data) - pos} bytes after its end; it was not written by this code")
    return choice, out
