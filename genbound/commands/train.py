"""``genbound train``: fine-tune a backbone with one method and write a checkpoint."""

from __future__ import annotations

from ..bounds.defaults import grid_section
from ..core.argtypes import seed_arg
from ..core.errors import GenboundError
from .common import (
    add_device,
    add_dtype,
    add_json,
    add_progress,
    add_shard_argument,
    format_table,
    print_json,
    progress_of,
    resolve_device,
)
from .dataopts import add_data_options, data_options
from .listing import chained_method_names, method_names

HELP = "fine-tune a backbone with one of the catalogue's methods and write a checkpoint"
DESCRIPTION = (
    "Fine-tune BACKBONE on DATASET with METHOD and write a checkpoint directory (genbound.json + "
    "tensors.safetensors) to --out. Every random choice comes from --seed (and the split from --split-seed). "
    "The training state is saved beside it (.<name>.state, removed at the end); --resume continues a run "
    "that was killed."
)


def add_arguments(p) -> None:
    add_setting_arguments(p)
    p.add_argument("--save-trajectory", action="store_true", help="also save the trained tensors every epoch")
    p.add_argument("--trajectory-every", type=int, default=None, help="steps between trajectory snapshots")
    p.add_argument("--out", required=True, help="checkpoint directory to create")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing checkpoint at --out (and discard an interrupted run's saved state); "
                        "a directory holding anything but a checkpoint is never replaced")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of --out from its saved state (bit-identical to an "
                        "uninterrupted run on CPU); a finished checkpoint is kept as it is; without a state, start")
    p.add_argument("--save-every", type=int, default=None, metavar="N",
                   help="save the training state every N steps and at each epoch's end (default 50; 0: never)")
    p.add_argument("--no-final-eval", action="store_true",
                   help="skip the final evaluation of the full train / validation / test splits (for sweeps that "
                        "evaluate later); the checkpoint then records final_eval: false and no losses, and "
                        "`genbound evaluate` measures them")
    add_shard_argument(p)
    p.add_argument("--report-to", nargs="+", default=None, metavar="TRACKER",
                   help="log the loss and cheap diagnostics (||dW||, stable rank per layer, intruders, gap) to "
                        "tensorboard, mlflow and/or wandb (offline) during training; needs genbound[trackers]")
    p.add_argument("--log-dir", default=None,
                   help="where the trackers write (default: <out>-logs beside the checkpoint; MLflow: a file store "
                        "there unless MLFLOW_TRACKING_URI is set)")
    p.add_argument("--log-every", type=int, default=10, metavar="N", help="log the running loss every N steps")
    p.add_argument("--diagnostics-every", type=int, default=None, metavar="K",
                   help="log the diagnostics every K steps (default: at each epoch's end and at the end)")
    p.add_argument("--hessian-every", type=int, default=None, metavar="K",
                   help="with --report-to: also log the top Hessian eigenvalue every K steps (Lanczos on 256 "
                        "seeded training examples; slower)")
    add_device(p)
    add_dtype(p)
    add_json(p)
    add_progress(p)


