"""Peak memory of `genbound hessian` and `genbound landscape` against one training step of the same batch,
with and without --max-memory and --dtype bfloat16, on a MiniLM LoRA checkpoint.

Every measured command runs in its own process; its peak is the child's peak resident set (ru_maxrss from
os.wait4, KiB on Linux) on a CPU, and torch.cuda.max_memory_allocated (printed by the child) on CUDA. The
peer is one training step of the same batch in the same run: the LoRA model of the checkpoint, a forward,
backward and AdamW step on the ``--samples`` examples at the checkpoint's sequence length. The floor is
the interpreter with torch and transformers imported, the model built and one no-grad forward of the batch
(weights plus one batch's activations): no diagnostic can go below it.

    python benchmarks/bench_memory.py --ckpt runs/minilm-lora [--samples 16] [--budget 192MiB]
        [--device cpu] [--out benchmarks/results/memory.md]

The checkpoint: ``genbound train --method lora --steps 2 --batch-size 16 --max-length 64 --out runs/minilm-lora``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# One training step of the batch (the peer), and the floor (model + one no-grad forward), as child scripts.
STEP = """
import sys, torch
from genbound.sources.context import context_for
from genbound.models.losses import mean_loss
ctx = context_for(sys.argv[1], sys.argv[3], dtype=sys.argv[4])
model = ctx.build_model()
feats, labels = next(iter(ctx.load_splits().train.subset(int(sys.argv[2]), 0).batches(int(sys.argv[2]), ctx.device)))
if sys.argv[5] == "step":
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    mean_loss(model(**feats), labels).backward()
    opt.step()
else:
    with torch.no_grad():
        model(**feats)
if ctx.device.type == "cuda":
    print("CUDA_PEAK", torch.cuda.max_memory_allocated())
"""

# One reverse-mode Hessian-vector product over the batch, the encoder's layers plain or wrapped in
# torch.utils.checkpoint (use_reentrant=False: double backward runs through it; torch.func's jvp refuses its
# saved-tensor hooks, so forward mode cannot use it).
HVP = """
import functools, sys, torch
from torch.utils.checkpoint import checkpoint
from genbound.diagnostics.hessian import HessianOperator
from genbound.sources.context import context_for
ctx = context_for(sys.argv[1], sys.argv[3])
model = ctx.build_model()
if sys.argv[4] == "checkpointed":
    for layer in model.backbone.encoder.layer:
        layer.forward = functools.partial(lambda f, *a, **k: checkpoint(f, *a, use_reentrant=False, **k),
                                          layer.forward)
op = HessianOperator(model, ctx.load_splits().train.subset(int(sys.argv[2]), 0), batch_size=None, mode="reverse")
op.matmat(torch.randn(1, op.dim, generator=torch.Generator().manual_seed(0)))
if ctx.device.type == "cuda":
    print("CUDA_PEAK", torch.cuda.max_memory_allocated())
"""

CUDA_PEAK = """
import runpy, sys, torch
sys.argv = sys.argv[1:]
try:
    runpy.run_module("genbound", run_name="__main__")
except SystemExit as e:
    if e.code:
        raise
