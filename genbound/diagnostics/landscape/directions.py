"""Directions for loss-landscape slices, in an explicit coordinate space.

A *coordinate space* is a dict ``name -> tensor``: the parameters of a model that a slice moves (names as in
``model.named_parameters()``), holding the centre point theta*. A *direction* is a dict of tensors of the same
names and shapes; a point of a slice is theta* + sum_i t_i d_i.

Three spaces are built from a checkpoint (:func:`checkpoint_space`):

``dw``       the merged weights W0 + dW of the adapted layers and the head (the trained tensors of the
             merged model; for fft every parameter), the default;
``factors``  the trained parameters of the unmerged model: the adapter factors (current link of a chain)
             and the head;
``all``      every parameter of the merged model.

Directions
----------
Random (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets", section 4): d ~ N(0, I) drawn from
a seeded CPU generator (so the same seed gives the same direction on every device), then normalized:

    filter   every filter (a row of a Linear weight, an output channel of a conv: index 0 of a tensor of
             dimension >= 2) is rescaled to the norm of the same filter of theta*: d_f <- d_f ||theta_f|| / ||d_f||;
    layer    every tensor is rescaled to the norm of the same tensor of theta*;
    none     raw Gaussian.

Tensors of dimension <= 1 (biases, LayerNorm / BatchNorm parameters) get a zero direction under filter and
layer normalization, as in Li et al.'s code (``one_d="keep"`` rescales them as a single filter instead).

The second direction of a plane is made orthogonal to the first *block by block*: within every filter
(filter normalization), every tensor (layer) or globally (none), d2_f <- d2_f - <d2_f, d1_f> / <d1_f, d1_f> d1_f,
then d2_f is rescaled to ||theta_f||. Every block of d2 is then orthogonal to the same block of d1, so the
full vectors are orthogonal *and* both stay exactly filter-normalized (rescaling a block does not change
its orthogonality). A global Gram-Schmidt followed by per-filter re-normalization, as loss-landscapes 3.0.6
does, is not orthogonal. The final cosine is measured on the tensors returned and reported.

PCA of the training trajectory (Li et al. 2018, section 7): with theta_0 .. theta_T the saved points and
M = [theta_i - theta_T] (T+1 rows), the directions are the top principal components of M (mean-centred, as
sklearn's PCA that Li et al. use), unit norm, with their explained-variance ratios; the trajectory's
coordinates in the plane are <theta_i - theta_T, d_j>.

Checkpoint directions: d = theta_B - theta_A (a line through two checkpoints) and, with a third, the plane
through three.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ...core.errors import GenboundError

SPACES = ("dw", "factors", "all")
NORMALIZATIONS = ("filter", "layer", "none")

Coords = dict[str, Tensor]


@dataclass
class DirectionInfo:
    """What a direction is, without its tensors (this is what results and JSON carry)."""

    kind: str  # "random", "pca" or "checkpoint"
    normalization: str  # "filter", "layer", "none", "unit" (pca), "difference" (checkpoint)
    seed: int | None = None
    draw: int | None = None  # index of the draw from the seeded generator (0 first direction, 1 second)
    norm: float = 0.0  # ||d|| over the whole space
    explained_variance: float | None = None  # PCA: explained-variance ratio of this component
    source: str | None = None  # checkpoint: the end point this direction points to
    filter_norm_error: float | None = None  # max relative |(||d_f|| - ||theta_f||)| over normalized blocks
    zeroed: list[str] = field(default_factory=list)  # tensors whose direction is zero by construction
    degenerate_blocks: int = 0  # blocks of d2 left zero because they were parallel to d1 (1-element filters)


@dataclass
class Direction:
    """A direction's tensors (same names and shapes as the coordinate space) and its description."""

    tensors: Coords
    info: DirectionInfo


# --------------------------------------------------------------------------------------------------
# Coordinate spaces


