"""Benchmark: a 21 x 21 filter-normalized random plane, genbound.landscape against loss-landscapes 3.0.6.

Two models, same model, data and plane size for both libraries in the same run:
  * the reference MLP of docs/benchmarks.md: 512-1024-512-10 ReLU (1.06 M parameters), 2,048 synthetic examples
    (labels from a
    seeded random teacher), briefly trained so that the centre is a trained point; every parameter moves;
  * the real pretrained MiniLM (backbones.get_backbone('minilm').build(5)) on BBC News articles at a short
    max length; the attention query / value projections and the head move (the dW space of a LoRA model).

genbound's batched engine is timed on the whole plane; its sequential reference on one row (values compared,
time extrapolated); on MiniLM the attention implementations (sdpa / eager) are compared on a few points first
and the faster is used for the full plane. MiniLM uses 16 articles x 16 tokens so that the peer's 441 serial
forwards fit in the time budget (--minilm-samples to change). Both libraries run with the same number of torch
threads (--threads, default 1: on a CPU shared with other jobs, two spinning threads were measured up to four
times slower than one). Results go to benchmarks/results/landscape.md (atomically).

    python benchmarks/bench_landscape.py            # full, about 5-15 minutes on 2 (shared) CPU cores
    python benchmarks/bench_landscape.py --quick    # small grids, under 2 minutes (landscape-quick.md)
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cases import peer_mlp  # noqa: E402
from genbound.atomic import write_text  # noqa: E402
from genbound.evalset import EvalSet  # noqa: E402
from genbound.landscape import (  # noqa: E402
    GridEvaluator,
    coordinates,
    cosine,
    grid_axis,
    grid_points,
    random_directions,
    random_plane,
)


def mlp_case(n: int, train_steps: int) -> tuple[nn.Module, EvalSet]:
    return peer_mlp(n, seed=0, train_steps=train_steps)


def minilm_case(n: int, max_length: int, attn: str = "sdpa") -> tuple[nn.Module, EvalSet, list[str]]:
    from genbound.backbones import get_backbone
    from genbound.datasets import load_bbc_raw

    bb = get_backbone("minilm")
    model = bb.build(5, seed=0, attn_implementation=attn)
    with torch.no_grad():  # a non-zero head bias: loss-landscapes 3.0.6 divides by zero on a zero bias
        model.head.bias.copy_(torch.linspace(-0.1, 0.1, 5))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    texts, labels, _ = load_bbc_raw()
    idx = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0))[:n].sort().values
    enc = bb.tokenizer()([texts[i] for i in idx], truncation=True, max_length=max_length, padding="max_length",
                         return_tensors="pt")
    data = EvalSet({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]},
                   torch.as_tensor(labels)[idx])
    moved = [m for m, mod in model.named_modules() if isinstance(mod, nn.Linear)
             and (m.endswith(("query", "value")) or m == "head")]
    return model, data, moved


def peer_plane(model: nn.Module, data: EvalSet, steps: int, modules: list[str] | None = None) -> tuple[Timer, object]:
    """loss-landscapes 3.0.6 random_plane, filter normalization, deep copy, over the same parameters."""
    from loss_landscapes import random_plane as ll_random_plane
    from loss_landscapes.metrics import Loss
    from loss_landscapes.model_interface.model_wrapper import GeneralModelWrapper

    keys = list(data.features)
    inputs = tuple(data.features[k] for k in keys)

    def forward_fn(m, x):
        return m(**dict(zip(keys, x)))

    mods = [model] if modules is None else [model.get_submodule(m) for m in modules]
    wrapper = GeneralModelWrapper(model, mods, forward_fn)
    metric = Loss(nn.CrossEntropyLoss(), inputs, data.labels)
    torch.manual_seed(0)
    with Timer() as t:
        values = ll_random_plane(wrapper, metric, distance=1, steps=steps, normalization="filter", deepcopy_model=True)
    return t, values


def peer_final_cosine(model: nn.Module) -> float:
    """The cosine between loss-landscapes 3.0.6's final directions (orthogonalized, then filter-normalized)."""
    from loss_landscapes.model_interface.model_parameters import ModelParameters, orthogonal_to, rand_u_like

    start = ModelParameters([p.detach().clone() for p in model.parameters()])
    torch.manual_seed(0)
    d1 = rand_u_like(start)
    d2 = orthogonal_to(d1)
    d1.filter_normalize_(start)
    d2.filter_normalize_(start)
    names = [str(i) for i in range(len(start))]
    return cosine(dict(zip(names, d1.parameters)), dict(zip(names, d2.parameters)))


