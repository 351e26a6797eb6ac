"""Diagnostics and training across processes (genbound.core.distributed): torchrun with 2 gloo processes on the CPU
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

from genbound.core.distributed import launched, shard_range

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
    from genbound.diagnostics.hessian import hessian_from_checkpoint

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
from genbound.core.distributed import launched
from genbound.diagnostics.hessian import hessian_from_checkpoint
with launched(torch.device("cpu")) as group:
    r = hessian_from_checkpoint(sys.argv[1], top_k=3, trace=True, trace_method="hutch++", batch_size=100,
                                samples=300, seed=3, dtype=torch.float64, progress=False, group=group)
    if group.is_main:
        out = {"top": r.eigen.top, "trace": r.trace.estimate, "loss": r.loss, "dtype": r.dtype}
        json.dump(out, open("r.json", "w"))
"""


def test_float64_hessian_under_torchrun_equals_one_process_to_1e8(ckpt_dir, tmp_path):
    from genbound.diagnostics.hessian import hessian_from_checkpoint

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
    from genbound.diagnostics.landscape import landscape_from_checkpoints

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


# digits has 628 training examples: batch 31 cuts every global batch 16 / 15 between the two processes (and
# the last of an epoch, 8 examples, 4 / 4), so a plain average of the two gradients would be wrong; 30 steps
# cross the end of the first epoch (21 steps).
TRAIN = dict(backbone="mlp", dataset="digits", rank=4, alpha=8.0, steps=30, batch_size=31, lr=1e-2, seed=0)


def _train_args(method: str, **kw) -> list[str]:
    settings = {**TRAIN, "method": method, **kw}
    args = []
    for k, v in settings.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return [*args, "--device", "cpu", "--no-progress", "--json"]


def _same_training(two: Path, one: Path) -> None:
    from genbound.checkpoints.checkpoint import load_meta, read_safetensors

    a, b = load_meta(two), load_meta(one)
    assert a.metrics["processes"] == 2 and "processes" not in b.metrics
    for key in ("train_loss", "val_loss", "test_loss"):
        assert abs(a.results[key] - b.results[key]) < 1e-4, key
    assert [h["step"] for h in a.history] == [h["step"] for h in b.history] == [21, 30]
    for ha, hb in zip(a.history, b.history):
        assert abs(ha["train_loss_running"] - hb["train_loss_running"]) < 1e-4
        assert abs(ha["val_loss"] - hb["val_loss"]) < 1e-4
    ta, tb = read_safetensors(two / "tensors.safetensors"), read_safetensors(one / "tensors.safetensors")
    assert set(ta) == set(tb)
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method, extra", [("lora", {}), ("c3la", {"chain": 2})])
def test_training_under_torchrun_equals_one_process(tmp_path, method, extra):
    from genbound.training.train import TrainConfig, train

    done = _torchrun("-m", "genbound", "train", *_train_args(method, **extra), "--out", "two", cwd=tmp_path)
    assert Path(json.loads(done.stdout)["checkpoint"]).name == "two"  # one JSON document: rank 0 alone printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two"], "no state, lock or temporaries left behind"
    one = train(TrainConfig(method=method, progress=False, **TRAIN, **extra), tmp_path / "one").path
    if extra:
        from genbound.checkpoints.checkpoint import load_meta

        assert load_meta(tmp_path / "two").hyperparameters["chain_boundaries"] == [15]
    _same_training(tmp_path / "two", one)


