"""Spectra of weight updates: singular values of every adapted layer's dW from its factors, and summaries.

Definitions (docs/concepts.md, "Factored update spectra"). A layer's update is dW = s B A (B: (n, R), A: (R, m);
a chain of k links
concatenates the links' factors, R = k r), with s = alpha / r (alpha / sqrt(r) for rsLoRA) already stored
in :attr:`LayerUpdate.scale`. Its singular values come without forming dW:

* low-rank factors: B = Q_B R_B, A^T = Q_A R_A, dW = Q_B (s R_B R_A^T) Q_A^T, so sigma(dW) = sigma(s R_B R_A^T),
  O((m + n) R^2) instead of O(n m min(n, m)) (:meth:`LayerUpdate.singular_values`, used here);
* column selectors (cla, rcla, c3la, rc3la, paca): A's rows are distinct rows of the identity, so A^T has
  orthonormal columns and sigma(dW) = sigma(s B), straight from B's columns;
* a dense update (fft): a dense SVD of the actual difference.

Per-layer summaries of the singular values sigma_1 >= ... >= sigma_p:

* spectral norm ||dW||_2 = sigma_1;  Frobenius norm ||dW||_F = sqrt(sum sigma_i^2);
* stable rank ||dW||_F^2 / ||dW||_2^2 (Rudelson & Vershynin 2007);
* effective rank exp(H(p)), p_i = sigma_i / sum_j sigma_j, H the Shannon entropy (Roy & Vetterli 2007);
* energy in the top k: sum_{i<=k} sigma_i^2 / sum_i sigma_i^2.

"Overall" treats the whole update as one block-diagonal operator diag(dW_1, ..., dW_L), whose singular
values are the union of the layers': spectral norm = max over layers, Frobenius norm = sqrt of the sum of
squares, and stable / effective rank and top-k energy of the pooled spectrum. Means of the per-layer
ranks are reported beside them.

Spectral density: the empirical spectral density (ESD) of dW^T dW, i.e. the squared singular values, as a
histogram on log10-spaced bins. A power-law exponent (the heavy-tailed self-regularization statistic of
Martin & Mahoney 2021) is fitted by the discrete-xmin maximum-likelihood method of Clauset, Shalizi &
Newman 2009 (alpha = 1 + n / sum ln(x_i / x_min), x_min minimising the Kolmogorov-Smirnov distance), and
only where the fitted tail holds at least 50 nonzero eigenvalues; otherwise it is reported as "not fitted"
(a rank-8 adapter has 8 eigenvalues, and a slope through 8 points means nothing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core.device import where
from ..core.errors import GenboundError
from ..methods.update import LayerUpdate, one_hot_selector

MIN_POWER_LAW_POINTS = 50


# --------------------------------------------------------------------------------------------------
# Validation and factored singular values


def _shape_error(u: LayerUpdate, what: str) -> GenboundError:
    return GenboundError(
        f"layer {u.name}: {what} contradicts the recorded shape {u.out_features}x{u.in_features}; "
        "the checkpoint is inconsistent, re-save it"
    )


def validate_update(u: LayerUpdate) -> None:
    """Shapes of the factors agree with (out_features, in_features) and every tensor is finite.

    Raises a one-line :class:`GenboundError` naming the layer (NaN / Inf: :class:`NonFiniteError`).
    """
    n, m = int(u.out_features), int(u.in_features)
    if n < 1 or m < 1:
        raise GenboundError(f"layer {u.name}: recorded shape {n}x{m} is empty")
    if not math.isfinite(float(u.scale)):
        raise GenboundError(f"layer {u.name}: scale {u.scale} is not finite")
    if u.dense is not None:
        if tuple(u.dense.shape) != (n, m):
            raise _shape_error(u, f"a dense update of shape {tuple(u.dense.shape)}")
        u.check_finite()
        return
    if u.B is None:
        raise GenboundError(f"layer {u.name}: the update has neither factors nor a dense matrix")
    if u.B.dim() != 2 or u.B.shape[0] != n:
        raise _shape_error(u, f"factor B of shape {tuple(u.B.shape)}")
    R = int(u.B.shape[1])
    if u.A is not None and (u.A.dim() != 2 or tuple(u.A.shape) != (R, m)):
        raise _shape_error(u, f"factor A of shape {tuple(u.A.shape)} with B of shape {tuple(u.B.shape)}")
    if u.columns is not None:
        cols = u.columns
        if cols.dim() != 1 or cols.numel() != R:
            raise _shape_error(u, f"{cols.numel()} selected columns for a factor B with {R} columns")
        if cols.is_floating_point() or (R and (int(cols.min()) < 0 or int(cols.max()) >= m)):
            raise _shape_error(u, "a column index outside 0..in_features-1")
    if u.A is None and u.columns is None:
        raise GenboundError(f"layer {u.name}: factor A and the column selector are both missing")
    u.check_finite()


def _selector(columns: Tensor, m: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return one_hot_selector(columns.to(device), m, dtype)


def _distinct(columns: Tensor) -> bool:
    return int(torch.unique(columns).numel()) == int(columns.numel())


def with_factors(u: LayerUpdate, device: torch.device | None = None, dtype: torch.dtype = torch.float64) -> LayerUpdate:
    """A validated copy on ``device`` in ``dtype`` whose A is explicit (built from ``columns`` if needed)."""
    validate_update(u)
    device = where(device, u)
    v = u.to(device, dtype)
    if v.factored and v.A is None:
        v.A = _selector(v.columns, v.in_features, dtype, v.B.device)
    return v


def singular_values(u: LayerUpdate, device: torch.device | None = None,
                    dtype: torch.dtype = torch.float64) -> Tensor:
    """Singular values of dW, descending, without forming dW (see the module docstring).

    Length R for a factored update (trailing ones may be 0), min(n, m) for a dense one.
    """
    validate_update(u)
    v = u.to(where(device, u), dtype)
    if not v.factored:
        return torch.linalg.svdvals(v.dense)
    if v.columns is not None and _distinct(v.columns):
        # A^T = [e_c1 .. e_cR] has orthonormal columns: sigma(s B A) = sigma(s B).
        return torch.linalg.svdvals(v.scale * v.B)
    if v.A is None:
        # Repeated columns: B A = B' A' with B' the sum of B's columns that select one input column and A'
        # the selector of the distinct ones (orthonormal rows), so sigma(s B A) = sigma(s B'), padded with
        # zeros to length R. No (R, m) selector is ever built.
        uniq, inverse = torch.unique(v.columns, return_inverse=True)
        merged = v.B.new_zeros(v.B.shape[0], uniq.numel()).index_add_(1, inverse.to(v.B.device), v.B)
        s = torch.linalg.svdvals(v.scale * merged)
        return torch.cat([s, s.new_zeros(v.B.shape[1] - s.numel())]) if s.numel() < v.B.shape[1] else s
    return v.singular_values()


def svd_factors(u: LayerUpdate, device: torch.device | None = None,
                dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD (U (n, R), S (R,), Vh (R, m)) of dW from the factors (dense SVD for a dense update)."""
    device = where(device, u)
    return with_factors(u, device, dtype).svd_core()