def ours_plane(model, coords, data, grid, engine="batched", **kw):
    with Timer() as t:
        res = random_plane(model, coords, data, grid=grid, span=1.0, seed=0, device="cpu", engine=engine,
                           progress=False, **kw)
    return t, res


def engine_probe(model, coords, data, npoints: int) -> dict[str, float]:
    """Seconds per point of the batched and sequential engines on a few points of a 21 x 21 plane."""
    dirs = [d.tensors for d in random_directions(coords, 2, seed=0)]
    pts = grid_points([grid_axis(21, 1.0)] * 2)[:npoints]
    ev = GridEvaluator(model, coords, dirs, data, progress=False)
    out = {}
    for engine in ("batched", "sequential"):
        r = ev.evaluate(pts, engine)
        out[engine] = r.seconds / npoints
        out[f"{engine}_ppb"] = r.points_per_batch
    return out


def forward_flops(model: nn.Module, data: EvalSet, shared: list[str]) -> tuple[float, float, list[tuple]]:
    """FLOPs of one plain forward over ``data`` (torch's flop counter: matrix products and attention), the
    part spent in the ``shared`` Linear layers (computed once per data batch by genbound, not per point),
    and the (rows, in, out) shapes of every Linear, for timing the machine's matrix products."""
    from torch.utils.flop_counter import FlopCounterMode

    shared_flops, shapes, hooks = [0.0], [], []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            def hook(mod, args, out, name=name):
                rows = args[0].numel() // mod.in_features
                shapes.append((rows, mod.in_features, mod.out_features))
                if name in shared:
                    shared_flops[0] += 2.0 * rows * mod.in_features * mod.out_features
            hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(**data.features)
    finally:
        for h in hooks:
            h.remove()
    return float(fc.get_total_flops()), shared_flops[0], shapes


def gemm_rate(shapes: list[tuple], fold: int = 8, repeats: int = 5) -> float:
    """The best float32 matrix-product rate (FLOP/s) this machine reaches on the model's Linear shapes, with
    their rows as they are and times ``fold`` (points folded into the batch): a generous ceiling for any
    exact engine, measured in the same run as the libraries."""
    best = 0.0
    for rows, k, n in sorted(set(shapes)):
        for r in (rows, rows * fold):
            a, b = torch.randn(r, k), torch.randn(k, n)
            a @ b
            for _ in range(repeats):
                t0 = time.perf_counter()
                a @ b
                best = max(best, 2.0 * r * k * n / (time.perf_counter() - t0))
    return best


def ceiling_note(label: str, points: int, total: float, shared: float, rate: float, t_peer: float,
                 t_ours: float) -> tuple[str, float]:
    floor = points * (total - shared) / rate
    return (f"{label}: one forward is {total / 1e9:.2f} GFLOP (torch's flop counter), {shared / 1e9:.2f} of "
            f"them in layers genbound computes once; the machine's best matrix-product rate on these shapes "
            f"was {rate / 1e9:.0f} GFLOP/s (one thread, same run), so no exact engine can evaluate the "
            f"{points} points in less than {floor:.1f} s: at most **{t_peer / floor:.1f}x** faster than "
            f"loss-landscapes ({t_peer:.1f} s CPU, {points * total / t_peer / 1e9:.0f} GFLOP/s achieved). "
            f"genbound took {t_ours:.1f} s CPU, {100 * floor / t_ours:.0f}% of that ceiling's speed."), t_peer / floor


