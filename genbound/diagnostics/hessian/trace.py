"""Stochastic trace estimation: Hutchinson, Hutch++ and Hutch++ with a Krylov sketch.

Hutchinson (M. F. Hutchinson, Comm. Statist. Simul. Comput. 19(2), 1990): for Rademacher z (entries +-1),
E[z^T H z] = tr(H), so tr(H) ~ (1/n) sum_i z_i^T H z_i; Var[z^T H z] = 2 (||H||_F^2 - sum_i H_ii^2).

Hutch++ (R. A. Meyer, C. Musco, C. Musco, D. P. Woodruff, "Hutch++: Optimal stochastic trace estimation",
SOSA 2021, Algorithm 1): with Q an orthonormal basis of H S for a random sketch S,

    tr(H) = tr(Q^T H Q) + tr((I - Q Q^T) H (I - Q Q^T)),

the first term computed exactly and the second by Hutchinson on projected probes (I - Q Q^T) z. Any basis Q
drawn independently of the probes keeps the estimator unbiased; the Krylov basis of a Lanczos run is such a
basis (for it Q^T H Q = T_m, so the exact term is sum_j alpha_j at no extra cost), and it captures the
dominant eigenvectors that make up most of a network Hessian's Frobenius norm better than one product H S
(cf. R. A. Meyer et al., and T. Chen and E. Hallman, "Krylov-aware stochastic trace estimation", SIMAX
2023).

Confidence interval (all methods): the exact term has no error; for the n Hutchinson samples x_i of the
remaining term, mean +- t_(0.975, n-1) s / sqrt(n) with s the sample standard deviation (Student t,
which treats the mean as approximately normal by the central limit theorem: an approximate 95% interval,
conditional on Q). With ``rtol`` the probing stops once the half-width is at most rtol |estimate| (after
``min_probes``), which makes the interval slightly optimistic; pass ``probes`` for a fixed count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import Tensor
from tqdm.auto import tqdm

from ...core.device import where

Matmat = Callable[[Tensor], Tensor]


@dataclass
class TraceResult:
    """An estimate of tr(H) with an approximate confidence interval (see the module docstring)."""

    estimate: float
    ci_low: float
    ci_high: float
    confidence: float
    std_error: float  # s / sqrt(n) of the stochastic part
    method: str  # "hutchinson", "hutch++" or "hutch++ (krylov sketch)"
    exact_part: float  # tr(Q^T H Q), computed exactly (0 for Hutchinson)
    sketch_dim: int  # columns of Q (0 for Hutchinson)
    n_probes: int  # Hutchinson probes of the remaining term
    n_hvp: int  # Hessian-vector products spent on the trace itself
    seed: int
    wall_time: float


def rademacher(k: int, dim: int, generator: torch.Generator, dtype: torch.dtype, device) -> Tensor:
    """k Rademacher vectors (entries +-1), drawn on the CPU so a seed gives the same probes on any device."""
    z = torch.randint(0, 2, (k, dim), generator=generator, dtype=torch.int8)
    return (2 * z - 1).to(device=device, dtype=dtype)


def _project_out(Z: Tensor, Q: Tensor | None) -> Tensor:
    """(I - Q^T Q) applied to the rows of Z, in place: one classical Gram-Schmidt pass. A random probe has
    no special alignment with Q (||Q z||^2 ~ m against ||z||^2 = dim), so there is no cancellation for a
    second pass to repair; Q itself is orthonormal to working precision (Lanczos re-orthogonalizes)."""
    if Q is None or Q.shape[0] == 0:
        return Z
    return Z.addmm_(Z @ Q.T, Q, alpha=-1.0)


def _rowdots(X: Tensor, Y: Tensor) -> list[float]:
    """x_i^T y_i per row, by torch's pairwise summation (float64-grade accuracy without float64 copies)."""
    return [float(v) for v in (X * Y).sum(dim=1).double().cpu()]