print("CUDA_PEAK", torch.cuda.max_memory_allocated())
"""


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def run_peak(args: list[str], cuda: bool) -> tuple[float, float]:
    """(peak MiB, wall seconds) of ``python args`` in a fresh process reaped by os.wait4 (module docstring)."""
    t0 = time.perf_counter()
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-memory-{os.getpid()}.out"
    with open(out_path, "w") as fh:
        proc = subprocess.Popen([sys.executable, *args], env=env(), stdout=fh, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    wall = time.perf_counter() - t0
    out = out_path.read_text()
    out_path.unlink()
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(args)} failed:\n{err[-2000:]}")
    if cuda:
        line = [x for x in out.splitlines() if x.startswith("CUDA_PEAK")][-1]
        return int(line.split()[1]) / 2**20, wall
    return usage.ru_maxrss / 1024, wall


def cases(a) -> list[tuple[str, list[str], str]]:
    """(label, child argv, the command as a user types it) of every measured run."""
    ck, n, dev = str(a.ckpt), str(a.samples), a.device
    hess = ["hessian", ck, "--samples", n, "--top-k", "1", "--max-steps", "4", "--device", dev, "--no-progress",
            "--json"]
    land = ["landscape", ck, "--samples", n, "--grid", "5", "--device", dev, "--no-progress", "--json"]
    runs = []
    for dtype in ("float32", "bfloat16"):
        runs.append((f"training step ({dtype} base)", ["-c", STEP, ck, n, dev, dtype, "step"],
                     f"one forward + backward + AdamW step on {n} examples"))
        runs.append((f"floor: model + no-grad forward ({dtype} base)", ["-c", STEP, ck, n, dev, dtype, "floor"],
                     "build the model, one no-grad forward"))
        for name, argv in (("hessian", hess), ("landscape", land)):
            for budget in (None, a.budget):
                extra = ["--dtype", dtype] + (["--max-memory", budget] if budget else [])
                label = f"{name}" + (f" --max-memory {budget}" if budget else "") + f" ({dtype} base)"
                cmd = argv + extra
                child = ["-c", CUDA_PEAK, *cmd] if dev.startswith("cuda") else ["-m", "genbound", *cmd]
                runs.append((label, child, "genbound " + " ".join(cmd)))
    return runs


def checkpointing_cases(a) -> list[tuple[str, list[str], str]]:
    ck, n, dev = str(a.ckpt), str(a.samples), a.device
    return [("training step (float32 base)", ["-c", STEP, ck, n, dev, "float32", "step"],
             f"one forward + backward + AdamW step on {n} examples")] + [
        (f"one reverse-mode HVP, {how} encoder layers", ["-c", HVP, ck, n, dev, how],
         f"HessianOperator(mode='reverse', one batch of {n}), layers {how}") for how in ("plain", "checkpointed")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, required=False, default=None)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--budget", default="192MiB", help="the --max-memory of the budgeted runs")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--checkpointing", action="store_true",
                    help="instead: one HVP with the encoder's layers plain or activation-checkpointed")
    ap.add_argument("--quick", action="store_true", help="run_all's smoke mode: skipped without --ckpt")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory.md")
    a = ap.parse_args()
    if a.ckpt is None:
        print("bench_memory: give --ckpt (a MiniLM LoRA checkpoint; see the module docstring); skipped")
        return
    cuda = a.device.startswith("cuda")
    rows = []
    for label, child, shown in (checkpointing_cases(a) if a.checkpointing else cases(a)):
        mib, wall = run_peak(child, cuda)
        rows.append((label, mib, wall, shown))
        print(f"{label:55s} {mib:8.0f} MiB  {wall:6.1f} s", flush=True)
    step = {d: next((m for lab, m, _, _ in rows if lab == f"training step ({d} base)"), None)
            for d in ("float32", "bfloat16")}
    step["bfloat16"] = step["bfloat16"] or step["float32"]
    title = ("### Activation checkpointing of the frozen layers for a Hessian-vector product" if a.checkpointing
             else "## Peak memory: Hessian and landscape against one training step (genbound --max-memory, --dtype)")
    lines = [title, "",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: "
             f"{platform.machine()}, {os.cpu_count()} CPUs (`nproc`), shared with other jobs; device {a.device}; "
             f"python {platform.python_version()}",
             f"- command: `python benchmarks/bench_memory.py --ckpt {a.ckpt} --samples {a.samples} --budget "
             f"{a.budget} --device {a.device}" + (" --checkpointing`" if a.checkpointing else "`"),
             f"- checkpoint: MiniLM LoRA (query, value), {a.samples} examples at its sequence length; peak = "
             + ("torch.cuda.max_memory_allocated of the child" if cuda else "the child process's peak RSS "
                "(ru_maxrss), interpreter and libraries included"),
             "- ratio: against the training step with the same base dtype, measured in the same run", "",
             "| run | peak MiB | vs training step | wall s | command |", "|---|---:|---:|---:|---|"]
    for label, mib, wall, shown in rows:
        ref = step["bfloat16" if "bfloat16" in label else "float32"]
        lines.append(f"| {label} | {mib:.0f} | {mib / ref:.2f}x | {wall:.1f} | `{shown}` |")
    if a.checkpointing and a.out.name == "memory.md":
        a.out = a.out.with_name("memory-checkpointing.md")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
