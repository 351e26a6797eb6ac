"""Two processes under torchrun (gloo, CPU) against one: the overhead of genbound.core.distributed.

On the mlp backbone fine-tuned with LoRA on digits, three commands run once in one process and once under
``python -m torch.distributed.run --standalone --nproc-per-node N`` (default 2), alternated ``--rounds``
times, each with ``OMP_NUM_THREADS=1`` per process:

1. ``genbound hessian CKPT --top-k 5 --trace --samples all``: the report's own ``wall_time`` (the products
   and the algorithms, without start-up and loading);
2. ``genbound landscape CKPT --grid 21 --samples all``: ``timing.seconds`` of rank 0's share of the grid;
3. ``genbound train`` (LoRA, ``--steps`` steps of batch 64): ``metrics.median_seconds_per_step``.

Also the whole command's wall time (Python and torch start-up, the rendezvous, loading). Reports the medians
and the ratios N processes / one. The results agree within float tolerance (tests/test_distributed.py); this
measures only time.

    python benchmarks/bench_distributed.py [--nproc 2] [--rounds 2] [--steps 100] [--quick]

writes benchmarks/results/distributed.md (collected into docs/benchmarks.md by benchmarks/run_all.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _run(nproc: int, args: list[str], cwd: Path) -> tuple[str, float]:
    launch = [sys.executable, "-m", "genbound"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m", "genbound"]
    t0 = time.perf_counter()
    done = subprocess.run([*launch, *args], cwd=cwd, env=_env(), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed in {nproc} process(es):\n{done.stderr[-3000:]}")
    return done.stdout, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="one round of 20 training steps (a smoke run)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distributed.md"))
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.steps = 1, 20
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        setup = [*"train --method lora --backbone mlp --dataset digits --rank 4 --alpha 8 --steps 60".split(),
                 *"--lr 1e-2 --device cpu --no-progress --out ckpt --json".split()]
        _run(1, setup, cwd)
        jobs = {
            "hessian (top-5 + trace, 628 examples)": (
                ["hessian", "ckpt", "--top-k", "5", "--trace", "--samples", "all", "--device", "cpu", "--json",
                 "--no-progress"], lambda r: r["wall_time"]),
            "landscape (21 x 21, 628 examples)": (
                ["landscape", "ckpt", "--grid", "21", "--samples", "all", "--device", "cpu", "--json",
                 "--no-progress"], lambda r: r["timing"]["seconds"]),
            f"train (lora, {a.steps} steps of 64)": (
                ["train", "--method", "lora", "--backbone", "mlp", "--dataset", "digits", "--rank", "4", "--alpha",
                 "8", "--steps", str(a.steps), "--batch-size", "64", "--lr", "1e-2", "--device", "cpu",
                 "--no-progress", "--json", "--overwrite", "--out", "t"],
                lambda r: r["metrics"]["median_seconds_per_step"]),
        }
        rows = []
        for name, (args, pick) in jobs.items():
            inner: dict[int, list[float]] = {1: [], a.nproc: []}
            outer: dict[int, list[float]] = {1: [], a.nproc: []}
            for _ in range(a.rounds):
                for n in (1, a.nproc):  # alternated, so a change in the machine's load hits both alike
                    out, wall = _run(n, args, cwd)
                    inner[n].append(pick(json.loads(out)))
                    outer[n].append(wall)
            m = {n: (statistics.median(inner[n]), statistics.median(outer[n])) for n in inner}
            rows.append((name, m[1][0], m[a.nproc][0], m[a.nproc][0] / m[1][0], m[1][1], m[a.nproc][1],
                         m[a.nproc][1] / m[1][1]))
    when = datetime.datetime.now(datetime.timezone.utc)
    cmd = "python benchmarks/bench_distributed.py" + "".join(
        f" --{k} {v}" for k, v in (("nproc", a.nproc), ("rounds", a.rounds), ("steps", a.steps)))
    lines = [f"## Across processes: {a.nproc} gloo processes against one ({when:%Y-%m-%d}, "
             f"{platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()})", "",
             f"`{cmd}`, load average {os.getloadavg()[0]:.1f} at the end, medians of {a.rounds} alternated "
             "rounds, one thread per process. Compute: the command's own timing (Hessian `wall_time`, landscape "
             "`timing.seconds` of rank 0's share, training median seconds per step); command: the whole process "
             "tree from start to exit (start-up, rendezvous, loading).", "",
             f"| job | compute, 1 proc (s) | compute, {a.nproc} procs (s) | ratio | command, 1 proc (s) | "
             f"command, {a.nproc} procs (s) | ratio |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r[0]} | {r[1]:.4g} | {r[2]:.4g} | {r[3]:.2f} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.2f} |"
              for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.out).write_text(text)

if __name__ == "__main__":
    main()