def hutchinson(
    matmat: Matmat,
    dim: int,
    *,
    seed: int = 0,
    probes: int | None = None,
    rtol: float = 0.05,
    min_probes: int = 5,
    max_probes: int = 100,
    basis: Tensor | None = None,
    exact_part: float = 0.0,
    method: str = "hutchinson",
    extra_hvp: int = 0,
    confidence: float = 0.95,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
    progress: bool | None = None,
) -> TraceResult:
    """``exact_part + (1/n) sum z_i^T P H P z_i`` with P = I - Q Q^T (Q = ``basis`` rows; P = I without).

    ``probes`` fixes n; otherwise probing stops when the CI half-width is at most ``rtol |estimate|``
    (after ``min_probes``, at most ``max_probes``).
    """
    t0 = time.perf_counter()
    device = where(device, basis)  # the probes live where the basis is (the CPU for a bare matvec)
    gen = torch.Generator().manual_seed(int(seed))
    n_target = int(probes) if probes else int(max_probes)
    if n_target < 2:
        raise ValueError("a confidence interval needs at least 2 probes")
    samples: list[float] = []
    bar = tqdm(total=n_target, desc="trace", disable=None if progress is None else not progress, leave=False)
    try:
        while len(samples) < n_target:
            k = min(batch, n_target - len(samples))
            Z = _project_out(rademacher(k, dim, gen, dtype, device), basis)
            HZ = matmat(Z)
            samples.extend(_rowdots(HZ, Z))
            bar.update(k)
            if probes is None and len(samples) >= min_probes:
                est, half = _interval(samples, exact_part, confidence)
                if half <= rtol * abs(est):
                    break
    finally:
        bar.close()
    est, half = _interval(samples, exact_part, confidence)
    n = len(samples)
    se = float(np.std(samples, ddof=1) / math.sqrt(n))
    return TraceResult(
        estimate=est,
        ci_low=est - half,
        ci_high=est + half,
        confidence=confidence,
        std_error=se,
        method=method,
        exact_part=float(exact_part),
        sketch_dim=0 if basis is None else int(basis.shape[0]),
        n_probes=n,
        n_hvp=n + extra_hvp,
        seed=int(seed),
        wall_time=time.perf_counter() - t0,
    )


def _interval(samples: list[float], exact_part: float, confidence: float) -> tuple[float, float]:
    x = np.asarray(samples, dtype=np.float64)
    n = len(x)
    est = float(exact_part + x.mean())
    q = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1))
    return est, q * float(x.std(ddof=1)) / math.sqrt(n)


def hutchpp(
    matmat: Matmat,
    dim: int,
    *,
    seed: int = 0,
    sketch: int = 20,
    basis: Tensor | None = None,
    exact_part: float | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
    batch: int = 1,
    progress: bool | None = None,
    **kw,
) -> TraceResult:
    """Hutch++: exact trace on an orthonormal basis Q, Hutchinson on its complement.

    Without ``basis``, Q = orth(H S) for ``sketch`` Rademacher columns S (Meyer et al., Algorithm 1;
    2 x sketch products). With ``basis`` (orthonormal rows independent of this seed, e.g. a Lanczos basis)
    and its ``exact_part`` tr(Q^T H Q), no product is spent on the sketch.
    """
    t0 = time.perf_counter()
    device = where(device, basis)
    extra = 0
    method = "hutch++ (krylov sketch)"
    if basis is None:
        method = "hutch++"
        gen = torch.Generator().manual_seed(int(seed) + 7919)  # sketch drawn apart from the probes
        S = rademacher(int(sketch), dim, gen, dtype, device)
        Y = torch.cat([matmat(S[i : i + batch]) for i in range(0, len(S), batch)])
        basis = torch.linalg.qr(Y.T.double()).Q.T.to(dtype).contiguous()
        HQ = torch.cat([matmat(basis[i : i + batch]) for i in range(0, len(basis), batch)])
        exact_part = float(sum(_rowdots(HQ, basis)))
        extra = 2 * int(sketch)
    elif exact_part is None:
        HQ = torch.cat([matmat(basis[i : i + batch]) for i in range(0, len(basis), batch)])
        exact_part = float(sum(_rowdots(HQ, basis)))
        extra = int(basis.shape[0])
    res = hutchinson(
        matmat, dim, seed=seed, basis=basis, exact_part=exact_part, method=method, extra_hvp=extra,
        dtype=dtype, device=device, batch=batch, progress=progress, **kw,
    )
    res.wall_time = time.perf_counter() - t0
    return res
