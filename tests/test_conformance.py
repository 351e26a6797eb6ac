"""Conformance suite: every registered method, and one defined in this file alone, passes the same checks.

Like scikit-learn's ``check_estimator``, the checks are parametrised over the catalogue rather than written per
method, so a method added to ``genbound.methods.catalogue`` is tested without touching this file:

* a short run on mlp / digits changes only what the method trains: within a link every frozen tensor (base
  weights, frozen factors, selectors, VeRA's shared matrices, PiSSA's residual) stays bit-identical, and a
  chain boundary changes the base weight by exactly the merged link;
* D (``params.data_dependent`` in genbound.json, from the catalogue's formula) equals the number of trained
  scalars that changed plus those that did not change because their gradient was exactly zero at every step
  (for example the rows of B that meet an always-zero pixel column); a scalar that changed without a gradient,
  or had a gradient and did not change, fails;
* the coded tensors of the bounds' hypothesis number exactly D, and start at theta_0;
* the merged model computes what the unmerged one does; the checkpoint round trip is bit-exact (tensors and
  file bytes); dW read from the checkpoint equals W_eff - W0 measured by probing the rebuilt model's own layer
  with the identity;
* ``genbound bounds``, ``spectra`` and ``compare`` run on the checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch.nn import functional as F

from genbound.checkpoints.checkpoint import TENSOR_FILE, load_checkpoint, save_checkpoint
from genbound.cli import main
from genbound.data.datasets import get_dataset
from genbound.methods.adapters import attach_adapters, find_adapters
from genbound.methods.catalogue import METHODS, Method, get_method, registered
from genbound.methods.factors import Factor, LayerContext
from genbound.methods.update import LayerUpdate
from genbound.models.backbones import get_backbone
from genbound.training.train import chain_boundaries, param_groups, trained_tensors


@dataclass(frozen=True)
class RowScale(Factor):
    """A method that exists only in this file: (IA)^3-style output scaling of the adapted layers,
    W = diag(1 + l) W0 with l (n) trained from 0, so dW = diag(l) W0 (dense, needs W0) and D = sum_i n_i."""

    family = "rowscale"
    needs_base = True
    trained = ("l",)

    def scale(self, alpha, rank):
        return 1.0

    def trainable(self, n, m, r):
        return n

    def symbolic(self, k):
        return r"\sum_{i=1}^{L} n_i"

    def start_link(self, ad):
        w = ad.base.weight
        ad._set_param("l", torch.zeros(ad.base.out_features, dtype=w.dtype, device=w.device), trained=True)

    def forward(self, ad, x):
        y = F.linear(x, ad.base.weight) * (1 + ad.l)
        return y if ad.base.bias is None else y + ad.base.bias

    def current_delta(self, ad):
        return ad.l[:, None] * ad.base.weight

    def update(self, ad):
        with torch.no_grad():
            dense = self.current_delta(ad).clone()
        return LayerUpdate(ad.layer, ad.base.out_features, ad.base.in_features, dense=dense)

    def tensors(self, ad):
        return {"l": ad.l.detach().clone()}

    def tensor_spec(self, n, m, r, links, dtype):
        return {"l": ((n,), dtype)}

    @torch.no_grad()
    def load_link(self, ad, tensors, link, where):
        ad.l.copy_(tensors["l"])

    def effective_weight(self, ctx: LayerContext, tensors, W0):
        return (1 + tensors["l"])[:, None] * W0

    def layer_update(self, ctx, tensors):
        W0 = ctx.w0().to(tensors["l"].device, tensors["l"].dtype)
        return LayerUpdate(ctx.name, ctx.n, ctx.m, dense=self.effective_weight(ctx, tensors, W0) - W0)

    def coded(self, ctx, tensors):
        return {"l": tensors["l"]}, {"l": torch.zeros_like(tensors["l"])}


LOCAL = Method(name="rowscale_test", title="Row scaling (test only)", factor=RowScale(),
               description="defined in tests/test_conformance.py alone")
ALL = [*METHODS, LOCAL.name]


@pytest.fixture
def method(request):
    """The method under test, with the file-local one registered for the duration of the test."""
    name = request.param
    if name == LOCAL.name:
        with registered(LOCAL):
            yield get_method(name)
    else:
        yield get_method(name)


def _conf(ckpt_dir, name):
    return ckpt_dir(name, steps=24)


# -- training: frozen parts and D ---------------------------------------------------------------------


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


@pytest.mark.parametrize("method", ALL, indirect=True)
def test_frozen_parts_never_change_and_d_counts_the_trained_scalars(method, ckpt_dir):
    torch.manual_seed(0)
    backbone = get_backbone("mlp")
    splits = get_dataset("digits").load(backbone, 0)
    model = backbone.build(splits.num_labels, 0)
    layers = backbone.adaptable_layers(model, None)
    adapters = attach_adapters(model, method, layers, 4, 8.0, 0)
    k = 3 if method.chained else 1
    steps = 9
    boundaries = set(chain_boundaries(steps, k)) if method.chained else set()
    opt = torch.optim.AdamW(param_groups(model, adapters, 1e-2, method.b_lr_ratio, 0.0), lr=1e-2, weight_decay=0.0)
    x, y = splits.train.features["x"], splits.train.labels
    adapter_ids = {id(p) for ad in adapters.values() for p in ad.parameters()}
    counts = {"changed": 0, "unchanged": 0}

    def snapshot(only_adapters: bool):
        params = {n: p for n, p in model.named_parameters()
                  if p.requires_grad and (id(p) in adapter_ids or not only_adapters)}
        return {n: [p, p.detach().clone(), torch.zeros_like(p, dtype=torch.bool)] for n, p in params.items()}

    def close(tracked, frozen_before, trainable):
        for n, (p, before, grads) in tracked.items():
            diff = p.detach() != before
            assert not (diff & ~grads).any(), f"{n} changed where its gradient was always 0"
            assert not (~diff & grads).any(), f"{n} had a gradient but did not change"
            counts["changed"] += int(diff.sum())
            counts["unchanged"] += int((~diff).sum())
        after = _state(model)
        for key, value in frozen_before.items():
            if key not in trainable:
                assert torch.equal(after[key], value), f"frozen tensor {key} changed within a link"

    # Adapter factors are counted per link (each link's are data-dependent); the head once over the run.
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    run = {n: v for n, v in snapshot(False).items() if id(v[0]) not in adapter_ids}
    link = snapshot(True)
    frozen_before = _state(model)
    for step in range(1, steps + 1):
        idx = torch.arange((step - 1) * 32, step * 32)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x=x[idx]), y[idx]).backward()
        for _, (p, _, grads) in [*link.items(), *run.items()]:
            grads |= p.grad != 0
        opt.step()
        if step in boundaries:
            close(link, frozen_before, trainable)
            deltas = {name: ad.current_delta().clone() for name, ad in adapters.items()}
            bases = {name: ad.base.weight.detach().clone() for name, ad in adapters.items()}
            for ad in adapters.values():
                ad.next_link()
                for p in ad.trained_parameters().values():
                    opt.state.pop(p, None)
            for name, ad in adapters.items():
                torch.testing.assert_close(ad.base.weight, bases[name] + deltas[name], rtol=0, atol=1e-6)
            link = snapshot(True)
            frozen_before = _state(model)
    close({**link, **run}, frozen_before, trainable)
    changed, unchanged = counts["changed"], counts["unchanged"]

    shapes = [(model.get_submodule(n).base.out_features if adapters else model.get_submodule(n).out_features,
               model.get_submodule(n).base.in_features if adapters else model.get_submodule(n).in_features)
              for n in layers]
    head = sum(p.numel() for p in model.head.parameters())
    total = sum(p.numel() for p in model.parameters())
    D = method.data_dependent_params(shapes, 4, k, head, total)
    assert changed > 0
    assert D == changed + unchanged, (D, changed, unchanged)

    ck = load_checkpoint(_conf(ckpt_dir, method.name))
    assert ck.meta.params["data_dependent"] == method.data_dependent_params(ck.meta.shapes, 4, k, head, total)
    if method.name == "vera":
        assert ck.meta.params["data_dependent"] == sum(n + 4 for n, _ in ck.meta.shapes) + head


@pytest.mark.parametrize("method", ALL, indirect=True)
def test_coded_tensors_number_d_and_start_at_theta0(method, ckpt_dir):
    from genbound.sources.hypothesis import from_checkpoint

    ck = load_checkpoint(_conf(ckpt_dir, method.name))
    h = from_checkpoint(ck)
    assert h.num_params == ck.meta.params["data_dependent"]
    assert set(h.trained) == set(h.reference)
    # The hypothesis evaluated at its own tensors is the checkpoint's model; at theta_0 the untrained one.
    splits = ck.load_splits()
    feats = {k: v[:64] for k, v in splits.test.features.items()}
    from torch.func import functional_call

    with torch.no_grad():
        want = ck.build_model("cpu", merged=True)(**feats)
        got = functional_call(h.model, h.to_params(h.trained), args=(), kwargs=feats, strict=False)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        start = functional_call(h.model, h.to_params(h.reference), args=(), kwargs=feats, strict=False)
        pristine = ck.initial_model("cpu")(**feats)
        torch.testing.assert_close(start, pristine, rtol=1e-5, atol=1e-5)


# -- checkpoints ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ALL, indirect=True)
def test_merged_forward_equals_unmerged(method, ckpt_dir):
    ck = load_checkpoint(_conf(ckpt_dir, method.name))
    feats = {k: v[:64] for k, v in ck.load_splits().test.features.items()}
    with torch.no_grad():
        a = ck.build_model("cpu")(**feats)
        b = ck.build_model("cpu", merged=True)(**feats)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ALL, indirect=True)
def test_checkpoint_round_trip_is_bit_exact(method, ckpt_dir, tmp_path):
    path = _conf(ckpt_dir, method.name)
    ck = load_checkpoint(path)
    model = ck.build_model("cpu")
    again = trained_tensors(model, find_adapters(model), full=not method.adapter)
    assert set(again) == set(ck.tensors)
    for key, value in ck.tensors.items():
        assert again[key].dtype == value.dtype and torch.equal(again[key], value), key
    save_checkpoint(tmp_path / "again", ck.meta, again)
    assert (tmp_path / "again" / TENSOR_FILE).read_bytes() == (path / TENSOR_FILE).read_bytes()


@pytest.mark.parametrize("method", ALL, indirect=True)
def test_checkpoint_update_equals_the_models_own_weight_change(method, ckpt_dir):
    """dW from the checkpoint alone vs W_eff - W0, with W_eff read off the rebuilt layer's forward:
    layer(I) - layer(0) = W_eff^T (the bias cancels)."""
    ck = load_checkpoint(_conf(ckpt_dir, method.name))
    model = ck.build_model("cpu")
    W0 = ck.base_weights()
    updates = ck.layer_updates()
    assert set(updates) == {li.name for li in ck.meta.layers}
    for li in ck.meta.layers:
        layer = model.get_submodule(li.name)
        eye = torch.eye(li.in_features)
        with torch.no_grad():
            W_eff = (layer(eye) - layer(torch.zeros(1, li.in_features))).T
        measured = (W_eff - W0[li.name]).double()
        dW = updates[li.name].materialize().double()
        assert dW.shape == measured.shape
        torch.testing.assert_close(dW, measured, rtol=1e-4, atol=2e-5)
        assert float(dW.abs().max()) > 0


# -- the commands ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ALL, indirect=True)
def test_bounds_spectra_and_compare_run(method, ckpt_dir, capsys):
    path = str(_conf(ckpt_dir, method.name))
    other = str(_conf(ckpt_dir, "lora"))
    assert main(["bounds", path, "--json"]) == 0
    bounds = json.loads(capsys.readouterr().out)
    text = json.dumps(bounds)
    assert method.name in text
    assert main(["spectra", path, "--json"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec
    assert main(["compare", path, other, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert method.name in json.dumps(report)


def test_the_catalogue_has_the_fourteen_methods_and_the_local_one_only_while_registered():
    assert len(METHODS) == 14 and {"vera", "pissa", "dora"} <= set(METHODS)
    assert LOCAL.name not in METHODS
    with registered(LOCAL):
        assert get_method(LOCAL.name) is LOCAL
    assert LOCAL.name not in METHODS
