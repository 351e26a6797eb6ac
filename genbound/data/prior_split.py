"""The seeded split of a training set into a prior part and a bound part (data-dependent priors:
Dziugaite, Hsu, Gharbieh, Arpino & Roy 2021, "On the role of data in PAC-Bayes bounds"; Perez-Ortiz, Rivasplata,
Shawe-Taylor & Szepesvari 2021, "Tighter risk certificates for neural networks").

The prior part S_p (a fraction f of the N training examples, drawn by a seeded permutation) may choose the prior,
here the coding centre of genbound.bounds.ddprior; the bound part S_b (the other N - round(f N) examples) is
independent of S_p under the i.i.d. draw, so a bound that counts errors on S_b only and codes relative to a
centre fixed by S_p holds conditionally on S_p, hence unconditionally. The split is a function of (N, f, seed)
alone, never of the examples' contents, so which examples land in S_b does not depend on S_b.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..core.errors import GenboundError


@dataclass(frozen=True)
class PriorSplit:
    """Positions (into the training split, ascending) of the prior part and the bound part."""

    fraction: float
    seed: int
    prior: Tensor  # int64, ascending
    bound: Tensor  # int64, ascending

    @property
    def n_prior(self) -> int:
        return int(self.prior.numel())

    @property
    def n_bound(self) -> int:
        return int(self.bound.numel())

    def digest(self) -> str:
        """sha256 of the prior part's positions (what a certificate records of the split)."""
        return "sha256:" + hashlib.sha256(self.prior.numpy().astype("<i8").tobytes()).hexdigest()

    def record(self) -> dict:
        return {"fraction": self.fraction, "seed": self.seed, "n_prior": self.n_prior, "n_bound": self.n_bound,
                "prior_positions_digest": self.digest()}


def check_prior_fraction(fraction) -> float:
    """``fraction`` as a float strictly between 0 and 1 (refused in one line otherwise)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise GenboundError(f"the prior fraction must lie strictly between 0 and 1, got {fraction!r}")
    return float(fraction)


def split_train(n: int, fraction: float, seed: int) -> PriorSplit:
    """The first round(f n) positions of a seeded permutation of 0..n-1 are the prior part, the rest the bound
    part (both sorted). Refused when either part would be empty."""
    check_prior_fraction(fraction)
    n_prior = int(round(float(fraction) * int(n)))
    if not 1 <= n_prior < n:
        raise GenboundError(f"a prior fraction of {fraction:g} of {n} training examples leaves an empty part; "
                            "choose a fraction that keeps examples on both sides")
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(int(n), generator=g)
    return PriorSplit(float(fraction), int(seed), perm[:n_prior].sort().values, perm[n_prior:].sort().values)


def prior_splits(splits, fraction: float, seed: int):
    """``splits`` (genbound.data.datasets.Splits) with the training split cut to its prior part: what the centre
    is trained on (``genbound.training.train(config, out, splits=...)``). Validation and test are unchanged."""
    part = split_train(len(splits.train), fraction, seed)
    # a fresh info dict: the full splits' cached digest (restore.check_splits) must not pass for the cut ones
    info = {k: v for k, v in splits.info.items() if k != "_digest"}
    return replace(splits, train=splits.train.index(part.prior), info=info)


def check_fraction(fraction: float, declared: tuple[float, ...]) -> None:
    """``fraction`` must be one declared in the grid file before any run."""
    if not any(math.isclose(float(fraction), float(f), rel_tol=1e-12) for f in declared):
        raise GenboundError(f"prior fraction {fraction:g} is not declared in the certificate grid "
                            f"({', '.join(f'{f:g}' for f in declared)}); use a declared fraction")
