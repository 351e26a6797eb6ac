"""``genbound landscape``: a loss-landscape slice around a checkpoint (random, PCA or interpolation)."""

from __future__ import annotations

from pathlib import Path

from ..core.argtypes import seed_arg
from ..core.errors import GenboundError
from .common import (
    add_device,
    add_dtype,
    add_json,
    add_max_memory,
    add_progress,
    add_shard_argument,
    format_table,
    print_json,
    progress_of,
    resolve_device,
    sample_count,
    to_jsonable,
)
from .dataopts import add_data_options, add_source_options, source_from_args

HELP = "loss-landscape slice around a checkpoint: filter-normalized random, trajectory-PCA or interpolation"
DESCRIPTION = (
    "Evaluate loss and accuracy on a 1-D or 2-D grid centred exactly on the trained point (odd --grid; the "
    "centre is a grid point). Directions: 'random' (seeded Gaussian, filter-normalized, orthogonal), 'pca' "
    "(top-2 principal components of the saved training trajectory) or 'interpolate' (the line through two "
    "checkpoints, the plane through three). The perturbed space: dw (merged adapted weights and head), "
    "factors (the trained adapter factors) or all (every weight)."
)


def add_arguments(p) -> None:
    p.add_argument("checkpoints", nargs="+", metavar="CKPT",
                   help="checkpoint or peft adapter directory (2 or 3 to interpolate)")
    add_source_options(p)
    add_data_options(p)
    p.add_argument("--directions", choices=["random", "pca", "interpolate"], default=None,
                   help="direction kind (default: interpolate for several checkpoints, else random)")
    p.add_argument("--dims", type=int, choices=[1, 2], default=None, help="1 (line) or 2 (plane) for random")
    p.add_argument("--grid", type=int, default=21, help="points per axis, odd (default 21)")
    p.add_argument("--range", dest="span", type=float, default=None,
                   help="the axes run from -RANGE to +RANGE in direction units (default 1; pca: the trajectory)")
    p.add_argument("--space", choices=["dw", "factors", "all"], default="dw",
                   help="coordinates perturbed: merged adapted weights + head (dw), adapter factors, or all")
    p.add_argument("--normalization", choices=["filter", "layer", "none"], default="filter",
                   help="normalization of random directions (default filter, Li et al. 2018)")
    p.add_argument("--samples", type=sample_count, default=512,
                   help="seeded evaluation subset size, or 'all' for the whole split (default 512)")
    p.add_argument("--split", choices=["train", "val", "test"], default="train", help="evaluation split")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the random directions and of the subset")
    p.add_argument("--engine", choices=["batched", "sequential"], default="batched",
                   help="batched (several points per forward, default) or the point-by-point reference")
    p.add_argument("--points-per-batch", type=int, default=None, help="grid points per forward (default: by memory)")
    p.add_argument("--batch-size", type=int, default=None, help="examples per forward (default: by memory)")
    p.add_argument("--basin-rise", type=float, default=0.1,
                   help="basin threshold = centre loss + this (nats, default 0.1)")
    p.add_argument("--output", type=Path, default=None, help="also write the full result as JSON to this file")
    p.add_argument("--plot", type=Path, default=None, help="write a figure (png, pdf or svg) to this file")
    add_device(p)
    add_shard_argument(p)
    add_dtype(p)
    add_max_memory(p)
    add_json(p)
    add_progress(p)


def plot_landscape(result, path: Path) -> Path:
    """The slice as a paper figure (genbound.report.figures: contour for a plane, curve for a line), written
    atomically in the format of ``path``'s suffix."""
    from ..report import figures as F

    title = f"{result.directions_kind} slice, space {result.space}"
    if result.kind == "plane":
        fig = F.landscape_contour(result, title)
    else:
        fig = F.landscape_lines({result.directions_kind: result}, title=title)
    path = Path(path)
    return F.save(fig, path.with_suffix(""), formats=(path.suffix.lstrip(".").lower() or "png",))[0]


def run(args) -> int:
    from ..core.atomic import write_json
    from ..core.distributed import launched
    from ..diagnostics.landscape import landscape_from_checkpoints

    device = resolve_device(args.device)
    if args.plot is not None and args.plot.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise GenboundError(f"--plot {args.plot}: use a .png, .pdf or .svg file name")
    with launched(device) as group:  # under torchrun: the grid points shared out over the processes
        result = landscape_from_checkpoints(
            [source_from_args(args, c) for c in args.checkpoints], args.directions, space=args.space,
            dims=args.dims, grid=args.grid, span=args.span,
            samples=args.samples, split=args.split, seed=args.seed, normalization=args.normalization,
            device=group.device(device) if group else device, engine=args.engine,
            points_per_batch=args.points_per_batch, batch_size=args.batch_size, basin_rise=args.basin_rise,
            base_dtype=args.dtype, memory_budget=args.max_memory,
            progress=progress_of(args) if group is None or group.is_main else False, group=group,
            shard=args.shard,
        )
    if group is not None and not group.is_main:
        return 0  # every process holds the whole slice; rank 0 writes and prints it
    if args.output is not None:
        write_json(args.output, to_jsonable(result))
    if args.plot is not None:
        plot_landscape(result, args.plot)
    if args.json:
        print_json(result)
        return 0
    s = result.summary
    print(f"{result.kind} slice, {result.directions_kind} directions, space {result.space}, "
          f"{len(result.axes[0])} points per axis in [-{float(result.axes[0].max()):.4g}, "
          f"{float(result.axes[0].max()):.4g}], {result.n_examples} examples of the {args.split} split")
    print(f"centre loss {s.centre_loss:.6g} (plain evaluation {result.reference_loss:.6g}), accuracy "
          f"{s.centre_accuracy:.4g}; {result.timing['points']} points in {result.timing['seconds']:.3g} s "
          f"({result.timing['engine']}, {result.timing['points_per_batch']} per forward)")
    if result.cosine is not None:
        print(f"cosine between the directions: {result.cosine:.3g}")
    rows = []
    for d, c in zip(result.directions, s.curvature):
        rows.append([c.direction + 1, d.kind, d.normalization, d.seed, d.norm, d.explained_variance,
                     c.finite_difference, c.quadratic_fit])
    print(format_table(rows, ["dir", "kind", "normalization", "seed", "norm", "expl. var", "curv (fd)",
                              "curv (fit)"]))
    sharp = ", ".join(f"r={x.radius:.3g}: +{x.max_rise:.4g}" for x in s.sharpness)
    print(f"sharpness (max loss rise within radius): {sharp}")
    b = s.basin
    print(f"basin below {b.threshold:.4g}: {b.points} points ({100 * b.fraction:.1f}% of the grid, area "
          f"{b.area:.4g}){' reaching the edge: a lower bound' if b.touches_edge else ''}")
    for note in s.notes:
        print(f"note: {note}")
    return 0
