"""Checks of the methods, adapters, chains, trainer and checkpoint (issue: reference training)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from genbound.checkpoints.checkpoint import load_checkpoint
from genbound.core.errors import GenboundError
from genbound.diagnostics.evaluate import evaluate
from genbound.methods.adapters import AdaptedLinear, attach_adapters
from genbound.methods.catalogue import METHODS, column_indices, get_method, kaiming_factor
from genbound.models.backbones import get_backbone
from genbound.training.train import TrainConfig, chain_boundaries, train, trained_tensors

ADAPTER_METHODS = [m for m in METHODS if METHODS[m].adapter]


def perturb(ad: AdaptedLinear, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ad.trained_parameters().values():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("name", list(METHODS))
def test_trainable_count_equals_catalogue(name, ckpt_dir):
    ck = load_checkpoint(ckpt_dir(name))
    model = ck.build_model()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    method, meta = ck.method, ck.meta
    head = meta.params["head"]
    expected = method.trainable_params(meta.shapes, meta.rank, head, total=meta.params["total"])
    assert trainable == expected == meta.params["trainable"]
    assert meta.params["data_dependent"] == method.data_dependent_params(
        meta.shapes, meta.rank, meta.chain, head, meta.params["total"])
    if method.chained:
        assert meta.params["data_dependent"] == meta.chain * (trainable - head) + head


def test_catalogue_formulas_by_hand():
    shapes = [(384, 384)] * 12
    assert get_method("lora").data_dependent_params(shapes, 16) == 16 * 768 * 12
    assert get_method("asym").data_dependent_params(shapes, 16) == 16 * 384 * 12
    assert get_method("cola").data_dependent_params(shapes, 16, k=3) == 3 * 16 * 768 * 12
    assert get_method("rc3la").data_dependent_params(shapes, 16, k=3, head=1925) == 3 * 16 * 384 * 12 + 1925
    assert get_method("fft").data_dependent_params(shapes, 16, total=1000) == 1000
    with pytest.raises(GenboundError, match="does not chain"):
        get_method("lora").data_dependent_params(shapes, 16, k=2)


def test_cla_update_is_zero_outside_its_columns(ckpt_dir):
    dW = load_checkpoint(ckpt_dir("cla")).layer_updates()["fc1"].materialize()
    r = 4
    assert dW[:, r:].abs().max() == 0 and dW[:, :r].abs().max() > 0


def test_c3la_support_and_rc3la_disjoint_blocks(ckpt_dir):
    for name in ("c3la", "rc3la"):
        ck = load_checkpoint(ckpt_dir(name))
        k, r = ck.meta.chain, ck.meta.rank
        for layer, u in ck.layer_updates().items():
            cols = u.columns.tolist()
            assert len(cols) == k * r == len(set(cols)), (name, layer, cols)
            support = (u.materialize().abs().sum(0) > 0).nonzero().flatten().tolist()
            assert set(support) <= set(cols)  # (a digit pixel that is always blank gets no gradient)
            for link in range(k):
                assert u.B[:, link * r:(link + 1) * r].abs().max() > 0, (name, layer, link)
            if name == "c3la":
                assert cols == list(range(k * r))


def test_asym_and_rac_never_change_A(ckpt_dir):
    for name in ("asym", "rac"):
        ck = load_checkpoint(ckpt_dir(name))
        for li in ck.meta.layers:
            A = ck.tensors[f"{li.name}.A"]
            for link in range(ck.meta.chain):
                drawn = kaiming_factor(ck.meta.seed, li.name, link, ck.meta.rank, li.in_features)
                assert torch.equal(A[link * ck.meta.rank:(link + 1) * ck.meta.rank], drawn)


def test_cola_trains_A():
    ck_method = get_method("cola")
    lin = nn.Linear(16, 8)
    ad = AdaptedLinear(lin, ck_method, "l", 2, 4.0, 0)
    assert "A" in ad.trained_parameters() and "B" in ad.trained_parameters()


@pytest.mark.parametrize("name", [m for m in ADAPTER_METHODS if METHODS[m].chained])
def test_each_chain_boundary_changes_W0_and_restarts_factors(name):
    lin = nn.Linear(24, 10).double()
    ad = AdaptedLinear(lin, get_method(name), "layer", 3, 6.0, seed=5)
    x = torch.randn(7, 24, dtype=torch.float64)
    for link in range(3):
        perturb(ad, link)
        before_W, before_y = lin.weight.detach().clone(), ad(x).detach()
        ad.next_link()
        assert not torch.equal(lin.weight, before_W), "the merge must change the base weight"
        torch.testing.assert_close(ad(x), before_y, rtol=1e-12, atol=1e-12)  # merge preserves the function
        assert ad.current_B().abs().max() == 0
    u = ad.update()
    assert u.B.shape[1] == 3 * 3 + 3


@pytest.mark.parametrize("name", ADAPTER_METHODS)
def test_merged_forward_equals_unmerged(name):
    lin = nn.Linear(20, 12).double()
    ad = AdaptedLinear(lin, get_method(name), "l", 3, 6.0, seed=1)
    perturb(ad)
    if get_method(name).chained:
        ad.next_link()
        perturb(ad, 1)
    x = torch.randn(5, 20, dtype=torch.float64)
    torch.testing.assert_close(ad(x), ad.merged()(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ADAPTER_METHODS)
def test_factored_update_equals_merged_minus_pristine(name):
    lin = nn.Linear(20, 12).double()
    W0 = lin.weight.detach().clone()
    ad = AdaptedLinear(lin, get_method(name), "l", 3, 6.0, seed=1)
    perturb(ad)
    if get_method(name).chained:
        ad.next_link()
        perturb(ad, 1)
    torch.testing.assert_close(ad.update().materialize(), ad.merged().weight - W0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", [m for m in ADAPTER_METHODS if METHODS[m].uses_columns])
def test_gather_path_equals_dense_selector_path(name):
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    ad = AdaptedLinear(lin, get_method(name), "l", 4, 8.0, seed=2)
    perturb(ad)
    x = torch.randn(6, 32, requires_grad=True)
    y1 = ad(x)
    g1 = torch.autograd.grad(y1.square().sum(), [x, *ad.trained_parameters().values()])
    ad.dense_selector = True
    y2 = ad(x)
    g2 = torch.autograd.grad(y2.square().sum(), [x, *ad.trained_parameters().values()])
    torch.testing.assert_close(y1, y2, rtol=1e-6, atol=1e-6)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_cla_and_deterministic_paca_take_the_same_adam_steps():
    """cla's B and PaCA's columns see gradients that differ by the scale s; Adam is invariant to a gradient
    scale up to eps, so with lr_cla = lr / s the two dW trajectories agree (weight decay and clipping off)."""
    torch.manual_seed(0)
    base = nn.Linear(12, 6).double()
    s = 2.0
    cla = AdaptedLinear(nn.Linear(12, 6).double(), get_method("cla"), "l", 3, alpha=3 * s, seed=0)
    paca = AdaptedLinear(nn.Linear(12, 6).double(), get_method("paca"), "l", 3, alpha=1.0, seed=0, paca_columns="first")
    for ad in (cla, paca):
        ad.base.load_state_dict(base.state_dict())
    paca._start_link()  # re-read the columns from the shared base weight
    assert torch.equal(cla.idx, paca.idx)
    lr = 1e-2
    opt_c = torch.optim.Adam(cla.trained_parameters().values(), lr=lr / s, eps=1e-16)
    opt_p = torch.optim.Adam(paca.trained_parameters().values(), lr=lr, eps=1e-16)
    x, target = torch.randn(64, 12, dtype=torch.float64), torch.randn(64, 6, dtype=torch.float64)
    for _ in range(5):
        for ad, opt in ((cla, opt_c), (paca, opt_p)):
            opt.zero_grad()
            (ad(x) - target).square().mean().backward()
            opt.step()
    torch.testing.assert_close(cla.update().materialize(), paca.update().materialize(), rtol=1e-9, atol=1e-12)
    assert cla.update().materialize().abs().max() > 1e-3


def test_random_columns_follow_the_seed():
    m = get_method("rcla")
    a = column_indices(m, 0, "layer", 64, 8)
    assert torch.equal(a, column_indices(m, 0, "layer", 64, 8))
    assert not torch.equal(a, column_indices(m, 1, "layer", 64, 8))
    assert not torch.equal(a, column_indices(m, 0, "other", 64, 8))
    assert len(set(a.tolist())) == 8


def test_c3la_chain_too_long_is_an_error_naming_the_largest_k():
    with pytest.raises(GenboundError, match="largest valid chain is 16"):
        get_method("c3la").check_rank([(128, 64)], 4, 17)


def test_loss_falls_and_results_are_eval_mode_full_split(ckpt_dir):
    ck = load_checkpoint(ckpt_dir("lora"))
    splits = ck.load_splits()
    start = get_backbone("mlp").build(splits.num_labels, ck.meta.seed)
    before = evaluate(start, splits.train).loss
    assert ck.meta.results["train_loss"] < 0.7 * before
    model = ck.build_model()
    for split in ("train", "val", "test"):
        ev = evaluate(model, splits.split(split))
        assert ev.loss == ck.meta.results[f"{split}_loss"]
    assert ck.meta.results["gap"] == ck.meta.results["test_loss"] - ck.meta.results["train_loss"]


def test_same_seed_same_checkpoint_other_seed_other_columns(tmp_path):
    from genbound.testing import make_checkpoint

    a = load_checkpoint(make_checkpoint(tmp_path, "rcla", name="a", steps=10))
    b = load_checkpoint(make_checkpoint(tmp_path, "rcla", name="b", steps=10))
    c = load_checkpoint(make_checkpoint(tmp_path, "rcla", name="c", steps=10, seed=1))
    assert a.tensors.keys() == b.tensors.keys()
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k]), k
    assert not torch.equal(a.tensors["fc1.columns"], c.tensors["fc1.columns"])


@pytest.mark.parametrize("name", list(METHODS))
def test_checkpoint_round_trips_exactly(name, ckpt_dir):
    ck = load_checkpoint(ckpt_dir(name))
    model = ck.build_model()
    from genbound.methods.adapters import find_adapters

    again = trained_tensors(model, find_adapters(model), full=not ck.method.adapter)
    assert again.keys() == ck.tensors.keys()
    for k, v in ck.tensors.items():
        assert torch.equal(again[k], v), k


def test_chain_boundaries_spread_evenly():
    assert chain_boundaries(90, 3) == [30, 60]
    assert chain_boundaries(10, 1) == []


def test_lora_plus_ratio_applied_once(ckpt_dir):
    ck = load_checkpoint(ckpt_dir("lora_plus"))
    assert ck.meta.hyperparameters["b_lr_ratio_applied"] == 16.0
    assert load_checkpoint(ckpt_dir("lora")).meta.hyperparameters["b_lr_ratio_applied"] == 1.0


def test_attach_refuses_non_linear():
    model = get_backbone("mlp").build(5)
    model.fc1 = nn.Sequential(nn.Linear(64, 128))
    with pytest.raises(GenboundError, match="not a Linear"):
        attach_adapters(model, get_method("lora"), ["fc1"], 2, 4.0, 0)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"method": "nope"}, "unknown method"),
        ({"rank": 0}, "rank must be at least 1"),
        ({"rank": 65}, "rank 65 is invalid"),
        ({"lr": 0.0}, "learning rate must be positive"),
        ({"steps": -1}, "steps must be positive"),
    ],
)
def test_bad_training_input(tmp_path, overrides, needle):
    cfg = TrainConfig(**{"method": "lora", "backbone": "mlp", "steps": 2, "progress": False, **overrides})
    with pytest.raises(GenboundError, match=needle):
        train(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_checkpoint_refused_unless_overwrite(tmp_path, ckpt_dir):
    target = tmp_path / "ck"
    cfg = TrainConfig(method="cla", backbone="mlp", steps=2, progress=False)
    train(cfg, target)
    stamp = (target / "tensors.safetensors").stat().st_mtime_ns
    proc = subprocess.run([sys.executable, "-m", "genbound.cli", "train", "--method", "cla", "--backbone", "mlp",
                           "--steps", "2", "--out", str(target)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert (target / "tensors.safetensors").stat().st_mtime_ns == stamp
    train(cfg, target, overwrite=True)
    assert load_checkpoint(target).meta.method == "cla"


def test_trajectory_saved_on_request(ckpt_dir):
    ck = load_checkpoint(ckpt_dir("cola", save_trajectory=True))
    traj = ck.trajectory()
    assert len(traj) == len(ck.meta.trajectory_steps) >= 3
    assert ck.meta.trajectory_steps[0] == 0
    final = ck.layer_updates()
    torch.testing.assert_close(traj[-1]["fc1"].materialize(), final["fc1"].materialize())
    assert traj[0]["fc1"].materialize().abs().max() == 0


@pytest.mark.slow
def test_a_few_steps_on_minilm(tmp_path):
    cfg = TrainConfig(method="cla", backbone="minilm", rank=4, alpha=8, steps=2, batch_size=8, max_length=16,
                      eval_batch_size=256, progress=False)
    res = train(cfg, tmp_path / "mini")
    ck = load_checkpoint(res.path)
    assert ck.meta.n_train == 1486 and len(ck.meta.layers) == 12  # BBC News deduplicated: 2,122 articles
    assert ck.meta.dataset_card["deduplicated"]["kept"] == 2122
    assert ck.meta.params["trainable"] == 12 * 4 * 384 + 384 * 5 + 5
    model = ck.build_model()
    assert sum(p.requires_grad for p in model.parameters()) == 12 + 2


def test_split_digest_detects_an_edited_split_seed(tmp_path, ckpt_dir):
    """Sizes and classes survive a changed split seed; the recorded digest of the split's contents does not."""
    import json
    import shutil

    from genbound.core.errors import CheckpointError

    src = ckpt_dir("lora")
    ck = load_checkpoint(src)
    assert ck.meta.split_digest.startswith("sha256:")
    assert ck.load_splits().digest() == ck.meta.split_digest
    edited = tmp_path / "edited"
    shutil.copytree(src, edited)
    meta = json.loads((edited / "genbound.json").read_text())
    meta["split_seed"] = meta["split_seed"] + 1
    (edited / "genbound.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="differs from the one the checkpoint was trained on"):
        load_checkpoint(edited).load_splits()
