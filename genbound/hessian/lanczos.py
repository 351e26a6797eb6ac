"""Lanczos with full re-orthogonalization, several runs in lockstep.

For a symmetric H and a unit start q_1, Lanczos builds an orthonormal basis Q_m of the Krylov space
span{q_1, H q_1, ..., H^(m-1) q_1} and the tridiagonal T_m = Q_m^T H Q_m with diagonal alpha_j and
off-diagonal beta_j, via H Q_m = Q_m T_m + beta_m q_(m+1) e_m^T (C. Lanczos, J. Res. Nat. Bur. Standards
45, 1950; G. H. Golub and C. F. Van Loan, Matrix Computations, 4th ed., section 10.1).

In floating point the three-term recurrence loses orthogonality as soon as a Ritz value converges, which
produces spurious copies of eigenvalues; every new vector is therefore re-orthogonalized against the whole
basis, twice ("twice is enough": classical Gram-Schmidt with one re-iteration, Giraud et al., Numer. Math.
101, 2005). The basis stays in the operator's dtype on its device; alpha, beta and everything derived from
T_m are float64.

For a Ritz pair (theta_i, y_i = Q_m s_i) of T_m, ``||H y_i - theta_i y_i|| = |beta_m s_(m,i)|`` exactly,
so ``|lambda - theta_i| <= |beta_m s_(m,i)|`` for some eigenvalue lambda, and ``<= res^2 / gap`` when the
Ritz value is separated from the rest of the spectrum by ``gap`` (Parlett, The Symmetric Eigenvalue
Problem, Thm. 11.7.1; the gap is estimated from the other Ritz values).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor
from tqdm.auto import tqdm

Matmat = Callable[[Tensor], Tensor]


@dataclass
class LanczosRun:
    """One Lanczos run: T_m (``alpha``: m, ``beta``: m - 1 off-diagonals) and the residual norm beta_m."""

    alpha: np.ndarray
    beta: np.ndarray
    beta_last: float
    basis: Tensor | None  # (m, dim) rows q_1..q_m, operator dtype and device; None when not kept
    breakdown: bool  # an invariant subspace was found (beta ~ 0): the Ritz values are exact

    @property
    def steps(self) -> int:
        return len(self.alpha)

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values (ascending) and the eigenvectors S of T_m (columns)."""
        return tridiagonal_eigh(self.alpha, self.beta)


def tridiagonal_eigh(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal (alpha, beta), float64."""
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if len(alpha) == 1:
        return alpha.copy(), np.ones((1, 1))
    return eigh_tridiagonal(alpha, beta)


def ritz_bounds(theta: np.ndarray, s_last: np.ndarray, beta_last: float) -> tuple[np.ndarray, np.ndarray]:
    """Residual norms ``|beta_m s_(m,i)|`` and error bounds ``min(res, res^2 / gap)`` per Ritz value."""
    res = np.abs(beta_last * s_last)
    if len(theta) == 1:
        return res, res
    diffs = np.abs(theta[:, None] - theta[None, :])
    np.fill_diagonal(diffs, np.inf)
    gap = diffs.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        quad = np.where(gap > 0, res**2 / gap, np.inf)
    return res, np.minimum(res, quad)


def lanczos(
    matmat: Matmat,
    starts: Tensor,
    num_steps: int,
    *,
    keep_basis: bool = False,
    stop: Callable[[LanczosRun], bool] | None = None,
    progress: bool | None = None,
    desc: str = "lanczos",
) -> list[LanczosRun]:
    """Run ``b = len(starts)`` Lanczos processes of up to ``num_steps`` steps on H (given by ``matmat``,
    which maps a (k, dim) block to H applied to each row), all b products of a step in one call.

    ``stop(run)`` is asked after every step when b == 1; True ends the run (top-k converged). A run whose
    next beta is at rounding level has found an invariant subspace and stops on its own.
    """
    starts = starts.clone()
    b, dim = starts.shape
    num_steps = int(min(num_steps, dim))
    dtype, device = starts.dtype, starts.device
    eps = float(torch.finfo(dtype).eps)
    Q = torch.zeros(b, num_steps + 1, dim, dtype=dtype, device=device)
    Q[:, 0] = starts / starts.norm(dim=1, keepdim=True)
    alphas = np.zeros((b, num_steps))
    betas = np.zeros((b, num_steps))
    steps = np.zeros(b, dtype=int)
    active = np.ones(b, dtype=bool)
    broke = np.zeros(b, dtype=bool)
    norm_est = np.zeros(b)

    def snapshot(i: int) -> LanczosRun:
        m = int(steps[i])
        return LanczosRun(
            alpha=alphas[i, :m].copy(),
            beta=betas[i, : m - 1].copy(),
            beta_last=float(betas[i, m - 1]) if m else 0.0,
            basis=Q[i, :m] if keep_basis else None,
            breakdown=bool(broke[i]),
        )

    bar = tqdm(total=num_steps, desc=desc, disable=None if progress is None else not progress, leave=False)
    try:
        for j in range(num_steps):
            idx = np.flatnonzero(active)
            if len(idx) == 0:
                break
            sel = torch.as_tensor(idx, device=device)
            q = Q[sel, j]
            w = matmat(q)
            a = (w.double() * q.double()).sum(dim=1)
            w = w - a.to(dtype)[:, None] * q
            if j > 0:
                w = w - torch.as_tensor(betas[idx, j - 1], dtype=dtype, device=device)[:, None] * Q[sel, j - 1]
            basis = Q[sel, : j + 1]
            for _ in range(2):
                w = w - torch.bmm(torch.bmm(basis, w.unsqueeze(2)).transpose(1, 2), basis).squeeze(1)
            bnorm = w.double().norm(dim=1).cpu().numpy()
            a = a.cpu().numpy()
            for r, i in enumerate(idx):
                alphas[i, j] = a[r]
                betas[i, j] = bnorm[r]
                steps[i] = j + 1
                norm_est[i] = max(norm_est[i], abs(a[r]) + bnorm[r] + (betas[i, j - 1] if j else 0.0))
                if bnorm[r] <= 100 * eps * max(norm_est[i], 1e-300):
                    broke[i] = True
                    active[i] = False
                    continue
                Q[i, j + 1] = w[r] / w[r].norm()
            bar.update(1)
            if stop is not None and b == 1 and active[0] and stop(snapshot(0)):
                active[0] = False
    finally:
        bar.close()
    return [snapshot(i) for i in range(b)]
