"""f-CMI estimates of the expected gap per method (Harutyunyan et al. 2021; genbound.bounds.fcmi).

    python -m analysis.fcmi --preset mlp --out runs/fcmi-mlp --doc docs/results/fcmi.md
    python -m analysis.fcmi --preset minilm --out runs/fcmi-minilm --methods lora cla

Plan: for each method, ``--supersamples`` supersample seeds x ``--masks`` mask seeds. Supersample seed s draws
2n examples from the whole dataset (train, validation and test splits pooled) and pairs them; mask seed u
draws U in {0, 1}^n; the run trains the preset's configuration on the n chosen examples and records its
predicted labels on all 2n (``derived/<run>.json``). Runs are resumable and can be shared by several processes
(each run is claimed with a lock, as in analysis.sweep; a finished run's predictions are not computed again).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genbound.bounds.fcmi import SupersampleRuns, fcmi_bound
from genbound.checkpoints.checkpoint import load_checkpoint
from genbound.core.atomic import write_json, write_text
from genbound.core.errors import GenboundError
from genbound.data.datasets import Splits, get_dataset
from genbound.data.evalset import EvalSet
from genbound.methods.catalogue import METHODS
from genbound.models.backbones import get_backbone
from genbound.training.train import train

from . import locks
from .presets import Preset, train_config
from .sweep import read_cache

PRESETS: dict[str, tuple[Preset, dict[str, int]]] = {
    "mlp": (Preset("fcmi-mlp", "the pretrained mlp on digits 5-9, r = 4, 60 steps of 32 (chains: 3 links)",
                   backbone="mlp", dataset="digits", rank=4, alpha=8.0, chain=3, lr=1e-2, lr_full=1e-3, steps=60,
                   batch_size=32), {"n": 150, "masks": 8, "supersamples": 2}),
    "minilm": (Preset("fcmi-minilm", "all-MiniLM-L6-v2 on BBC News, r = 8, 32 tokens, 12 steps of 16",
                      backbone="minilm", dataset="bbc", rank=8, alpha=16.0, chain=3, lr=2e-3, lr_full=5e-5,
                      steps=12, batch_size=16, max_length=32), {"n": 40, "masks": 4, "supersamples": 3}),
}


def _pool(preset: Preset):
    splits = get_dataset(preset.dataset).load(get_backbone(preset.backbone), preset.split_seed, preset.max_length)
    parts = [splits.train, splits.val, splits.test]
    feats = {k: torch.cat([p.features[k] for p in parts]) for k in splits.train.features}
    return splits, EvalSet(feats, torch.cat([p.labels for p in parts]))


def supersample(pool, n: int, seed: int) -> torch.Tensor:
    """(n, 2) pool indices: 2n distinct examples drawn with the supersample seed, paired in draw order."""
    if 2 * n > len(pool):
        raise GenboundError(f"a supersample of {n} pairs needs {2 * n} examples; the dataset has {len(pool)}")
    g = torch.Generator().manual_seed(1_000_003 * int(seed) + 17)
    return torch.randperm(len(pool), generator=g)[: 2 * n].reshape(n, 2)


def mask(n: int, seed: int, u: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(7_919 * int(seed) + 104_729 * int(u) + 3)
    return torch.randint(0, 2, (n,), generator=g)


def run_one(preset: Preset, method: str, pool, splits, n: int, s: int, u: int, run_dir: Path, device: str
            ) -> dict[str, Any]:
    """Train on the masked half of supersample s and predict every example of the supersample."""
    pairs = supersample(pool, n, s)
    U = mask(n, s, u)
    chosen = pairs[torch.arange(n), U]
    other = pairs[torch.arange(n), 1 - U]
    sub = Splits(splits.name, splits.classes, pool.index(chosen), pool.index(other), pool.index(other), 0,
                 {"supersample": s, "mask": u})
    config = train_config(preset, method, seed=u, device=device)
    config.progress = False
    result = train(config, run_dir, overwrite=True, splits=sub, save_every=0)
    model = load_checkpoint(result.path).build_model(device)
    flat = pool.index(pairs.reshape(-1))
    preds = []
    with torch.no_grad():
        for feats, _ in flat.batches(256, device):
            preds.append(model(**feats).argmax(-1).cpu())
    pred = torch.cat(preds).reshape(n, 2)
    return {"supersample": s, "mask_seed": u, "mask": U.tolist(), "predictions": pred.tolist(),
            "labels": pool.labels[pairs].tolist()}


def collect(preset: Preset, plan: dict[str, int], methods: list[str], out: Path, device: str = "cpu"
            ) -> dict[str, Any]:
    from tqdm.auto import tqdm

    splits, pool = _pool(preset)
    n = plan["n"]
    results: dict[str, Any] = {}
    todo = [(m, s, u) for m in methods for s in range(plan["supersamples"]) for u in range(plan["masks"])]
    done: dict[tuple, dict] = {}
    bar = tqdm(total=len(todo), desc="f-CMI runs", unit="run")
    while todo:
        waiting = []
        for m, s, u in todo:
            name = f"{m}-z{s}-u{u}"
            derived = out / "derived" / f"{name}.json"
            key = {"preset": preset.to_dict(), "n": n}
            if (data := read_cache(derived, key, "run")) is not None:
                done[(m, s, u)] = data["run"]
                bar.update(1)
                continue
            with locks.held(out / "runs" / f".{name}.fcmi.lock") as mine:  # not train()'s own run lock
                if not mine:
                    waiting.append((m, s, u))
                    continue
                run = run_one(preset, m, pool, splits, n, s, u, out / "runs" / name, device)
                write_json(derived, {"key": key, "run": run})
                done[(m, s, u)] = run
            bar.update(1)
        todo = waiting
        if todo:
            import time

            time.sleep(5)
    bar.close()
    for m in methods:
        sups = []
        for s in range(plan["supersamples"]):
            runs = [done[(m, s, u)] for u in range(plan["masks"])]
            sups.append(SupersampleRuns(np.array([r["mask"] for r in runs]),
                                        np.array([r["predictions"] for r in runs]), np.array(runs[0]["labels"])))
        est = fcmi_bound(sups)
        results[m] = est
    return results


def report(preset: Preset, plan: dict[str, int], results: dict[str, Any], command: str) -> str:
    lines = [f"## f-CMI: {preset.backbone} / {preset.dataset}", "", f"Written by `{command}`.", "",
             f"Setting: {preset.description}. n = {plan['n']} pairs per supersample, {plan['masks']} masks x "
             f"{plan['supersamples']} supersample(s) per method. The f-CMI value estimates a bound on the "
             "**expected** 0-1 gap (over data and training randomness), from the plug-in mutual information of "
             "each mask bit with the pair of predictions; it is not a certificate for one model. The plug-in "
             "estimate is biased, down when the information is high and up when it is low (docs/concepts.md, "
             "the bias table); the last column gives the bias at each method's measured information for this "
             "mask count. The interval is a 95% Student-t interval over the supersamples (none with one).", "",
             "| method | f-CMI estimate (expected gap) | 95% interval over supersamples | mean plug-in I (nats) | "
             "measured mean gap | plug-in bias at this I and mask count |",
             "|---|---:|---|---:|---:|---|"]
    for m, e in results.items():
        iv = f"[{e.interval[0]:.3f}, {e.interval[1]:.3f}]" if e.interval else "- (one supersample)"
        side = "" if e.bias is None else "down" if e.bias < -0.005 else "up" if e.bias > 0.005 else "small"
        b = "-" if e.bias is None else f"{e.bias:+.3f} ({side})"
        lines.append(f"| {m} | {e.bound:.3f} | {iv} | {e.mean_mi:.3f} | {e.mean_gap:.3f} | {b} |")
    lines.append("")
    return "\n".join(lines)


DOC_TITLE = "# f-CMI estimates of the expected generalization gap"


def merge_section(doc: Path, section: str) -> str:
    """The page ``doc`` with ``section`` (one preset's, starting with its "## " heading) put in place of the
    section of that heading, or appended: each preset's command rewrites its own section only."""
    heading = section.splitlines()[0]
    text = doc.read_text() if doc.is_file() else DOC_TITLE + "\n\n"
    parts = text.split("\n## ")
    head, sections = parts[0], ["## " + p for p in parts[1:]]
    sections = [s.rstrip("\n") + "\n" for s in sections if s.splitlines()[0] != heading]
    sections.append(section.rstrip("\n") + "\n")
    return head.rstrip("\n") + "\n\n" + "\n".join(sections)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.fcmi", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=list(PRESETS), default="mlp")
    p.add_argument("--out", required=True)
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--n", type=int, default=None, help="pairs per supersample (default: the preset's)")
    p.add_argument("--masks", type=int, default=None)
    p.add_argument("--supersamples", type=int, default=None)
    p.add_argument("--doc", default=None, help="also write the Markdown report here")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        preset, plan = PRESETS[args.preset]
        plan = dict(plan)
        for k in ("n", "masks", "supersamples"):
            v = getattr(args, k)
            if v is not None:
                if v < 1:
                    raise GenboundError(f"--{k} must be positive, got {v}")
                plan[k] = v
        methods = args.methods or list(METHODS)
        for m in methods:
            if m not in METHODS:
                raise GenboundError(f"unknown method '{m}'; choose from {', '.join(METHODS)}")
        if preset.backbone == "minilm":
            preset = replace(preset)
        out = Path(args.out)
        results = collect(preset, plan, methods, out, args.device)
        command = "python -m analysis.fcmi " + " ".join(argv if argv is not None else sys.argv[1:])
        text = report(preset, plan, results, command)
        write_json(out / "fcmi.json", {"preset": preset.to_dict(), "plan": plan,
                                       "results": {m: vars(e) for m, e in results.items()}})
        if args.doc:
            write_text(Path(args.doc), merge_section(Path(args.doc), text))
        print(text)
        return 0
    except GenboundError as exc:
        print(f"analysis.fcmi: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
