"""Lanczos with partial re-orthogonalization, several runs in lockstep.

For a symmetric H and a unit start q_1, Lanczos builds an orthonormal basis Q_m of the Krylov space
span{q_1, H q_1, ..., H^(m-1) q_1} and the tridiagonal T_m = Q_m^T H Q_m with diagonal alpha_j and
off-diagonal beta_j, via H Q_m = Q_m T_m + beta_m q_(m+1) e_m^T (C. Lanczos, J. Res. Nat. Bur. Standards
45, 1950; G. H. Golub and C. F. Van Loan, Matrix Computations, 4th ed., section 10.1).

In floating point the three-term recurrence loses orthogonality as soon as a Ritz value converges, which
produces spurious copies of eigenvalues. Full re-orthogonalization (every new vector against the whole
basis) prevents it at the cost of two passes over the m stored vectors per step, which for a 10^6-long
basis costs a sizeable fraction of a Hessian-vector product. The default here is H. D. Simon's
partial re-orthogonalization (Math. Comp. 42, 1984; "The Lanczos algorithm with partial
reorthogonalization"): the level of orthogonality omega_(j,k) ~ q_j^T q_k is tracked by the scalar
recurrence

    beta_j omega_(j+1,k) = beta_k omega_(j,k+1) + (alpha_k - alpha_j) omega_(j,k) + beta_(k-1) omega_(j,k-1)
                           - beta_(j-1) omega_(j-1,k) +- eps ||H||,

(the last term models the rounding of one step, with the sign that makes |omega| grow: eps ||H||, or the
measured |q_(j-1)^T H q_j - beta_(j-1)| when larger, which is what an autograd product's float32 sums and
slight asymmetry contribute; with eps ||H|| alone the estimate fell 10-20x below the measured loss on a 10^6
parameter MLP, with the measured term it stayed above it in the runs checked), and the new vector
is orthogonalized against the whole basis only when some |omega_(j+1,k)| exceeds ``orth_tol`` (default
sqrt(eps)), together with the next one (Simon's rule: q_(j+2) inherits the loss from q_j). Simon's
theorem: as long as the basis is semi-orthogonal (|q_j^T q_k| <= sqrt(eps)), T_m equals the projection of H
on span(Q_m) to working precision, so the Ritz values and the residual bounds below are those of full
re-orthogonalization. Each orthogonalization is classical Gram-Schmidt against the basis in one matrix
product, with a second pass when the first removed more than half of the vector's squared norm ("twice is
enough", Giraud et al., Numer. Math. 101, 2005). ``reorth="full"`` does that at every step. The basis stays
in the operator's dtype on its device; alpha, beta and everything derived from T_m are float64. On the
benchmark MLP the recurrence still asks for a pass on half the steps or more (the basis really does lose
orthogonality within a few steps there: 7 of 16 steps at 256 samples, 54 of a density probe's 64), so
partial and full measure about the same time there (docs/benchmarks.md); the passes are saved where the
loss is slower.

For a Ritz pair (theta_i, y_i = Q_m s_i) of T_m, ``||H y_i - theta_i y_i|| = |beta_m s_(m,i)|`` (up to
working precision under semi-orthogonality), so ``|lambda - theta_i| <= |beta_m s_(m,i)|`` for some
eigenvalue lambda, and ``<= res^2 / gap`` when the Ritz value is separated from the rest of the spectrum by
``gap`` (Parlett, The Symmetric Eigenvalue Problem, Thm. 11.7.1; the gap is estimated from the other Ritz
values).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor
from tqdm.auto import tqdm

Matmat = Callable[[Tensor], Tensor]
REORTH = ("partial", "full")


@dataclass
class LanczosRun:
    """One Lanczos run: T_m (``alpha``: m, ``beta``: m - 1 off-diagonals) and the residual norm beta_m."""

    alpha: np.ndarray
    beta: np.ndarray
    beta_last: float
    basis: Tensor | None  # (m, dim) rows q_1..q_m, operator dtype and device; None when not kept
    breakdown: bool  # an invariant subspace was found (beta ~ 0): the Ritz values are exact
    reorthogonalizations: int = 0  # steps orthogonalized against the whole basis

    @property
    def steps(self) -> int:
        return len(self.alpha)

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values (ascending) and the eigenvectors S of T_m (columns)."""
        return tridiagonal_eigh(self.alpha, self.beta)


def _dot(x: Tensor, y: Tensor, scratch: Tensor | None = None) -> float:
    """x^T y by torch's pairwise (cascade) summation of the elementwise products, as a Python float
    (``scratch``: a buffer of x's shape for the products, so no 4 MB temporary is allocated per dot)."""
    if scratch is None:
        return float((x * y).sum())
    return float(torch.mul(x, y, out=scratch).sum())


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


