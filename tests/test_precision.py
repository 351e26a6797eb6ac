"""The frozen base in bfloat16 / float16 (genbound.models.precision) and the memory budget of the Hessian.

References are the float32 model's own numbers; tolerances are the precision's unit roundoff u times the
condition factor of genbound.models.precision.rounding_factor (derived there), never a fitted number.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genbound.cli import main
from genbound.core.argtypes import size_arg
from genbound.core.errors import GenboundError
from genbound.diagnostics.evaluate import evaluate_source
from genbound.diagnostics.hessian import HessianOperator, hessian_from_checkpoint
from genbound.diagnostics.landscape import landscape_from_checkpoints
from genbound.models.precision import (
    cast_base,
    check_precision,
    precision_of,
    rounding_factor,
    unit_roundoff,
)
from genbound.models.tinymodels import make_pairs_csv, make_text_model
from genbound.sources.context import context_for
from genbound.training.train import TrainConfig, train

LOW = ["bfloat16", "float16"]


@pytest.fixture(scope="module")
def bert_ckpt(tmp_path_factory) -> Path:
    """A LoRA run on a tiny random BERT: attention, layer norms and embeddings all run in the low dtype."""
    root = tmp_path_factory.mktemp("bert")
    folder = make_text_model(root / "model", "bert")
    pairs = make_pairs_csv(root / "pairs.csv")
    cfg = TrainConfig(method="lora", backbone=str(folder), dataset=str(pairs), text_columns=["s1", "s2"],
                      split_column="split", rank=2, steps=20, batch_size=16, max_length=16, lr=1e-2, progress=False)
    return train(cfg, root / "ck", save_every=0).path


def test_unit_roundoff_and_refusals():
    assert unit_roundoff("bfloat16") == 2.0**-8 and unit_roundoff("float16") == 2.0**-11
    assert unit_roundoff("float32") == 2.0**-24
    assert check_precision("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(GenboundError, match="--dtype float32"):
        check_precision("float16", "meta")  # a device with no autocast: one line naming what to use
    with pytest.raises(GenboundError, match="unknown base dtype"):
        check_precision("int8", "cpu")


@pytest.mark.parametrize("dtype", LOW)
def test_frozen_base_cast_trained_tensors_stay_float32(ckpt_dir, dtype):
    ctx = context_for(ckpt_dir("lora"), dtype=dtype)
    model = ctx.build_model()
    assert precision_of(model) == getattr(torch, dtype)
    for name, p in model.named_parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else getattr(torch, dtype)), name
    feats, _ = next(iter(ctx.load_splits().train.batches(8)))
    assert model(**feats).dtype == torch.float32  # logits, hence losses, in float32
    # The float32 context's model is untouched by the low one's (copies from one cache).
    assert precision_of(context_for(ckpt_dir("lora")).build_model()) == torch.float32
    assert precision_of(cast_base(model, "float32")) == torch.float32  # float32 clears the mark


@pytest.mark.parametrize("dtype", LOW)
def test_evaluate_loss_within_rounding(ckpt_dir, bert_ckpt, dtype):
    for ck in (ckpt_dir("lora"), bert_ckpt):
        ref = evaluate_source(ck)
        low = evaluate_source(ck, base_dtype=dtype)
        assert ref["base_dtype"] == "float32" and low["base_dtype"] == dtype
        c = rounding_factor(context_for(ck, dtype=dtype).build_model(), passes=1)
        for split in ("train", "test"):
            tol = c * unit_roundoff(dtype) * abs(ref[f"{split}_loss"])
            assert abs(low[f"{split}_loss"] - ref[f"{split}_loss"]) <= tol, (split, tol)
            assert low[f"{split}_loss"] != ref[f"{split}_loss"]  # the low precision did take effect


@pytest.mark.parametrize("dtype", LOW)
def test_hessian_bound_covers_the_float32_eigenvalue(ckpt_dir, bert_ckpt, dtype):
    for ck in (ckpt_dir("lora"), bert_ckpt):
        ref = hessian_from_checkpoint(ck, samples=64, top_k=2, trace=False, tol=1e-6)
        low = hessian_from_checkpoint(ck, samples=64, top_k=2, trace=False, tol=1e-6, base_dtype=dtype)
        assert low.base_dtype == dtype and low.eigen.precision == f"working+{dtype} rounding"
        c = rounding_factor(context_for(ck, dtype=dtype).build_model(), passes=3)
        norm = abs(ref.eigen.top[0])
        assert low.eigen.rounding_error == pytest.approx(
            c * unit_roundoff(dtype) * (abs(low.eigen.top[0]) + low.eigen.top_errors[0] - low.eigen.rounding_error),
            rel=1e-9)
        for lam, theta, err in zip(ref.eigen.top, low.eigen.top, low.eigen.top_errors):
            assert abs(theta - lam) <= c * unit_roundoff(dtype) * norm  # Weyl with ||H~ - H|| <= c u ||H||
            assert abs(theta - lam) <= err  # the reported bound covers the float32 model's eigenvalue
        # Without the rounding term it would not: the Lanczos error alone is below the precision's effect.
        lanczos_only = low.eigen.top_errors[0] - low.eigen.rounding_error
        assert lanczos_only < abs(low.eigen.top[0] - ref.eigen.top[0])


@pytest.mark.parametrize("dtype", LOW)
def test_landscape_values_within_rounding(ckpt_dir, dtype):
    ck = ckpt_dir("lora")
    kw = dict(grid=5, samples=64, seed=0, progress=False)
    ref = landscape_from_checkpoints([ck], "random", **kw)
    low = landscape_from_checkpoints([ck], "random", base_dtype=dtype, **kw)
    assert low.source["base_dtype"] == dtype
    c = rounding_factor(context_for(ck, dtype=dtype).build_model(), passes=1)
    tol = c * unit_roundoff(dtype) * ref.loss.abs()
    assert bool(((low.loss - ref.loss).abs() <= tol).all())
    assert not torch.equal(low.loss, ref.loss)
    with pytest.raises(GenboundError, match="--space all"):
        landscape_from_checkpoints([ck], "random", space="all", base_dtype=dtype, **kw)


def test_memory_budget_chunks_exactly(ckpt_dir):
    """HVPs are sums over batches with 1/N weights: any chunking gives the unchunked product (float32
    rounding of the sum's order aside)."""
    ctx = context_for(ckpt_dir("lora"))
    model = ctx.build_model()
    evalset = ctx.load_splits().train.subset(96, 0)
    whole = HessianOperator(model, evalset, batch_size=None, mode="reverse")
    probe = HessianOperator(model, evalset, batch_size=None, memory_budget=1 << 40)
    per_example = probe.saved_per_example
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    budget = int(weights + 3 * per_example * 10.5)  # room for ten examples' products
    op = HessianOperator(model, evalset, batch_size=None, memory_budget=budget, mode="auto")
    assert op.batch_size == 10 and op.memory_budget == budget
    V = torch.randn(3, whole.dim, generator=torch.Generator().manual_seed(0))
    ref = whole.matmat(V)
    got = op.matmat(V)
    assert op.mode != "cached"  # 96 examples' graphs do not fit next to the weights: recomputed per product
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    assert op.loss() == pytest.approx(whole.loss(), rel=1e-6)
    with pytest.raises(GenboundError, match="--max-memory"):
        HessianOperator(model, evalset, batch_size=None, memory_budget=weights // 2)


def test_size_arg():
    assert size_arg("2GiB") == 2 << 30 and size_arg("512MiB") == 512 << 20 and size_arg("1.5G") == 3 << 29
    assert size_arg("4e9") == 4 * 10**9 and size_arg("3 MB") == 3 * 10**6
    for bad in ("", "2XB", "-1G", "nan", "0"):
        with pytest.raises(GenboundError, match="memory size"):
            size_arg(bad)


def test_cli_records_dtype_and_budget(ckpt_dir, tmp_path, capsys):
    ck = str(ckpt_dir("lora"))
    assert main(["hessian", ck, "--samples", "32", "--top-k", "1", "--dtype", "bfloat16", "--max-memory", "1GiB",
                 "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["base_dtype"] == "bfloat16" and report["memory_budget"] == 1 << 30
    assert report["eigen"]["rounding_error"] > 0
    out = tmp_path / "bf16run"
    assert main(["train", "--method", "lora", "--backbone", "mlp", "--dataset", "digits", "--steps", "3",
                 "--dtype", "bfloat16", "--out", str(out), "--no-progress", "--json"]) == 0
    capsys.readouterr()
    meta = json.loads((out / "genbound.json").read_text())
    assert meta["hyperparameters"]["base_dtype"] == "bfloat16" and meta["dtype"] == "float32"


def test_low_precision_products_chunked_and_cached_agree(bert_ckpt):
    """A low-precision base takes autograd's products (torch.func's grad / jvp of the attention under autocast
    fail on a dtype check in torch 2.13): recomputed per batch, they agree with the cached graph's and with
    the gradient of the same pass, within the precision's rounding."""
    ctx = context_for(bert_ckpt, dtype="bfloat16")
    model = ctx.build_model()
    evalset = ctx.load_splits().train.subset(12, 0)
    cached = HessianOperator(model, evalset, batch_size=None, mode="cached")
    chunked = HessianOperator(model, evalset, batch_size=5, mode="auto", cache_bytes=0)
    V = torch.randn(2, cached.dim, generator=torch.Generator().manual_seed(1))
    ref, got = cached.matmat(V), chunked.matmat(V)
    assert chunked.mode == "reverse" and cached.mode == "cached"
    tol = rounding_factor(model, 3) * unit_roundoff("bfloat16") * float(ref.norm(dim=1).max())
    assert float((got - ref).norm(dim=1).max()) <= tol
    g_cached = cached.loss_and_gradient()[1]
    g_chunked = chunked.gradient()
    assert float((g_chunked - g_cached).norm()) <= rounding_factor(model, 2) * unit_roundoff("bfloat16") * float(
        g_cached.norm())
    with pytest.raises(GenboundError, match="forward-mode"):
        HessianOperator(model, evalset, batch_size=5, mode="forward").matvec(V[0])
