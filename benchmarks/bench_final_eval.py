"""What ``genbound train --no-final-eval`` saves: process CPU time of a short MiniLM run with the final
evaluation of the full train / validation / test splits (the default) and without it, alternated in one run.

Each run is a fresh process (``python -m genbound.cli train ...``, the default backbone and dataset: MiniLM on
BBC News); its CPU time is the child's user + system time (os.wait4), which the load of a shared machine
inflates less than the wall time. Both variants share the on-disk tokenization cache (genbound.data.tokcache),
warmed by one untimed run first, so the difference is the final evaluation alone: the same steps, the same
per-epoch validation.

    python benchmarks/bench_final_eval.py [--steps 5] [--rounds 2] [--out benchmarks/results/final-eval.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _train(out: Path, steps: int, skip: bool) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one ``genbound train`` process."""
    args = [sys.executable, "-m", "genbound.cli", "train", "--method", "lora", "--steps", str(steps), "--out",
            str(out), "--device", "cpu", "--no-progress", "--overwrite"] + (["--no-final-eval"] if skip else [])
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{err[-2000:]}")
    return usage.ru_utime + usage.ru_stime, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "final-eval.md"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-final-eval-"))
    try:
        _train(work / "warm", args.steps, skip=True)  # warms the tokenization cache; not timed
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for r in range(args.rounds):
            for skip in ((False, True) if r % 2 == 0 else (True, False)):  # alternated: drift hits both alike
                runs[skip].append(_train(work / f"r{r}-{'skip' if skip else 'eval'}", args.steps, skip))
                print(f"round {r} {'--no-final-eval' if skip else 'default'}: cpu {runs[skip][-1][0]:.1f} s, "
                      f"wall {runs[skip][-1][1]:.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cpu = {k: statistics.median(c for c, _ in v) for k, v in runs.items()}
    wall = {k: statistics.median(w for _, w in v) for k, v in runs.items()}
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    each = "; ".join(f"{'--no-final-eval' if k else 'default'}: " + ", ".join(f"{c:.1f}" for c, _ in v)
                     for k, v in runs.items())
    text = f"""## Training without the final evaluation (`genbound train --no-final-eval`)

`python benchmarks/bench_final_eval.py --steps {args.steps} --rounds {args.rounds}`, {stamp}, {platform.machine()},
{os.cpu_count()} CPU cores shared with other jobs (load average {load:.1f} at the end), python
{platform.python_version()}, OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")}.
Each run is a fresh `python -m genbound.cli train --method lora --steps {args.steps}
--device cpu --no-progress` (MiniLM on BBC News, the defaults: batch 32, 128 tokens, r = 16 on query and value),
with and without `--no-final-eval`, alternated, after one untimed run that warmed the tokenization cache. CPU
is the process's user + system time (os.wait4); medians of {args.rounds} runs each (per run, CPU s: {each}).

| variant | CPU (s) | wall (s) |
|---|---:|---:|
| default (final evaluation of train / validation / test) | {cpu[False]:.1f} | {wall[False]:.1f} |
| `--no-final-eval` | {cpu[True]:.1f} | {wall[True]:.1f} |
| ratio default / `--no-final-eval` | **{cpu[False] / cpu[True]:.2f}x** | {wall[False] / wall[True]:.2f}x |

Both variants train the same {args.steps} steps and validate once at the epoch's end; the difference is the
final evaluation, one eval-mode pass (torch.no_grad, batch 64, the cached tokens) over all three splits,
which the checkpoint then records as not computed (`final_eval: false`, no losses).
"""
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
