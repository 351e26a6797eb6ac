"""Diagnostics and training across processes (genbound.distributed): torchrun with 2 gloo processes on the CPU
gives what one process gives.

Every check launches ``python -m torch.distributed.run --standalone --nproc-per-node 2`` (torchrun; the
standalone rendezvous picks a free port) and compares its output with the same computation done here in
one process: top-3 Hessian eigenvalues and the trace with the same seed (1e-5 relative in float32, 1e-8 in
float64), a 5 x 5 landscape, and training with the same global batch. The evaluation batch size 100 does
not divide the shards, so the processes add their partial sums in another order than one process does: the
agreement is that of the mathematics, not of one shared code path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genbound.distributed import launched, shard_range

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    n = str(torch.get_num_threads())
    return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _torchrun(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    done = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _close(a, b, rtol: float) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=rtol, atol=0)


def test_shards_cover_every_item_once_in_order():
    for n in (0, 1, 5, 7, 512):
        for world in (1, 2, 3, 8):
            shares = [shard_range(n, r, world) for r in range(world)]
            assert [i for s in shares for i in s] == list(range(n))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_one_process_joins_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with launched(torch.device("cpu")) as group:
        assert group is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    with launched(torch.device("cpu")) as group:
        assert group is None


HESSIAN = ["--top-k", "3", "--trace", "--trace-method", "hutch++", "--batch-size", "100", "--samples", "300",
           "--seed", "3", "--device", "cpu", "--no-progress"]


def test_hessian_under_torchrun_equals_one_process(ckpt_dir, tmp_path):
    from genbound.hessian import hessian_from_checkpoint

    ckpt = ckpt_dir("lora")
    done = _torchrun("-m", "genbound", "hessian", str(ckpt), *HESSIAN, "--json", "--out", "two.json", cwd=tmp_path)
    printed = json.loads(done.stdout)  # one JSON document: only rank 0 printed
    two = json.loads((tmp_path / "two.json").read_text())
    assert printed == two and sorted(p.name for p in tmp_path.iterdir()) == ["two.json"]  # no temporaries
    assert two["source"]["processes"] == 2
    one = hessian_from_checkpoint(ckpt, top_k=3, trace=True, trace_method="hutch++", batch_size=100, samples=300,
                                  seed=3, device=torch.device("cpu"), progress=False)
    assert one.dtype == "float32" and len(one.eigen.top) == 3
    _close(two["eigen"]["top"], one.eigen.top, 1e-5)
    _close(two["trace"]["estimate"], one.trace.estimate, 1e-5)
    _close(two["loss"], one.loss, 1e-5)
    assert two["trace"]["n_probes"] == one.trace.n_probes and two["n_examples"] == one.n_examples == 300


_FLOAT64 = """
import json, sys, torch
from genbound.distributed import launched
from genbound.hessian import hessian_from_checkpoint
with launched(torch.device("cpu")) as group:
    r = hessian_from_checkpoint(sys.argv[1], top_k=3, trace=True, trace_method="hutch++", batch_size=100,
                                samples=300, seed=3, dtype=torch.float64, progress=False, group=group)
    if group.is_main:
        out = {"top": r.eigen.top, "trace": r.trace.estimate, "loss": r.loss, "dtype": r.dtype}
        json.dump(out, open("r.json", "w"))
"""


def test_float64_hessian_under_torchrun_equals_one_process_to_1e8(ckpt_dir, tmp_path):
    from genbound.hessian import hessian_from_checkpoint

    ckpt = ckpt_dir("lora")
    (tmp_path / "job.py").write_text(_FLOAT64)
    _torchrun("job.py", str(ckpt), cwd=tmp_path)
    two = json.loads((tmp_path / "r.json").read_text())
    one = hessian_from_checkpoint(ckpt, top_k=3, trace=True, trace_method="hutch++", batch_size=100, samples=300,
                                  seed=3, dtype=torch.float64, progress=False)
    assert two["dtype"] == one.dtype == "float64"
    _close(two["top"], one.eigen.top, 1e-8)
    _close(two["trace"], one.trace.estimate, 1e-8)
    _close(two["loss"], one.loss, 1e-8)


def test_landscape_under_torchrun_equals_one_process(ckpt_dir, tmp_path):
    from genbound.landscape import landscape_from_checkpoints

    ckpt = ckpt_dir("lora")
    done = _torchrun("-m", "genbound", "landscape", str(ckpt), "--grid", "5", "--samples", "300", "--batch-size",
                     "100", "--device", "cpu", "--no-progress", "--output", "two.json", cwd=tmp_path)
    assert done.stdout.count("plane slice") == 1  # only rank 0 printed
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["timing"]["processes"] == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["two.json"]
    one = landscape_from_checkpoints([ckpt], grid=5, samples=300, batch_size=100, device=torch.device("cpu"),
                                     progress=False)
    assert one.loss.shape == (5, 5)
    _close(two["loss"], one.loss.numpy(), 1e-5)
    _close(two["accuracy"], one.accuracy.numpy(), 1e-12)
    assert two["reference_loss"] == pytest.approx(one.reference_loss, rel=1e-6)
