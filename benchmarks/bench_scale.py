"""Benchmark: how genbound's costs grow with the model, random Llama-shaped models from ~10 M to ~1 B parameters.

Each size is a ``transformers`` ``LlamaForCausalLM`` built from a ``LlamaConfig`` with a fixed seed (nothing is
downloaded), held in bfloat16 (the frozen base), wrapped as genbound's :class:`~genbound.models.causal_lm.CausalLM`,
with genbound's own LoRA (``genbound.methods``, rank 16, alpha 32) on the four attention projections
(q, k, v, o) of every layer, its factors in float32; B is drawn small and seeded so that the update is not
zero. On a fixed batch (``--batch`` sequences of ``--seq`` random tokens, next-token loss) it measures:

* ``build``: building the model and attaching the adapters;
* ``hvp``: one Hessian-vector product of the mean next-token loss w.r.t. the adapter's factors
  (:class:`genbound.diagnostics.hessian.HessianOperator`, mode ``auto``; the first product, which chooses the
  mode and may build the cached graph, is timed apart from the next ones, of which the median is reported);
* ``landscape``: one point of a loss landscape (``random_line`` on a 3-point grid, seconds / 3);
* ``spectra``: one :func:`genbound.diagnostics.spectra.spectra` call on every adapted layer's update;
* ``step``: one training step (forward, next-token loss, backward, AdamW step on the factors; the median of
  ``--steps`` after one warm-up step).

Each size runs in its own subprocess (``python bench_scale.py --one NAME``), so that the peak resident memory
(``ru_maxrss``) is that size's alone; it is read after each phase (a running maximum) and reported with the
process CPU time and the wall time of each phase. The parent fits cost = c * params^k by least squares on
log-log (CPU time with one thread: wall time on a shared machine also measures the other work) and writes the
records, the exponents and a log-log figure (docs/images/scale-law.png).

Usage: OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_scale.py [--sizes 9m,20m,...] [--max-rss-gib 8]
       [--out benchmarks/results/scale.json] [--figure docs/images/scale-law.png] [--refit]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from genbound.data.evalset import EvalSet  # noqa: E402
from genbound.diagnostics.hessian import HessianOperator  # noqa: E402
from genbound.diagnostics.landscape import random_line  # noqa: E402
from genbound.diagnostics.spectra import spectra  # noqa: E402
from genbound.methods.adapters import attach_adapters  # noqa: E402
from genbound.methods.catalogue import get_method  # noqa: E402
from genbound.models.causal_lm import CausalLM  # noqa: E402
from genbound.models.losses import lm_labels, mean_loss  # noqa: E402

# name -> (hidden, layers, intermediate, heads, kv heads); vocabulary 32000 (Llama's), untied embeddings.
# The last is TinyLlama-1.1B's shape; the others keep Llama's ratios (ffn ~ 2.7 h, head dim 64-128).
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "9m": (128, 2, 344, 4, 4),
    "20m": (256, 4, 688, 4, 4),
    "58m": (512, 8, 1376, 8, 8),
    "134m": (768, 12, 2048, 12, 12),
    "268m": (1024, 16, 2752, 16, 16),
    "664m": (1536, 20, 4096, 16, 16),
    "1.1b": (2048, 22, 5632, 32, 4),
}
VOCAB = 32000
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
RANK, ALPHA = 16, 32.0
PHASES = ("build", "hvp", "landscape", "spectra", "step")
# Fitted on process CPU time (one thread): on a machine shared with other work, wall time measures the others too.
FITTED = ("hvp_cpu_s", "landscape_cpu_s", "spectra_cpu_s", "step_cpu_s", "hvp_wall_s", "step_wall_s", "peak_rss",
          "peak_rss_above_start")


def llama_config(name: str):
    from transformers import LlamaConfig

    h, n_layers, ffn, heads, kv = SIZES[name]
    return LlamaConfig(vocab_size=VOCAB, hidden_size=h, num_hidden_layers=n_layers, intermediate_size=ffn,
                       num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                       tie_word_embeddings=False)


def peak_rss_bytes() -> int:
    """This process's peak resident set so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build(name: str, seed: int, base_dtype: torch.dtype = torch.bfloat16) -> tuple[CausalLM, dict]:
    """The seeded random model in ``base_dtype`` with genbound's LoRA on the attention projections (float32)."""
    import transformers
    from transformers import LlamaForCausalLM

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(base_dtype)  # allocate the base in bf16 directly: no float32 copy at any point
    try:
        hf = LlamaForCausalLM(llama_config(name)).eval()
    finally:
        torch.set_default_dtype(previous)
    model = CausalLM(hf)
    layers = [n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in TARGETS]
    adapters = attach_adapters(model, get_method("lora"), layers, RANK, ALPHA, seed)
    g = torch.Generator().manual_seed(seed + 1)
    for ad in adapters.values():  # factors in float32 over the bf16 base; B small and seeded, not zero
        ad.A.data = ad.A.data.float()
        ad.B.data = (0.01 * torch.randn(ad.B.shape, generator=g)).float()
        ad.past_A, ad.past_B = ad.past_A.float(), ad.past_B.float()
    return model, adapters


