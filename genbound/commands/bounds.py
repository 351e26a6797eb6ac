"""``genbound bounds``: generalization bounds for checkpoints or for a bare configuration.

    genbound bounds CKPT [CKPT ...]                      Table 1 row, Theorem 1, compression bound
    genbound bounds --config roberta-base --no-head      the paper's Table 1 for a preset
    genbound bounds --layers 768x768*24 --rank 16 --q 32 --sigma 0.5 --n 3668 --method lora --no-head
    genbound bounds --config cfg.json --method all --latex table1.tex

A configuration file is a JSON object with keys layers ("768x768*24" or [[out, in], ...]), rank, chain,
q, sigma (or loss "01" / "ce" with clip), n, head, total, name; flags override it.
"""

from __future__ import annotations

from ..core.argtypes import seed_arg
from .common import add_device, add_dtype, add_json, print_json, resolve_device
from .dataopts import add_data_options, add_source_options, source_from_args

HELP = "generalization bounds (the paper's Table 1, Theorem 1, compression, PAC-Bayes)"
DESCRIPTION = __doc__


def add_arguments(p) -> None:
    p.add_argument("checkpoints", nargs="*", metavar="CKPT",
                   help="checkpoint directories (genbound checkpoints or peft adapters)")
    add_source_options(p)
    add_data_options(p)
    g = p.add_argument_group("bare configuration")
    g.add_argument("--config", help="preset (roberta-base, minilm-bbc) or JSON file")
    g.add_argument("--layers", help="adapted layer shapes OUTxIN[*COUNT], comma-separated, e.g. 768x768*24")
    g.add_argument("--rank", type=int, help="rank r")
    g.add_argument("--chain", type=int, help="chain length k (chained methods only)")
    g.add_argument("--n", type=int, help="number of training examples N (default: from the checkpoint)")
    g.add_argument("--head", type=int, help="trained head parameter count (config), e.g. 384*5+5 = 1925")
    g.add_argument("--total-params", type=int, help="every parameter of the model incl. the head (fft)")
    g.add_argument("--method", action="append", help="method name or 'all' (repeatable; config default: all)")
    b = p.add_argument_group("bound settings")
    b.add_argument("--q", type=float, help="bits per stored parameter (default: from the stored dtype, or 32)")
    b.add_argument("--sigma", type=float, help="sub-Gaussian parameter of the loss (overrides --loss)")
    b.add_argument("--loss", choices=["01", "ce"], default="01", help="loss whose range gives sigma (default 01)")
    b.add_argument("--clip", type=float, help="cross-entropy clip level M (sigma = M / 2; Theorem 1's loss range)")
    b.add_argument("--no-head", action="store_true", help="do not count the head (reproduces the paper's table)")
    b.add_argument("--delta", type=float, default=0.05, help="confidence parameter (default 0.05)")
    b.add_argument("--input-bound", type=float, help="Theorem 1's C (default: max ||x|| over the training set)")
    b.add_argument("--loss-lipschitz", type=float, default=2.0**0.5,
                   help="loss Lipschitz constant in the logits (default sqrt 2, cross-entropy)")
    b.add_argument("--theorem-form", choices=["recursion", "printed"], default="recursion",
                   help="Theorem 1 by the O(L) recursion (default) or as printed in the paper (warns)")
    b.add_argument("--no-theorem", action="store_true", help="skip Theorem 1")
    b.add_argument("--no-compression", action="store_true", help="skip the compression (Occam) bound")
    b.add_argument("--pac-bayes", action="store_true", help="also compute the PAC-Bayes bound (slower)")
    b.add_argument("--pb-samples", type=int, default=20, help="Monte Carlo posterior samples per scale")
    b.add_argument("--seed", type=seed_arg, default=0, help="seed of the PAC-Bayes posterior draws (recorded)")
    o = p.add_argument_group("output")
    add_json(o)
    o.add_argument("--markdown", metavar="FILE", help="write Table 1 as Markdown ('-' for stdout)")
    o.add_argument("--latex", metavar="FILE", help="write Table 1 as LaTeX booktabs ('-' for stdout)")
    o.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_device(o)
    add_dtype(o)


def _methods(args) -> list[str] | None:
    if not args.method:
        return None
    names: list[str] = []
    for m in args.method:
        names += [x.strip() for x in m.split(",") if x.strip()]
    return None if "all" in names else names


def run(args) -> int:
    import warnings

    from ..bounds.common import sigma_for_loss
    from ..bounds.mi import BoundConfig, load_config, override, parse_layers
    from ..bounds.report import format_text, report_for_checkpoint, report_for_config, to_latex, to_markdown
    from ..core.atomic import write_text
    from ..core.errors import GenboundError

    include_head = not args.no_head
    reports = []
    if args.checkpoints:
        if args.config or args.layers:
            raise GenboundError("give checkpoints or a bare configuration (--config / --layers), not both")
        device = resolve_device(args.device)
        for path in args.checkpoints:
            with warnings.catch_warnings():
                if args.theorem_form == "printed":
                    warnings.simplefilter("always")
                reports.append(report_for_checkpoint(
                    source_from_args(args, path), include_head=include_head, q=args.q, sigma=args.sigma,
                    loss=args.loss, clip=args.clip,
                    n=args.n, total=args.total_params, delta=args.delta, input_bound=args.input_bound,
                    loss_lipschitz=args.loss_lipschitz, theorem_form=args.theorem_form, theorem=not args.no_theorem,
                    compression=not args.no_compression, pac_bayes=args.pac_bayes, pb_samples=args.pb_samples,
                    seed=args.seed, device=device, progress=False if args.no_progress else None,
                    base_dtype=args.dtype))
    else:
        sigma = args.sigma
        if sigma is None and (args.loss != "01" or args.clip is not None):
            sigma = sigma_for_loss(args.loss, args.clip)
        if args.config:
            cfg = load_config(args.config, n=args.n)
        else:
            missing = [f for f, v in (("--layers", args.layers), ("--rank", args.rank), ("--n", args.n)) if v is None]
            if missing:
                raise GenboundError(f"a bare configuration needs {', '.join(missing)} (or --config PRESET|FILE), "
                                    "or give checkpoint directories")
            cfg = BoundConfig(layers=parse_layers(args.layers), rank=args.rank, n_train=args.n, name="command line")
            cfg.sources = {k: "command line" for k in ("layers", "rank", "n_train")}
            cfg.sources.update(q="default 32 bits", sigma="0-1 loss: 1/2", chain="default 1", head="default 0")
        cfg = override(cfg, layers=parse_layers(args.layers) if args.layers and args.config else None,
                       rank=args.rank if args.config else None, n_train=args.n if args.config else None,
                       chain=args.chain, q=args.q, sigma=sigma, head=args.head, total=args.total_params)
        if args.loss == "ce" and args.sigma is None:
            cfg.loss = f"cross-entropy clipped at {args.clip:g}"
        reports.append(report_for_config(cfg, _methods(args), include_head))
    for target, render in ((args.markdown, to_markdown), (args.latex, to_latex)):
        if target == "-":
            print(render(reports))
        elif target:
            write_text(target, render(reports))
    if args.json:
        print_json({"source": [r.source for r in reports] if len(reports) > 1 else reports[0].source,
                    "reports": reports})
    elif "-" not in (args.markdown, args.latex):
        print("\n\n".join(format_text(r) for r in reports))
    return 0