class _Basis:
    """The rows q_1..q_m of one run, in storage that grows by doubling (no up-front allocation for the
    maximum number of steps, and ``rows()`` is a view, never a copy)."""

    def __init__(self, dim: int, capacity: int, dtype: torch.dtype, device: torch.device):
        self.store = torch.empty(max(1, capacity), dim, dtype=dtype, device=device)
        self.m = 0

    def append(self, v: Tensor) -> None:
        if self.m == self.store.shape[0]:
            grown = torch.empty(2 * self.m, self.store.shape[1], dtype=self.store.dtype, device=self.store.device)
            grown[: self.m] = self.store
            self.store = grown
        self.store[self.m] = v
        self.m += 1

    def rows(self) -> Tensor:
        return self.store[: self.m]

    def spare(self) -> Tensor | None:
        """The storage row after the last one, when allocated (a vector written there is appended by
        ``m += 1`` without a copy); None when the store is full."""
        return self.store[self.m] if self.m < self.store.shape[0] else None


def omega_step(omega: np.ndarray, omega_prev: np.ndarray, alpha: np.ndarray, beta: np.ndarray,
               noise: float) -> np.ndarray:
    """Simon's recurrence: omega_(j+1, k) for k = 0..j+1 from omega_(j, .) (length j + 1) and omega_(j-1, .)
    (length j), with alpha_0..alpha_j and beta_0..beta_j (beta_j the new vector's norm). ``noise``: the
    rounding of one step (module docstring); the local level omega_(j+1, j) is noise / beta_j."""
    j = len(omega) - 1
    new = np.empty(j + 2)
    new[j + 1] = 1.0
    new[j] = noise / beta[j]
    if j == 0:
        return new
    k = np.arange(j)
    t = beta[k] * omega[k + 1] + (alpha[k] - alpha[j]) * omega[k] - beta[j - 1] * omega_prev[k]
    t[1:] += beta[k[1:] - 1] * omega[k[1:] - 1]
    new[:j] = (t + np.where(t >= 0, noise, -noise)) / beta[j]
    return new


class _Process:
    """One Lanczos process: its basis, T_m so far and the omega recurrence (module docstring)."""

    def __init__(self, start: Tensor, capacity: int, reorth: str, orth_tol: float | None):
        dim, dtype = start.shape[0], start.dtype
        self.eps = float(torch.finfo(dtype).eps)
        self.basis = _Basis(dim, capacity, dtype, start.device)
        self.scratch = torch.empty_like(start)
        self.basis.append(start / math.sqrt(_dot(start, start, self.scratch)))
        self.full = reorth == "full"
        self.orth_tol = math.sqrt(self.eps) if orth_tol is None else float(orth_tol)
        self.alphas: list[float] = []
        self.betas: list[float] = []
        # q_(j+1), appended when step j + 1 runs: True when it is already in the basis's spare row
        self.pending: Tensor | bool | None = None
        self.active, self.broke = True, False
        self.norm_est = 0.0
        self.noise = 0.0  # the largest |q_(j-1)^T H q_j - beta_(j-1)| so far
        self.omega, self.omega_prev = np.ones(1), np.zeros(0)
        self.force = False  # Simon: the vector after a re-orthogonalized one is re-orthogonalized too
        self.reorths = 0

    def current(self, j: int) -> Tensor:
        if self.pending is True:  # already written in the basis's spare row
            self.basis.m += 1
        elif self.pending is not None:
            self.basis.append(self.pending)
        self.pending = None
        return self.basis.rows()[j]

    def _orthogonalize(self, w: Tensor, bnorm: float) -> float:
        """w minus its projection on the basis (one matrix product each way, a second pass on cancellation);
        returns the new norm."""
        Q = self.basis.rows()
        c = torch.mv(Q, w)
        w.addmv_(Q.t(), c, alpha=-1.0)
        removed = float(_dot(c, c))
        bnorm = math.sqrt(_dot(w, w, self.scratch))
        if bnorm * bnorm < 0.5 * (bnorm * bnorm + removed):  # cancellation: orthogonalize again
            w.addmv_(Q.t(), torch.mv(Q, w), alpha=-1.0)
            bnorm = math.sqrt(_dot(w, w, self.scratch))
        self.reorths += 1
        return bnorm

    def step(self, j: int, q: Tensor, w: Tensor, last: bool) -> None:
        """Take w = H q_j to alpha_j, beta_j and q_(j+1) (in place in w)."""
        a = _dot(w, q, self.scratch)
        w.sub_(q, alpha=a)
        if j > 0 and self.full:
            w.sub_(self.basis.rows()[j - 1], alpha=self.betas[j - 1])
        elif j > 0:
            # q_(j-1)^T H q_j equals beta_(j-1) up to this step's rounding and the operator's own asymmetry (an
            # autograd product is symmetric only to its float32 sums): the gap is the step's measured noise.
            prev = self.basis.rows()[j - 1]
            d = _dot(w, prev, self.scratch)
            w.sub_(prev, alpha=d)
            self.noise = max(self.noise, abs(d - self.betas[j - 1]))
        bnorm = math.sqrt(_dot(w, w, self.scratch))
        self.norm_est = max(self.norm_est, abs(a) + bnorm + (self.betas[j - 1] if j else 0.0))
        self.alphas.append(a)
        if self.full:
            bnorm = self._orthogonalize(w, bnorm)
        elif bnorm > 0:
            beta = np.asarray(self.betas + [bnorm])
            noise = max(self.eps * self.norm_est, self.noise)
            new = omega_step(self.omega, self.omega_prev, np.asarray(self.alphas), beta, noise)
            if self.force or np.max(np.abs(new[:j]), initial=0.0) > self.orth_tol:
                self.force = not self.force
                bnorm = self._orthogonalize(w, bnorm)
                new[: j + 1] = self.eps  # orthogonal to working precision again
            self.omega, self.omega_prev = new, self.omega
        self.betas.append(bnorm)
        if bnorm <= 100 * self.eps * max(self.norm_est, 1e-300):
            self.broke, self.active = True, False
        elif not last:
            spare = self.basis.spare()
            self.pending = True if spare is not None else w.div_(bnorm)
            if spare is not None:
                torch.div(w, bnorm, out=spare)

    def snapshot(self, keep_basis: bool) -> LanczosRun:
        m = len(self.alphas)
        return LanczosRun(
            alpha=np.asarray(self.alphas, dtype=np.float64),
            beta=np.asarray(self.betas[: m - 1], dtype=np.float64),
            beta_last=float(self.betas[m - 1]) if m else 0.0,
            basis=self.basis.rows()[:m] if keep_basis else None,
            breakdown=self.broke,
            reorthogonalizations=self.reorths,
        )