def batch(batch_size: int, seq: int, seed: int) -> EvalSet:
    g = torch.Generator().manual_seed(seed + 2)
    ids = torch.randint(0, VOCAB, (batch_size, seq), generator=g)
    mask = torch.ones_like(ids)
    return EvalSet({"input_ids": ids, "attention_mask": mask}, lm_labels(ids, mask))


class Meter:
    """Wall and process CPU seconds of a block, and the running peak RSS after it."""

    def __init__(self, record: dict, phase: str):
        self.record, self.phase = record, phase

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.record[f"{self.phase}_wall_s"] = time.perf_counter() - self.wall
        self.record[f"{self.phase}_cpu_s"] = time.process_time() - self.cpu
        self.record[f"{self.phase}_peak_rss"] = peak_rss_bytes()


def measure(name: str, batch_size: int = 1, seq: int = 128, seed: int = 0, hvps: int = 2, steps: int = 2) -> dict:
    """One size's record: parameters, the four costs (wall, CPU, peak RSS after each) and the setting."""
    torch.manual_seed(seed)
    rec: dict = {"size": name, "batch": batch_size, "seq": seq, "seed": seed, "rank": RANK, "targets": list(TARGETS),
                 "base_dtype": "bfloat16", "adapter_dtype": "float32", "threads": torch.get_num_threads(),
                 "rss_start": peak_rss_bytes()}
    with Meter(rec, "build"):
        model, adapters = build(name, seed)
    rec["params"] = sum(p.numel() for p in model.parameters())
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    rec["trained"] = sum(p.numel() for n, p in model.named_parameters() if n in set(trained))
    rec["base_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    ev = batch(batch_size, seq, seed)

    op = HessianOperator(model, ev, "trained", batch_size=batch_size, mode="auto")
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(seed + 3))
    with Meter(rec, "hvp_first"):
        op.matvec(v)
    rec["hvp_mode"] = op.mode
    times, cpus = [], []
    with Meter(rec, "hvp"):
        for _ in range(hvps):
            t, c = time.perf_counter(), time.process_time()
            op.matvec(v)
            times.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
    rec["hvp_wall_s"], rec["hvp_cpu_s"] = statistics.median(times), statistics.median(cpus)
    del op

    coords = {n: p.detach() for n, p in model.named_parameters() if n in set(trained)}
    with Meter(rec, "landscape"):
        ls = random_line(model, coords, ev, grid=3, span=0.5, seed=seed, progress=False)
    rec["landscape_wall_s"] /= 3
    rec["landscape_cpu_s"] /= 3
    rec["landscape_engine"] = ls.timing["engine"]

    with Meter(rec, "spectra"):
        spectra({n: ad.update() for n, ad in adapters.items()}, progress=False)

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    feats, labels = ev.features, ev.labels

    def step():
        opt.zero_grad(set_to_none=True)
        loss = mean_loss(model(**feats), labels)
        loss.backward()
        opt.step()

    model.train()
    step()  # warm-up: AdamW's state is allocated here
    times, cpus = [], []
    with Meter(rec, "step"):
        for _ in range(steps):
            t, c = time.perf_counter(), time.process_time()
            step()
            times.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
    rec["step_wall_s"], rec["step_cpu_s"] = statistics.median(times), statistics.median(cpus)
    rec["peak_rss"] = peak_rss_bytes()
    return rec