@pytest.mark.parametrize("shard", ["none", "fsdp"])
def test_a_one_process_state_resumes_under_torchrun(tmp_path, monkeypatch, shard):
    """A run killed after its state at step 20 (monkeypatched kill) resumes in 2 processes, which read the
    state alike and end where the uninterrupted one-process run ends; rank 0 removes the state. With
    ``--shard fsdp`` the frozen base is sharded on loading: what the state holds (trained tensors, optimizer,
    data order, random streams) is whole in every process."""
    from genbound.training import train as train_module
    from genbound.training.train import TrainConfig, state_dir_for, train

    config = dict(method="lora", progress=False, **TRAIN)
    one = train(TrainConfig(**config), tmp_path / "one", save_every=10).path

    class Killed(BaseException):
        pass

    original = train_module.save_state

    def save_then_die(path, state):
        original(path, state)
        if state.step == 20:
            raise Killed

    monkeypatch.setattr(train_module, "save_state", save_then_die)
    with pytest.raises(Killed):
        train(TrainConfig(**config), tmp_path / "two", save_every=10)
    monkeypatch.undo()
    assert state_dir_for(tmp_path / "two").is_dir()
    done = _torchrun("-m", "genbound", "train", *_train_args("lora"), "--out", "two", "--resume",
                     "--save-every", "10", "--shard", shard, cwd=tmp_path)
    metrics = json.loads(done.stdout)["metrics"]
    assert metrics["resumed_at"] == [20] and metrics["processes"] == 2 and metrics["shard"] == shard
    assert not state_dir_for(tmp_path / "two").exists()
    _same_training(tmp_path / "two", one)


def test_the_torchrun_commands_in_the_docs_parse():
    """docs/scale.md's torchrun lines are genbound command lines that the parser accepts as written."""
    import shlex

    from genbound.cli import build_parser

    text = (ROOT / "docs" / "scale.md").read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("torchrun ") and " -m genbound " in ln]
    assert {shlex.split(ln)[shlex.split(ln).index("genbound") + 1] for ln in lines} == {"hessian", "landscape", "train"}
    for ln in lines:
        words = shlex.split(ln)
        args = words[words.index("genbound") + 1:]
        build_parser(args[0], all_arguments=False).parse_args(args)


# -- the frozen base sharded with FSDP2 (--shard fsdp, genbound.core.sharding) ---------------------------------

_PROBE = """
import json, copy, torch
from torch.func import functional_call, grad, jvp
from genbound.core.distributed import launched
from genbound.core.sharding import shard_frozen
from genbound.testing import make_checkpoint
from genbound.sources.context import context_for
import sys
with launched(torch.device("cpu")) as group:
    model = context_for(sys.argv[1]).build_model(torch.device("cpu")).double()
    whole = copy.deepcopy(model)
    shard_frozen(model, group, torch.device("cpu"))
    x = torch.randn(7, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.arange(7) % 5
    names = [n for n, p in whole.named_parameters() if p.requires_grad]
    v = {n: torch.randn_like(p, generator=torch.Generator().manual_seed(2)) for n, p in whole.named_parameters()
         if p.requires_grad}
    def loss(m, th):
        return torch.nn.functional.cross_entropy(functional_call(m, th, (x,), strict=False), y)
    def hvp(m):
        th = {n: p.detach() for n, p in m.named_parameters() if p.requires_grad}
        return jvp(lambda t: grad(lambda s: loss(m, s))(t), (th,), (v,))[1]
    out = {"local_rows": model.fc1.base.weight.to_local().shape[0], "rows": model.fc1.base.weight.shape[0]}
    th = {n: p.detach().requires_grad_() for n, p in model.named_parameters() if p.requires_grad}
    loss(model, th).backward()
    th1 = {n: p.detach().requires_grad_() for n, p in whole.named_parameters() if p.requires_grad}
    loss(whole, th1).backward()
    out["backward"] = max((th[n].grad - th1[n].grad).abs().max().item() for n in names)
    a, b = hvp(model), hvp(whole)
    out["jvp_grad"] = max((a[n] - b[n]).abs().max().item() for n in names)
    out["hvp_norm"] = sum(b[n].norm().item() for n in names)
    th = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    two = torch.func.vmap(lambda u: jvp(lambda t: grad(lambda s: loss(model, s))(t), (th,), (u,))[1])(
        {n: torch.stack([v[n], -2 * v[n]]) for n in names})
    out["vmap"] = max((two[n][1] + 2 * b[n]).abs().max().item() for n in names)
    try:
        th = {n: p.detach().requires_grad_() for n, p in model.named_parameters() if p.requires_grad}
        g = torch.autograd.grad(loss(model, th), list(th.values()), create_graph=True)
        torch.autograd.grad(g, list(th.values()), [v[n] for n in names])
        out["double_backward"] = "ran"
    except RuntimeError as exc:
        out["double_backward"] = str(exc)
    try:
        import torch.autograd.forward_ad as fwAD
        with fwAD.dual_level():
            th = {n: fwAD.make_dual(p.detach(), v[n]).requires_grad_() for n, p in model.named_parameters()
                  if p.requires_grad}
            torch.autograd.grad(loss(model, th), list(th.values()), create_graph=True)  # forward over reverse
        out["forward_ad"] = "ran"
    except RuntimeError as exc:
        out["forward_ad"] = str(exc)
    if group.is_main:
        json.dump(out, open("probe.json", "w"))
"""


