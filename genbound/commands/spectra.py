"""``genbound spectra CKPT``: singular values of every adapted layer's update, and intruder dimensions.

CKPT is a genbound checkpoint directory or a Hugging Face peft LoRA adapter directory. Singular values come
from the factors (genbound.diagnostics.spectra); with ``--intruders`` the top-k left singular vectors of W0 + dW are
compared with W0's (genbound.diagnostics.intruders), which needs the pretrained backbone (recorded in a genbound
checkpoint; for a peft adapter resolved from its base model or given with ``--backbone``). Nothing here
is random, so no seed is involved.
"""

from __future__ import annotations

from ..core.errors import GenboundError
from .common import (
    add_device,
    add_json,
    add_progress,
    count_or_all,
    format_table,
    print_json,
    progress_of,
    resolve_device,
)

# genbound.diagnostics.intruders.METHODS, written out so the parser needs no torch (tests/test_startup.py checks)
INTRUDER_METHODS = ("auto", "krylov", "dense", "gram")
HELP = "singular-value spectra of the weight updates (and intruder dimensions) of a checkpoint or peft adapter"
DESCRIPTION = (
    "Per-layer spectra of dW = s B A from the factors: spectral and Frobenius norm, stable and effective rank, "
    "energy in the top k, spectral density; with --intruders, intruder dimensions of W0 + dW (Shuttleworth et "
    "al. 2024). CKPT is a genbound checkpoint or a peft LoRA adapter directory."
)


def _eps(text: str) -> tuple[float, list[float] | None]:
    """'0.5' -> (0.5, None); 'sweep' -> (0.5, 0.05..1); 'sweep:N' -> N steps; '0.1,0.3,0.5' -> first + list."""
    from ..diagnostics.intruders import eps_sweep

    t = text.strip().lower()
    if t.startswith("sweep"):
        steps = 20
        if ":" in t:
            try:
                steps = int(t.split(":", 1)[1])
            except ValueError:
                raise GenboundError(f"--eps sweep:N needs an integer N, got '{text}'") from None
        return 0.5, eps_sweep(steps)
    try:
        vals = [float(x) for x in t.split(",") if x.strip()]
    except ValueError:
        raise GenboundError(f"--eps must be a number in (0, 1], a comma list, or 'sweep', got '{text}'") from None
    if not vals:
        raise GenboundError("--eps is empty")
    return vals[0], (vals if len(vals) > 1 else None)


def add_arguments(p) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="a genbound checkpoint or a peft adapter directory")
    p.add_argument("--top-k", type=int, default=10, help="k for the energy in the top k and for intruders (10)")
    p.add_argument("--intruders", action="store_true", help="also count intruder dimensions (needs the backbone)")
    p.add_argument("--intruder-k", default=None,
                   help="singular vectors of W0 + dW examined, an integer or 'all' (default: --top-k)")
    p.add_argument("--eps", default="0.5",
                   help="intruder threshold in (0, 1] (0.5), a comma list, or 'sweep' / 'sweep:N' over (0, 1]")
    p.add_argument("--intruder-method", choices=INTRUDER_METHODS, default="auto",
                   help="top-k of W0 + dW by Krylov on W0's SVD, by dense SVD, by one in-place Gram matrix (gram: "
                        "the least memory), or auto (dense up to 512, gram above)")
    p.add_argument("--bins", type=int, default=20, help="histogram bins of the spectral density (20)")
    p.add_argument("--backbone", default=None,
                   help="for a peft adapter: the base model (minilm, mlp or a model folder), if not recorded; for a "
                        "moved genbound checkpoint: where its model folder is now (checked by fingerprint)")
    p.add_argument("--dataset", default=None,
                   help="for a moved genbound checkpoint: where its data is now (checked by fingerprint; spectra "
                        "read no data)")
    add_json(p)
    add_device(p)
    add_progress(p)


def _fmt_fit(d) -> str:
    return f"{d.power_law.alpha:.3g}" if d.power_law is not None else "not fitted"


