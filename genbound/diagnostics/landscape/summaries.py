"""Numbers that summarize a loss-landscape slice, for comparing methods.

All quantities are in *direction units*: a point of the slice is theta* + t_1 d_1 + t_2 d_2, so they are
comparable across models only when the directions are normalized the same way (filter normalization makes
a unit step move every filter by its own norm, Li et al. 2018).

Curvature along direction i at the centre, from the grid:
    finite difference  (L(+h e_i) - 2 L(0) + L(-h e_i)) / h^2 with h the grid step;
    quadratic fit      2 c_2 of the least-squares fit L(t) ~ c_0 + c_1 t + c_2 t^2 to the 2 m + 1 grid
                       points |t| <= m h on the axis through the centre (m = ``fit_steps``);
    and for a plane, the 2 x 2 Hessian of the least-squares fit L ~ c + g.t + t'Ht/2 on the (2 m + 1)^2
    points around the centre, with its eigenvalues.
epsilon-sharpness (Keskar et al. 2017, restricted to the slice): max L(t) - L(0) over grid points with
    ||t||_2 <= epsilon, and Keskar's relative form 100 (max L - L(0)) / (1 + L(0)).
Basin: the grid points with L(t) <= threshold that are connected to the centre through such points
    (4-neighbour connectivity); reported as a fraction of the grid and as an area (points x cell area,
    h_1 h_2 in a plane, h on a line), with a flag when it reaches the grid's edge (then it is a lower bound).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


@dataclass
class Curvature:
    direction: int
    finite_difference: float | None
    quadratic_fit: float | None
    fit_points: int


@dataclass
class Sharpness:
    radius: float
    max_rise: float  # max L - L(0) within the radius
    relative: float  # Keskar et al.: 100 max_rise / (1 + L(0))
    at: list[float]  # the point where the maximum is reached


@dataclass
class Basin:
    threshold: float
    points: int
    fraction: float  # of the grid
    area: float  # in direction units (length on a line)
    touches_edge: bool


@dataclass
class Summary:
    centre_loss: float
    centre_accuracy: float
    curvature: list[Curvature]
    hessian: list[list[float]] | None  # 2 x 2 quadratic-fit Hessian (plane only)
    hessian_eigenvalues: list[float] | None
    sharpness: list[Sharpness]
    basin: Basin
    notes: list[str] = field(default_factory=list)


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _axis_line(loss: np.ndarray, axis: int, c: int) -> np.ndarray:
    if loss.ndim == 1:
        return loss
    return loss[:, c] if axis == 0 else loss[c, :]


def curvature(axes: Sequence[Tensor], loss: Tensor, fit_steps: int = 2) -> list[Curvature]:
    """Curvature at the centre along each direction (module docstring)."""
    L = loss.double().cpu().numpy()
    out = []
    for i, ax in enumerate(axes):
        a = ax.double().cpu().numpy()
        G = len(a)
        c = (G - 1) // 2
        line = _axis_line(L, i, c)
        if G < 3:
            out.append(Curvature(i, None, None, 0))
            continue
        h = a[c + 1] - a[c]
        fd = (line[c + 1] - 2 * line[c] + line[c - 1]) / h**2
        m = max(1, min(fit_steps, c))
        sl = slice(c - m, c + m + 1)
        x, y = a[sl], line[sl]
        ok = np.isfinite(y)
        quad = None
        if ok.sum() >= 3:
            coeffs = np.polyfit(x[ok], y[ok], 2)
            quad = _finite(2 * coeffs[0])
        out.append(Curvature(i, _finite(fd), quad, int(ok.sum())))
    return out


def hessian_fit(axes: Sequence[Tensor], loss: Tensor,
                fit_steps: int = 2) -> tuple[list[list[float]], list[float]] | None:
    """2 x 2 Hessian of the quadratic least-squares fit around the centre of a plane."""
    if len(axes) != 2 or len(axes[0]) < 3 or len(axes[1]) < 3:
        return None
    a, b = (ax.double().cpu().numpy() for ax in axes)
    L = loss.double().cpu().numpy()
    ca, cb = (len(a) - 1) // 2, (len(b) - 1) // 2
    m = max(1, min(fit_steps, ca, cb))
    A, B = np.meshgrid(a[ca - m:ca + m + 1], b[cb - m:cb + m + 1], indexing="ij")
    Y = L[ca - m:ca + m + 1, cb - m:cb + m + 1]
    x, y, z = A.ravel(), B.ravel(), Y.ravel()
    ok = np.isfinite(z)
    if ok.sum() < 6:
        return None
    X = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], 1)[ok]
    coef, *_ = np.linalg.lstsq(X, z[ok], rcond=None)
    H = np.array([[2 * coef[3], coef[4]], [coef[4], 2 * coef[5]]])
    return H.tolist(), [float(v) for v in np.linalg.eigvalsh(H)[::-1]]


def sharpness(axes: Sequence[Tensor], loss: Tensor, radius: float) -> Sharpness:
    """epsilon-sharpness within ``radius`` (module docstring)."""
    grids = torch.meshgrid(*[ax.double().cpu() for ax in axes], indexing="ij")
    pts = torch.stack([g.reshape(-1) for g in grids], 1)
    L = loss.double().cpu().reshape(-1)
    c = tuple((len(ax) - 1) // 2 for ax in axes)
    l0 = float(loss.double().cpu()[c])
    inside = (pts.norm(dim=1) <= radius * (1 + 1e-12)) & torch.isfinite(L)
    vals = torch.where(inside, L, torch.full_like(L, -math.inf))
    j = int(torch.argmax(vals))
    rise = float(vals[j]) - l0
    return Sharpness(float(radius), rise, 100.0 * rise / (1.0 + l0), pts[j].tolist())


def basin(axes: Sequence[Tensor], loss: Tensor, threshold: float) -> Basin:
    """The basin below ``threshold`` connected to the centre (module docstring)."""
    from scipy import ndimage

    L = loss.double().cpu().numpy()
    mask = np.isfinite(L) & (L <= threshold)
    c = tuple((len(ax) - 1) // 2 for ax in axes)
    steps = [float(ax[1] - ax[0]) if len(ax) > 1 else 0.0 for ax in axes]
    cell = float(np.prod(steps)) if all(s > 0 for s in steps) else 0.0
    if not mask[c]:
        return Basin(float(threshold), 0, 0.0, 0.0, False)
    labels, _ = ndimage.label(mask)  # default structure: 4-connectivity in 2-D, neighbours on a line
    comp = labels == labels[c]
    count = int(comp.sum())
    edge = np.zeros_like(comp)
    if comp.ndim == 1:
        edge[[0, -1]] = True
    else:
        edge[[0, -1], :] = True
        edge[:, [0, -1]] = True
    return Basin(float(threshold), count, count / comp.size, count * cell, bool((comp & edge).any()))


def summarize(axes: Sequence[Tensor], loss: Tensor, accuracy: Tensor, radii: Sequence[float] | None = None,
              basin_threshold: float | None = None, basin_rise: float = 0.1, fit_steps: int = 2) -> Summary:
    """All summaries of a slice. Defaults: radii span/4, span/2 and span; basin threshold L(0) + basin_rise."""
    c = tuple((len(ax) - 1) // 2 for ax in axes)
    l0 = float(loss.double()[c])
    span = max(float(ax.abs().max()) for ax in axes)
    notes = []
    if radii is None:
        radii = [span / 4, span / 2, span] if span > 0 else [0.0]
    threshold = basin_threshold if basin_threshold is not None else l0 + basin_rise
    finite = torch.isfinite(loss)
    if not bool(finite.all()):
        notes.append(f"{int((~finite).sum())} grid points have a non-finite loss; summaries skip them")
    if bool(finite.all()) and float(loss.min()) < l0 - 1e-12:
        notes.append("the centre is not the lowest point of the slice")
    fit = hessian_fit(axes, loss, fit_steps)
    return Summary(
        centre_loss=l0, centre_accuracy=float(accuracy.double()[c]),
        curvature=curvature(axes, loss, fit_steps),
        hessian=fit[0] if fit else None, hessian_eigenvalues=fit[1] if fit else None,
        sharpness=[sharpness(axes, loss, r) for r in radii],
        basin=basin(axes, loss, threshold), notes=notes,
    )
