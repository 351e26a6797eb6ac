"""PAC-Bayes over the subspace vector w with a learned diagonal Gaussian posterior (Dziugaite & Roy 2017's
recipe in the subspace of Lotfi et al. 2022; docs/concepts.md, section "Certificates").

Prior P = N(0, lambda I) over w, i.e. centred at theta_0 (w = 0); lambda from a grid fixed in advance
(genbound.bounds.pacbayes.DEFAULT_LAMBDA_GRID), paid for by a union bound. Posterior Q = N(mu, diag s^2),
mu started at the trained w, both mu and log s fitted on the training set by minimising the surrogate
E_Q[cross-entropy] + KL(Q || P) / N (reparameterised draws). Then

    KL(Q || P) = 1/2 sum_i [ s_i^2 / lambda + mu_i^2 / lambda - 1 + ln lambda - ln s_i^2 ],

    kl( R_hat(Q) || R(Q) ) <= ( KL + ln(2 sqrt(N) |Lambda| / delta_pb) ) / N         (Maurer 2004)

R_hat(Q), the posterior's training error, is estimated by Monte Carlo: B batches, each of b examples drawn
with replacement from the training set and scored by a fresh draw w ~ Q. The batch errors X_1..X_B are
i.i.d. in [0, 1] with mean exactly R_hat(Q), so by Maurer's lemma (E exp(B kl(X_bar || mean)) <= 2 sqrt B)
R_hat(Q) <= kl^{-1}( X_bar, ln(2 sqrt(B) / delta_mc) / B ). delta = delta_pb + delta_mc.
The bound is on the error of the stochastic classifier Q. Chained runs are not handled (a posterior over every
link's w would need the chain replayed per draw).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..core.device import where
from ..core.errors import GenboundError
from ..data.evalset import EvalSet
from ..models.losses import mean_loss, per_example_error
from .common import kl_inverse_upper
from .pacbayes import DEFAULT_LAMBDA_GRID


def diagonal_gaussian_kl(mu: torch.Tensor, s2: torch.Tensor, lam: float) -> torch.Tensor:
    """KL( N(mu, diag s2) || N(0, lam I) ) in nats."""
    return 0.5 * (s2 / lam + mu.pow(2) / lam - 1.0 + math.log(lam) - torch.log(s2)).sum()


def subspace_pac_bayes(model: nn.Module, space, train: EvalSet, delta: float = 0.05, mc_fraction: float = 0.5,
                       lambda_grid: Sequence[float] = DEFAULT_LAMBDA_GRID, steps: int = 30, lr: float = 0.01,
                       batch_size: int = 32, mc_batches: int = 200, mc_batch_size: int = 8, init_s: float = 1e-2,
                       seed: int = 0, device: torch.device | None = None,
                       progress: bool | None = None) -> dict[str, Any]:
    """The bound of the module docstring for ``model`` whose last-link subspace is ``space`` (w = the
    trained vector). Returns its parts; ``model``'s w is left as it was."""
    from tqdm.auto import tqdm

    device = where(device, model)  # None: where the model is

    if not 0 < delta < 1 or not 0 < mc_fraction < 1:
        raise GenboundError(f"delta and the Monte Carlo share must lie in (0, 1), got {delta} and {mc_fraction}")
    n = len(train)
    g = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    w0 = space.w.detach().clone()
    mu = nn.Parameter(w0.clone())
    log_s = nn.Parameter(torch.full_like(w0, math.log(init_s)))
    lam_fit = min(lambda_grid, key=lambda lam: abs(math.log(lam) - math.log(float(w0.pow(2).mean()) + init_s ** 2)))
    opt = torch.optim.Adam([mu, log_s], lr=lr)
    was = model.training
    model.train()
    try:
        for _ in tqdm(range(steps), desc="PAC-Bayes posterior", leave=False,
                      disable=None if progress is None else not progress):
            idx = torch.randint(n, (batch_size,), generator=g)
            feats = {k: v[idx].to(device) for k, v in train.features.items()}
            eps = torch.randn(w0.shape, generator=g).to(device)
            space.override = mu + log_s.exp() * eps
            loss = mean_loss(model(**feats), train.labels[idx].to(device))
            loss = loss + diagonal_gaussian_kl(mu, (2 * log_s).exp(), lam_fit) / n
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        errors = []
        with torch.no_grad():
            s = log_s.exp()
            for _ in tqdm(range(mc_batches), desc="PAC-Bayes Monte Carlo", leave=False,
                          disable=None if progress is None else not progress):
                idx = torch.randint(n, (mc_batch_size,), generator=g)
                feats = {k: v[idx].to(device) for k, v in train.features.items()}
                space.override = mu + s * torch.randn(w0.shape, generator=g).to(device)
                # Mean 0-1 loss over the drawn examples (a causal LM's: each sequence's next-token error rate).
                errors.append(float(per_example_error(model(**feats), train.labels[idx].to(device)).mean()))
    finally:
        space.override = None
        model.train(was)
    delta_mc = delta * mc_fraction
    delta_pb = delta - delta_mc
    mc = sum(errors) / len(errors)
    mc_upper = kl_inverse_upper(mc, math.log(2.0 * math.sqrt(len(errors)) / delta_mc) / len(errors))
    log_term = math.log(2.0 * math.sqrt(n) * len(lambda_grid) / delta_pb)
    s2 = (2 * log_s.detach()).exp()
    best = None
    for lam in lambda_grid:
        kl = float(diagonal_gaussian_kl(mu.detach(), s2, lam))
        b = kl_inverse_upper(mc_upper, (kl + log_term) / n)
        if best is None or b < best[0]:
            best = (b, lam, kl)
    bound, lam, kl = best
    return {"bound": bound, "kl": kl, "prior_variance": lam, "lambda_grid_size": len(lambda_grid),
            "mc_error": mc, "mc_error_upper": mc_upper, "mc_batches": len(errors), "mc_batch_size": mc_batch_size,
            "n": n, "delta": delta, "delta_mc": delta_mc, "posterior_std_mean": float(s2.sqrt().mean()),
            "mean_sq_mu": float(mu.detach().pow(2).mean()), "steps": steps, "lr": lr, "seed": int(seed),
            "note": "bounds the error of the stochastic classifier Q over w, not of the decoded model"}