def test_what_fsdp2_supports_on_gloo(ckpt_dir, tmp_path):
    """The measurement docs/scale.md reports: on 2 gloo processes FSDP2 shards the frozen base (each process
    holds half the rows), and backward and forward-over-reverse (jvp of grad) give one process's values; a double
    backward fails, since FSDP frees the gathered weights its second-order graph refers to. If a torch release
    changes the last, docs/scale.md's section and the HVP mode rule (operator._sharded_mode) are to be revisited."""
    (tmp_path / "probe.py").write_text(_PROBE)
    _torchrun("probe.py", str(ckpt_dir("lora")), cwd=tmp_path)
    out = json.loads((tmp_path / "probe.json").read_text())
    assert out["local_rows"] * 2 == out["rows"] == 128
    assert out["backward"] < 1e-12 and out["hvp_norm"] > 1e-3 and out["jvp_grad"] < 1e-12 * max(1.0, out["hvp_norm"])
    assert out["vmap"] < 1e-12 * max(1.0, out["hvp_norm"])
    assert out["double_backward"] != "ran" and "storage" in out["double_backward"]
    assert out["forward_ad"] != "ran" and "jvp" in out["forward_ad"]


def test_sharded_hessian_equals_one_process(ckpt_dir, tmp_path):
    from genbound.diagnostics.hessian import hessian_from_checkpoint

    ckpt = ckpt_dir("lora")
    # 301 examples: shards of 151 / 150 in batches of 50, 4 and 3 of them; lockstep cuts both into 4
    args = [*HESSIAN, "--samples", "301", "--batch-size", "50", "--shard", "fsdp"]
    _torchrun("-m", "genbound", "hessian", str(ckpt), *args, "--json", "--out", "two.json", cwd=tmp_path)
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["source"]["processes"] == 2 and two["source"]["shard"] == "fsdp"
    one = hessian_from_checkpoint(ckpt, top_k=3, trace=True, trace_method="hutch++", batch_size=50, samples=301,
                                  seed=3, device=torch.device("cpu"), progress=False)
    _close(two["eigen"]["top"], one.eigen.top, 1e-5)
    _close(two["trace"]["estimate"], one.trace.estimate, 1e-5)
    _close(two["loss"], one.loss, 1e-6)
    _close(two["grad_norm"], one.grad_norm, 1e-5)


