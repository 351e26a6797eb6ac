"""Step time and peak training memory of every method relative to LoRA (issue: reference training).

Each method runs in its own subprocess (so one method's peak memory cannot leak into another's): the
MiniLM backbone (pretrained weights on CPU; on CUDA a randomly initialised BertConfig of the same shape
when the weights are not present), batch 32, sequence 128, rank 16, alpha 32, adapters on query and value;
``--warmup`` untimed steps then ``--steps`` timed ones. Peak memory is CUDA's max_memory_allocated (reset
after warm-up) or, on CPU, the process's peak resident set (VmHWM, reset through /proc/self/clear_refs
after warm-up). Results go to benchmarks/results/training.md.

``--compare-to REV`` instead times one method (``--methods``, default lora) with the library of this tree and
with the library of commit REV, checked out by ``git worktree add --detach`` into a temporary folder: the same
harness (this file's ``one``) runs in fresh processes whose ``PYTHONPATH`` names one tree or the other,
alternated ``--rounds`` times in the same run, so both trees see the same machine load. Results go to
benchmarks/results/training-vs-REV.md.

    python benchmarks/bench_training.py [--device cpu|cuda] [--steps 5] [--quick]
    python benchmarks/bench_training.py --compare-to 7abbba7 --rounds 5 --steps 5 --seq 64
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Parameter-matched baselines: a sparse method trains r*n per layer, as asym does; cla's paper baseline.
MATCHED = {"cla": "asym", "rcla": "asym", "paca": "asym", "c3la": "rac", "rc3la": "rac"}


def one(method: str, device: str, steps: int, warmup: int, batch: int, seq: int, rank: int, random_init: bool) -> dict:
    import torch
    from torch.nn import functional as F

    from genbound.methods.adapters import attach_adapters
    from genbound.methods.catalogue import get_method
    from genbound.models.backbones import TextClassifier, get_backbone
    from genbound.training.train import PeakMemory, param_groups

    torch.manual_seed(0)
    dev = torch.device(device)
    bb = None
    if random_init:
        from transformers import BertConfig, BertModel

        cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536)
        model = TextClassifier(BertModel(cfg, add_pooling_layer=False), 5)
        layers = [n for n, m in model.named_modules() if n.endswith(("query", "value"))]
    else:
        bb = get_backbone("minilm")
        model = bb.build(5, seed=0)
        layers = bb.adaptable_layers(model)
    method = get_method(method)
    adapters = attach_adapters(model, method, layers, rank, 2.0 * rank, seed=0)
    model.to(dev).train()
    lr = 3e-4 if method.adapter else 1e-5
    ratio = method.b_lr_ratio
    groups = param_groups(model, adapters, lr, ratio, 0.0) if method.adapter else model.parameters()
    opt = torch.optim.AdamW(groups, lr=lr)
    ids = torch.randint(1000, 30000, (batch, seq), device=dev)
    mask = torch.ones(batch, seq, dtype=torch.long, device=dev)
    labels = torch.randint(0, 5, (batch,), device=dev)
    mem = PeakMemory(dev)

    def step():
        loss = F.cross_entropy(model(input_ids=ids, attention_mask=mask), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        step()
    mem.start()
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)  # CPU seconds of this process: less sensitive to other jobs
    import genbound

    return {"method": method.name, "genbound": str(Path(genbound.__file__).resolve().parents[1]),
            "median_s": statistics.median(times), "mean_s": statistics.fmean(times),
            "cpu_median_s": statistics.median(cpu),
            "peak_bytes": mem.peak_bytes(), "peak_kind": mem.kind(),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rank", type=int, default=16)
    from genbound.methods.catalogue import METHODS

    ap.add_argument("--methods", nargs="+", default=[m for m in METHODS if METHODS[m].adapter] +
                    [m for m in METHODS if not METHODS[m].adapter])
    ap.add_argument("--random-init", action="store_true", help="BertConfig of MiniLM's shape, random weights")
    ap.add_argument("--quick", action="store_true", help="3 methods, 2 steps, sequence 64")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--compare-to", default=None, metavar="REV",
                    help="time the first of --methods with this tree's library and with commit REV's, alternated")
    ap.add_argument("--rounds", type=int, default=5, help="alternated rounds of --compare-to")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "training.md"))
    args = ap.parse_args()
    if args.quick:
        args.methods, args.steps, args.warmup, args.seq = ["lora", "cla", "paca"], 2, 1, 64
    if args.one:
        print(json.dumps(one(args.one, args.device, args.steps, args.warmup, args.batch, args.seq, args.rank,
                             args.random_init)))
        return
    if args.compare_to:
        compare_trees(args)
        return
    rows = []
    for m in args.methods:
        cmd = [sys.executable, __file__, "--one", m, "--device", args.device, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--batch", str(args.batch), "--seq", str(args.seq),
               "--rank", str(args.rank)] + (["--random-init"] if args.random_init else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{m:10s} {rows[-1]['median_s']:.3f} s/step  peak {rows[-1]['peak_bytes'] / 2**20:.0f} MiB", flush=True)
    by = {r["method"]: r for r in rows}
    base = by.get("lora")
    import torch

    lines = [
        "## Training step time and peak memory (all methods relative to LoRA)",
        "",
        f"- date: {datetime.date.today()}; machine: {platform.machine()}, {__import__('os').cpu_count()} CPU cores, "
        f"device {args.device}; torch {torch.__version__}",
        f"- command: `python benchmarks/bench_training.py --device {args.device} --steps {args.steps} "
        f"--warmup {args.warmup}{' --random-init' if args.random_init else ''}`",
        f"- MiniLM ({'random init, same shape' if args.random_init else 'pretrained'}), batch {args.batch}, "
        f"sequence {args.seq}, r = {args.rank}, query + value; {args.warmup} warm-up + {args.steps} timed steps; "
        f"peak memory: {rows[0]['peak_kind']}",
        "",
        "| method | trainable | median s/step | time vs lora | peak MiB | memory vs lora | matched baseline "
        "| time vs it | memory vs it |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        t = r["median_s"] / base["median_s"] if base else float("nan")
        mm = r["peak_bytes"] / base["peak_bytes"] if base else float("nan")
        mb = by.get(MATCHED.get(r["method"], ""))
        tb = f"{r['median_s'] / mb['median_s']:.3f}" if mb else "-"
        mbr = f"{r['peak_bytes'] / mb['peak_bytes']:.3f}" if mb else "-"
        lines.append(f"| {r['method']} | {r['trainable']:,} | {r['median_s']:.3f} | {t:.3f} | "
                     f"{r['peak_bytes'] / 2**20:.0f} | {mm:.3f} | {MATCHED.get(r['method'], '-')} | {tb} | {mbr} |")
    if base and "lora_plus" in by:
        noise = abs(by["lora_plus"]["median_s"] / base["median_s"] - 1)
        lines += ["", f"lora and lora_plus do identical arithmetic (only B's learning rate differs), so their "
                  f"step-time difference, {noise:.1%}, measures this run's noise; smaller differences mean nothing."]
    lines.append("")
    from genbound.core.atomic import write_text

    write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


def compare_trees(args) -> None:
    """Same-run step time of one method: this tree's library against commit ``args.compare_to``'s."""
    import os
    import tempfile

    import torch

    method = args.methods[0]
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.compare_to], capture_output=True,
                         text=True, check=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    times: dict[str, list[float]] = {"old": [], "new": []}
    cpu: dict[str, list[float]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / f"genbound-{rev}"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), rev], capture_output=True,
                       check=True)
        try:
            for r in range(args.rounds):
                for label, tree in (("old", old), ("new", ROOT)) if r % 2 == 0 else (("new", ROOT), ("old", old)):
                    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
                    cmd = [sys.executable, __file__, "--one", method, "--device", args.device, "--steps",
                           str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch), "--seq",
                           str(args.seq), "--rank", str(args.rank)] + (["--random-init"] if args.random_init else [])
                    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
                    res = json.loads(proc.stdout.strip().splitlines()[-1])
                    if Path(res["genbound"]) != tree.resolve():  # the library really came from that tree
                        raise SystemExit(f"the {label} run imported genbound from {res['genbound']}, not {tree}")
                    times[label].append(res["median_s"])
                    cpu[label].append(res["cpu_median_s"])
                    print(f"round {r + 1} {label:3s} {res['median_s']:.3f} s/step, {res['cpu_median_s']:.3f} CPU "
                          "s/step", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)
    mo, mn = statistics.median(times["old"]), statistics.median(times["new"])
    co, cn = statistics.median(cpu["old"]), statistics.median(cpu["new"])
    lines = [
        f"## {method} training step time: this tree ({head}) against {rev}, same run",
        "",
        f"- date: {datetime.date.today()}; machine: {platform.machine()}, {os.cpu_count()} CPU cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end; device {args.device}; torch {torch.__version__}",
        f"- command: `python benchmarks/bench_training.py --compare-to {args.compare_to} --methods {method} --rounds "
        f"{args.rounds} --steps {args.steps} --warmup {args.warmup} --seq {args.seq}`",
        f"- MiniLM ({'random init, same shape' if args.random_init else 'pretrained'}), batch {args.batch}, sequence "
        f"{args.seq}, r = {args.rank}, query + value; each value is the median of {args.steps} timed steps after "
        f"{args.warmup} warm-up steps in a fresh process; trees alternated (old first in odd rounds)",
        "",
        "| tree | median wall s/step | rounds (wall) | median CPU s/step | rounds (CPU) |",
        "|---|---:|---|---:|---|",
        f"| {rev} (before) | {mo:.3f} | {', '.join(f'{t:.3f}' for t in times['old'])} | {co:.3f} | "
        f"{', '.join(f'{t:.3f}' for t in cpu['old'])} |",
        f"| {head} (this tree) | {mn:.3f} | {', '.join(f'{t:.3f}' for t in times['new'])} | {cn:.3f} | "
        f"{', '.join(f'{t:.3f}' for t in cpu['new'])} |",
        "",
        f"Ratio this tree / {rev}: wall {mn / mo:.3f}, process CPU time {cn / co:.3f} (CPU time counts only this "
        "process's own work, so other jobs on a shared machine disturb it far less than wall time).",
        "",
    ]
    from genbound.core.atomic import write_text

    out = Path(args.out).with_name(f"training-vs-{rev}.md") if args.out.endswith("training.md") else Path(args.out)
    write_text(out, "\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
