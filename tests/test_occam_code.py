"""The Occam route's message is a real prefix-free code (genbound.bounds.occam_code): Kraft's sum of its integer
code is at most 1, every message decodes to what was encoded, and the bound counts that message's length."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genbound.bounds.codec import BitReader, BitWriter, delta_length, gamma_length
from genbound.bounds.occam import prefix_free_bits
from genbound.bounds.occam_code import CodedTensor, decode_tensors, encode_tensors, normalize
from genbound.core.errors import GenboundError


def test_kraft_sum_of_the_elias_codes_is_at_most_one():
    # exactly, number by number, for n = 1 .. 2^17 (each code's length counted from a real encoding below)
    exact = sum(Fraction(1, 2 ** delta_length(n)) for n in range(1, 2 ** 17 + 1))
    assert exact <= 1
    # every n of bit length b has the same delta length (b - 1) + gamma(b), and there are 2^(b-1) of them, so
    # the sum over all n < 2^B is sum_{b <= B} 2^-gamma(b): exactly, up to numbers of 4096 bits
    by_length = sum(Fraction(2 ** (b - 1), 2 ** ((b - 1) + gamma_length(b))) for b in range(1, 4097))
    assert by_length < 1
    # the tail beyond, exactly: the 2^j bit lengths b with floor(log2 b) = j each give 2^-(2j + 1), 2^-(j + 1)
    # together; b = 4097 .. 8191 (j = 12) give 4095 * 2^-25 and every j >= 13 together 2^-13. So Kraft's sum
    # over all integers is exactly 1: the code is complete, and <= 1 holds.
    tail = Fraction(4095, 2 ** 25) + Fraction(1, 2 ** 13)
    assert by_length + tail == 1
    # the length prefix it replaces, 2 log2 K, breaks Kraft: sum_K 2^K 2^-(K + 2 log2 K) = sum 1/K^2 > 1
    assert sum(2.0 ** (-(2 * math.log2(k))) for k in range(1, 1000)) > 1
    # a message of K bits made prefix-free by prefix_free_bits: Kraft over K = 1 .. 2^16 with 2^K messages each
    total = sum(Fraction(2 ** k, 2 ** prefix_free_bits(k)) for k in range(1, 2 ** 12))
    assert total <= 1


@given(st.lists(st.integers(min_value=1, max_value=2 ** 64 - 1), min_size=1, max_size=30))
@settings(max_examples=200, deadline=None)
def test_elias_delta_and_gamma_round_trip(xs):
    w = BitWriter()
    for x in xs:
        w.delta(x)
        w.gamma(x)
    assert w.nbits == sum(delta_length(x) + gamma_length(x) for x in xs)
    r = BitReader(w.to_bytes(), w.nbits)
    assert [(r.delta(), r.gamma()) for _ in xs] == [(x, x) for x in xs]
    assert r.pos == w.nbits


def _tensor(rng, n, L):
    centers = rng.normal(size=L) * 10 ** rng.uniform(-4, 1)
    return normalize(centers, rng.integers(0, L, n) if n else np.zeros(0, np.int64))


@given(st.integers(0, 2 ** 31 - 1), st.lists(st.integers(0, 400), min_size=1, max_size=5), st.integers(1, 16))
@settings(max_examples=80, deadline=None)
def test_decode_encode_is_exact(seed, sizes, max_levels):
    rng = np.random.default_rng(seed)
    tensors = [_tensor(rng, n, int(rng.integers(1, max_levels + 1))) for n in sizes]
    choices = 12
    choice = int(rng.integers(0, choices))
    msg = encode_tensors(tensors, choice, choices, max_levels)
    assert msg.nbits == 8 * len(msg.data)
    assert msg.nbits == msg.choice_bits + sum(t.total for t in msg.tensors) + msg.padding
    got, back = decode_tensors(msg.data, sizes, choices, lambda c: max_levels)
    assert got == choice
    for a, b in zip(tensors, back):
        assert np.array_equal(a.centers.view(np.uint32), b.centers.view(np.uint32))
        assert np.array_equal(a.symbols, b.symbols)
    with pytest.raises(GenboundError):
        decode_tensors(msg.data + b"\0", sizes, choices, lambda c: max_levels)


def test_levels_per_tensor_are_coded_and_the_stream_is_near_ideal():
    rng = np.random.default_rng(1)
    one = [CodedTensor(np.array([0.5], np.float32), np.zeros(1000, np.int32))]
    many = [_tensor(rng, 1000, 16)]
    a, b = encode_tensors(one, 0, 1, 16), encode_tensors(many, 0, 1, 16)
    assert a.tensors[0].levels == b.tensors[0].levels == 4  # ceil(log2 16) bits for L_t in 1..16
    assert a.tensors[0].stream == 0 and b.tensors[0].stream <= b.tensors[0].ideal + 64
    with pytest.raises(GenboundError, match="levels"):
        encode_tensors(many, 0, 1, 8)
