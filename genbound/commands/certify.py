"""``genbound certify``: a compression certificate on the test error of a subspace-trained checkpoint.

    genbound train --method lora --subspace-dim 500 --lr 0.1 --out runs/lora-sub
    genbound certify runs/lora-sub --levels 5 --json

The subspace vector w is quantized (k-means, then quantization-aware fine-tuning on the training set),
arithmetic-coded into a prefix-free message of K bits, decoded, and the decoded model's training error R_hat
enters the Occam bound kl(R_hat || R) <= (K ln 2 + ln(2 sqrt(N) / delta)) / N. The same K also bounds the
cross-entropy of the decoded model's prediction smoothed with the uniform one (SubLoRA), reported under
"smoothed" with its own parts. See docs/concepts.md, section "Certificates".
"""

from __future__ import annotations

from ..core.argtypes import positive_float_arg, seed_arg
from ..core.errors import GenboundError
from .common import add_device, add_dtype, add_json, format_table, print_json, resolve_device
from .dataopts import add_relocation_options

HELP = "certify the test error of a subspace-trained checkpoint (quantize, arithmetic-code, Occam bound)"
DESCRIPTION = __doc__


def add_arguments(p) -> None:
    from ..bounds.defaults import (
        DEFAULT_LEVELS,
        DEFAULT_POSTERIOR_LR,
        DEFAULT_POSTERIOR_STEPS,
        DEFAULT_QAT_LR,
        DEFAULT_QAT_STEPS,
    )

    p.add_argument("checkpoint", metavar="CKPT", help="a checkpoint trained with `genbound train --subspace-dim d`")
    p.add_argument("--levels", type=int, default=DEFAULT_LEVELS,
                   help=f"quantization levels L, at least 2, from the declared grid (default {DEFAULT_LEVELS})")
    p.add_argument("--delta", type=float, default=0.05, help="the certificate holds with probability 1 - delta")
    p.add_argument("--qat-steps", type=int, default=DEFAULT_QAT_STEPS,
                   help=f"quantization-aware fine-tuning steps (default {DEFAULT_QAT_STEPS}; 0: k-means only)")
    p.add_argument("--qat-lr", type=positive_float_arg, default=DEFAULT_QAT_LR, help=f"its Adam learning rate "
                   f"(default {DEFAULT_QAT_LR})")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the fine-tuning batches and dropout (recorded)")
    p.add_argument("--pac-bayes", action="store_true",
                   help="also the PAC-Bayes bound with a learned Gaussian posterior over w (slower)")
    p.add_argument("--prior-fraction", type=float, default=None, metavar="F",
                   help="certify with a data-dependent coding centre: CKPT was trained with `genbound train "
                        "--prior-fraction F` (a fraction declared in the certificate grid) and the error is counted "
                        "on the other training examples only (genbound.bounds.ddprior)")
    p.add_argument("--posterior-steps", type=int, default=DEFAULT_POSTERIOR_STEPS,
                   help="with --prior-fraction: Adam steps from the centre on the whole training set, whose "
                        "difference from the centre is coded as a second candidate "
                        f"(default {DEFAULT_POSTERIOR_STEPS}: the centre alone)")
    p.add_argument("--posterior-lr", type=positive_float_arg, default=DEFAULT_POSTERIOR_LR,
                   help=f"their learning rate (default {DEFAULT_POSTERIOR_LR})")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_relocation_options(p)
    add_device(p)
    add_dtype(p)
    add_json(p)


def run(args) -> int:
    from ..bounds.certificate import certify
    from ..checkpoints.checkpoint import load_checkpoint

    progress = False if args.no_progress else None
    ckpt = load_checkpoint(args.checkpoint, args.backbone, args.dataset)
    if args.prior_fraction is not None:
        from ..bounds.ddprior import certify_prior

        if args.pac_bayes:
            raise GenboundError("--pac-bayes is not available with --prior-fraction; drop one of them")
        if args.dtype != "float32":
            raise GenboundError(f"--dtype {args.dtype} is not available with --prior-fraction (its centre and "
                                "posterior are replayed in float32); drop --dtype")
        cert = certify_prior(ckpt, fraction=args.prior_fraction, levels=args.levels, delta=args.delta,
                             posterior_steps=args.posterior_steps, posterior_lr=args.posterior_lr,
                             qat_steps=args.qat_steps, qat_lr=args.qat_lr, seed=args.seed,
                             device=resolve_device(args.device), progress=progress)
    else:
        cert = certify(ckpt, levels=args.levels, delta=args.delta, qat_steps=args.qat_steps, qat_lr=args.qat_lr,
                       seed=args.seed, device=resolve_device(args.device), progress=progress,
                       pac_bayes=args.pac_bayes, base_dtype=args.dtype)
    if args.json:
        print_json(cert.to_dict())
        return 0
    b = cert.bits_breakdown
    rows = [["checkpoint", cert.checkpoint], ["method", cert.method], ["subspace dimension d", cert.d],
            ["levels L", cert.levels],
            ["bits K (prefix-free message)", cert.bits],
            ["  symbols (range-coded)", b["symbols"]], ["  codebook (float16)", b["codebook"]],
            ["  counts", b["counts"]], ["  hyperparameter grid index", b["hyperparameters"]],
            ["  levels used + stream length", b["levels"] + b["stream_length"]],
            ["declared grid", f"version {cert.grid_version}, {cert.grid_digest[:19]}"],
            ["training examples N" if cert.prior is None else "bound-part examples n (the rest chose the centre)",
             cert.n], ["delta", cert.delta],
            ["train error (decoded model)", cert.train_error], ["certified test error", cert.bound],
            ["measured test error (decoded model)", cert.test_error],
            ["train / test error before quantization", f"{cert.train_error_trained:.4g} / "
             f"{cert.test_error_trained:.4g}" if cert.test_error_trained is not None else "-"]]
    if cert.pac_bayes:
        pb = cert.pac_bayes
        rows.append(["PAC-Bayes bound (stochastic posterior over w)", pb["bound"]])
    sm = cert.smoothed
    if sm:
        rows += [[f"smoothed cross-entropy bound (nats; alpha {sm['alpha']:g}, {sm['form']} form)", sm["bound"]],
                 ["  smoothed train / test cross-entropy (decoded model)",
                  f"{sm['train_loss']:.4g} / {sm['test_loss']:.4g}" if sm["test_loss"] is not None
                  else f"{sm['train_loss']:.4g} / -"],
                 ["  ln V (the uniform prediction's loss)", sm["chance_loss"]]]
    print(cert.statement + "\n")
    print(format_table(rows, ["quantity", "value"]))
    print(f"\n{cert.verdict}")
    if sm:
        print(f"smoothed cross-entropy: {sm['verdict']}")
    print("\nAssumptions:")
    for a in cert.assumptions:
        print(f"- {a}")
    return 0