# --------------------------------------------------------------------------------------------------
# Summaries


@dataclass
class PowerLawFit:
    """A continuous power law p(x) ~ x^-alpha for x >= xmin fitted to an eigenvalue tail (Clauset et al.)."""

    alpha: float
    xmin: float
    n_tail: int
    ks_distance: float
    alpha_stderr: float  # (alpha - 1) / sqrt(n_tail), the MLE's asymptotic standard error


@dataclass
class SpectralDensity:
    """Histogram of the squared singular values (eigenvalues of dW^T dW) on log10-spaced bins."""

    n_eigenvalues: int  # nonzero ones (the zeros are counted apart)
    n_zero: int
    edges: list[float]  # bins + 1 edges, in eigenvalue units (not log10)
    counts: list[int]
    power_law: PowerLawFit | None
    power_law_status: str  # "fitted" or "not fitted: ..."


@dataclass
class LayerSpectrum:
    name: str
    out_features: int
    in_features: int
    rank_bound: int
    numerical_rank: int
    singular_values: list[float]
    spectral_norm: float
    frobenius_norm: float
    stable_rank: float | None  # None for a zero update (0 / 0)
    effective_rank: float | None
    energy_top_k: float | None
    top_k: int
    density: SpectralDensity


@dataclass
class OverallSpectrum:
    """The update as one block-diagonal operator, plus means of the per-layer ranks."""

    layers: int
    spectral_norm: float
    frobenius_norm: float
    stable_rank: float | None
    effective_rank: float | None
    energy_top_k: float | None
    mean_stable_rank: float | None
    mean_effective_rank: float | None
    density: SpectralDensity


@dataclass
class SpectraReport:
    layers: list[LayerSpectrum]
    overall: OverallSpectrum
    top_k: int
    bins: int
    device: str
    dtype: str
    notes: list[str] = field(default_factory=list)


