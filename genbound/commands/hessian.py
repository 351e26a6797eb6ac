"""``genbound hessian CKPT``: top eigenvalues, trace and spectral density of a checkpoint's loss Hessian.

The Hessian is that of the mean cross-entropy on a seeded subset of ``--samples`` examples of the recorded
``--split``, with respect to the trained parameters (default), all parameters, or named layers
(genbound.diagnostics.hessian). Every random draw comes from ``--seed``, which is printed and recorded in the JSON.
"""

from __future__ import annotations

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
    positive_int,
    print_json,
    progress_of,
    resolve_device,
    sample_count,
)
from .dataopts import add_data_options, add_source_options, source_from_args

HELP = "Hessian spectrum of a checkpoint's loss: top eigenvalues (Lanczos), trace (Hutch++), density (SLQ)"
DESCRIPTION = (
    "Top-k (and bottom-k) Hessian eigenvalues by Lanczos with partial re-orthogonalization and residual bounds, "
    "the trace by Hutch++ with a 95 percent confidence interval, and the spectral density by stochastic Lanczos "
    "quadrature, of the mean cross-entropy on a seeded subset of the checkpoint's data."
)


def add_arguments(p) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="a genbound checkpoint or a peft adapter directory")
    add_source_options(p)
    add_data_options(p)
    p.add_argument("--top-k", type=int, default=5, help="largest eigenvalues to compute (5; 0 for none)")
    p.add_argument("--bottom-k", type=int, default=0, help="smallest eigenvalues to compute (0)")
    p.add_argument("--trace", action="store_true", help="estimate the trace (Hutch++, 95%% interval)")
    p.add_argument("--trace-method", choices=["auto", "hutch++", "hutchinson"], default="auto",
                   help="auto: Hutch++ sketched by the Lanczos basis (default); hutch++: random sketch; hutchinson")
    p.add_argument("--trace-rtol", type=float, default=0.05,
                   help="stop probing when the 95%% interval half-width is below this fraction of the trace (0.05)")
    p.add_argument("--density", action="store_true", help="spectral density by stochastic Lanczos quadrature")
    p.add_argument("--density-probes", type=positive_int, default=4, help="SLQ starting vectors (4)")
    p.add_argument("--density-steps", type=positive_int, default=64, help="Lanczos steps per SLQ probe (64)")
    p.add_argument("--params", default="trained",
                   help="trained (default), all, or comma-separated parameter / module names (e.g. head,fc2)")
    p.add_argument("--samples", type=sample_count, default=512,
                   help="examples in the seeded evaluation subset, or 'all' (512)")
    p.add_argument("--split", choices=["train", "val", "test"], default="train", help="data split (train)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="examples per forward pass (256)")
    p.add_argument("--tol", type=float, default=1e-4, help="relative error bound for the eigenvalues (1e-4)")
    p.add_argument("--max-steps", type=positive_int, default=100, help="most Lanczos steps for eigenvalues (100)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the subset and of every random probe (0)")
    add_shard_argument(p)
    p.add_argument("--out", default=None, help="also write the JSON report to this file (atomically)")
    add_json(p)
    add_device(p)
    add_dtype(p)
    add_max_memory(p)
    add_progress(p)


def run(args) -> int:
    from ..core.atomic import write_json
    from ..diagnostics.hessian import hessian_from_checkpoint
    from .common import to_jsonable

    if args.top_k < 0 or args.bottom_k < 0:
        raise GenboundError("--top-k and --bottom-k must be 0 or more")
    if args.top_k == 0 and args.bottom_k == 0 and not args.trace and not args.density:
        raise GenboundError("nothing to compute: give --top-k K, --bottom-k K, --trace or --density")
    if not 0 < args.trace_rtol < 1:
        raise GenboundError(f"--trace-rtol must be in (0, 1), got {args.trace_rtol}")
    if not args.tol > 0:
        raise GenboundError(f"--tol must be positive, got {args.tol}")
    from ..core.distributed import launched

    device = resolve_device(args.device)
    params = args.params if args.params in ("trained", "all") else [s for s in args.params.split(",") if s]
    source = source_from_args(args, args.checkpoint)
    with launched(device) as group:  # under torchrun: the evaluation set sharded over the processes
        report = hessian_from_checkpoint(
            source, params=params, split=args.split, samples=args.samples, seed=args.seed,
            top_k=args.top_k, bottom_k=args.bottom_k, trace=args.trace, trace_method=args.trace_method,
            density=args.density, density_probes=args.density_probes, density_steps=args.density_steps,
            tol=args.tol, max_steps=args.max_steps, batch_size=args.batch_size, trace_rtol=args.trace_rtol,
            device=group.device(device) if group else device, base_dtype=args.dtype, memory_budget=args.max_memory,
            progress=progress_of(args) if group is None or group.is_main else False, group=group,
            shard=args.shard,
        )
    if group is not None and not group.is_main:
        return 0  # every process holds the same report; rank 0 writes and prints it
    if report.eigen is not None:
        import sys

        for kind, asked, got in (("top", args.top_k, report.eigen.top), ("bottom", args.bottom_k, report.eigen.bottom)):
            if asked > len(got):  # say so rather than silently return fewer than asked
                print(f"genbound: note: --{kind}-k {asked} is more than the {len(got)} eigenvalues available (the "
                      f"Hessian has dimension {report.dim:,}); {len(got)} given", file=sys.stderr)
    if args.out:
        write_json(args.out, to_jsonable(report))
    if args.json:
        print_json(report)
        return 0
    r = report
    what = (f"per target token ({r.n_targets:,} tokens) on {r.n_examples} {args.split} sequences"
            if r.loss_unit == "token" else f"on {r.n_examples} {args.split} examples")
    print(f"Hessian of the mean cross-entropy {what} (seed {r.seed}), "
          f"{len(r.params)} parameter tensors, dimension {r.dim:,}; loss {r.loss:.6g}, |grad| {r.grad_norm:.3g}")
    if r.eigen is not None:
        e = r.eigen
        rows = [[f"top {i + 1}", v, res, err] for i, (v, res, err) in
                enumerate(zip(e.top, e.top_residuals, e.top_errors))]
        rows += [[f"bottom {i + 1}", v, res, err] for i, (v, res, err) in
                 enumerate(zip(e.bottom, e.bottom_residuals, e.bottom_errors))]
        print()
        print(format_table(rows, ["eigenvalue", "value", "residual", "error bound"]))
        state = "converged" if e.converged else f"NOT converged to tol {e.tol:g} (raise --max-steps)"
        print(f"Lanczos: {e.steps} steps, {state}")
    if r.trace is not None:
        t = r.trace
        print(f"\ntrace {t.estimate:.6g}  ({100 * t.confidence:.0f}% interval [{t.ci_low:.6g}, {t.ci_high:.6g}]; "
              f"{t.method}, sketch {t.sketch_dim}, {t.n_probes} probes)")
    if r.density is not None:
        d = r.density
        lo, hi = min(d.nodes), max(d.nodes)
        print(f"\ndensity: {len(d.nodes)} quadrature nodes on [{lo:.4g}, {hi:.4g}] from {d.n_probes} probes, "
              f"weights sum {d.dim:.6g}, smoothed with sigma {d.sigma:.3g} (use --json for the curve)")
    print(f"\n{r.n_hvp} Hessian-vector products in {r.wall_time:.1f} s on {r.device} ({r.hvp_mode} mode, batches of "
          f"{r.batch_size}, base weights {r.base_dtype})")
    if r.eigen is not None and r.eigen.rounding_error:
        print(f"the error bounds include {r.eigen.rounding_error:.3g} for the {r.base_dtype} base's rounding")
    return 0
