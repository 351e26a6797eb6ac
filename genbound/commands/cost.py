"""``genbound cost``: exact saved-activation bytes, FLOPs and paired step-time ratio of a method
(genbound.training.cost)."""

from __future__ import annotations

from ..core.errors import GenboundError
from .common import add_device, add_dtype, add_json, format_table, positive_int, print_json, resolve_device
from .train import add_setting_arguments, config_from_args

HELP = "count a method's saved-activation, parameter and optimizer bytes and FLOPs per step; time two methods paired"
DESCRIPTION = (
    "Build METHOD on BACKBONE as `genbound train` would (or the setting CKPT was trained with) and take one "
    "training step on its first batch, training nothing: the bytes autograd saves for the backward pass "
    "(deduplicated by storage, split into frozen-backbone and adapter-owned), parameter, gradient and AdamW "
    "state bytes, the predicted peak (their sum), and the FLOPs of the forward and the backward in total and "
    "per adapted layer. These are properties of the computation and equal on every rerun. --pair A B builds "
    "both methods side by side and steps them in alternation on the same batch (--timing-pairs pairs, process "
    "CPU time, or CUDA events on a GPU): the step-time ratio B / A with a bootstrap interval over the pairs. "
    "A chained method is measured on its first link (every link has the same shapes)."
)


def add_arguments(p) -> None:
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="a genbound checkpoint: measure the setting it was trained with (instead of --method ...)")
    add_setting_arguments(p, method_required=False)
    p.add_argument("--pair", nargs=2, metavar=("A", "B"), default=None,
                   help="measure methods A and B in one setting and time B against A (the ratio B / A); a chained "
                        "method gets --chain, the others chain 1")
    p.add_argument("--timing-pairs", type=positive_int, default=None, metavar="N",
                   help="interleaved step pairs timed (default 20 with --pair; without --pair, N > 0 times the "
                        "method against itself: the noise floor)")
    p.add_argument("--warmup-pairs", type=int, default=2, metavar="W", help="untimed pairs first (default 2)")
    p.add_argument("--level", type=float, default=0.95, help="the ratio interval's level (default 0.95)")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap resampling (default 0)")
    add_device(p)
    add_dtype(p)
    add_json(p)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f}"


def run(args) -> int:
    from ..methods.catalogue import get_method
    from ..training.cost import (
        as_dict,
        build_setting,
        config_from_checkpoint,
        flop_cost,
        load_splits_for,
        memory_cost,
        paired_timing,
    )

    device = resolve_device(args.device)
    if args.checkpoint is not None:
        if args.method or args.pair:
            raise GenboundError("give a checkpoint or --method / --pair, not both")
        base = config_from_checkpoint(args.checkpoint)
        methods = [base.method]
    elif args.pair:
        base = config_from_args(args, method=args.pair[0])
        methods = list(args.pair)
    elif args.method:
        base = config_from_args(args)
        methods = [args.method]
    else:
        raise GenboundError("name what to measure: a checkpoint, --method M, or --pair A B")
    if args.warmup_pairs < 0:
        raise GenboundError(f"--warmup-pairs must be 0 or more, got {args.warmup_pairs}")
    pairs = args.timing_pairs if args.timing_pairs is not None else (20 if args.pair else 0)
    chain = base.chain
    splits = load_splits_for(base)
    source = ({"checkpoint": str(args.checkpoint)} if args.checkpoint is not None else {})
    source.update(backbone=base.backbone, dataset=base.dataset)
    report: dict = {"source": source, "device": str(device), "methods": {}}
    settings = {}
    for name in methods:
        config = config_from_args(args, method=name) if args.checkpoint is None else base
        config.dataset = base.dataset
        config.chain = chain if get_method(name).chained else 1
        setting = build_setting(config, splits, device)
        mem, flops = memory_cost(setting), flop_cost(setting)
        report["methods"][name] = {"setting": setting.describe(), "memory": as_dict(mem), "flops": as_dict(flops)}
        settings[name] = setting
    timing = None
    if pairs:
        a = settings[methods[0]]
        b = settings[methods[-1]] if len(methods) > 1 else build_setting(
            config_from_args(args, method=methods[0]) if args.checkpoint is None else config_from_checkpoint(
                args.checkpoint), splits, device)
        timing = paired_timing(a, b, pairs=pairs, warmup=args.warmup_pairs, level=args.level,
                               seed=args.bootstrap_seed)
        report["timing"] = as_dict(timing)
    if args.json:
        print_json(report)
        return 0
    rows = []
    for name, r in report["methods"].items():
        m, f = r["memory"], r["flops"]
        rows.append([name, _mib(m["saved_frozen_bytes"]), _mib(m["saved_adapter_bytes"]),
                     _mib(m["parameter_bytes_frozen"] + m["parameter_bytes_trained"] + m["buffer_bytes"]),
                     _mib(m["gradient_bytes"] + m["optimizer_state_bytes"]), _mib(m["predicted_peak_bytes"]),
                     _mib(m["cuda_peak_bytes"]), f"{f['forward']:,}", f"{f['backward']:,}"])
    print(format_table(rows, ["method", "saved frozen MiB", "saved adapter MiB", "params MiB", "grads+AdamW MiB",
                               "predicted peak MiB", "CUDA peak MiB", "FLOPs forward", "FLOPs backward"]))
    s = next(iter(report["methods"].values()))["setting"]
    print(f"\none step on {s['batch_size']} examples ({', '.join(f'{k} {v}' for k, v in s['feature_shapes'].items())})"
          f", {len(s['adapted_layers'])} adapted layers, {report['device']}")
    if timing is not None:
        lo, hi = timing.interval
        print(f"step time {timing.b} / {timing.a}: {timing.ratio:.4f} [{lo:.4f}, {hi:.4f}] ({timing.level:.0%} "
              f"bootstrap over {timing.pairs} interleaved pairs, {timing.clock}; mean {timing.mean_a:.4f} s vs "
              f"{timing.mean_b:.4f} s)")
    return 0
