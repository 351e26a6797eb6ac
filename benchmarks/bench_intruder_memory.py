"""Benchmark: peak memory and CPU of ``genbound spectra --intruders`` on a 2.1 GB base, per intruder path.

The base is the Llama-shaped bf16 file of tests/test_mmap_w0.py (hidden 2048, 18 layers, MLP 5632; q and v of
layers 0 and 17 and the up projection of layer 0 adapted, LoRA r = 8), written once. Each path (gram,
krylov, dense) runs the whole command in a fresh child process; its peak resident memory (VmHWM, reset at
the start) beyond the same command on a tiny base of the same structure (the interpreter, its imports and
the command's fixed costs) is given in float32 copies of the largest adapted matrix (5632 x 2048, 44 MiB),
with the child's CPU time and the largest deviation of its intruder scores from the dense path's.

Usage: python benchmarks/bench_intruder_memory.py [--quick] [--out benchmarks/results/intruder-memory.md]
(--quick leaves out the dense path and compares with the Krylov path's scores instead)
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_mmap_w0 import child_run, write_two_gigabyte_base  # noqa: E402

from genbound.core.atomic import write_text  # noqa: E402

PATHS = ("gram", "krylov", "dense")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/intruder-memory.md"))
    ap.add_argument("--quick", action="store_true", help="gram and krylov only")
    args = ap.parse_args(argv)
    paths = PATHS[:2] if args.quick else PATHS
    start = time.time()
    folder = Path(tempfile.mkdtemp(prefix="genbound-intruder-memory-"))
    try:
        big, big_adapter, tiny, tiny_adapter, matrix = write_two_gigabyte_base(folder)
        copy = 4 * matrix
        runs = {p: (child_run("spectra", big_adapter, big, p), child_run("spectra", tiny_adapter, tiny, p))
                for p in paths}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ref = paths[-1]
    dense = runs[ref][0]["scores"]
    rows = []
    for p in paths:
        b, t = runs[p]
        dev = max(abs(x - y) for name in dense for x, y in zip(b["scores"][name], dense[name]))
        rows.append(f"| {p} | {(b['delta'] - t['delta']) / copy:.2f} | {(b['delta'] - t['delta']) / 2**20:.0f} MiB "
                    f"| {b['cpu']:.1f} s | {dev:.1e} |")
    ratio = (runs["krylov"][0]["delta"] - runs["krylov"][1]["delta"]) / max(
        1, runs["gram"][0]["delta"] - runs["gram"][1]["delta"])
    text = "\n".join([
        "## Intruder dimensions of a 2.1 GB base: peak memory per path",
        "",
        f"Machine: `{platform.machine()}`, torch {torch.__version__}, CPU only, one thread per child.",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}. Command: "
        f"`python benchmarks/bench_intruder_memory.py{' --quick' if args.quick else ''}` "
        f"({time.time() - start:.0f} s in all).",
        "",
        "`genbound spectra ADAPTER --backbone BASE --json --intruders --intruder-method PATH` in a fresh process;",
        "peak resident memory (VmHWM) beyond the same command on a tiny base, in float32 copies of the largest",
        "adapted matrix (5632 x 2048); CPU time of the whole command on the big base; the largest deviation of",
        f"its intruder scores from the {ref} path's. The target of issue 31 is under 4 copies.",
        "",
        f"| path | peak beyond fixed costs (copies) | (MiB) | CPU | max score deviation from {ref} |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"The Krylov path needs {ratio:.1f}x the Gram path's memory here.",
        "",
    ])
    write_text(Path(args.out), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
