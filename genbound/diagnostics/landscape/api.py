"""Loss-landscape slices: the public API (see the package docstring)."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ...checkpoints.format import TRAJECTORY_FILE
from ...core.device import where
from ...core.distributed import Group
from ...core.errors import GenboundError
from ...core.readers import read_safetensors
from ...core.sharding import check_shard, shard_frozen
from ...data.evalset import EvalSet
from ...models.precision import dtype_name
from ...sources.context import contexts_for
from ..evaluate import evaluate
from .directions import (
    SPACES,
    Coords,
    Direction,
    DirectionInfo,
    checkpoint_space,
    cosine,
    difference_direction,
    pca_directions,
    random_directions,
)
from .grid import ENGINES, GridEvaluator, check_grid, check_span, grid_axis, grid_points
from .sharded import sharded_point_values
from .summaries import Summary, summarize

if TYPE_CHECKING:
    from ...checkpoints.checkpoint import Checkpoint

DIRECTION_KINDS = ("random", "pca", "interpolate")


@dataclass
class Landscape:
    """A 1-D (line) or 2-D (plane) slice of the loss around a trained point.

    ``loss[i]`` / ``loss[i, j]`` is the mean cross-entropy at theta* + axes[0][i] d_1 (+ axes[1][j] d_2);
    ``accuracy`` likewise. The centre index is ((G - 1) / 2, ...), where the weights equal theta* exactly;
    ``reference_loss`` is an independent plain evaluation of the model at theta*, which the centre equals."""

    kind: str  # "line" or "plane"
    directions_kind: str  # "random", "pca", "interpolate" or "custom"
    space: str | None
    axes: list[Tensor]
    loss: Tensor
    accuracy: Tensor
    directions: list[DirectionInfo]
    cosine: float | None  # between the final directions (plane)
    reference_loss: float
    reference_accuracy: float
    n_examples: int
    summary: Summary
    timing: dict
    path: Tensor | None = None  # (T, k): trajectory projection (pca) or the checkpoints' positions
    path_labels: list[str] | None = None
    source: dict = field(default_factory=dict)

    @property
    def centre(self) -> tuple[int, ...]:
        return tuple((len(a) - 1) // 2 for a in self.axes)

    @property
    def centre_loss(self) -> float:
        return float(self.loss[self.centre])


def _reference(ev: GridEvaluator) -> tuple[float, float]:
    """Plain ``model(**features)`` evaluation at theta* on the evaluator's private copy."""
    model = ev.model
    own = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for n, t in ev.centre.items():
            own[n].copy_(t)
    res = evaluate(model, ev.data, batch_size=ev.batch_size, device=ev.device, where="the landscape centre")
    return res.loss, res.accuracy