def add_setting_arguments(p, method_required: bool = True) -> None:
    """The options that describe a run (method, backbone, data, adapters, optimizer, seeds); ``genbound cost``
    takes the same ones. The method names come from the recorded catalogue (genbound.commands.listing), so that
    ``--help`` imports no torch."""
    p.add_argument("--method", required=method_required, help=f"one of: {', '.join(method_names())}")
    p.add_argument("--backbone", default="minilm",
                   help="minilm (default), paraphrase-minilm-l3, mlp, or a model folder")
    p.add_argument("--dataset", default=None,
                   help="bbc or tweets (text backbones), digits (mlp), or a data path: .csv, .jsonl, .parquet, a "
                        "datasets save_to_disk folder or an image folder; default fits the backbone")
    add_data_options(p)
    p.add_argument("--task", choices=["seq-cls", "image-cls", "causal-lm", "pooled"], default=None,
                   help="how a model folder is built: its own sequence / image classifier (default by its config), "
                        "causal-lm (AutoModelForCausalLM, next-token loss on the texts; never chosen by default) "
                        "or pooled (encoder, mean pooling, genbound's head)")
    p.add_argument("--rank", type=int, default=16, help="adapter rank r (default 16)")
    p.add_argument("--alpha", type=float, default=32.0, help="scale numerator: s = alpha / r (default 32)")
    chained = ", ".join(chained_method_names())
    p.add_argument("--chain", type=int, default=1, help=f"links k of a chained method ({chained})")
    budget = p.add_mutually_exclusive_group()
    # default None, not 1: argparse treats a value identical to the default as absent, so "--epochs 1 --steps 5"
    # would pass the mutual exclusion silently.
    budget.add_argument("--epochs", type=int, default=None, help="passes over the training split (default 1)")
    budget.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    p.add_argument("--lr", type=float, default=None,
                   help=f"learning rate (default 5e-4; with --subspace-dim {default_lr(1):g}, the declared certificate "
                        "grid's default, so that the run can be certified)")
    p.add_argument("--lr-ratio", type=float, default=None, help="LoRA+ lr(B)/lr(A) (default 16, lora_plus only)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128, help="tokens per example for text datasets")
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps (default 0.1)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (0 disables)")
    tg = p.add_mutually_exclusive_group()
    tg.add_argument("--targets", nargs="+", default=None,
                    help="Linear (or GPT-2 Conv1D) layers to adapt, peft style: a name or dotted suffix of one "
                         "(default: query value)")
    tg.add_argument("--target-regex", default=None, metavar="REGEX",
                    help="adapt the layers whose full name matches REGEX (peft's target_modules as a string)")
    p.add_argument("--exclude", nargs="+", default=None, help="layers never adapted (names or dotted suffixes)")
    p.add_argument("--paca-columns", choices=["random", "first"], default="random")
    p.add_argument("--subspace-dim", type=int, default=None, metavar="d",
                   help="train only w in theta = theta_0 + P w: P a seeded Kronecker projection of every trained "
                        "tensor (head included) onto d dimensions (split over a chain's links); needed by "
                        "`genbound certify`")
    p.add_argument("--prior-fraction", type=float, default=None, metavar="F",
                   help="train on the prior part only: the first round(F N) of a seeded permutation of the training "
                        "split (seed 0, declared in the certificate grid); the run is then the data-dependent centre "
                        "of `genbound certify --prior-fraction F`, which counts errors on the other examples")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--split-seed", type=seed_arg, default=0)


def default_lr(subspace_dim: int | None) -> float:
    """5e-4, or for a subspace run the declared certificate grid's training default (so that the default run
    is one `genbound certify` accepts; genbound.bounds.defaults reads it without torch, for --help)."""
    if subspace_dim is None:
        return 5e-4
    return float(grid_section("train_defaults")["lr"])


def config_from_args(args, method: str | None = None):
    """The TrainConfig the setting options describe (``method`` overrides --method)."""
    from ..training.train import TrainConfig

    return TrainConfig(
        method=method or args.method, backbone=args.backbone, dataset=args.dataset, rank=args.rank, alpha=args.alpha,
        chain=args.chain, epochs=1 if args.epochs is None else args.epochs, steps=args.steps,
        lr=default_lr(args.subspace_dim) if args.lr is None else args.lr,
        lr_ratio=args.lr_ratio,
        batch_size=args.batch_size, max_length=args.max_length, warmup=args.warmup,
        weight_decay=args.weight_decay, clip=args.clip, targets=args.target_regex or args.targets,
        exclude=args.exclude, paca_columns=args.paca_columns, task=args.task, **data_options(args),
        subspace_dim=args.subspace_dim, prior_fraction=getattr(args, "prior_fraction", None), seed=args.seed,
        split_seed=args.split_seed, device=args.device, base_dtype=args.dtype,
        progress=progress_of(args),
    )


def run(args) -> int:
    from ..core.distributed import launched
    from ..training.train import train

    config = config_from_args(args)
    config.save_trajectory, config.trajectory_every = args.save_trajectory, args.trajectory_every
    monitor = None
    if args.shard != "none" and args.report_to:  # checked here, alike in every process: rank 0 alone has a monitor
        raise GenboundError("--shard fsdp and --report-to do not go together (the trackers' diagnostics run forward "
                            "passes on rank 0 alone); drop one")
    with launched(resolve_device(args.device)) as group:  # under torchrun: data-parallel over the processes
        if group is not None and not group.is_main:
            config.progress = False
        elif args.report_to:
            monitor = _monitor(args, config)
        try:
            result = train(config, args.out, overwrite=args.overwrite, resume=args.resume,
                           save_every=args.save_every, group=group, monitor=monitor,
                           final_eval=not args.no_final_eval, shard=args.shard)
        finally:
            if monitor is not None:
                monitor.close()
    if group is not None and not group.is_main:
        return 0  # rank 0 wrote the checkpoint and prints
    meta = result.meta
    if args.json:
        # what the run was trained on; the checkpoint's own metadata follows (sources: by fingerprint)
        print_json({"source": {"backbone": meta.backbone, "dataset": meta.dataset}, "checkpoint": str(result.path),
                    **meta.to_json()})
        return 0
    r = meta.results
    if meta.final_eval:
        rows = [[s, r[f"{s}_loss"], r[f"{s}_accuracy"]] for s in ("train", "val", "test")]
        print(format_table(rows, ["split", "loss", "accuracy"]))
        fit = f"gap (test - train loss) {r['gap']:.4f}"
    else:
        fit = "final evaluation skipped (--no-final-eval; `genbound evaluate` measures it)"
    m = meta.metrics
    print(f"\n{fit}; {meta.params['trainable']:,} trainable, "
          f"{meta.params['data_dependent']:,} data-dependent parameters; "
          f"{m['seconds_per_step']:.3f} s/step, peak memory {m['peak_memory_bytes'] / 2**20:.0f} MiB")
    if meta.hyperparameters.get("task") == "causal-lm":
        print("causal LM: loss, next-token accuracy and gap are means over target tokens; N = "
              f"{meta.n_train:,} training sequences (the i.i.d. samples a bound counts)")
    if m.get("resumed_at"):
        print(f"resumed from the saved state at step(s) {', '.join(map(str, m['resumed_at']))}")
    print(f"checkpoint written to {result.path}")
    return 0


def _monitor(args, config):
    """The trackers of --report-to (each imported only now), logging under --log-dir."""
    from dataclasses import asdict
    from pathlib import Path

    from ..training.trackers import TrainMonitor, open_trackers

    out = Path(args.out)
    log_dir = Path(args.log_dir) if args.log_dir else out.parent / f"{out.name}-logs"
    params = {k: v for k, v in asdict(config).items() if v is not None}
    return TrainMonitor(open_trackers(args.report_to, log_dir, out.name, params), log_every=args.log_every,
                        diagnostics_every=args.diagnostics_every, hessian_every=args.hessian_every,
                        seed=config.seed)