def _zero_tol(s: Tensor, shape: tuple[int, int], eps: float | None = None) -> float:
    """Singular values below sigma_1 max(n, m) eps are rounding, with eps that of the stored tensors (a float32
    update's smallest singular values are float32 noise even when computed in float64)."""
    if s.numel() == 0:
        return 0.0
    return float(s.max()) * max(shape) * (float(torch.finfo(s.dtype).eps) if eps is None else eps)


def _stored_eps(u: LayerUpdate) -> float | None:
    t = u.dense if u.dense is not None else u.B
    return float(torch.finfo(t.dtype).eps) if t is not None and t.is_floating_point() else None


def stable_rank(s: Tensor) -> float | None:
    """||dW||_F^2 / ||dW||_2^2 from singular values; None when dW = 0."""
    top = float(s.max()) if s.numel() else 0.0
    return None if top == 0.0 else float((s**2).sum()) / top**2


def effective_rank(s: Tensor) -> float | None:
    """exp(-sum p_i ln p_i), p_i = sigma_i / sum sigma (Roy & Vetterli 2007); None when dW = 0."""
    total = float(s.sum()) if s.numel() else 0.0
    if total == 0.0:
        return None
    p = s[s > 0] / total
    return float(torch.exp(-(p * torch.log(p)).sum()))


def energy_top_k(s: Tensor, k: int) -> float | None:
    """sum_{i<=k} sigma_i^2 / sum_i sigma_i^2 (s descending); None when dW = 0."""
    sq = s**2
    total = float(sq.sum()) if s.numel() else 0.0
    return None if total == 0.0 else float(sq[:k].sum()) / total


def fit_power_law(eigs: Tensor, min_points: int = MIN_POWER_LAW_POINTS,
                  max_candidates: int = 256) -> tuple[PowerLawFit | None, str]:
    """Maximum-likelihood power-law fit to the tail of positive eigenvalues (Clauset, Shalizi & Newman 2009).

    For each candidate xmin (an observed eigenvalue leaving at least ``min_points`` in the tail; at most
    ``max_candidates`` of them, evenly spaced in rank, so a 4096-eigenvalue spectrum costs milliseconds),
    alpha = 1 + n / sum ln(x_i / xmin); the xmin with the smallest Kolmogorov-Smirnov distance between the
    tail's empirical CDF and the fitted CDF 1 - (x / xmin)^(1 - alpha) wins. Fewer than ``min_points``
    eigenvalues: (None, "not fitted: ...").
    """
    x = torch.sort(eigs[eigs > 0].to(torch.float64).cpu()).values
    n = int(x.numel())
    if n < min_points:
        return None, f"not fitted: {n} nonzero eigenvalues (a fit needs at least {min_points})"
    best: PowerLawFit | None = None
    logx = torch.log(x)
    last = n - min_points
    cand = sorted({round(j * last / max(1, max_candidates - 1)) for j in range(max_candidates)} if last > 0 else {0})
    for i in cand:
        tail = x[i:]
        nt = int(tail.numel())
        denom = float((logx[i:] - logx[i]).sum())
        if denom <= 0.0:
            continue  # all equal: no tail to fit
        alpha = 1.0 + nt / denom
        fitted = 1.0 - (tail / tail[0]) ** (1.0 - alpha)
        emp_hi = torch.arange(1, nt + 1, dtype=torch.float64) / nt
        emp_lo = torch.arange(0, nt, dtype=torch.float64) / nt
        ks = float(torch.maximum((emp_hi - fitted).abs(), (emp_lo - fitted).abs()).max())
        if best is None or ks < best.ks_distance:
            best = PowerLawFit(alpha, float(tail[0]), nt, ks, (alpha - 1.0) / math.sqrt(nt))
    if best is None:
        return None, "not fitted: the eigenvalues are all equal"
    return best, "fitted"