def coordinates(model: nn.Module, names: Sequence[str] | None = None) -> Coords:
    """The coordinate space of ``model`` over ``names`` (default: every parameter), detached, in model
    order. Names may be parameters or floating-point buffers."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    if names is None:
        return {n: p.detach() for n, p in params.items()}
    wanted = list(names)
    missing = [n for n in wanted if n not in params and n not in buffers]
    if missing:
        raise GenboundError(f"'{missing[0]}' is not a parameter of the model; choose names from named_parameters()")
    order = [n for n in list(params) + list(buffers) if n in set(wanted)]
    out = {n: (params.get(n) if n in params else buffers[n]).detach() for n in order}
    bad = [n for n, t in out.items() if not t.is_floating_point()]
    if bad:
        raise GenboundError(f"coordinate '{bad[0]}' is not a floating-point tensor and cannot be perturbed")
    if not out:
        raise GenboundError("the coordinate space is empty; give at least one parameter name")
    return out


def checkpoint_space(ckpt, space: str = "dw", device: torch.device | None = None) -> tuple[nn.Module, Coords]:
    """The model of a loaded checkpoint and its coordinate space ``space`` (module docstring)."""
    if space not in SPACES:
        raise GenboundError(f"unknown space '{space}'; choose one of {', '.join(SPACES)}")
    model = ckpt.build_model(device=device, merged=space != "factors")
    names = None if space == "all" else ckpt.trained_parameter_names(model)
    return model, coordinates(model, names)


def space_norm(tensors: Mapping[str, Tensor]) -> float:
    """Euclidean norm of a dict of tensors seen as one vector (float64 accumulation)."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors.values()))


def dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """<a, b> over the shared names (float64 accumulation)."""
    return float(sum(float((a[n].double() * b[n].double()).sum()) for n in a if n in b))