def _intruders(args, ckpt, updates, device):
    """The intruder report of ``--intruders``."""
    from ..core.readers import LazyTensors
    from ..diagnostics.intruders import BaseSVDCache, intruders

    eps, sweep = _eps(args.eps)
    k = args.top_k if args.intruder_k is None else count_or_all(args.intruder_k, "--intruder-k")
    # each W0 is decomposed once here, so none is kept: memory is one layer's, whatever the model's size;
    # a base read from its file is handed over as views of the mapped file, which the Gram path reads in
    # blocks, so W0 itself costs no copy
    w0 = ckpt.base_weights()
    w0 = w0.as_stored() if isinstance(w0, LazyTensors) else w0
    return intruders(w0, updates, k=k, eps=eps, sweep=sweep, method=args.intruder_method, device=device,
                     progress=progress_of(args), cache=BaseSVDCache(maxsize=0))


def run(args) -> int:
    from pathlib import Path

    from ..diagnostics.spectra import spectra
    from ..sources.peft_import import is_peft_dir
    from ..sources.source import load_any

    if args.top_k < 1:
        raise GenboundError(f"--top-k must be at least 1, got {args.top_k}")
    if args.bins < 1:
        raise GenboundError(f"--bins must be at least 1, got {args.bins}")
    device = resolve_device(args.device)
    path = Path(args.checkpoint)
    if not path.is_dir():
        raise GenboundError(f"{path} is not a directory; give a genbound checkpoint or a peft adapter directory")
    kind = "peft" if is_peft_dir(path) else "genbound"
    if kind == "genbound":  # a moved run: --backbone / --dataset say where its model and data are now
        from ..sources.source import load_source

        ckpt = load_source(path, args.backbone, dataset=args.dataset)
    else:
        ckpt = load_any(path, backbone=args.backbone)
    updates = ckpt.layer_updates()
    report = spectra(updates, top_k=args.top_k, bins=args.bins, device=device, progress=progress_of(args))
    intr = _intruders(args, ckpt, updates, device) if args.intruders else None
    meta = ckpt.meta
    header = {"source": str(path), "checkpoint": str(path), "format": kind, "method": meta.method, "rank": meta.rank,
              "alpha": meta.alpha, "backbone": meta.backbone, "layers": len(updates)}
    if args.json:
        print_json({**header, "spectra": report, "intruders": intr})
        return 0
    print(f"{path} ({kind}): method {meta.method}, rank {meta.rank}, alpha {meta.alpha}, "
          f"backbone {meta.backbone or '-'}, {len(updates)} adapted layers, device {device}")
    by_name = {lay.name: lay for lay in intr.layers} if intr else {}
    rows = []
    for lay in report.layers:
        row = [lay.name, f"{lay.out_features}x{lay.in_features}", f"{lay.numerical_rank}/{lay.rank_bound}",
               lay.spectral_norm, lay.frobenius_norm, lay.stable_rank, lay.effective_rank, lay.energy_top_k,
               _fmt_fit(lay.density)]
        if intr:
            li = by_name.get(lay.name)
            row.append(f"{li.count}/{li.k}" if li else "-")
        rows.append(row)
    o = report.overall
    row = ["overall", "", "", o.spectral_norm, o.frobenius_norm, o.stable_rank, o.effective_rank, o.energy_top_k,
           _fmt_fit(o.density)]
    if intr:
        row.append(str(intr.total))
    rows.append(row)
    head = ["layer", "shape", "rank", "||dW||_2", "||dW||_F", "stable rank", "eff. rank", f"energy@{report.top_k}",
            "ESD alpha"]
    if intr:
        head.append(f"intruders (eps {intr.eps:g})")
    print(format_table(rows, head))
    print(f"mean stable rank {o.mean_stable_rank if o.mean_stable_rank is None else round(o.mean_stable_rank, 4)}, "
          f"mean effective rank "
          f"{o.mean_effective_rank if o.mean_effective_rank is None else round(o.mean_effective_rank, 4)}; "
          "a power-law exponent is fitted only where at least 50 nonzero eigenvalues form the tail")
    if intr and len(intr.eps_sweep) > 1:
        print()
        print(format_table([[f"{e:g}", intr.total_by_eps[f"{e:g}"]] for e in intr.eps_sweep],
                           ["eps", "intruders (sum over layers)"]))
    if intr and intr.missing_base:
        print(f"no base weight for {len(intr.missing_base)} layer(s), skipped: {', '.join(intr.missing_base)}")
    for note in report.notes:
        print(f"note: {note}")
    return 0