def target_note(speedups: dict[str, float], ceilings: dict[str, float]) -> str:
    """The issue's 5x CPU target against what was measured and what the ceilings allow."""
    got = ", ".join(f"{k} {v:.2f}x" for k, v in speedups.items())
    cap = ", ".join(f"{k} {v:.1f}x" for k, v in ceilings.items())
    if all(v >= 5 for v in speedups.values()):
        return f"- Target: at least 5x on a CPU; measured {got}: reached."
    return (f"- Target: the issue asks for at least 5x on a CPU; measured {got}, against ceilings of {cap} for any "
            "exact evaluation on this machine (above): the peer already spends most of its time in the matrix "
            "products every exact evaluation needs. More would take fewer FLOPs per point (an approximation of "
            "the loss, which the issue's exactness check forbids) or lower precision (this CPU has no bf16 "
            "matrix units). Folding points pays on a GPU, where one point leaves the device idle.")


class Timer:
    """Wall-clock and process CPU seconds of a block. On a shared machine the CPU time of a single-threaded
    run is the steadier measure (time spent waiting for other jobs' cores is not counted)."""

    def __enter__(self):
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small grids (under 2 minutes)")
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--minilm-samples", type=int, default=None)
    ap.add_argument("--minilm-length", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both libraries (default 1)")
    ap.add_argument("--out", type=Path, default=None,
                    help="result file (default benchmarks/results/landscape.md; with --quick landscape-quick.md, "
                         "so that a quick run never replaces the full result)")
    args = ap.parse_args()
    if args.out is None:
        args.out = ROOT / "benchmarks" / "results" / ("landscape-quick.md" if args.quick else "landscape.md")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    quick = args.quick
    g_mlp = 7 if quick else 21
    g_lm = 3 if quick else 21
    n_lm = args.minilm_samples or (8 if quick else 16)
    t_start = time.perf_counter()
    rows, notes = [], []

    # -- MLP ---------------------------------------------------------------------------------------
    model, data = mlp_case(2048, 5 if quick else 20)
    nparams = sum(p.numel() for p in model.parameters())
    coords = coordinates(model)
    print(f"MLP: {nparams} parameters, {len(data)} examples, {g_mlp} x {g_mlp} plane", flush=True)
    t_peer, peer_vals = peer_plane(copy.deepcopy(model), data, g_mlp)
    print(f"  loss-landscapes: {t_peer.wall:.1f} s ({t_peer.cpu:.1f} s CPU)", flush=True)
    t_ours, res = ours_plane(model, coords, data, g_mlp)
    print(f"  genbound batched: {t_ours.wall:.1f} s ({t_ours.cpu:.1f} s CPU; {res.timing['points_per_batch']} "
          f"points per forward, cached {res.timing['cached_layers']})", flush=True)
    check = {"centre": abs(res.centre_loss - res.reference_loss), "cos": abs(res.cosine)}
    # The sequential reference on one row of the plane (a full 441-point run would double the benchmark's
    # time): values compared exactly, time per point extrapolated to the plane.
    pts = grid_points(res.axes)[: g_mlp]
    dirs = [d.tensors for d in random_directions(coords, 2, seed=0)]
    ev = GridEvaluator(model, coords, dirs, data, progress=False)
    seq = ev.evaluate(pts, "sequential")
    diff = float((seq.loss - res.loss.reshape(-1)[: g_mlp]).abs().max())
    t_seq = seq.seconds / len(pts) * g_mlp * g_mlp  # wall-clock
    print(f"  genbound sequential: {seq.seconds / len(pts):.3f} s per point", flush=True)
    peer_cos = peer_final_cosine(model)
    total, shared, shapes = forward_flops(model, data, res.timing["cached_layers"])
    note, ceil_mlp = ceiling_note("MLP ceiling", g_mlp * g_mlp, total, shared, gemm_rate(shapes), t_peer.cpu,
                                  t_ours.cpu)
    ceilings = {"MLP": ceil_mlp}
    speedups = {"MLP": t_peer.cpu / t_ours.cpu}
    rows.append(["MLP 512-1024-512-10 (1.06 M), 2,048 examples, all weights", f"{g_mlp} x {g_mlp}",
                 f"{fmt(t_peer.wall)} ({fmt(t_peer.cpu)})", f"{fmt(t_ours.wall)} ({fmt(t_ours.cpu)})",
                 f"**{t_peer.cpu / t_ours.cpu:.2f}x** ({t_peer.wall / t_ours.wall:.2f}x)", f"~{fmt(t_seq)} (est.)",
                 f"{t_peer.wall / t_seq:.2f}x", f"{diff:.1e} ({g_mlp} pts)"])
    notes.append(f"MLP: final cosine between the directions: genbound {res.cosine:.1e}, loss-landscapes "
                 f"{peer_cos:.1e} (it orthogonalizes before filter normalization); |centre - plain evaluation| "
                 f"{check['centre']:.1e}; the peer's plane is off-centre (zig-zag, step ||theta|| / distance / "
                 f"steps), so only timings are compared, not values.")
    notes.append(f"MLP: genbound evaluated {res.timing['points_per_batch']} point(s) per forward "
                 f"({res.timing['schedule']} schedule); the first layer's products W x, D1 x, D2 x are computed "
                 f"once ({res.timing['cached_layers']}) and every point costs the remaining layers only.")
    notes.append(note)
    del model, data, coords, res

    # -- MiniLM ------------------------------------------------------------------------------------
    probe_rows = []
    if not args.skip_minilm:
        probe_points = 2 if quick else 4
        speeds = {}
        for attn in ("sdpa",) if quick else ("sdpa", "eager"):
            model, data, moved = minilm_case(n_lm, args.minilm_length, attn)
            names = [f"{m}.{p}" for m in moved for p in ("weight", "bias")]
            coords = coordinates(model, names)
            sp = engine_probe(model, coords, data, probe_points)
            speeds[attn] = sp
            probe_rows.append([attn, fmt(1e3 * sp["batched"]), sp["batched_ppb"], fmt(1e3 * sp["sequential"])])
            print(f"  MiniLM probe {attn}: {sp}", flush=True)
        # genbound's schedule keeps the faster of a vmap chunk and single points, so rank by the better one.
        attn = min(speeds, key=lambda a: min(speeds[a]["batched"], speeds[a]["sequential"]))
        model, data, moved = minilm_case(n_lm, args.minilm_length, attn)
        names = [f"{m}.{p}" for m in moved for p in ("weight", "bias")]
        coords = coordinates(model, names)
        nmoved = sum(t.numel() for t in coords.values())
        print(f"MiniLM ({attn}): {nmoved} moving parameters, {len(data)} examples x {args.minilm_length} tokens, "
              f"{g_lm} x {g_lm} plane", flush=True)
        t_peer, _ = peer_plane(copy.deepcopy(model), data, g_lm, moved)
        print(f"  loss-landscapes: {t_peer.wall:.1f} s ({t_peer.cpu:.1f} s CPU)", flush=True)
        t_ours, res = ours_plane(model, coords, data, g_lm)
        print(f"  genbound batched: {t_ours.wall:.1f} s ({t_ours.cpu:.1f} s CPU; "
              f"{res.timing['points_per_batch']} points per forward)", flush=True)
        pts = grid_points(res.axes)[:: max(1, g_lm * g_lm // 3)]
        dirs = [d.tensors for d in random_directions(coords, 2, seed=0)]
        ev = GridEvaluator(model, coords, dirs, data, progress=False)
        diff = float((ev.evaluate(pts).loss - ev.evaluate(pts, "sequential").loss).abs().max())
        t_seq_est = speeds[attn]["sequential"] * g_lm * g_lm
        rows.append([f"MiniLM (22.7 M, real weights, {attn} attention), {len(data)} BBC articles x "
                     f"{args.minilm_length} tokens; query/value + head move ({nmoved:,})", f"{g_lm} x {g_lm}",
                     f"{fmt(t_peer.wall)} ({fmt(t_peer.cpu)})", f"{fmt(t_ours.wall)} ({fmt(t_ours.cpu)})",
                     f"**{t_peer.cpu / t_ours.cpu:.2f}x** ({t_peer.wall / t_ours.wall:.2f}x)",
                     f"~{fmt(t_seq_est)} (est.)", f"{t_peer.wall / t_seq_est:.2f}x", f"{diff:.1e} ({len(pts)} pts)"])
        notes.append(f"MiniLM: genbound's schedule kept {res.timing['points_per_batch']} point(s) per forward "
                     f"({res.timing['schedule']} schedule; timed on the first data batch: "
                     f"{res.timing['calibration'] or 'not timed'}).")
        total, shared, shapes = forward_flops(model, data, res.timing["cached_layers"])
        note, ceilings["MiniLM"] = ceiling_note("MiniLM ceiling", g_lm * g_lm, total, shared, gemm_rate(shapes),
                                                t_peer.cpu, t_ours.cpu)
        notes.append(note)
        speedups["MiniLM"] = t_peer.cpu / t_ours.cpu
        notes.append(f"MiniLM: cached layers {res.timing['cached_layers']}; |centre - plain evaluation| "
                     f"{abs(res.centre_loss - res.reference_loss):.1e}; cosine {res.cosine:.1e}.")

    total = time.perf_counter() - t_start
    cmd = "python benchmarks/bench_landscape.py" + (" --quick" if quick else "") + (
        f" --threads {args.threads}" if args.threads != 1 else "")
    uname = platform.uname()
    lines = [
        "## Loss-landscape slices: genbound.landscape vs loss-landscapes 3.0.6",
        "",
        f"- Machine: {uname.machine}, {torch.get_num_threads()} torch threads, nproc "
        f"{__import__('os').cpu_count()}, torch {torch.__version__}, Python {platform.python_version()}; no GPU "
        "in this run. A shared machine (other engineers' jobs on the same cores): absolute times vary from run "
        "to run; the ratios against the peer, measured in the same run, are what counts.",
        f"- Date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; command: `{cmd}`; total {total:.0f} s.",
        "- Speed-up is given on process CPU time (single-threaded runs, so waiting for the other jobs' cores is "
        "not counted) and, in brackets, on wall-clock time, which swings with the load (two runs of this "
        "benchmark an hour apart gave 1.9x and 1.2x wall-clock for the MLP).",
        "- Task: a filter-normalized random plane (loss at every grid point, same model, same data, same number of "
        "points for both). Times cover the whole call (directions, every point, and for genbound the "
        "plain evaluation of the centre and the summaries).",
        "",
        "| case | grid | loss-landscapes 3.0.6, s wall (CPU) | genbound batched, s wall (CPU) | speed-up, CPU "
        "(wall) | genbound sequential, s wall | peer / sequential, wall | max abs(batched - sequential) loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    if probe_rows:
        lines += ["", "MiniLM engine and attention choice (a few points of the plane; the attention with the "
                  "faster of the two schedules is used above, and genbound's own schedule then times a "
                  "chunk of points against single points on the first data batch and keeps the faster):", "",
                  "| attention | batched ms / point | points per forward | sequential ms / point |",
                  "|---|---|---|---|"]
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in probe_rows]
    lines += [""] + [f"- {n}" for n in notes]
    lines += [
        "- Why the ratio is what it is: on a CPU each grid point needs one forward pass of the displaced model "
        "over the evaluation set, and its matrix products are compute-bound already at one point per forward. "
        "genbound removes what can be removed exactly: the first moving layer's products are computed once for "
        "all points (exact algebra, module docstring of genbound/landscape/grid.py), points are folded into the "
        "batch dimension, and nothing is copied in place per point. The ceiling lines above measure what is "
        "left: the FLOPs that every exact evaluation must spend per point, at the best matrix-product rate this "
        "machine reached in the same run.",
        target_note(speedups, ceilings),
        "- Same work for both: loss-landscapes perturbs biases too (element-wise 'filters'); genbound zeroes "
        "their directions (Li et al.) but still adds them, so every point costs the same forward in both.",
        "",
    ]
    write_text(args.out, "\n".join(lines))
    print(f"wrote {args.out} ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
