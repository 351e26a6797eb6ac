"""The run context and the split checkpoint modules: W0 read from the weights file equals the built model's,
one backbone build and one data load per compare, and the old entry points still give the same results."""

from __future__ import annotations

import pytest
import torch

from genbound.models.backbones import get_backbone
from genbound.models.pretrained import pretrained_weights
from genbound.models.tinymodels import make_text_model, make_vit


def _linears(model, prefix="backbone."):
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith(prefix)}


@pytest.mark.parametrize("kind", ["bert", "gpt2", "roberta", "vit"])
def test_w0_from_the_weights_file_equals_the_built_models(tmp_path, kind):
    """Every Linear of a tiny task model: W0 read from model.safetensors (keys mapped by transformers' own
    conversion, ViT's old names included; transposed for GPT-2's Conv1D, square ones too, since the model says
    which layers are Conv1D) equals the built model's weight bit for bit."""
    folder = make_vit(tmp_path / kind) if kind == "vit" else make_text_model(tmp_path / kind, kind)
    backbone = get_backbone(str(folder))
    model = backbone.build(3 if kind == "vit" else 2, 0)
    lin = {n: m for n, m in _linears(model).items() if n != "backbone." + model.head_path}
    layers = [(n, m.out_features, m.in_features) for n, m in lin.items()]
    if kind == "gpt2":
        assert any(n in model.fan_in_fan_out and o == i for n, o, i in layers), "a square Conv1D layer is read"
    got = pretrained_weights(backbone, layers)
    assert got is not None and set(got) == {n for n, _, _ in layers}
    for name, W in got.items():
        assert torch.equal(W, lin[name].weight.detach()), name


def test_checkpoint_w0_without_building(ckpt_dir, monkeypatch):
    """A checkpoint's base_weights on the mlp backbone come from the file: no model is built, and they equal
    the pristine model's weights."""
    from genbound.checkpoints.checkpoint import load_checkpoint
    from genbound.models.backbones import Backbone

    ck = load_checkpoint(ckpt_dir("pissa"))
    pristine = ck.initial_model()
    builds = []
    original = Backbone.build
    monkeypatch.setattr(Backbone, "build", lambda self, *a, **k: builds.append(1) or original(self, *a, **k))
    w0 = ck.base_weights()
    ck.layer_updates()  # PiSSA's dW needs W0
    assert builds == []
    for li in ck.meta.layers:
        assert torch.equal(w0[li.name], pristine.get_submodule(li.name).weight.detach())


def _count(monkeypatch):
    """Counters on the functions that build a backbone and load a dataset."""
    from genbound.data.datasets import DatasetSpec, FileDatasetSpec
    from genbound.models.backbones import Backbone

    counts = {"build": 0, "load": 0}

    def counted(cls, name, what):
        original = getattr(cls, name)

        def wrapper(self, *a, **k):
            counts[what] += 1
            return original(self, *a, **k)

        monkeypatch.setattr(cls, name, wrapper)

    counted(Backbone, "build", "build")
    counted(DatasetSpec, "load", "load")
    counted(FileDatasetSpec, "load", "load")
    return counts


def test_compare_builds_the_backbone_once_and_loads_the_data_once(ckpt_dir, monkeypatch):
    """compare --hessian --landscape on two mlp checkpoints of one backbone: one backbone build, one data load
    (before the run context: 15 builds and 7 loads); the rows equal those of separate, uncached calls."""
    from genbound.diagnostics.hessian import hessian_from_checkpoint
    from genbound.report.compare import compare

    a, b = ckpt_dir("lora"), ckpt_dir("cla")
    counts = _count(monkeypatch)
    rep = compare(a, b, hessian=True, landscape=True, samples=64, grid=3, progress=False)
    assert counts == {"build": 1, "load": 1}
    # the cached models give what a fresh, separate computation gives
    alone = hessian_from_checkpoint(b, samples=64, seed=0, top_k=3, trace=True, density=True, progress=False)
    assert rep.row("hessian", "eigenvalue 1").b == alone.eigen.top[0]
    assert counts["build"] == 2 and counts["load"] == 2


def test_compare_on_a_tiny_bert_folder_builds_once(tmp_path, monkeypatch):
    """The same count on a transformers backbone (a tiny BERT folder and a CSV of sentence pairs)."""
    from genbound.models.tinymodels import make_pairs_csv
    from genbound.report.compare import compare
    from genbound.training.train import TrainConfig, train

    folder = make_text_model(tmp_path / "bert", "bert")
    data = make_pairs_csv(tmp_path / "pairs.csv")
    outs = []
    for method in ("lora", "vera"):
        cfg = TrainConfig(method=method, backbone=str(folder), dataset=str(data), text_columns=["s1", "s2"],
                          split_column="split", rank=2, steps=2, batch_size=8, max_length=16, progress=False)
        train(cfg, tmp_path / method, save_every=0)
        outs.append(tmp_path / method)
    counts = _count(monkeypatch)
    compare(*outs, hessian=True, landscape=True, samples=16, grid=3, progress=False)
    assert counts == {"build": 1, "load": 1}
