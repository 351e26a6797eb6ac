"""The run context, before / after: CPU time of `genbound spectra --intruders` and of `genbound compare`
(default, and with --hessian --landscape) on two MiniLM checkpoints, each command run with the code of a
baseline tree and of this tree, alternated in the same run.

Each command runs in a fresh process (``python -m genbound.cli ...`` with ``PYTHONPATH`` set to the tree);
its CPU time is the child's user + system time (os.wait4), its wall time the elapsed time. Both trees share
the on-disk tokenization cache (genbound.data.tokcache), warmed by one untimed load first, so the comparison is
of the work each tree does, not of tokenization. The outputs of the two trees are checked to agree (the
same spectra and intruder counts; the same compare rows to 1e-6) so that a faster tree is not a different
answer.

    python benchmarks/bench_context.py --before ../ctx-before --ckpt-a runs/lora --ckpt-b runs/cla \\
        [--rounds 1] [--samples 32] [--grid 5] [--cases spectra compare compare-hessian]
        [--out benchmarks/results/context.md]

The checkpoints: two short MiniLM runs, e.g. ``genbound train --method lora --steps 10 --batch-size 8
--max-length 64 --out runs/lora`` and the same with ``--method cla``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WARM = """
from genbound.checkpoints.checkpoint import load_checkpoint
load_checkpoint({path!r}).load_splits()
"""


def _env(tree: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def run_child(args: list[str], tree: Path) -> tuple[float, float, str]:
    """(CPU seconds, wall seconds, stdout) of ``python args`` with ``tree``'s genbound; the child is reaped
    with os.wait4 to read its own resource usage."""
    t0 = time.perf_counter()
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-context-{os.getpid()}.out"
    with open(out_path, "w") as fh:
        # cwd is the tree: ``python -m`` puts the working directory first on sys.path, ahead of PYTHONPATH, so a
        # run started elsewhere would import the genbound found there (e.g. this tree for both sides)
        proc = subprocess.Popen([sys.executable, *args], env=_env(tree), stdout=fh, stderr=subprocess.PIPE,
                                cwd=tree)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    wall = time.perf_counter() - t0
    out = out_path.read_text()
    out_path.unlink()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed under {tree}:\n{err[-2000:]}")
    return usage.ru_utime + usage.ru_stime, wall, out


def _numbers(x, prefix=""):
    """Flatten a JSON value into {path: number} for the agreement check."""
    out = {}
    if isinstance(x, dict):
        for k, v in x.items():
            out.update(_numbers(v, f"{prefix}/{k}"))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            out.update(_numbers(v, f"{prefix}/{i}"))
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        out[prefix] = float(x)
    return out


def agree(a: str, b: str, skip: tuple[str, ...]) -> float:
    """The largest relative difference between the numbers of two JSON outputs (keys in ``skip`` ignored)."""
    na, nb = _numbers(json.loads(a)), _numbers(json.loads(b))
    keys = [k for k in na if not any(s in k for s in skip)]
    worst = 0.0
    for k in keys:
        if k not in nb:
            return math.inf
        x, y = na[k], nb[k]
        if math.isfinite(x) and math.isfinite(y):
            worst = max(worst, abs(x - y) / max(1e-12, abs(x), abs(y)))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="the baseline genbound tree (e.g. a worktree of main at the commit before)")
    ap.add_argument("--after", default=str(ROOT), help="the tree to compare (default: this one)")
    ap.add_argument("--ckpt-a", help="a MiniLM checkpoint")
    ap.add_argument("--ckpt-b", help="another MiniLM checkpoint of the same backbone and data")
    ap.add_argument("--quick", action="store_true", help="accepted for run_all.py; the settings are already small")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--samples", type=int, default=32, help="compare --samples for the Hessian / landscape case")
    ap.add_argument("--grid", type=int, default=5, help="compare --grid for the landscape case")
    ap.add_argument("--cases", nargs="+", choices=["spectra", "compare", "compare-hessian"],
                    default=["spectra", "compare", "compare-hessian"], help="which rows to run (default all)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "context.md"))
    args = ap.parse_args()
    if not (args.before and args.ckpt_a and args.ckpt_b):  # run_all.py runs every script without arguments
        print("bench_context: skipped; it needs --before TREE --ckpt-a A --ckpt-b B (see its docstring)")
        return
    trees = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    a, b = str(Path(args.ckpt_a).resolve()), str(Path(args.ckpt_b).resolve())  # each child runs in its tree
    common = ["--device", "cpu", "--json", "--no-progress"]
    every = {
        "spectra": ("spectra --intruders (A)", (["spectra", a, "--intruders"], ("wall", "time"))),
        "compare": ("compare (default)", (["compare", a, b], ("timing", "time"))),
        "compare-hessian": (f"compare --hessian --landscape (samples {args.samples}, grid {args.grid})",
                            (["compare", a, b, "--hessian", "--landscape", "--samples", str(args.samples), "--grid",
                              str(args.grid)], ("timing", "time", "wall"))),
    }
    cases = dict(every[c] for c in args.cases)
    for tree in trees.values():  # warm the shared tokenization cache and the file system, untimed
        run_child(["-c", WARM.format(path=str(Path(a).resolve()))], tree)
    results: dict[str, dict[str, list[tuple[float, float]]]] = {c: {"before": [], "after": []} for c in cases}
    outputs: dict[str, dict[str, str]] = {c: {} for c in cases}
    for r in range(args.rounds):
        for case, (cmd, _) in cases.items():
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for side in order:
                cpu, wall, out = run_child(["-m", "genbound.cli", *cmd, *common], trees[side])
                results[case][side].append((cpu, wall))
                outputs[case][side] = out
                print(f"{case} [{side}]: cpu {cpu:.1f} s, wall {wall:.1f} s", flush=True)
    rows = []
    for case, (_cmd, skip) in cases.items():
        cb = statistics.median(x[0] for x in results[case]["before"])
        ca = statistics.median(x[0] for x in results[case]["after"])
        wb = statistics.median(x[1] for x in results[case]["before"])
        wa = statistics.median(x[1] for x in results[case]["after"])
        diff = agree(outputs[case]["before"], outputs[case]["after"], skip)
        rows.append((case, cb, ca, cb / ca, wb, wa, diff))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## Run context: spectra and compare before / after on MiniLM ({stamp})", "",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), python {platform.python_version()}, "
        f"torch threads 1 (OMP_NUM_THREADS=1)",
        # names only: the trees and checkpoints live outside the repository
        f"- before: tree {trees['before'].name}; after: tree {trees['after'].name}; checkpoints A = "
        f"{Path(a).name}, B = {Path(b).name}",
        f"- command: python benchmarks/bench_context.py --before BEFORE --ckpt-a A --ckpt-b B "
        f"--rounds {args.rounds} --samples {args.samples} --grid {args.grid} --cases {' '.join(args.cases)}",
        f"- each cell: median over {args.rounds} round(s) of one fresh process; CPU = user + system time of the "
        "process; the two trees alternate", "",
        "| command | CPU before (s) | CPU after (s) | CPU ratio | wall before (s) | wall after (s) | "
        "max rel. difference of the outputs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case, cb, ca, ratio, wb, wa, diff in rows:
        lines.append(f"| `{case}` | {cb:.1f} | {ca:.1f} | **{ratio:.2f}x** | {wb:.1f} | {wa:.1f} | {diff:.1e} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    print(json.dumps({c: results[c] for c in results}))


if __name__ == "__main__":
    main()