def test_sharded_training_equals_one_process(tmp_path):
    """Batch 57 leaves a last batch of 1 example in each epoch of digits' 628 (step 12): one process's slice is
    empty, and it still runs its forward and backward (the gathers are collective)."""
    from genbound.training.train import TrainConfig, train

    settings = {**TRAIN, "steps": 14, "batch_size": 57}
    args = []
    for k, v in {**settings, "method": "lora"}.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    _torchrun("-m", "genbound", "train", *args, "--device", "cpu", "--no-progress", "--json", "--out", "two",
              "--shard", "fsdp", "--save-every", "13", cwd=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two"]
    one = train(TrainConfig(method="lora", progress=False, **settings), tmp_path / "one").path
    from genbound.checkpoints.checkpoint import load_meta, read_safetensors

    a, b = load_meta(tmp_path / "two"), load_meta(one)
    assert a.metrics["processes"] == 2 and a.metrics["shard"] == "fsdp"
    assert [h["step"] for h in a.history] == [h["step"] for h in b.history] == [12, 14]
    for key in ("train_loss", "val_loss", "test_loss"):
        assert abs(a.results[key] - b.results[key]) < 1e-5, key
    ta, tb = read_safetensors(tmp_path / "two" / "tensors.safetensors"), read_safetensors(one / "tensors.safetensors")
    assert set(ta) == set(tb)
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=1e-4, atol=1e-6)


KILL_AT_STATE = """
import os
import genbound.training.train as train_module

_save = train_module.save_state


def _save_then_die(path, state):
    _save(path, state)
    if state.step == int(os.environ["GENBOUND_TEST_KILL_AT"]):
        os._exit(3)  # killed right after writing this state, as a preempted job is


train_module.save_state = _save_then_die
"""


def test_a_sharded_state_resumes_sharded(tmp_path):
    """A 2-process --shard fsdp run killed right after its state at step 20 (a sitecustomize in the workers
    makes rank 0 exit there) resumes sharded and ends where the uninterrupted one-process run ends."""
    from genbound.training.train import TrainConfig, state_dir_for, train

    one = train(TrainConfig(method="lora", progress=False, **TRAIN), tmp_path / "one", save_every=10).path
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_AT_STATE)
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "genbound",
            "train", *_train_args("lora"), "--out", "two", "--save-every", "10", "--shard", "fsdp"]
    env = {**_env(), "PYTHONPATH": f"{hook}{os.pathsep}{_env()['PYTHONPATH']}", "GENBOUND_TEST_KILL_AT": "20"}
    killed = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode != 0 and state_dir_for(tmp_path / "two").is_dir(), killed.stderr[-2000:]
    done = _torchrun("-m", "genbound", "train", *_train_args("lora"), "--out", "two", "--resume",
                     "--save-every", "10", "--shard", "fsdp", cwd=tmp_path)
    out = json.loads(done.stdout)
    assert out["metrics"]["resumed_at"] == [20] and out["metrics"]["shard"] == "fsdp"
    assert not state_dir_for(tmp_path / "two").exists()
    _same_training(tmp_path / "two", one)


def test_shard_refusals(tmp_path):
    from genbound.core.distributed import Group
    from genbound.core.errors import GenboundError
    from genbound.core.sharding import check_shard
    from genbound.methods.catalogue import get_method
    from genbound.training.sharded import place_model

    with pytest.raises(GenboundError, match="torchrun"):
        check_shard("fsdp", None)
    from genbound.training.train import TrainConfig, train

    with pytest.raises(GenboundError, match="torchrun"):  # one process: refused, not ignored
        train(TrainConfig(method="lora", progress=False, **TRAIN), tmp_path / "one", shard="fsdp")
    assert not check_shard("none", None)
    two = Group(rank=0, world=2, local_rank=0, backend="gloo")
    for method, subspace, why in (("c3la", False, "merges"), ("fft", False, "every parameter"),
                                  ("lora", True, "subspace")):
        with pytest.raises(GenboundError, match=why):
            place_model(torch.nn.Linear(2, 2), torch.device("cpu"), "fsdp", two, get_method(method), subspace, None)