def run_child(name: str, args) -> dict | None:
    cmd = [sys.executable, __file__, "--one", name, "--batch", str(args.batch), "--seq", str(args.seq),
           "--seed", str(args.seed)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        print(f"[{name}] failed ({out.returncode}):\n{out.stderr[-3000:]}", flush=True)
        return None
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    rec["child_wall_s"] = time.perf_counter() - t
    print(f"[{name}] {rec['params'] / 1e6:.1f} M params, peak RSS {rec['peak_rss'] / 2**30:.2f} GiB, "
          f"HVP {rec['hvp_wall_s']:.2f} s, step {rec['step_wall_s']:.2f} s", flush=True)
    return rec


def fit(records: list[dict], key: str) -> tuple[float, float]:
    """(k, c) of cost = c * params^k, least squares on (log params, log cost)."""
    xs = [math.log(r["params"]) for r in records]
    ys = [math.log(r[key]) for r in records]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    k = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return k, math.exp(my - k * mx)


def figure(records: list[dict], fits: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = [r["params"] for r in records]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in [("hvp_cpu_s", "HVP"), ("landscape_cpu_s", "landscape point"), ("spectra_cpu_s", "spectra"),
                       ("step_cpu_s", "training step")]:
        line, = ax_t.loglog(params, [r[key] for r in records], "o", label=f"{label} (k={fits[key][0]:.2f})")
        k, c = fits[key]
        ax_t.loglog(params, [c * p**k for p in params], "-", color=line.get_color(), alpha=0.5)
    ax_t.set_xlabel("parameters")
    ax_t.set_ylabel("process CPU seconds (1 thread)")
    ax_t.legend(fontsize=8)
    ax_m.loglog(params, [r["peak_rss"] / 2**30 for r in records], "o", label="peak RSS")
    ax_m.loglog(params, [(r["peak_rss"] - r["rss_start"]) / 2**30 for r in records], "^",
                label=f"peak RSS - start (k={fits['peak_rss_above_start'][0]:.2f})")
    ax_m.loglog(params, [r["base_bytes"] / 2**30 for r in records], "s", label="base weights (bf16)")
    ax_m.set_xlabel("parameters")
    ax_m.set_ylabel("GiB")
    ax_m.legend(fontsize=8)
    fig.suptitle(f"Llama-shaped, bf16 base, LoRA r={RANK} on q,k,v,o; batch {records[0]['batch']} x "
                 f"{records[0]['seq']} tokens, CPU")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", default=None, help="measure this one size and print its record as JSON (child mode)")
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-rss-gib", type=float, default=8.0,
                    help="stop going up in size once a size's peak RSS passes this share of the next's estimate")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/scale.json"))
    ap.add_argument("--figure", default=str(ROOT / "docs/images/scale-law.png"))
    ap.add_argument("--refit", action="store_true", help="fit and plot the records already in --out (no measuring)")
    args = ap.parse_args()
    if args.refit:
        finish(json.loads(Path(args.out).read_text()), args)
        return
    if args.one:
        print(json.dumps(measure(args.one, args.batch, args.seq, args.seed)))
        return
    records = []
    names = [s for s in args.sizes.split(",") if s]
    for name in names:
        if len(records) >= 2:  # predict this size's peak from the fit so far; stop before passing the limit
            k, c = fit(records, "peak_rss")
            h, n_layers, ffn, heads, kv = SIZES[name]
            est_params = 2 * VOCAB * h + n_layers * (2 * h * h + 2 * h * h * kv // heads + 3 * h * ffn)
            guess = c * est_params**k
            if guess > args.max_rss_gib * 2**30:
                print(f"[{name}] stopped: predicted peak {guess / 2**30:.1f} GiB > {args.max_rss_gib} GiB", flush=True)
                break
        rec = run_child(name, args)
        if rec is None:
            break
        records.append(rec)
        if rec["peak_rss"] > args.max_rss_gib * 2**30:
            print(f"[{name}] peak RSS passed {args.max_rss_gib} GiB: stopping", flush=True)
            break
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
           "command": "nice -n 10 python " + " ".join(sys.argv), "records": records}
    finish(out, args)


def finish(out: dict, args) -> None:
    """Fit every cost, write the JSON and the figure."""
    records = out["records"]
    for r in records:
        r["peak_rss_above_start"] = r["peak_rss"] - r["rss_start"]
    fits = {k: fit(records, k) for k in FITTED} if len(records) >= 2 else {}
    out["fits"] = {k: {"exponent": v[0], "coefficient": v[1]} for k, v in fits.items()}
    # The small models are mostly embedding and fixed costs; the slope over the three largest is the one to
    # extrapolate with.
    top = sorted(records, key=lambda r: r["params"])[-3:]
    out["fits_largest3"] = ({k: dict(zip(("exponent", "coefficient"), fit(top, k))) for k in FITTED}
                            if len(top) >= 3 else {})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    if fits:
        figure(records, fits, Path(args.figure))
    print(table(records))
    print(json.dumps(out["fits"], indent=1))


def table(records: list[dict]) -> str:
    """The records as the markdown table of docs/scale.md ("Scaling law")."""
    g = 2**30
    rows = ["| model | parameters | trained | HVP mode | HVP CPU s (wall) | landscape point CPU s | spectra CPU s | "
            "training step CPU s (wall) | peak RSS GiB | bf16 base GiB |", "|---" * 10 + "|"]
    for r in records:
        rows.append(f"| {r['size']} | {r['params'] / 1e6:.1f} M | {r['trained'] / 1e6:.2f} M | {r['hvp_mode']} | "
                    f"{r['hvp_cpu_s']:.3g} ({r['hvp_wall_s']:.3g}) | {r['landscape_cpu_s']:.3g} | "
                    f"{r['spectra_cpu_s']:.3g} | {r['step_cpu_s']:.3g} ({r['step_wall_s']:.3g}) | "
                    f"{r['peak_rss'] / g:.2f} | {r['base_bytes'] / g:.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
