"""Occam / compression bound on the test error (Lotfi et al. 2022, 2024; docs/concepts.md,
"Occam / compression bound").

A prefix-free code of K bits describes the hypothesis; with probability >= 1 - delta over the sample,

    kl( R_hat || R ) <= ( K ln 2 + ln(2 sqrt(N) / delta) ) / N,

and R is bounded by inverting the binary kl (bisection to 1e-12). Here the message describes the trained
tensors relative to their data-independent starting point theta_0 (pretrained W0, B_0 = 0, A_0 and the head
drawn from the recorded seed), so only the update Delta = theta - theta_0 is coded:

* each tensor's Delta is quantized to a small codebook (1-D k-means, or a uniform grid between min and max);
* the message (genbound.bounds.occam_code) is a real prefix-free code, decoded again before the bound is
  computed: the quantizer choice (kind, number of levels) as a fixed-width index into the declared grid, then per
  tensor the levels it uses (coded), its float32 codebook, the rank of its symbol counts, the Elias delta code
  of its stream's length in 32-bit words, and the range-coded symbols (constriction). K is the message's
  length in bits, every bit counted; no ideal entropy length and no length prefix outside the code.

R_hat is the 0-1 error of the *quantized* model on the training set (the model is rebuilt with the
quantized tensors), so the bound is about the model the code describes, not the trained one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..core.device import where
from ..core.errors import GenboundError
from ..data.evalset import EvalSet
from ..sources.hypothesis import Hypothesis
from .common import check_positive, check_probability, kl_inverse_upper, vacuity_note
from .occam_code import CodedTensor, decode_tensors, encode_tensors, normalize

CODEBOOK_BITS = 32  # each codebook level stored as a float32


def occam_kl_budget(bits: float, n: int, delta: float) -> float:
    """( K ln 2 + ln(2 sqrt(N) / delta) ) / N."""
    n = check_positive(n, "the number of training examples N", "--n")
    delta = check_probability(delta, "delta", "--delta")
    if bits < 0:
        raise GenboundError(f"a code length must be >= 0 bits, got {bits}")
    return (bits * math.log(2.0) + math.log(2.0 * math.sqrt(n) / delta)) / n


def occam_bound(train_error: float, bits: float, n: int, delta: float = 0.05) -> float:
    """Upper bound on the true error: kl^{-1}(R_hat, budget)."""
    return kl_inverse_upper(float(train_error), occam_kl_budget(bits, n, delta))


def prefix_free_bits(bits: float, choices: int = 1) -> int:
    """ceil(K) + len_delta(ceil(K)) + ceil(log2 #choices): the length of a K-bit message made prefix-free by the
    Elias delta code of its length, after a fixed-width hyperparameter index. Kraft: over every K >= 1 and its
    2^K messages, sum_K 2^K 2^-(K + len_delta(K)) = sum_K 2^-len_delta(K) <= 1 (the 2 log2 K prefix this
    replaces sums to pi^2 / 6 > 1)."""
    from .codec import delta_length

    if choices < 1:
        raise GenboundError(f"the number of hyperparameter choices must be >= 1, got {choices}")
    k = max(1, math.ceil(bits))
    return k + delta_length(k) + width_of(choices)


def width_of(choices: int) -> int:
    return (choices - 1).bit_length() if choices > 1 else 0


def quantize(t: Tensor, levels: int, kind: str = "kmeans", iters: int = 30) -> tuple[Tensor, Tensor]:
    """(codebook (levels',) float, symbols (numel,) int64) for the flattened tensor; levels' <= levels
    (empty clusters are dropped). k-means starts from the quantiles, so it is deterministic."""
    if levels < 1:
        raise GenboundError(f"a codebook needs at least 1 level, got {levels}")
    x = t.detach().reshape(-1).to(torch.float64)
    if x.numel() == 0:
        return x.new_zeros(0), torch.zeros(0, dtype=torch.long, device=x.device)
    if kind == "uniform":
        lo, hi = x.min(), x.max()
        if levels == 1 or float(hi - lo) == 0.0:
            centers = x.mean().reshape(1)
        else:
            centers = torch.linspace(float(lo), float(hi), levels, dtype=torch.float64, device=x.device)
    elif kind == "kmeans" and torch.unique(x).numel() <= levels:
        centers = torch.unique(x)  # lossless: every distinct value gets its own level
    elif kind == "kmeans":
        q = torch.linspace(0, 1, 2 * levels + 1, dtype=torch.float64, device=x.device)[1::2]
        centers = torch.quantile(x, q) if x.numel() <= 16_000_000 else x[torch.linspace(
            0, x.numel() - 1, levels, device=x.device).long()]
        for _ in range(iters):
            sym = torch.argmin((x[:, None] - centers[None, :]).abs(), dim=1)
            sums = torch.zeros_like(centers).index_add_(0, sym, x)
            cnt = torch.zeros_like(centers).index_add_(0, sym, torch.ones_like(x))
            new = torch.where(cnt > 0, sums / cnt.clamp_min(1), centers)
            if torch.equal(new, centers):
                break
            centers = new
    else:
        raise GenboundError(f"unknown quantizer '{kind}'; use kmeans or uniform")
    centers = torch.unique(centers)  # sorted, duplicates merged
    sym = torch.argmin((x[:, None] - centers[None, :]).abs(), dim=1)
    used = torch.bincount(sym, minlength=centers.numel()) > 0
    remap = torch.cumsum(used.long(), 0) - 1
    return centers[used], remap[sym]


@dataclass
class CodeLength:
    """Bits to send one quantized tensor."""

    numel: int
    levels: int
    data_bits: float  # numel * H(counts): the arithmetic coder's ideal length
    coder_bits: float  # termination overhead of the arithmetic coder
    codebook_bits: float
    counts_bits: float

    @property
    def total(self) -> float:
        return self.data_bits + self.coder_bits + self.codebook_bits + self.counts_bits


def code_length(symbols: Tensor, levels: int) -> CodeLength:
    """Ideal arithmetic-code length of ``symbols`` given their counts, plus codebook and counts (an estimate,
    for comparison; the bound counts the real message of genbound.bounds.occam_code)."""
    n = int(symbols.numel())
    counts = torch.bincount(symbols.reshape(-1), minlength=levels).to(torch.float64)
    p = counts[counts > 0] / max(n, 1)
    data = float(-(counts[counts > 0] * torch.log2(p)).sum()) if n else 0.0
    return CodeLength(
        numel=n, levels=levels, data_bits=data, coder_bits=2.0 if levels > 1 else 0.0,
        codebook_bits=float(CODEBOOK_BITS * levels), counts_bits=float(levels * math.ceil(math.log2(n + 1))),
    )


def error_limit(chance_error: float | None) -> tuple[float, str]:
    """The level at which an error bound says nothing: chance (1 - 1/classes) when known, else 1."""
    if chance_error is None:
        return 1.0, "error rate"
    return float(chance_error), "error of a constant guess (chance level)"


@dataclass
class CompressionCandidate:
    kind: str
    levels: int
    message_bits: float  # the tensors' part of the message
    total_bits: float  # K: the whole prefix-free message, grid index included
    train_error: float  # on the quantized model
    kl_budget: float
    bound: float


@dataclass
class CompressionBound:
    """The best Occam bound over the quantizer grid (the grid is paid for in the code length)."""

    kind: str
    levels: int
    n_params: int
    message_bits: float
    total_bits: float
    hyper_choices: int
    n_train: int
    delta: float
    train_error_quantized: float
    train_error_original: float
    kl_budget: float
    bound: float
    vacuous: bool
    verdict: str
    tensors: dict[str, CodeLength] = field(default_factory=dict)
    candidates: list[CompressionCandidate] = field(default_factory=list)
    assumed: dict = field(default_factory=dict)
    measured: dict = field(default_factory=dict)


def compression_bound(hyp: Hypothesis, train: EvalSet, delta: float = 0.05,
                      levels_grid: Sequence[int] = (1, 2, 3, 4, 8, 16), kinds: Sequence[str] = ("kmeans", "uniform"),
                      device: torch.device | None = None, batch_size: int = 256,
                      progress: bool | None = None, chance_error: float | None = None) -> CompressionBound:
    """Occam bound for the hypothesis ``hyp`` (trained tensors and their data-independent start theta_0).
    Each (kind, levels) of the grid quantizes every Delta = theta - theta_0, codes it, evaluates the
    quantized model on ``train`` and inverts the kl; the best is returned, with the fixed-width grid index
    in the message paying for the choice (K is the length of the real message, genbound.bounds.occam_code).
    The bound is called vacuous when it reaches ``chance_error`` (1 - 1/classes: a uniform random guess does
    that well) or 1 when that is not given."""
    from tqdm.auto import tqdm

    delta = check_probability(delta, "delta", "--delta")
    n = len(train)
    check_positive(n, "the number of training examples N", "--n")
    if not hyp.trained:
        raise GenboundError("no trained tensors to compress; the checkpoint records none")
    device = where(device, hyp.model)
    train = train.to(device)
    grid = [(kind, int(lv)) for kind in kinds for lv in levels_grid]
    if not grid:
        raise GenboundError("the quantizer grid is empty; give at least one kind and one number of levels")
    err_orig = hyp.error(train, None, batch_size, device)
    candidates: list[CompressionCandidate] = []
    best = None
    names = list(hyp.trained)
    for choice, (kind, lv) in enumerate(tqdm(grid, desc="compression grid",
                                              disable=(None if progress is None else not progress))):
        tensors: dict[str, Tensor] = {}
        coded: list[CodedTensor] = []
        for name in names:
            value = hyp.trained[name]
            ref = hyp.reference[name].to(device=value.device, dtype=torch.float64)
            centers, sym = quantize(value.to(torch.float64) - ref, lv, kind)
            coded.append(normalize(centers.cpu().numpy(), sym.cpu().numpy()))
        msg = encode_tensors(coded, choice, len(grid), lv)
        # The model is rebuilt from the decoded message, never from the encoder's copy.
        got_choice, decoded = decode_tensors(msg.data, [t.symbols.size for t in coded], len(grid),
                                             lambda c: grid[c][1])
        if got_choice != choice or any(not (np.array_equal(a.centers, b.centers) and np.array_equal(a.symbols,
                                                                                                      b.symbols))
                                       for a, b in zip(coded, decoded)):
            raise GenboundError("internal error: the decoded Occam message differs from what was encoded")
        codes: dict[str, CodeLength] = {}
        for name, t, tb in zip(names, decoded, msg.tensors):
            value = hyp.trained[name]
            ref = hyp.reference[name].to(device=value.device, dtype=torch.float64)
            q = torch.from_numpy(t.centers[t.symbols].astype(np.float64)).to(ref.device).reshape(ref.shape)
            tensors[name] = (ref + q).to(value.dtype)
            codes[name] = CodeLength(numel=int(t.symbols.size), levels=int(t.centers.size), data_bits=tb.stream,
                                     coder_bits=tb.levels + tb.stream_length, codebook_bits=tb.codebook,
                                     counts_bits=tb.counts)
        total = msg.nbits
        k_bits = total - msg.choice_bits
        err = hyp.error(train, tensors, batch_size, device)
        budget = occam_kl_budget(total, n, delta)
        bnd = kl_inverse_upper(err, budget)
        cand = CompressionCandidate(kind, lv, k_bits, total, err, budget, bnd)
        candidates.append(cand)
        if best is None or bnd < best[0].bound:
            best = (cand, codes)
    cand, codes = best
    limit, limit_what = error_limit(chance_error)
    return CompressionBound(
        kind=cand.kind, levels=cand.levels, n_params=hyp.num_params, message_bits=cand.message_bits,
        total_bits=cand.total_bits, hyper_choices=len(grid), n_train=n, delta=delta,
        train_error_quantized=cand.train_error, train_error_original=err_orig, kl_budget=cand.kl_budget,
        bound=cand.bound, vacuous=cand.bound >= limit, verdict=vacuity_note(cand.bound, limit, limit_what),
        tensors=codes, candidates=candidates,
        assumed={"delta": delta, "codebook": f"{CODEBOOK_BITS}-bit floats per level",
                 "code": "the prefix-free message of genbound.bounds.occam_code, decoded before evaluation",
                 "theta_0": "data-independent start (pretrained W0, B0 = 0, seeded A0 and head)",
                 "i.i.d.": "training examples drawn i.i.d. from the test distribution"},
        measured={"train error of the quantized model": cand.train_error, "N": n,
                  "train error before quantization": err_orig, "coded parameters": hyp.num_params},
    )
