"""Occam / compression bound on the test error (Lotfi et al. 2022, 2024; docs/concepts.md,
"Occam / compression bound").

A prefix-free code of K bits describes the hypothesis; with probability >= 1 - delta over the sample,

    kl( R_hat || R ) <= ( K ln 2 + ln(2 sqrt(N) / delta) ) / N,

and R is bounded by inverting the binary kl (bisection to 1e-12). Here the message describes the trained
tensors relative to their data-independent starting point theta_0 (pretrained W0, B_0 = 0, A_0 and the head
drawn from the recorded seed), so only the update Delta = theta - theta_0 is coded:

* each tensor's Delta is quantized to a small codebook (1-D k-means, or a uniform grid between min and max);
* the symbols are arithmetic-coded: the ideal length is sum_c -n_c log2(n_c / n) = n H(counts) bits, plus
  2 bits of coder termination per tensor; the codebook (32 bits per level) and the counts
  (ceil(log2(n + 1)) bits per level) are sent too;
* the quantizer choice (kind, number of levels) is one of a fixed grid, coded in log2(#choices) bits, and
  the length is made prefix-free: K' = K + 2 log2 K + log2(#choices).

R_hat is the 0-1 error of the *quantized* model on the training set (the model is rebuilt with the
quantized tensors), so the bound is about the model the code describes, not the trained one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core.device import where
from ..core.errors import GenboundError
from ..data.evalset import EvalSet
from ..sources.hypothesis import Hypothesis
from .common import check_positive, check_probability, kl_inverse_upper, vacuity_note

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


def prefix_free_bits(bits: float, choices: int = 1) -> float:
    """K + 2 log2 K + log2(#choices): a prefix-free length for a K-bit message and a hyperparameter index."""
    if choices < 1:
        raise GenboundError(f"the number of hyperparameter choices must be >= 1, got {choices}")
    return bits + (2.0 * math.log2(bits) if bits > 1 else 0.0) + math.log2(choices)


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
    """Ideal arithmetic-code length of ``symbols`` given their counts, plus codebook and counts."""
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
    message_bits: float  # K before the prefix-free overhead
    total_bits: float  # K'
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
    quantized model on ``train`` and inverts the kl; the best is returned, with log2(len(grid)) bits in K'
    paying for the choice. The bound is called vacuous when it reaches ``chance_error`` (1 - 1/classes: a
    uniform random guess does that well) or 1 when that is not given."""
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
    for kind, lv in tqdm(grid, desc="compression grid", disable=(None if progress is None else not progress)):
        tensors: dict[str, Tensor] = {}
        codes: dict[str, CodeLength] = {}
        for name, value in hyp.trained.items():
            ref = hyp.reference[name].to(device=value.device, dtype=torch.float64)
            centers, sym = quantize(value.to(torch.float64) - ref, lv, kind)
            codes[name] = code_length(sym, int(centers.numel()))
            # The codebook is sent as float32: rebuild from the rounded levels.
            q = centers.to(torch.float32).to(torch.float64)[sym].reshape(ref.shape)
            tensors[name] = (ref + q).to(value.dtype)
        k_bits = sum(c.total for c in codes.values())
        total = prefix_free_bits(k_bits, len(grid))
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
                 "theta_0": "data-independent start (pretrained W0, B0 = 0, seeded A0 and head)",
                 "i.i.d.": "training examples drawn i.i.d. from the test distribution"},
        measured={"train error of the quantized model": cand.train_error, "N": n,
                  "train error before quantization": err_orig, "coded parameters": hyp.num_params},
    )
