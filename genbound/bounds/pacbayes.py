"""PAC-Bayes bound with the prior centred at the data-independent initialization
(Langford & Seeger 2001, Maurer 2004; the recipe of Dziugaite & Roy 2017; docs/concepts.md,
"PAC-Bayes with the prior at the initialization").

theta are the trained tensors, theta_0 their data-independent start (pretrained W0, B_0 = 0, A_0 and the
head from the recorded seed). Posterior Q = N(theta_hat, s^2 I), prior P = N(theta_0, lambda I), d = dim:

    KL(Q || P) = 1/2 [ d s^2 / lambda + ||theta_hat - theta_0||^2 / lambda - d + d ln lambda - d ln s^2 ].

With probability >= 1 - delta, simultaneously for every s in S and lambda in Lambda (fixed grids; union
bound):

    kl( R_hat(Q) || R(Q) ) <= ( KL + ln( 2 sqrt(N) |S| |Lambda| / delta_pb ) ) / N.

R_hat(Q), the posterior's training 0-1 error, is estimated from n_mc draws; by the sample-convergence
bound (Langford & Caruana 2002) R_hat(Q) <= kl^{-1}( R_mc, ln(2 |S| / delta_mc) / n_mc ). delta = delta_pb +
delta_mc. The bound is on the error of the *stochastic* classifier Q, not of theta_hat itself. s is chosen
by minimizing the final bound over the grid, which the union bound pays for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..core.device import where
from ..core.errors import GenboundError
from ..data.evalset import EvalSet
from ..sources.hypothesis import Hypothesis
from .common import check_positive, check_probability, kl_inverse_upper, vacuity_note
from .occam import error_limit

# Fixed before seeing any data: s = 2^{-j/2} for j = 2..40 (0.5 .. 1e-6); lambda = 2^{-j/2}, j = 0..60.
DEFAULT_S_GRID = tuple(2.0 ** (-j / 2) for j in range(2, 41))
DEFAULT_LAMBDA_GRID = tuple(2.0 ** (-j / 2) for j in range(0, 61))


def gaussian_kl(distance_sq: float, d: int, s2: float, lam: float) -> float:
    """KL( N(theta_hat, s2 I) || N(theta_0, lam I) ) in nats, for ||theta_hat - theta_0||^2 = distance_sq."""
    if d <= 0:
        raise GenboundError(f"the posterior needs at least one parameter, got d = {d}")
    s2 = check_positive(s2, "the posterior variance s^2", "--pb-s-grid")
    lam = check_positive(lam, "the prior variance lambda", "--pb-lambda-grid")
    return 0.5 * (d * s2 / lam + distance_sq / lam - d + d * math.log(lam) - d * math.log(s2))


@dataclass
class PacBayesCandidate:
    s: float
    mc_error: float
    mc_error_upper: float
    best_lambda: float
    kl: float
    bound: float


@dataclass
class PacBayesBound:
    d: int
    n_train: int
    delta: float
    delta_mc: float
    s: float
    prior_variance: float
    distance_sq: float
    kl: float
    mc_samples: int
    mc_error: float  # Monte Carlo estimate of the posterior's training error
    mc_error_upper: float  # after the sample-convergence correction
    deterministic_train_error: float
    kl_budget: float
    bound: float
    vacuous: bool
    verdict: str
    seed: int
    grid_sizes: dict = field(default_factory=dict)
    candidates: list[PacBayesCandidate] = field(default_factory=list)
    assumed: dict = field(default_factory=dict)
    measured: dict = field(default_factory=dict)


def _best_over_lambda(mc_upper: float, dist: float, d: int, s: float, lambdas: Sequence[float], n: int,
                      log_term: float) -> tuple[float, float, float]:
    best = (math.inf, math.nan, math.nan)
    for lam in lambdas:
        kl = gaussian_kl(dist, d, s * s, lam)
        b = kl_inverse_upper(mc_upper, (kl + log_term) / n)
        if b < best[0]:
            best = (b, lam, kl)
    return best


def pac_bayes_bound(hyp: Hypothesis, train: EvalSet, delta: float = 0.05, mc_fraction: float = 0.5,
                    s_grid: Sequence[float] = DEFAULT_S_GRID, lambda_grid: Sequence[float] = DEFAULT_LAMBDA_GRID,
                    mc_samples: int = 20, seed: int = 0, device: torch.device | None = None,
                    batch_size: int = 512, progress: bool | None = None,
                    chance_error: float | None = None) -> PacBayesBound:
    """The bound above for the hypothesis ``hyp`` (trained tensors theta_hat and their start theta_0).

    The posterior noise is drawn from ``seed`` (recorded). ``mc_fraction`` of delta goes to the Monte Carlo
    correction. Every s of the grid is evaluated and counted in the union bound (the grid is fixed in
    advance); the reported s and lambda are those of the smallest bound."""
    from tqdm.auto import tqdm

    delta = check_probability(delta, "delta", "--delta")
    mc_fraction = check_probability(mc_fraction, "the Monte Carlo share of delta", "--pb-mc-fraction")
    if mc_samples < 1:
        raise GenboundError(f"the Monte Carlo estimate needs at least 1 sample, got {mc_samples}; pass --pb-samples")
    if not s_grid or not lambda_grid:
        raise GenboundError("the PAC-Bayes grids of s and lambda must not be empty")
    if not hyp.trained:
        raise GenboundError("no trained tensors for the posterior; the checkpoint records none")
    n = len(train)
    check_positive(n, "the number of training examples N", "--n")
    device = where(device, hyp.model)
    train = train.to(device)
    d = hyp.num_params
    dist = hyp.distance_sq()
    delta_mc = delta * mc_fraction
    delta_pb = delta - delta_mc
    log_term = math.log(2.0 * math.sqrt(n) * len(s_grid) * len(lambda_grid) / delta_pb)
    mc_budget = math.log(2.0 * len(s_grid) / delta_mc) / mc_samples
    det_err = hyp.error(train, None, batch_size, device)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    candidates: list[PacBayesCandidate] = []
    for s in tqdm(list(s_grid), desc="PAC-Bayes s grid", disable=(None if progress is None else not progress)):
        s = check_positive(s, "a posterior scale s", "--pb-s-grid")
        errs = []
        for _ in range(mc_samples):
            draw = {k: v + s * torch.randn(v.shape, generator=gen, dtype=torch.float32).to(v.device, v.dtype)
                    for k, v in hyp.trained.items()}
            errs.append(hyp.error(train, draw, batch_size, device))
        mc = sum(errs) / len(errs)
        mc_up = kl_inverse_upper(mc, mc_budget)
        b, lam, kl = _best_over_lambda(mc_up, dist, d, s, lambda_grid, n, log_term)
        candidates.append(PacBayesCandidate(s, mc, mc_up, lam, kl, b))
    best = min(candidates, key=lambda c: c.bound)
    limit, what = error_limit(chance_error)
    return PacBayesBound(
        d=d, n_train=n, delta=delta, delta_mc=delta_mc, s=best.s, prior_variance=best.best_lambda,
        distance_sq=dist, kl=best.kl, mc_samples=mc_samples, mc_error=best.mc_error,
        mc_error_upper=best.mc_error_upper, deterministic_train_error=det_err,
        kl_budget=(best.kl + log_term) / n, bound=best.bound, vacuous=best.bound >= limit,
        verdict=vacuity_note(best.bound, limit, what), seed=int(seed),
        grid_sizes={"s": len(s_grid), "lambda": len(lambda_grid)}, candidates=candidates,
        assumed={"delta": f"{delta:g} ({delta_pb:g} for PAC-Bayes, {delta_mc:g} for Monte Carlo)",
                 "prior": "N(theta_0, lambda I), theta_0 data-independent (pretrained W0, B0 = 0, seeded A0/head)",
                 "posterior": "N(theta_hat, s^2 I) isotropic", "i.i.d.": "training examples i.i.d.",
                 "stochastic": "bounds the error of the randomized classifier Q, not of theta_hat"},
        measured={"||theta_hat - theta_0||^2": dist, "d": d, "N": n,
                  "posterior training error (Monte Carlo)": best.mc_error,
                  "deterministic training error": det_err},
    )
