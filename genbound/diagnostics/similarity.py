"""Similarity of two weight updates: principal angles between their top-k singular subspaces, per layer.

For two checkpoints of the same backbone, layer by layer, take the top-k left singular vectors
U_1, U_2 (n x k, orthonormal) of dW_1 and dW_2 (from the factors, genbound.diagnostics.spectra.svd_factors), and
likewise the right ones V_1, V_2. The principal angles theta_1 <= ... <= theta_k between span(U_1) and
span(U_2) (Bjorck & Golub 1973) have cos theta_i = sigma_i(U_1^T U_2); they are computed with the
sine / cosine split of Knyazev & Argentati (2002) so that small angles are accurate (a subspace against
itself gives zeros to rounding, not arccos(1 - 1e-16) ~ 1e-8):
theta from arcsin of sigma(U_2 - U_1 U_1^T U_2) where cos^2 theta >= 1/2, from arccos otherwise.

Summary: the subspace overlap (the normalised subspace similarity of Hu et al. 2021, "LoRA", section 7.2)

    phi(U_1, U_2) = ||U_1^T U_2||_F^2 / min(k_1, k_2) = mean_i cos^2 theta_i   in [0, 1],

1 for identical subspaces and about k / n for random ones. It is reported for the left (output) and right
(input) spaces; the headline per layer is their mean. Only directions with a nonzero singular value take
part (k_used = min(k, numerical rank)); a layer whose update is zero in either checkpoint has no subspace
and is reported with ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core.device import where
from ..core.errors import GenboundError
from ..methods.update import LayerUpdate
from .spectra import svd_factors


def principal_angles(U1: Tensor, U2: Tensor) -> Tensor:
    """Principal angles (radians, ascending) between span(U1) and span(U2); U1, U2 have orthonormal columns."""
    if U1.shape[0] != U2.shape[0]:
        raise GenboundError(f"subspaces live in different spaces ({U1.shape[0]} vs {U2.shape[0]} rows)")
    if U1.shape[1] < U2.shape[1]:
        U1, U2 = U2, U1
    q = U2.shape[1]
    if q == 0:
        return U1.new_zeros(0)
    cos = torch.linalg.svdvals(U1.T @ U2).clamp(max=1.0)[:q]  # descending -> angles ascending
    sin = torch.linalg.svdvals(U2 - U1 @ (U1.T @ U2)).clamp(max=1.0)
    sin = torch.sort(sin).values[:q]  # ascending, paired with cos descending
    from_cos = torch.arccos(cos)
    from_sin = torch.arcsin(sin)
    return torch.where(cos**2 >= 0.5, from_sin, from_cos)


def subspace_overlap(U1: Tensor, U2: Tensor) -> float:
    """||U1^T U2||_F^2 / min(k1, k2) (Hu et al. 2021): 1 for identical subspaces, 0 for orthogonal ones."""
    k = min(U1.shape[1], U2.shape[1])
    if k == 0:
        raise GenboundError("an empty subspace has no overlap")
    return float((U1.T @ U2).pow(2).sum()) / k


@dataclass
class LayerSimilarity:
    name: str
    k: int  # directions compared: min(k asked, numerical rank of each update)
    left_angles: list[float] | None  # radians, ascending
    right_angles: list[float] | None
    left_overlap: float | None
    right_overlap: float | None
    overlap: float | None  # mean of left and right
    note: str = ""


@dataclass
class SimilarityReport:
    layers: list[LayerSimilarity]
    k: int
    mean_overlap: float | None
    mean_left_overlap: float | None
    mean_right_overlap: float | None
    only_in_first: list[str] = field(default_factory=list)
    only_in_second: list[str] = field(default_factory=list)


def _top(u: LayerUpdate, k: int, device, dtype) -> tuple[Tensor, Tensor]:
    U, S, Vh = svd_factors(u, device, dtype)
    tol = (float(S.max()) * max(u.shape) * float(torch.finfo(S.dtype).eps)) if S.numel() else 0.0
    rank = int((S > tol).sum()) if S.numel() else 0
    kk = min(k, rank)
    return U[:, :kk], Vh[:kk].T


def layer_similarity(a: LayerUpdate, b: LayerUpdate, k: int = 8, device: torch.device | None = None,
                     dtype: torch.dtype = torch.float64) -> LayerSimilarity:
    """Principal angles and overlap between the top-k singular subspaces of two updates of one layer."""
    if a.shape != b.shape:
        raise GenboundError(
            f"layer {a.name}: the two updates have shapes {a.shape} and {b.shape}; compare checkpoints of "
            "the same backbone"
        )
    if k < 1:
        raise GenboundError(f"k must be at least 1, got {k}")
    device = where(device, a, b)
    Ua, Va = _top(a, k, device, dtype)
    Ub, Vb = _top(b, k, device, dtype)
    kk = min(Ua.shape[1], Ub.shape[1])
    if kk == 0:
        return LayerSimilarity(a.name, 0, None, None, None, None, None, "an update is zero: no subspace")
    Ua, Va, Ub, Vb = Ua[:, :kk], Va[:, :kk], Ub[:, :kk], Vb[:, :kk]
    lo, ro = subspace_overlap(Ua, Ub), subspace_overlap(Va, Vb)
    return LayerSimilarity(
        a.name, kk, principal_angles(Ua, Ub).cpu().tolist(), principal_angles(Va, Vb).cpu().tolist(),
        lo, ro, (lo + ro) / 2, "" if kk == k else f"only {kk} nonzero directions",
    )


def _mean(xs) -> float | None:
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(vals) / len(vals) if vals else None


def compare_updates(first: Mapping[str, LayerUpdate], second: Mapping[str, LayerUpdate], k: int = 8,
                    device: torch.device | None = None, dtype: torch.dtype = torch.float64) -> SimilarityReport:
    """Per-layer similarity of two checkpoints' updates (layers matched by name)."""
    common = [n for n in first if n in second]
    if not common:
        raise GenboundError("the two checkpoints adapt no layer in common; compare checkpoints of one backbone")
    layers = []
    for n in common:
        a, b = first[n], second[n]
        if a.name != n:
            a = a.renamed(n)
        layers.append(layer_similarity(a, b, k, device, dtype))
    return SimilarityReport(
        layers, int(k), _mean(lay.overlap for lay in layers), _mean(lay.left_overlap for lay in layers),
        _mean(lay.right_overlap for lay in layers),
        [n for n in first if n not in second], [n for n in second if n not in first],
    )
