"""``genbound demo``: the main job on the embedded default, offline.

Fine-tunes two adapters (LoRA and cLA by default) on BBC News with the pretrained MiniLM, compares them
(fit, gap, bounds, spectra, intruders), writes the figures and the report, and prints where they are.
Checkpoints already in the output directory are reused, so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

from ..core.argtypes import seed_arg
from .common import add_device, add_json, add_progress, print_json, progress_of, resolve_device

HELP = "train two adapters on the embedded default (MiniLM, BBC News), compare them, write figures"


def add_arguments(p) -> None:
    p.add_argument("--out", default="demo-output", help="output directory (default demo-output)")
    p.add_argument("--methods", nargs=2, default=["lora", "cla"], metavar=("A", "B"))
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--steps", type=int, default=60, help="training steps per adapter (default 60)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-length", type=int, default=64, help="tokens per article (default 64)")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--landscape", action="store_true", help="add landscape rows and figures (slower)")
    p.add_argument("--hessian", action="store_true", help="add Hessian rows and figures (slower)")
    add_device(p)
    add_json(p)
    add_progress(p)


def run(args) -> int:
    import sys
    import time
    from pathlib import Path

    from ..checkpoints.checkpoint import is_checkpoint, load_meta
    from ..core.atomic import write_json, write_text
    from ..data.datasets import default_dataset_for, get_dataset
    from ..models.backbones import get_backbone
    from ..report.compare import compare, to_markdown, to_text
    from ..training.train import TrainConfig, train

    def say(text: str) -> None:  # progress lines: on stderr under --json, so that stdout is the JSON alone
        print(text, file=sys.stderr if args.json else sys.stdout)

    out = Path(args.out)
    device = str(resolve_device(args.device))
    t0 = time.perf_counter()
    backbone = get_backbone(args.backbone)
    dataset = default_dataset_for(backbone)
    splits = None
    paths = []
    for method in args.methods:
        path = out / method
        config = TrainConfig(method=method, backbone=args.backbone, dataset=dataset, rank=args.rank,
                             alpha=args.alpha, steps=args.steps, lr=args.lr, max_length=args.max_length,
                             seed=args.seed, device=device, progress=progress_of(args))
        if is_checkpoint(path) and _same_run(load_meta(path), config):
            say(f"[demo] reusing {path}")
        else:
            if splits is None:
                say(f"[demo] loading {dataset} for {args.backbone} (max length {args.max_length})")
                splits = get_dataset(dataset).load(backbone, config.split_seed, args.max_length,
                                                   progress=progress_of(args))
            say(f"[demo] training {method}: rank {args.rank}, {args.steps} steps on {device}")
            meta = train(config, path, overwrite=True, splits=splits).meta
            r = meta.results
            say(f"[demo]   test accuracy {r['test_accuracy']:.3f}, gap {r['gap']:+.4f}, "
                f"{meta.metrics['seconds_per_step']:.2f} s/step")
        paths.append(path)
    say("[demo] comparing")
    figures = out / "figures"
    report = compare(paths[0], paths[1], device=device, figures=figures, hessian=args.hessian,
                     landscape=args.landscape, seed=args.seed, progress=progress_of(args))
    write_json(out / "compare.json", report.to_dict())
    write_text(out / "compare.md", to_markdown(report))
    elapsed = time.perf_counter() - t0
    if args.json:
        print_json({"source": [str(p) for p in paths], "checkpoints": [str(p) for p in paths],
                    "report": report.to_dict(), "seconds": elapsed})
        return 0
    print()
    print(to_text(report))
    print(f"\n[demo] done in {elapsed:.0f} s. Checkpoints: {', '.join(map(str, paths))}")
    print(f"[demo] report: {out / 'compare.md'} and {out / 'compare.json'}; figures in {figures}/")
    return 0


def _same_run(meta, config) -> bool:
    h = meta.hyperparameters
    keys = ("method", "backbone", "rank", "alpha", "steps", "lr", "max_length", "seed")
    return all(h.get(k) == getattr(config, k) for k in keys)