def landscape(model: nn.Module, coords: Mapping[str, Tensor], directions: Sequence[Direction], evalset: EvalSet,
              grid: int = 21, span: float = 1.0, *, device: torch.device | None = None,
              engine: str = "batched", batch_size: int | None = None, points_per_batch: int | None = None,
              memory_budget: int | None = None, cache_prefix: bool = True, progress: bool | None = None,
              radii: Sequence[float] | None = None, basin_threshold: float | None = None, basin_rise: float = 0.1,
              directions_kind: str = "custom", space: str | None = None, path: Tensor | None = None,
              path_labels: list[str] | None = None, source: dict | None = None,
              group: Group | None = None, shard: str | None = None) -> Landscape:
    """Evaluate loss and accuracy on a symmetric grid spanned by 1 or 2 ``directions`` around ``coords``.

    ``group`` (under torchrun, :mod:`genbound.core.distributed`): each process evaluates its contiguous share of
    the grid points on the whole evaluation set and the shares are gathered exactly, so every process holds
    the whole slice; ``timing`` is that of rank 0's share. ``shard="fsdp"`` (with ``group``): ``model``'s
    parameters other than the coordinates are sharded over the processes, in place (genbound.core.sharding;
    points evaluated by :func:`genbound.diagnostics.landscape.sharded.sharded_point_values`)."""
    grid, span = check_grid(grid), check_span(span)
    if engine not in ENGINES:
        raise GenboundError(f"unknown engine '{engine}'; choose one of {', '.join(ENGINES)}")
    if len(directions) not in (1, 2):
        raise GenboundError(f"a slice has 1 or 2 directions, got {len(directions)}")
    if check_shard(shard, group):
        return _sharded_landscape(model, coords, directions, evalset, grid, span, device, batch_size, group,
                                  radii=radii, basin_threshold=basin_threshold, basin_rise=basin_rise,
                                  directions_kind=directions_kind, space=space, path=path, path_labels=path_labels,
                                  source=source)
    ev = GridEvaluator(model, coords, [d.tensors for d in directions], evalset, device=device,
                       batch_size=batch_size, points_per_batch=points_per_batch, memory_budget=memory_budget,
                       cache_prefix=cache_prefix, progress=progress)
    axes = [grid_axis(grid, span) for _ in directions]
    points = grid_points(axes)
    if group is None:
        vals = ev.evaluate(points, engine)
        loss, acc = vals.loss, vals.accuracy
    else:
        share = group.shard(len(points))
        vals = ev.evaluate(points[share.start:share.stop], engine)
        loss, acc = group.gather_rows(vals.loss, len(points)), group.gather_rows(vals.accuracy, len(points))
    shape = (grid,) * len(directions)
    loss, acc = loss.view(shape), acc.view(shape)
    ref_loss, ref_acc = _reference(ev)
    cos = cosine(directions[0].tensors, directions[1].tensors) if len(directions) == 2 else None
    summary = summarize(axes, loss, acc, radii, basin_threshold, basin_rise)
    timing = {"engine": vals.engine, "seconds": vals.seconds, "points": int(loss.numel()),
              "points_per_batch": vals.points_per_batch, "schedule": vals.schedule, "batch_size": vals.batch_size,
              "cached_layers": vals.cached_layers, "memoized_modules": vals.memoized, "calibration": vals.calibration,
              "device": str(ev.device), "estimate": vals.estimate}
    if group is not None:
        timing["processes"] = group.world
    return Landscape("line" if len(directions) == 1 else "plane", directions_kind, space, axes, loss, acc,
                     [d.info for d in directions], cos, ref_loss, ref_acc, len(evalset), summary, timing,
                     path, path_labels, dict(source or {}))


def _sharded_landscape(model: nn.Module, coords: Mapping[str, Tensor], directions: Sequence[Direction],
                       evalset: EvalSet, grid: int, span: float, device: torch.device | None, batch_size: int | None,
                       group: Group, radii=None, basin_threshold=None, basin_rise: float = 0.1,
                       directions_kind: str = "custom", space: str | None = None, path: Tensor | None = None,
                       path_labels: list[str] | None = None, source: dict | None = None) -> Landscape:
    """:func:`landscape` with everything but the coordinates sharded over ``group`` (FSDP2)."""
    device = where(device, model)
    shard_frozen(model, group, device, keep=list(coords))
    centre = {n: t.detach().to(device) for n, t in coords.items()}
    dirs = {n: torch.stack([d.tensors[n].detach().to(device, centre[n].dtype) for d in directions]) for n in centre}
    axes = [grid_axis(grid, span) for _ in directions]
    points = grid_points(axes)
    data = evalset.to(device)
    batch = int(batch_size) if batch_size else 256
    t0 = time.perf_counter()
    loss, acc = sharded_point_values(model, centre, dirs, points, data, batch, device, group)
    seconds = time.perf_counter() - t0
    shape = (grid,) * len(directions)
    loss, acc = loss.view(shape), acc.view(shape)
    own = dict(model.named_parameters())
    with torch.no_grad():  # theta* into the model's own (unsharded) coordinates: the plain reference evaluation
        for n, t in centre.items():
            own[n].copy_(t)
    ref = evaluate(model, data, batch_size=batch, device=device, where="the landscape centre")
    cos = cosine(directions[0].tensors, directions[1].tensors) if len(directions) == 2 else None
    summary = summarize(axes, loss, acc, radii, basin_threshold, basin_rise)
    timing = {"engine": "sequential", "seconds": seconds, "points": int(loss.numel()), "points_per_batch": 1,
              "batch_size": batch, "device": str(device), "processes": group.world, "shard": "fsdp"}
    return Landscape("line" if len(directions) == 1 else "plane", directions_kind, space, axes, loss, acc,
                     [d.info for d in directions], cos, ref.loss, ref.accuracy, len(evalset), summary, timing,
                     path, path_labels, dict(source or {}))


