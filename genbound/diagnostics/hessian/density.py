"""Spectral density by stochastic Lanczos quadrature (SLQ).

The spectral density of H (dim d) is phi(t) = (1/d) sum_i delta(t - lambda_i). For a Rademacher z,
z^T f(H) z = d * q^T f(H) q with q = z / sqrt(d), and m steps of Lanczos from q give the m-point Gauss
quadrature q^T f(H) q ~ sum_k tau_k f(theta_k), with theta_k the eigenvalues of T_m and tau_k the squared
first components of its eigenvectors (G. H. Golub and G. Meurant, Matrices, Moments and Quadrature, 2010;
S. Ubaru, J. Chen, Y. Saad, SIMAX 38(4), 2017; B. Ghorbani, S. Krishnan, Y. Xiao, ICML 2019, for network
Hessians). Averaged over n_v starts, the nodes theta and weights d * tau / n_v form a discrete measure of
total mass exactly d (sum_k tau_k = 1 for every run) whose moments estimate tr(H^p) for p <= 2m - 1.

The smoothed curve convolves that measure with a Gaussian of width sigma:
    rho(t) = sum_k w_k exp(-(t - theta_k)^2 / (2 sigma^2)) / (sigma sqrt(2 pi)),
which integrates to d over the real line (the grid extends 6 sigma beyond the extreme nodes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .lanczos import LanczosRun


@dataclass
class DensityResult:
    """SLQ spectral density: quadrature ``nodes`` and ``weights`` (sum = dim) and a smoothed ``curve``."""

    nodes: list[float]
    weights: list[float]
    grid: list[float]
    curve: list[float]  # eigenvalues per unit of t: integrates to dim
    sigma: float
    n_probes: int
    n_steps: list[int]  # Lanczos steps of each run
    n_hvp: int
    seed: int
    wall_time: float

    @property
    def dim(self) -> float:
        return float(np.sum(self.weights))

    def moment(self, p: int) -> float:
        """sum_k w_k theta_k^p: an estimate of tr(H^p) (exact in expectation for p <= 2m - 1)."""
        return float(np.sum(np.asarray(self.weights) * np.asarray(self.nodes) ** p))


def slq_measure(runs: Sequence[LanczosRun], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-quadrature nodes and weights of each run, pooled with weights scaled to total ``dim``."""
    nodes, weights = [], []
    for run in runs:
        theta, S = run.ritz()
        nodes.append(theta)
        weights.append(S[0] ** 2 * (dim / len(runs)))
    return np.concatenate(nodes), np.concatenate(weights)


def smooth_density(
    nodes: np.ndarray, weights: np.ndarray, sigma: float | None = None, points: int = 1024, sigma_rel: float = 0.01
) -> tuple[np.ndarray, np.ndarray, float]:
    """The Gaussian-smoothed density on a uniform grid; sigma defaults to ``sigma_rel`` x the node range."""
    lo, hi = float(nodes.min()), float(nodes.max())
    span = hi - lo
    if sigma is None:
        sigma = sigma_rel * span if span > 0 else max(abs(hi), 1.0) * sigma_rel
    sigma = float(sigma)
    grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, points)
    curve = np.zeros_like(grid)
    norm = 1.0 / (sigma * np.sqrt(2 * np.pi))
    # Chunked over nodes so memory stays at points x chunk.
    for start in range(0, len(nodes), 256):
        t = nodes[start : start + 256]
        w = weights[start : start + 256]
        curve += (w[None, :] * np.exp(-0.5 * ((grid[:, None] - t[None, :]) / sigma) ** 2)).sum(axis=1) * norm
    return grid, curve, sigma