def spectral_density(s: Tensor, shape: tuple[int, int], bins: int = 20,
                     min_points: int = MIN_POWER_LAW_POINTS, eps: float | None = None) -> SpectralDensity:
    """Histogram of sigma_i^2 on ``bins`` log10-spaced bins, and a power-law fit where it is meaningful."""
    s = s.to(torch.float64).cpu()
    nz = s[s > _zero_tol(s, shape, eps)] if s.numel() else s
    eig = nz**2
    n_zero = int(s.numel() - nz.numel())
    if eig.numel() == 0:
        return SpectralDensity(0, n_zero, [], [], None, "not fitted: the update is zero")
    lo, hi = math.log10(float(eig.min())), math.log10(float(eig.max()))
    if hi - lo < 1e-12:
        edges = torch.tensor([10**lo * (1 - 1e-9), 10**hi * (1 + 1e-9)], dtype=torch.float64)
    else:
        edges = torch.logspace(lo, hi, bins + 1, dtype=torch.float64)
    idx = torch.bucketize(eig, edges, right=True) - 1
    idx = idx.clamp(0, edges.numel() - 2)  # the maximum lands in the last bin
    counts = torch.bincount(idx, minlength=edges.numel() - 1)
    fit, status = fit_power_law(eig, min_points)
    return SpectralDensity(int(eig.numel()), n_zero, edges.tolist(), counts.tolist(), fit, status)


def summarize_singular_values(name: str, s: Tensor, shape: tuple[int, int], rank_bound: int,
                              top_k: int = 10, bins: int = 20, eps: float | None = None) -> LayerSpectrum:
    s = torch.sort(s.to(torch.float64).cpu(), descending=True).values
    tol = _zero_tol(s, shape, eps)
    return LayerSpectrum(
        name=name,
        out_features=int(shape[0]),
        in_features=int(shape[1]),
        rank_bound=int(rank_bound),
        numerical_rank=int((s > tol).sum()) if s.numel() else 0,
        singular_values=s.tolist(),
        spectral_norm=float(s[0]) if s.numel() else 0.0,
        frobenius_norm=float(torch.sqrt((s**2).sum())),
        stable_rank=stable_rank(s),
        effective_rank=effective_rank(s),
        energy_top_k=energy_top_k(s, top_k),
        top_k=int(top_k),
        density=spectral_density(s, shape, bins, eps=eps),
    )


def layer_spectrum(u: LayerUpdate, top_k: int = 10, bins: int = 20, device: torch.device | None = None,
                   dtype: torch.dtype = torch.float64) -> LayerSpectrum:
    """Singular values of one layer's dW (from its factors) and their summaries."""
    device = where(device, u)
    s = singular_values(u, device, dtype)
    return summarize_singular_values(u.name, s, u.shape, u.rank_bound, top_k, bins, _stored_eps(u))


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def spectra(updates: Mapping[str, LayerUpdate], top_k: int = 10, bins: int = 20,
            device: torch.device | None = None, dtype: torch.dtype = torch.float64,
            progress: bool | None = None) -> SpectraReport:
    """Per-layer and overall spectra of a checkpoint's updates (``{name: LayerUpdate}``)."""
    from tqdm.auto import tqdm

    if top_k < 1:
        raise GenboundError(f"--top-k must be at least 1, got {top_k}")
    if not updates:
        raise GenboundError("the checkpoint has no adapted layers: nothing to take the spectrum of")
    device = where(device, list(updates.values()))
    layers: list[LayerSpectrum] = []
    pooled: list[Tensor] = []
    eps_all = 0.0
    bar = tqdm(updates.items(), desc="spectra", unit="layer", disable=None if progress is None else not progress)
    for name, u in bar:
        if u.name != name:
            u = u.renamed(name)
        s = singular_values(u, device, dtype)
        layers.append(summarize_singular_values(name, s, u.shape, u.rank_bound, top_k, bins, _stored_eps(u)))
        eps_all = max(eps_all, _stored_eps(u) or 0.0)
        pooled.append(s.to(torch.float64).cpu())
    allsv = torch.sort(torch.cat(pooled), descending=True).values
    big = (max(lay.out_features for lay in layers), max(lay.in_features for lay in layers))
    overall = OverallSpectrum(
        layers=len(layers),
        spectral_norm=max(lay.spectral_norm for lay in layers),
        frobenius_norm=float(torch.sqrt((allsv**2).sum())),
        stable_rank=stable_rank(allsv),
        effective_rank=effective_rank(allsv),
        energy_top_k=energy_top_k(allsv, top_k),
        mean_stable_rank=_mean([lay.stable_rank for lay in layers]),
        mean_effective_rank=_mean([lay.effective_rank for lay in layers]),
        density=spectral_density(allsv, big, bins, eps=eps_all or None),
    )
    notes = []
    if overall.density.power_law is not None:
        notes.append("the overall power-law fit pools eigenvalues of layers with different scales; "
                     "read it as a summary, not a per-layer statistic")
    return SpectraReport(layers, overall, int(top_k), int(bins), str(torch.device(device)), str(dtype).replace(
        "torch.", ""), notes)