def test_sharded_landscape_equals_one_process(ckpt_dir, tmp_path):
    """--space factors on the mlp (its dw space covers every parameter, which leaves nothing to shard); 25
    points split 13 / 12, so rank 1 evaluates one point more, discarded, to keep the gathers in step."""
    from genbound.diagnostics.landscape import landscape_from_checkpoints

    ckpt = ckpt_dir("lora")
    _torchrun("-m", "genbound", "landscape", str(ckpt), "--grid", "5", "--samples", "300", "--batch-size", "100",
              "--space", "factors", "--device", "cpu", "--no-progress", "--output", "two.json", "--shard", "fsdp",
              cwd=tmp_path)
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["timing"]["processes"] == 2 and two["timing"]["shard"] == "fsdp"
    one = landscape_from_checkpoints([ckpt], grid=5, samples=300, batch_size=100, space="factors",
                                     device=torch.device("cpu"), engine="sequential", progress=False)
    _close(two["loss"], one.loss.numpy(), 1e-5)
    _close(two["accuracy"], one.accuracy.numpy(), 1e-12)
    assert two["reference_loss"] == pytest.approx(one.reference_loss, rel=1e-6)


_BERT = """
import json, sys, torch
from genbound.core.distributed import launched
from genbound.diagnostics.hessian import hessian_from_checkpoint
from genbound.diagnostics.landscape import landscape_from_checkpoints
with launched(torch.device("cpu")) as group:
    h = hessian_from_checkpoint(sys.argv[1], top_k=2, trace=False, max_steps=8, samples=41, batch_size=16, seed=1,
                                progress=False, group=group, shard="fsdp")
    scape = landscape_from_checkpoints([sys.argv[1]], grid=3, samples=41, batch_size=16, progress=False,
                                       group=group, shard="fsdp")
    if group.is_main:
        json.dump({"top": h.eigen.top, "loss": h.loss, "scape": scape.loss.tolist(), "ref": scape.reference_loss},
                  open("r.json", "w"))
"""


def test_sharded_transformer_hessian_and_landscape(tmp_path):
    """A tiny BERT: its encoder layers (a ModuleList) are the sharded units and the root holds the embeddings;
    the landscape's default dw space keeps the adapted query / value weights whole and shards the rest."""
    from genbound.core.sharding import shard_units
    from genbound.diagnostics.hessian import hessian_from_checkpoint
    from genbound.diagnostics.landscape import landscape_from_checkpoints
    from genbound.models.tinymodels import make_pairs_csv, make_text_model
    from genbound.sources.context import context_for
    from genbound.training.train import TrainConfig, train

    bert, data = make_text_model(tmp_path / "bert", "bert"), make_pairs_csv(tmp_path / "p.csv", n=120)
    ckpt = train(TrainConfig(method="lora", backbone=str(bert), dataset=str(data), text_columns=["s1", "s2"],
                             label_column="label", split_column="split", rank=2, alpha=4.0, steps=2, batch_size=16,
                             lr=1e-2, seed=0, progress=False), tmp_path / "ckpt").path
    model = context_for(ckpt).build_model(torch.device("cpu"))
    assert len(shard_units(model)) == len(model.backbone.bert.encoder.layer) == 2
    (tmp_path / "job.py").write_text(_BERT)
    _torchrun("job.py", str(ckpt), cwd=tmp_path)
    two = json.loads((tmp_path / "r.json").read_text())
    # 8 Lanczos steps, converged or not: the same start and operator give the same Ritz values either way
    h = hessian_from_checkpoint(ckpt, top_k=2, trace=False, max_steps=8, samples=41, batch_size=16, seed=1,
                                progress=False)
    scape = landscape_from_checkpoints([ckpt], grid=3, samples=41, batch_size=16, engine="sequential",
                                       progress=False)
    _close(two["top"], h.eigen.top, 1e-4)
    _close(two["loss"], h.loss, 1e-6)
    _close(two["scape"], scape.loss.numpy(), 1e-5)
    assert two["ref"] == pytest.approx(scape.reference_loss, rel=1e-6)