def random_plane(model: nn.Module, coords: Mapping[str, Tensor], evalset: EvalSet, grid: int = 21,
                 span: float = 1.0, seed: int = 0, normalization: str = "filter", one_d: str = "zero",
                 **kwargs) -> Landscape:
    """A plane through theta* spanned by two seeded Gaussian directions, normalized (filter by default)
    and orthogonal (Li et al. 2018; see :mod:`genbound.diagnostics.landscape.directions`)."""
    check_grid(grid)
    dirs = random_directions(dict(coords), 2, seed, normalization, one_d)
    return landscape(model, coords, dirs, evalset, grid, span, directions_kind="random", **kwargs)


def random_line(model: nn.Module, coords: Mapping[str, Tensor], evalset: EvalSet, grid: int = 21,
                span: float = 1.0, seed: int = 0, normalization: str = "filter", one_d: str = "zero",
                **kwargs) -> Landscape:
    """A line through theta* along one seeded, normalized Gaussian direction."""
    check_grid(grid)
    dirs = random_directions(dict(coords), 1, seed, normalization, one_d)
    return landscape(model, coords, dirs, evalset, grid, span, directions_kind="random", **kwargs)


def interpolate(model: nn.Module, coords: Mapping[str, Tensor], ends: Sequence[Mapping[str, Tensor]],
                evalset: EvalSet, grid: int = 21, span: float = 1.0, labels: Sequence[str] | None = None,
                **kwargs) -> Landscape:
    """The line (one end) or plane (two ends) through theta* = ``coords`` and the ``ends``: d_i = end_i -
    theta*, so t = 1 along d_i is end i exactly when span = 1 (the last grid point)."""
    if len(ends) not in (1, 2):
        raise GenboundError(f"interpolation needs 1 or 2 other points (2 or 3 checkpoints), got {len(ends)}")
    labels = list(labels) if labels is not None else ["A", "B", "C"][: len(ends) + 1]
    if len(labels) != len(ends) + 1:
        raise GenboundError(f"give one label per point ({len(ends) + 1}: the centre and each end), got {len(labels)}")
    dirs = [difference_direction(dict(e), dict(coords), source=labels[i + 1]) for i, e in enumerate(ends)]
    k = len(dirs)
    path = torch.zeros(k + 1, k, dtype=torch.float64)
    for i in range(k):
        path[i + 1, i] = 1.0
    return landscape(model, coords, dirs, evalset, grid, span, directions_kind="interpolate", path=path,
                     path_labels=labels[: k + 1], **kwargs)


def pca_plane(model: nn.Module, coords: Mapping[str, Tensor], trajectory: Sequence[Mapping[str, Tensor]],
              evalset: EvalSet, grid: int = 21, span: float | None = None, steps: Sequence[int] | None = None,
              **kwargs) -> Landscape:
    """The plane of the top two principal components of the training trajectory, centred on theta*;
    ``span`` defaults to 1.2 x the largest trajectory coordinate so that the whole path is inside."""
    check_grid(grid)
    pca = pca_directions(trajectory, dict(coords), 2, steps)
    if span is None:
        reach = float(pca.projections.abs().max())
        span = 1.2 * reach if reach > 0 else 1.0
    labels = [f"step {s}" for s in steps] if steps is not None else None
    src = dict(kwargs.pop("source", None) or {})
    src["explained_variance"] = pca.explained_variance
    return landscape(model, coords, pca.directions, evalset, grid, span, directions_kind="pca",
                     path=pca.projections, path_labels=labels, source=src, **kwargs)


# --------------------------------------------------------------------------------------------------
# From checkpoints


def _trajectory_points(ckpt, coords: Coords, space: str) -> list[dict[str, Tensor]]:
    """Each saved step of ``ckpt`` as a point of the coordinate space (dw / all)."""
    if space == "factors":
        raise GenboundError("PCA directions are computed in the merged weights; use --space dw or --space all")
    updates = ckpt.trajectory()  # CheckpointError (a GenboundError) if none was saved
    raw = read_safetensors(Path(ckpt.path) / TRAJECTORY_FILE)
    steps = ckpt.meta.trajectory_steps
    points = []
    if ckpt.method.adapter:
        base = ckpt.base_weights()
        for step, upd in zip(steps, updates):
            p: dict[str, Tensor] = {}
            for layer, u in upd.items():
                name = f"{layer}.weight"
                if name in coords:
                    p[name] = base[layer].double() + u.materialize().double()
            for part in ("weight", "bias"):
                key = f"step{step}/head.{part}"
                if f"head.{part}" in coords and key in raw:
                    p[f"head.{part}"] = raw[key].double()
            points.append(p)
    else:
        for step in steps:
            prefix = f"step{step}/model."
            points.append({k[len(prefix):]: v.double() for k, v in raw.items()
                           if k.startswith(prefix) and k[len(prefix):] in coords})
    return points


