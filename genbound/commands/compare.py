"""``genbound compare A B``: two checkpoints side by side, one row per quantity, the better value marked."""

from __future__ import annotations

from ..core.argtypes import seed_arg
from .common import (
    add_device,
    add_dtype,
    add_json,
    add_max_memory,
    add_progress,
    print_json,
    progress_of,
    resolve_device,
)
from .dataopts import add_data_options, add_task_option, data_choice

HELP = "compare two checkpoints (genbound or peft): fit, bounds, spectra, intruders, Hessian, landscape"
DESCRIPTION = (
    "Compare checkpoints A and B side by side: parameters, fit and the empirical gap, the Table-1, Theorem-1 and "
    "data-dependent bounds (each flagged vacuous or not), per-layer update spectra, intruder dimensions, the "
    "overlap of the two updates; with --hessian top eigenvalues and trace, with --landscape sharpness and the "
    "interpolation from A to B. The plain command takes well under a minute on CPU for two MiniLM checkpoints. "
    "'Better' is marked only where it means something (the absolute gap |G|, not the signed one; never between "
    "two vacuous bounds); per-layer rows cover the union of both layer sets ('absent' where a side lacks one). "
    "Checkpoints of different backbones or datasets are refused (exit 2) unless --allow-mismatch."
)


def add_arguments(p) -> None:
    p.add_argument("a", help="checkpoint A (genbound checkpoint or peft adapter directory)")
    p.add_argument("b", help="checkpoint B")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="print a Markdown table")
    fmt.add_argument("--latex", action="store_true", help="print a LaTeX (booktabs) table")
    add_json(p)
    p.add_argument("--out", default=None,
                   help="also write the report (format by suffix: .json .md .tex .txt) into an existing directory")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="compare checkpoints of different backbones or datasets anyway: nothing is marked better "
                        "and every output carries a MISMATCH banner (without it such a pair is refused)")
    add_progress(p)
    p.add_argument("--figures", default=None, metavar="DIR", help="write the pair's figures (PDF and PNG) to DIR")
    p.add_argument("--hessian", action="store_true", help="add top Hessian eigenvalues and trace")
    p.add_argument("--landscape", action="store_true", help="add sharpness and the A -> B interpolation")
    p.add_argument("--data-bounds", dest="data_bounds", action="store_true", default=None,
                   help="evaluate the compression bound (default: on for mlp, off for transformers)")
    p.add_argument("--no-data-bounds", dest="data_bounds", action="store_false")
    p.add_argument("--pac-bayes", action="store_true", help="add the PAC-Bayes bound (Monte Carlo; slower)")
    p.add_argument("--top-k", type=int, default=10, help="singular vectors for intruders (default 10)")
    p.add_argument("--eps", type=float, default=0.5, help="intruder threshold (default 0.5)")
    p.add_argument("--samples", type=int, default=256, help="training examples for Hessian / landscape (default 256)")
    p.add_argument("--grid", type=int, default=11, help="landscape resolution, odd (default 11)")
    p.add_argument("--n", type=int, default=None, help="training examples N, for peft adapters (which lack it)")
    p.add_argument("--backbone", default=None,
                   help="backbone of peft adapters, when not resolvable; for a moved genbound checkpoint: where its "
                        "model folder is now (checked by fingerprint)")
    p.add_argument("--dataset", default=None,
                   help="peft adapters: measure fit, gap, Hessian and landscape on this data (a registered name or "
                        "a data file / folder), with the adapter rebuilt on its base model folder; for a moved "
                        "genbound checkpoint: where its data is now (checked by fingerprint)")
    add_task_option(p)
    p.add_argument("--max-length", type=int, default=128, help="peft adapters with --dataset: tokens per example")
    p.add_argument("--split-seed", type=seed_arg, default=0,
                   help="peft adapters with --dataset: seed of a seeded split")
    add_data_options(p)
    p.add_argument("--seed", type=seed_arg, default=0)
    add_device(p)
    add_dtype(p)
    add_max_memory(p)


OUT_SUFFIXES = (".json", ".md", ".tex", ".txt")


def check_out(out: str | None):
    """The --out path, checked before any work: a known suffix, in a directory that exists (none is created)."""
    from pathlib import Path

    from ..core.errors import GenboundError

    if out is None:
        return None
    path = Path(out)
    if path.suffix.lower() not in OUT_SUFFIXES:
        raise GenboundError(f"--out {out}: unknown format '{path.suffix or '(no suffix)'}'; "
                            f"end the name in one of {', '.join(OUT_SUFFIXES)}")
    if not path.parent.is_dir():
        raise GenboundError(f"--out {out}: the directory {path.parent} does not exist; create it first")
    if path.is_dir():
        raise GenboundError(f"--out {out} is a directory; give a file name ending in one of {', '.join(OUT_SUFFIXES)}")
    return path


def run(args) -> int:
    from ..core.atomic import write_json, write_text
    from ..report.compare import compare, to_latex, to_markdown, to_text

    out = check_out(args.out)
    report = compare(args.a, args.b, device=str(resolve_device(args.device)), top_k=args.top_k, eps=args.eps,
                     data_bounds=args.data_bounds, pac_bayes=args.pac_bayes, hessian=args.hessian,
                     landscape=args.landscape, samples=args.samples, grid=args.grid, seed=args.seed,
                     n_train=args.n, backbone=args.backbone, figures=args.figures,
                     progress=progress_of(args), allow_mismatch=args.allow_mismatch,
                     data=data_choice(args), task=args.task, base_dtype=args.dtype, memory_budget=args.max_memory)
    if out is not None:
        suffix = out.suffix.lower()
        if suffix == ".json":
            write_json(out, report.to_dict())
        else:
            render = {".md": to_markdown, ".tex": to_latex, ".txt": lambda r: to_text(r) + "\n"}[suffix]
            write_text(out, render(report))
    if args.json:
        print_json(report.to_dict())
    elif args.markdown:
        print(to_markdown(report), end="")
    elif args.latex:
        print(to_latex(report), end="")
    else:
        print(to_text(report))
    return 0