def lanczos(
    matmat: Matmat,
    starts: Tensor,
    num_steps: int,
    *,
    keep_basis: bool = False,
    stop: Callable[[LanczosRun], bool] | None = None,
    progress: bool | None = None,
    desc: str = "lanczos",
    reorth: str = "partial",
    orth_tol: float | None = None,
) -> list[LanczosRun]:
    """Run ``b = len(starts)`` Lanczos processes of up to ``num_steps`` steps on H (given by ``matmat``,
    which maps a (k, dim) block to H applied to each row), all b products of a step in one call.

    ``stop(run)`` is asked after every step when b == 1; True ends the run (top-k converged). A run whose
    next beta is at rounding level has found an invariant subspace and stops on its own. ``reorth``:
    "partial" (Simon's rule, keeping |q_j^T q_k| below ``orth_tol``, default sqrt(eps)) or "full".

    Precision: the basis and the vectors stay in the operator's dtype (float32 for a float32 model: the
    products themselves carry float32 rounding); the scalars alpha_j = q_j^T H q_j and beta_j = ||w_j|| are
    summed pairwise (:func:`_dot`: relative error ~ eps log(dim), 3e-8 measured at 10^6 terms, against ~1e-5
    for a BLAS float32 dot) and kept in float64, as is everything computed from T_m.

    Cost per step besides the product: the three-term update in place (with q_(j-1)'s coefficient measured,
    one more dot product, which gives the step's noise), a few scalar recurrences, and only on the steps that
    need it one or two passes over the basis (:meth:`_Process._orthogonalize`); q_(j+1) is written straight
    into the basis's storage, which grows by doubling (:class:`_Basis`).
    """
    if reorth not in REORTH:
        raise ValueError(f"reorth must be one of {REORTH}, got {reorth!r}")
    b, dim = starts.shape
    num_steps = int(min(num_steps, dim))
    procs = [_Process(starts[i], min(num_steps, 16), reorth, orth_tol) for i in range(b)]
    bar = tqdm(total=num_steps, desc=desc, disable=None if progress is None else not progress, leave=False)
    try:
        for j in range(num_steps):
            live = [p for p in procs if p.active]
            if not live:
                break
            qs = [p.current(j) for p in live]
            W = matmat(torch.stack(qs) if len(qs) > 1 else qs[0].unsqueeze(0))
            for p, q, w in zip(live, qs, W):
                p.step(j, q, w, last=j + 1 == num_steps)
            bar.update(1)
            if stop is not None and b == 1 and procs[0].active and stop(procs[0].snapshot(True)):
                procs[0].active = False
    finally:
        bar.close()
    return [p.snapshot(keep_basis) for p in procs]