def _check_compatible(ckpts: Sequence, paths: Sequence[str], space: str) -> None:
    a = ckpts[0].meta
    for ck, p in zip(ckpts[1:], paths[1:]):
        m = ck.meta
        if m.backbone != a.backbone or m.fingerprint != a.fingerprint:
            raise GenboundError(
                f"{p} was trained on backbone '{m.backbone}' and {paths[0]} on '{a.backbone}'; interpolate only "
                "between checkpoints of the same backbone"
            )
        if m.num_labels != a.num_labels:
            raise GenboundError(f"{p} has {m.num_labels} classes and {paths[0]} has {a.num_labels}; interpolate "
                                "only between checkpoints of the same task")
        if space != "all":
            la = sorted((li.name, li.out_features, li.in_features) for li in a.layers)
            lb = sorted((li.name, li.out_features, li.in_features) for li in m.layers)
            if la != lb:
                raise GenboundError(
                    f"{p} adapts layers {[x[0] for x in lb]} but {paths[0]} adapts {[x[0] for x in la]}; interpolate "
                    "between checkpoints with the same layers, or use --space all"
                )


def _check_outside_space(model_a: nn.Module, model_b: nn.Module, coords: Coords, path_b: str, space: str) -> None:
    """Everything not perturbed must be equal, otherwise the end of the line is not checkpoint B."""
    sa = dict(model_a.named_parameters()) | dict(model_a.named_buffers())
    sb = dict(model_b.named_parameters()) | dict(model_b.named_buffers())
    if set(sa) != set(sb):
        diff = sorted(set(sa) ^ set(sb))
        raise GenboundError(f"{path_b} has a different model structure ('{diff[0]}'); use --space dw or all")
    for n, t in sa.items():
        if n in coords:
            continue
        if t.shape != sb[n].shape or not torch.equal(t, sb[n].to(t.device)):
            hint = "use --space all" if space == "dw" else "use --space dw or --space all"
            raise GenboundError(f"{path_b} differs from the first checkpoint in '{n}', which --space {space} does "
                                f"not move; {hint}")


def _check_precision(space: str, base_dtype) -> None:
    if space == "all" and dtype_name(base_dtype) != "float32":
        raise GenboundError(f"--space all moves the frozen base weights, which {dtype_name(base_dtype)} cannot resolve "
                            "along small steps; use --space dw or factors, or --dtype float32")


def _checked_request(paths: list[str], directions: str | None, space: str, dims: int | None, grid: int,
                     span: float | None, samples: int | None) -> str:
    """The directions kind (default: interpolate for several checkpoints, else random), after every argument
    of :func:`landscape_from_checkpoints` is checked against the others; a bad one is a one-line error."""
    if not 1 <= len(paths) <= 3:
        raise GenboundError(f"give 1 to 3 checkpoints, got {len(paths)}")
    directions = directions or ("interpolate" if len(paths) > 1 else "random")
    if directions not in DIRECTION_KINDS:
        raise GenboundError(f"unknown directions '{directions}'; choose one of {', '.join(DIRECTION_KINDS)}")
    if space not in SPACES:
        raise GenboundError(f"unknown space '{space}'; choose one of {', '.join(SPACES)}")
    if directions == "interpolate" and len(paths) < 2:
        raise GenboundError("interpolation needs 2 checkpoints (a line) or 3 (a plane); give more checkpoints")
    if directions != "interpolate" and len(paths) > 1:
        raise GenboundError(f"{directions} directions use one checkpoint, got {len(paths)}; "
                            "use --directions interpolate for several")
    if dims is not None and dims not in (1, 2):
        raise GenboundError(f"a slice has 1 or 2 dimensions, got {dims}")
    if directions == "interpolate" and dims is not None and dims != len(paths) - 1:
        raise GenboundError(f"{len(paths)} checkpoints give a {len(paths) - 1}-D slice; drop --dims or give "
                            f"{dims + 1} checkpoints")
    if directions == "pca" and dims == 1:
        raise GenboundError("PCA slices are planes; drop --dims 1 or use --directions random")
    check_grid(grid)
    if span is not None:
        check_span(span)
    if samples is not None and samples <= 0:
        raise GenboundError(f"--samples must be positive, got {samples}; omit it to use the whole split")
    return directions


