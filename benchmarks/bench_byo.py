"""Own data and models: the tokenization cache on the tweets corpus, and MiniLM step time before / after.

1. Tokenization cache (genbound.data.tokcache): load the ``tweets`` dataset (37,185 tweets) for MiniLM at max
   length 64 in a fresh process with an empty cache directory (cold: read, clean, tokenize, store), then again
   in another fresh process (warm: read, clean, hash, load the cached tokens). Reports both times and the ratio.
2. MiniLM training step time: benchmarks/bench_training.py's one-method measurement (LoRA, batch 32) run with
   the code of a baseline tree (``--baseline``, e.g. the main branch before this change) and of this tree,
   alternated ``--rounds`` times in the same run; reports the medians and their ratio.

    python benchmarks/bench_byo.py [--baseline /path/to/other/tree] [--rounds 2] [--steps 3] [--seq 64]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LOAD = """
import time, json
t0 = time.perf_counter()
from genbound.models.backbones import get_backbone
from genbound.data.datasets import get_dataset
bb = get_backbone("minilm")
t1 = time.perf_counter()
s = get_dataset("tweets").load(bb, 0, 64)
t2 = time.perf_counter()
print(json.dumps({"load_s": t2 - t1, "import_s": t1 - t0, "train": len(s.train), "digest": s.digest()}))
"""


def _run(code_or_args: list[str], tree: Path, env_extra: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env_extra}
    out = subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--baseline", default=None, help="another genbound tree for the step-time comparison")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "byo.md"))
    args = ap.parse_args()
    lines = [f"# Own data and models: cache and step time ({datetime.date.today()}, {platform.machine()}, "
             f"{os.cpu_count()} CPUs, python {platform.python_version()})", ""]
    with tempfile.TemporaryDirectory() as cache:
        env = {"GENBOUND_CACHE": cache}
        cold = _run(["-c", LOAD], ROOT, env)
        warm = _run(["-c", LOAD], ROOT, env)
    assert cold["digest"] == warm["digest"], "the cached tokens differ from a fresh tokenization"
    ratio = cold["load_s"] / warm["load_s"]
    lines += ["## Tokenization cache: tweets (37,185 tweets) for MiniLM, max length 64, fresh processes", "",
              "| load | seconds |", "|---|---|", f"| cold (tokenize and store) | {cold['load_s']:.2f} |",
              f"| warm (cached tokens) | {warm['load_s']:.2f} |", "",
              f"Second load {ratio:.1f}x faster; the split digests are equal.", ""]
    print(f"tweets load: cold {cold['load_s']:.2f} s, warm {warm['load_s']:.2f} s, ratio {ratio:.1f}x")
    if args.baseline:
        one = ["benchmarks/bench_training.py", "--one", "lora", "--steps", str(args.steps), "--seq", str(args.seq)]
        times: dict[str, list[float]] = {"baseline": [], "this tree": []}
        for _ in range(args.rounds):
            for label, tree in (("baseline", Path(args.baseline)), ("this tree", ROOT)):
                res = _run([str(tree / one[0]), *one[1:]], tree, {})
                times[label].append(res["median_s"])
        mb, mt = statistics.median(times["baseline"]), statistics.median(times["this tree"])
        lines += [f"## MiniLM LoRA step (batch 32, sequence {args.seq}, rank 16), "
                  f"{args.rounds} alternated rounds",
                  "", "| tree | median s/step | rounds |", "|---|---|---|",
                  f"| baseline ({Path(args.baseline).name}) | {mb:.3f} | "
                  f"{', '.join(f'{t:.3f}' for t in times['baseline'])} |",
                  f"| this tree | {mt:.3f} | {', '.join(f'{t:.3f}' for t in times['this tree'])} |", "",
                  f"Ratio this / baseline: {mt / mb:.3f}.", ""]
        print(f"MiniLM step: baseline {mb:.3f} s, this tree {mt:.3f} s, ratio {mt / mb:.3f}")
    Path(args.out).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
