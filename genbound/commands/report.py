"""``genbound report RUN [RUN ...] --out DIR``: one report over many runs and seeds."""

from __future__ import annotations

from .common import add_device, add_json, add_progress, positive_int, print_json, progress_of, resolve_device

HELP = "one report over many runs and seeds: tables with intervals, paired tests (Holm), rank correlations"
DESCRIPTION = (
    "Report over any set of genbound checkpoints and peft adapters (folders, globs, or a sweep folder searched "
    "for runs). Runs are grouped by backbone / dataset and method, seeds as replicates. Writes report.md, "
    "report.tex (booktabs), report.json, a self-contained report.html (sortable tables, embedded figures, no "
    "network) and figures/ into --out: per measure the mean and 95% t interval over seeds (recorded fit and gap, "
    "parameter counts, Table 1 and Theorem 1 bounds, update spectra, intruder dimensions; --data-bounds, "
    "--hessian, --landscape add the slower ones); each method against --baseline paired by seed (two-sided "
    "paired t, Holm-corrected over the methods of each measure); Kendall's tau of every measure with the gap "
    "(BCa bootstrap interval). Documented in docs/report.md."
)


def add_arguments(p) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="a checkpoint or peft adapter folder, a glob (quote it), or a folder holding runs")
    p.add_argument("--out", required=True, help="the report folder to write (created; see --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it holds a report genbound wrote (never a folder with other files)")
    p.add_argument("--baseline", default=None,
                   help="the method (or group label) every other method is compared against, paired by seed "
                        "(default: the first run's method)")
    p.add_argument("--gap", choices=("gap", "gap_01"), default="gap",
                   help="the gap the rank correlations use: the loss gap G (default) or the 0-1 gap")
    p.add_argument("--data-bounds", action="store_true", help="add the compression bound (needs the data)")
    p.add_argument("--hessian", action="store_true", help="add the top Hessian eigenvalue and trace (slower)")
    p.add_argument("--landscape", action="store_true", help="add the sharpness of a random slice (slower)")
    p.add_argument("--no-figures", action="store_true", help="write the tables only")
    p.add_argument("--top-k", type=positive_int, default=10, help="singular vectors for intruders (default 10)")
    p.add_argument("--eps", type=float, default=0.5, help="intruder threshold (default 0.5)")
    p.add_argument("--samples", type=positive_int, default=256,
                   help="training examples for Hessian / landscape (default 256)")
    p.add_argument("--grid", type=positive_int, default=11, help="landscape resolution, odd (default 11)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples of the tau intervals (default 1000; 0: none)")
    p.add_argument("--n", type=positive_int, default=None, help="training examples N, for peft adapters")
    p.add_argument("--backbone", default=None, help="backbone of peft adapters, when not resolvable")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap, Hessian and landscape (default 0)")
    add_progress(p)
    add_json(p)
    add_device(p)


def run(args) -> int:
    from ..core.errors import GenboundError
    from ..core.output import check_replaceable, check_writable, resolve_out
    from ..report.runs import ReportOptions, build_report, discover, report_dict, report_kind, write_report

    if args.bootstrap < 0:
        raise GenboundError(f"--bootstrap must be 0 or more, got {args.bootstrap}")
    if args.eps <= 0:
        raise GenboundError(f"--eps must be positive, got {args.eps}")
    out = resolve_out(args.out)
    sources = [str(p) for p in discover(args.runs)]
    check_replaceable(out, args.overwrite, report_kind(), sources)  # before any work
    check_writable(out)
    opts = ReportOptions(baseline=args.baseline, gap=args.gap, top_k=args.top_k, eps=args.eps,
                         data_bounds=args.data_bounds, hessian=args.hessian, landscape=args.landscape,
                         samples=args.samples, grid=args.grid, seed=args.seed, bootstrap=args.bootstrap,
                         n_train=args.n, backbone=args.backbone, figures=not args.no_figures)
    rep = build_report(args.runs, opts, device=resolve_device(args.device), progress=progress_of(args))
    path = write_report(rep, out, overwrite=args.overwrite, figures=not args.no_figures, sources=sources)
    if args.json:
        print_json({"out": str(path), **report_dict(rep)})
    else:
        print(f"genbound report: {len(rep.runs)} runs, {len(rep.summaries)} table cells, {len(rep.paired)} paired "
              f"comparisons, {len(rep.taus)} rank correlations -> {path}/report.html")
    return 0