def landscape_from_checkpoints(paths: Sequence[str | Path | Checkpoint], directions: str | None = None, *,
                               space: str = "dw",
                               dims: int | None = None, grid: int = 21, span: float | None = None,
                               samples: int | None = 512, split: str = "train", seed: int = 0,
                               normalization: str = "filter", one_d: str = "zero",
                               device: torch.device | None = None, base_dtype: torch.dtype | str | None = None,
                               **kwargs) -> Landscape:
    """A slice around the first checkpoint of ``paths`` (directories, or checkpoints already loaded).

    ``directions``: "random" (one checkpoint; ``dims`` 1 or 2, default 2), "pca" (one checkpoint saved
    with its trajectory) or "interpolate" (two checkpoints: line A-B; three: plane A, B, C). The default is
    interpolate for several checkpoints, else random. ``space``: dw, factors or all. Evaluation on a
    seeded subset of ``samples`` examples (None: the whole split) of ``split`` of the first checkpoint's
    data. ``span`` defaults to 1 (random, interpolate) or the trajectory's reach (pca). Run contexts
    (genbound.sources.context) may stand for checkpoints; paths share one context cache. ``base_dtype``: the
    frozen base's precision (genbound.models.precision; contexts given keep their own); ``memory_budget``
    (bytes, in ``kwargs``) sizes the batches and points per forward (:func:`landscape`)."""
    given = list(paths)
    paths = [str(p) if isinstance(p, (str, Path)) else str(p.path) for p in given]
    directions = _checked_request(paths, directions, space, dims, grid, span, samples)
    device = where(device)  # checkpoints are read onto the CPU
    _check_precision(space, base_dtype)
    ckpts = contexts_for(given, device, dtype=base_dtype)  # one backbone build and one data load for all
    if directions == "interpolate":
        _check_compatible(ckpts, paths, space)
    # Sharded (kwargs shard="fsdp"): built on the CPU; only this process's pieces go to the device.
    build_on = torch.device("cpu") if kwargs.get("shard") not in (None, "none") else device
    model, coords = checkpoint_space(ckpts[0], space, build_on)
    splits = ckpts[0].load_splits()
    evalset = splits.split(split).subset(samples, seed)
    meta = ckpts[0].meta
    source = {"checkpoints": paths, "method": meta.method, "backbone": meta.backbone, "dataset": meta.dataset,
              "split": split, "samples": len(evalset), "sample_seed": seed, "split_size": len(splits.split(split)),
              "recorded_loss": meta.results.get(f"{split}_loss"), "base_dtype": dtype_name(ckpts[0].dtype),
              "memory_budget": kwargs.get("memory_budget")}
    kwargs.setdefault("space", space)
    kwargs.setdefault("device", device)
    if directions == "random":
        fn = random_plane if (dims or 2) == 2 else random_line
        return fn(model, coords, evalset, grid, 1.0 if span is None else span, seed, normalization, one_d,
                  source=source, **kwargs)
    if directions == "pca":
        points = _trajectory_points(ckpts[0], coords, space)
        return pca_plane(model, coords, points, evalset, grid, span, steps=meta.trajectory_steps, source=source,
                         **kwargs)
    ends = []
    for ck, p in zip(ckpts[1:], paths[1:]):
        other, other_coords = checkpoint_space(ck, space, build_on)
        if list(other_coords) != list(coords):
            missing = sorted(set(coords) ^ set(other_coords))
            raise GenboundError(f"{p} has different coordinates in --space {space} ('{missing[0]}'); "
                                "use --space dw or all")
        _check_outside_space(model, other, coords, p, space)
        ends.append(other_coords)
        del other
    labels = [Path(p).name for p in paths]
    return interpolate(model, coords, ends, evalset, grid, 1.0 if span is None else span, labels=labels,
                       source=source, **kwargs)


def model_with(model: nn.Module, coords: Mapping[str, Tensor]) -> nn.Module:
    """A copy of ``model`` whose coordinates are set to ``coords`` (for checks and plots)."""
    m = copy.deepcopy(model)
    own = dict(m.named_parameters()) | dict(m.named_buffers())
    with torch.no_grad():
        for n, t in coords.items():
            own[n].copy_(t)
    return m


__all__ = [
    "Landscape", "landscape", "random_plane", "random_line", "interpolate", "pca_plane",
    "landscape_from_checkpoints", "model_with",
]