def cosine(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    na, nb = space_norm(a), space_norm(b)
    if na == 0.0 or nb == 0.0:
        return 0.0
    return dot(a, b) / (na * nb)


# --------------------------------------------------------------------------------------------------
# Normalization and orthogonalization, block by block (float64 work, cast back at the end)


def _rows(t: Tensor, normalization: str) -> Tensor:
    """A float64 2-D view (blocks, block size) of a tensor: filters, the whole tensor, or a flat vector."""
    t = t.detach().double()
    if normalization == "filter" and t.dim() >= 2:
        return t.reshape(t.shape[0], -1)
    return t.reshape(1, -1)


def _scale_rows(d: Tensor, target: Tensor) -> Tensor:
    """Rescale each row of ``d`` to the norm of the same row of ``target`` (zero rows stay zero)."""
    dn = d.norm(dim=1, keepdim=True)
    tn = target.norm(dim=1, keepdim=True)
    factor = torch.where(dn > 0, tn / torch.where(dn > 0, dn, torch.ones_like(dn)), torch.zeros_like(dn))
    return d * factor


def _is_one_d(t: Tensor) -> bool:
    return t.dim() <= 1


def normalize_direction(direction: Coords, centre: Coords, normalization: str = "filter",
                        one_d: str = "zero") -> tuple[Coords, list[str]]:
    """Filter- or layer-normalize ``direction`` to ``centre`` (module docstring). Returns the normalized
    tensors (float64) and the names zeroed because they are 1-D."""
    if normalization not in NORMALIZATIONS:
        raise GenboundError(f"unknown normalization '{normalization}'; choose one of {', '.join(NORMALIZATIONS)}")
    if one_d not in ("zero", "keep"):
        raise GenboundError(f"one_d must be 'zero' or 'keep', got '{one_d}'")
    out: Coords = {}
    zeroed: list[str] = []
    for name, d in direction.items():
        c = centre[name]
        if normalization == "none":
            out[name] = d.detach().double()
            continue
        if _is_one_d(c) and one_d == "zero":
            out[name] = torch.zeros_like(d, dtype=torch.float64)
            zeroed.append(name)
            continue
        out[name] = _scale_rows(_rows(d, normalization), _rows(c, normalization)).reshape(d.shape)
    return out, zeroed


def orthogonalize(d2: Coords, d1: Coords, centre: Coords, normalization: str = "filter") -> tuple[Coords, int]:
    """Make ``d2`` orthogonal to ``d1`` block by block and re-normalize each block (module docstring).

    Both inputs must already be normalized the same way. With ``normalization="none"`` the projection is
    global and d2 keeps its norm. Returns the new d2 (float64) and how many blocks of d2 became zero
    because they were parallel to d1 (only possible for one-element filters)."""
    if normalization == "none":
        coef = dot(d2, d1) / max(dot(d1, d1), 1e-300)
        before = space_norm(d2)
        out = {n: d2[n].double() - coef * d1[n].double() for n in d2}
        after = space_norm(out)
        return ({n: t * (before / after) for n, t in out.items()} if after > 0 else out), 0
    out: Coords = {}
    degenerate = 0
    for name, t2 in d2.items():
        r2, r1 = _rows(t2, normalization), _rows(d1[name], normalization)
        target = _rows(centre[name], normalization)
        n11 = (r1 * r1).sum(1, keepdim=True)
        coef = torch.where(n11 > 0, (r2 * r1).sum(1, keepdim=True) / torch.where(n11 > 0, n11, torch.ones_like(n11)),
                           torch.zeros_like(n11))
        r2 = r2 - coef * r1
        # A block parallel to d1 (one-element filters) has nothing left: leave it zero rather than divide noise.
        resid = r2.norm(dim=1)
        tiny = resid <= 1e-12 * target.norm(dim=1).clamp_min(1e-300)
        degenerate += int((tiny & (target.norm(dim=1) > 0)).sum())
        r2 = torch.where(tiny.unsqueeze(1), torch.zeros_like(r2), r2)
        out[name] = _scale_rows(r2, target).reshape(t2.shape)
    return out, degenerate


def filter_norm_error(direction: Coords, centre: Coords, normalization: str, skip: Sequence[str] = ()) -> float:
    """max over normalized blocks with a non-zero direction of | ||d_f|| - ||theta_f|| | / ||theta_f||."""
    worst = 0.0
    for name, d in direction.items():
        if name in skip or normalization == "none":
            continue
        dn = _rows(d, normalization).norm(dim=1)
        tn = _rows(centre[name], normalization).norm(dim=1)
        live = (dn > 0) & (tn > 0)
        if bool(live.any()):
            worst = max(worst, float(((dn[live] - tn[live]).abs() / tn[live]).max()))
    return worst


def _gaussian(centre: Coords, generator: torch.Generator) -> Coords:
    # Drawn on the CPU in sorted name order so that a seed means the same direction on every device.
    return {n: torch.randn(centre[n].shape, generator=generator, dtype=torch.float32, device="cpu").double()
            for n in sorted(centre)}


def random_directions(centre: Coords, n: int = 2, seed: int = 0, normalization: str = "filter",
                      one_d: str = "zero", orthogonal: bool = True) -> list[Direction]:
    """``n`` (1 or 2) seeded Gaussian directions, normalized, the second orthogonal to the first.

    Returned tensors have the dtype and device of the centre; the cosine between the returned tensors is
    re-measured (see :func:`cosine`) and is below 1e-6 in float32."""
    if n not in (1, 2):
        raise GenboundError(f"a slice has 1 or 2 directions, got {n}")
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    cpu_centre = {k: v.detach().to("cpu") for k, v in centre.items()}
    raw = [_gaussian(cpu_centre, g) for _ in range(n)]
    dirs64: list[Coords] = []
    zeroed: list[str] = []
    degenerate = 0
    for i, d in enumerate(raw):
        d, zeroed = normalize_direction({k: d[k] for k in centre}, cpu_centre, normalization, one_d)
        if i == 1 and orthogonal:
            d, degenerate = orthogonalize(d, dirs64[0], cpu_centre, normalization)
        dirs64.append(d)
    out = []
    for i, d in enumerate(dirs64):
        tensors = {k: d[k].to(dtype=centre[k].dtype, device=centre[k].device) for k in centre}
        if i == 1 and orthogonal:
            tensors = _recheck_orthogonal(tensors, out[0].tensors, cpu_centre, normalization)
        err = filter_norm_error(tensors, cpu_centre, normalization, zeroed) if normalization != "none" else None
        out.append(Direction(tensors, DirectionInfo(
            kind="random", normalization=normalization, seed=int(seed), draw=i, norm=space_norm(tensors),
            filter_norm_error=err, zeroed=list(zeroed), degenerate_blocks=degenerate if i == 1 else 0)))
    return out


def _recheck_orthogonal(d2: Coords, d1: Coords, centre: Coords, normalization: str, tol: float = 1e-7) -> Coords:
    """Casting to float32 perturbs the orthogonality slightly: measure it and repeat the block projection
    on the cast tensors while |cos| exceeds ``tol`` (once is normally enough)."""
    for _ in range(3):
        if abs(cosine(d1, d2)) <= tol:
            break
        cpu2 = {k: v.detach().to("cpu").double() for k, v in d2.items()}
        cpu1 = {k: v.detach().to("cpu").double() for k, v in d1.items()}
        fixed, _ = orthogonalize(cpu2, cpu1, centre, normalization)
        d2 = {k: fixed[k].to(dtype=d2[k].dtype, device=d2[k].device) for k in d2}
    return d2


# --------------------------------------------------------------------------------------------------
# PCA of a trajectory


@dataclass
class PCAResult:
    directions: list[Direction]
    projections: Tensor  # (T, n): coordinates of theta_i - theta_T on the directions
    explained_variance: list[float]
    steps: list[int] | None = None


def pca_directions(trajectory: Sequence[Mapping[str, Tensor]], centre: Coords, n: int = 2,
                   steps: Sequence[int] | None = None) -> PCAResult:
    """Top-``n`` principal components of a trajectory, relative to its last point (module docstring).

    ``trajectory``: the saved points, oldest first, each a dict over (a subset of) the centre's names;
    names a point lacks do not move along the trajectory. Works through the (T x T) Gram matrix, so the
    cost is O(T^2 D) for D coordinates."""
    if len(trajectory) < n + 1:
        raise GenboundError(
            f"PCA needs at least {n + 1} saved trajectory points, the checkpoint has {len(trajectory)}; "
            "retrain with --save-trajectory and more snapshots"
        )
    names = [k for k in centre if any(k in p for p in trajectory)]
    if not names:
        raise GenboundError("the trajectory holds none of the coordinates being perturbed; use --space dw")
    last = trajectory[-1]

    def diff(point: Mapping[str, Tensor], name: str) -> Tensor:
        if name in point and name in last:
            return (point[name].detach().double().cpu() - last[name].detach().double().cpu()).reshape(-1)
        return torch.zeros(centre[name].numel(), dtype=torch.float64)

    rows = [torch.cat([diff(p, k) for k in names]) for p in trajectory]
    M = torch.stack(rows)  # (T, D)
    Mc = M - M.mean(0, keepdim=True)
    gram = Mc @ Mc.T
    evals, evecs = torch.linalg.eigh(gram)
    order = torch.argsort(evals, descending=True)
    evals, evecs = evals[order].clamp_min(0.0), evecs[:, order]
    total = float(evals.sum())
    if total <= 0.0:
        raise GenboundError("the saved trajectory does not move; PCA directions are undefined")
    out_dirs, ratios = [], []
    comps = []
    for j in range(n):
        lam = float(evals[j])
        if lam <= 1e-12 * total:
            raise GenboundError(f"the trajectory spans fewer than {n} directions; use --directions random")
        v = Mc.T @ evecs[:, j] / math.sqrt(lam)  # unit-norm principal axis in coordinate space
        # Sign convention: the start of training lies on the positive side of every axis.
        if float(M[0] @ v) < 0:
            v = -v
        comps.append(v)
        ratios.append(lam / total)
    for j, v in enumerate(comps):
        tensors, offset = {}, 0
        for k in centre:
            size = centre[k].numel()
            if k in names:
                chunk = v[offset:offset + size]
                offset += size
            else:
                chunk = torch.zeros(size, dtype=torch.float64)
            tensors[k] = chunk.reshape(centre[k].shape).to(dtype=centre[k].dtype, device=centre[k].device)
        zeroed = [k for k in centre if k not in names]
        out_dirs.append(Direction(tensors, DirectionInfo(kind="pca", normalization="unit", norm=space_norm(tensors),
                                                         explained_variance=ratios[j], zeroed=zeroed)))
    proj = M @ torch.stack(comps, 1)
    return PCAResult(out_dirs, proj, ratios, list(steps) if steps is not None else None)


# --------------------------------------------------------------------------------------------------
# Differences between points (checkpoints)


def difference_direction(end: Coords, start: Coords, source: str | None = None) -> Direction:
    """d = end - start over the start's names (the line from ``start`` through ``end``)."""
    missing = [k for k in start if k not in end]
    if missing:
        raise GenboundError(f"the end point lacks coordinate '{missing[0]}'; both points need the same space")
    tensors = {}
    for k, s in start.items():
        e = end[k]
        if tuple(e.shape) != tuple(s.shape):
            raise GenboundError(f"coordinate '{k}' has shape {tuple(s.shape)} at one point and {tuple(e.shape)} at the "
                                "other; the two points are not in the same space")
        tensors[k] = e.detach().to(device=s.device, dtype=s.dtype) - s
    return Direction(tensors, DirectionInfo(kind="checkpoint", normalization="difference", norm=space_norm(tensors),
                                            source=source))
