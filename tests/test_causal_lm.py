"""Causal language modelling on tiny GPT-2 (Conv1D) and Llama style models saved to a folder (no network).

Checked against independent references: transformers' own ``labels=`` loss of the same model on the same
padded split (token-level mean), peft's ``PeftModel`` for LoRA adapters and exports, and a hand count of
next-token hits."""

from __future__ import annotations

import json

import pytest
import torch

from genbound.checkpoints.checkpoint import load_checkpoint
from genbound.cli import main
from genbound.core.errors import GenboundError
from genbound.data.datasets import get_dataset
from genbound.diagnostics.evaluate import evaluate
from genbound.methods.catalogue import METHODS
from genbound.models.backbones import get_backbone
from genbound.models.losses import IGNORE, count
from genbound.models.tinymodels import make_causal_lm, make_texts_jsonl
from genbound.training.train import TrainConfig, train

MAX_LEN = 10


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("causal")
    return {"root": root, "gpt2": make_causal_lm(root / "gpt2", "gpt2"),
            "llama": make_causal_lm(root / "llama", "llama"), "texts": make_texts_jsonl(root / "texts.jsonl", n=40)}


def _splits(lm, kind):
    bb = get_backbone(str(lm[kind]), "causal-lm")
    return bb, get_dataset(str(lm["texts"])).load(bb, 0, MAX_LEN)


def _hf(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_loss_and_accuracy_equal_transformers(lm, kind):
    bb, sp = _splits(lm, kind)
    model = bb.build(0, 0)
    ref = _hf(lm[kind])
    for part in ("train", "test"):
        es = sp.split(part)
        ev = evaluate(model, es, batch_size=7)  # batches of 7: the token mean must not depend on batching
        with torch.no_grad():
            out = ref(input_ids=es.features["input_ids"], attention_mask=es.features["attention_mask"],
                      labels=es.labels)
        assert abs(ev.loss - float(out.loss)) < 1e-5
        # next-token top-1 by hand: position t predicts token t + 1 wherever that token is not padding
        pred, target = out.logits[:, :-1].argmax(-1), es.features["input_ids"][:, 1:]
        real = es.features["attention_mask"][:, 1:] == 1
        assert ev.targets == int(real.sum()) == count(es.labels)
        assert round(ev.accuracy * ev.targets) == int((pred == target)[real].sum())
        assert ev.unit == "token" and ev.n == len(es)
    # labels: the ids with padding ignored; the split is a seeded permutation of all texts
    assert torch.equal(sp.train.labels == IGNORE, sp.train.features["attention_mask"] == 0)
    assert sum(sp.sizes.values()) == 40 and sp.classes == []


def test_train_lowers_the_loss_and_the_checkpoint_rebuilds(lm, tmp_path):
    bb, sp = _splits(lm, "gpt2")
    before = evaluate(bb.build(0, 0), sp.train).loss
    cfg = TrainConfig(method="lora", backbone=str(lm["gpt2"]), dataset=str(lm["texts"]), task="causal-lm",
                      max_length=MAX_LEN, steps=12, lr=2e-2, batch_size=8, rank=4, alpha=8, progress=False)
    res = train(cfg, tmp_path / "run", splits=sp)
    r = res.meta.results
    assert r["train_loss"] < before - 0.05
    ck = load_checkpoint(tmp_path / "run")
    assert ck.meta.hyperparameters["task"] == "causal-lm" and ck.meta.classes == []
    assert ck.meta.num_labels == 30522 and ck.meta.params["head"] == 0
    assert not any(k.startswith("head.") for k in ck.tensors)  # a causal LM trains no head
    assert ck.meta.dataset_card["target_tokens"]["train"] == count(sp.train.labels)
    again = evaluate(ck.build_model(), ck.load_splits().train)
    assert again.loss == pytest.approx(r["train_loss"], abs=1e-6)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_on_gpt2_conv1d(lm, tmp_path, method):
    """Every method (chained with k = 2, selectors, PaCA, fft) trains on GPT-2's Conv1D targets and its
    checkpoint rebuilds to the recorded loss."""
    _, sp = _splits(lm, "gpt2")
    chain = 2 if METHODS[method].chained else 1
    cfg = TrainConfig(method=method, backbone=str(lm["gpt2"]), dataset=str(lm["texts"]), task="causal-lm",
                      max_length=MAX_LEN, steps=2, batch_size=8, rank=2, alpha=4, chain=chain,
                      targets=["c_attn", "c_fc"], progress=False)
    res = train(cfg, tmp_path / method, splits=sp)
    names = [li.name for li in res.meta.layers]
    assert names and all(n.endswith(("attn.c_attn", "mlp.c_fc")) for n in names)
    ck = load_checkpoint(tmp_path / method)
    ev = evaluate(ck.build_model(), sp.train)
    assert ev.loss == pytest.approx(res.meta.results["train_loss"], abs=1e-6)


@pytest.mark.parametrize("method", ["cla", "c3la", "paca", "vera"])
def test_methods_on_llama_linear(lm, tmp_path, method):
    _, sp = _splits(lm, "llama")
    chain = 2 if METHODS[method].chained else 1
    cfg = TrainConfig(method=method, backbone=str(lm["llama"]), dataset=str(lm["texts"]), task="causal-lm",
                      max_length=MAX_LEN, steps=2, batch_size=8, rank=2, alpha=4, chain=chain,
                      targets=["q_proj", "v_proj", "down_proj"], progress=False)
    res = train(cfg, tmp_path / method, splits=sp)
    assert len(res.meta.layers) == 6
    ev = evaluate(load_checkpoint(tmp_path / method).build_model(), sp.test)
    assert ev.loss == pytest.approx(res.meta.results["test_loss"], abs=1e-6)


@pytest.mark.parametrize("kind,bias", [("gpt2", "none"), ("llama", "none"), ("gpt2", "lora_only")])
def test_peft_lora_adapter_evaluates_as_peftmodel(lm, tmp_path, kind, bias):
    """With bias="lora_only" the adapted layers' biases are trained and saved too: restored onto the HF model
    that a causal LM holds as its backbone."""
    peft = pytest.importorskip("peft")
    from genbound.diagnostics.evaluate import evaluate_source
    from genbound.sources.peft_source import DataChoice, PeftSource

    targets = ["c_attn", "c_fc"] if kind == "gpt2" else ["q_proj", "v_proj", "down_proj"]
    pm = peft.get_peft_model(_hf(lm[kind]), peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, bias=bias,
                                                             target_modules=targets, fan_in_fan_out=kind == "gpt2"))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n or (bias != "none" and p.requires_grad and n.endswith(".bias")):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    pm.save_pretrained(str(tmp_path / "adapter"))
    pm.eval()
    src = PeftSource(tmp_path / "adapter", str(lm[kind]), DataChoice(str(lm["texts"]), max_length=MAX_LEN))
    rep = evaluate_source(src)
    assert rep["unit"] == "token" and rep["n_unit"] == "sequence" and rep["task"] == "causal-lm"
    sp = src.load_splits()
    for part in ("train", "test"):
        es = sp.split(part)
        with torch.no_grad():
            out = pm(input_ids=es.features["input_ids"], attention_mask=es.features["attention_mask"],
                     labels=es.labels)
            ours = src.build_model()(**es.features)
        assert abs(rep[f"{part}_loss"] - float(out.loss)) < 1e-5
        assert (ours - out.logits).abs().max() < 1e-5
    assert rep["gap"] == pytest.approx(rep["test_loss"] - rep["train_loss"])


@pytest.mark.parametrize("method", ["lora", "cla", "paca"])
def test_export_of_a_causal_lm_loads_in_peft(lm, tmp_path, method):
    peft = pytest.importorskip("peft")
    from genbound.sources.export import export_peft
    from genbound.sources.peft_import import load_peft

    _, sp = _splits(lm, "gpt2")
    cfg = TrainConfig(method=method, backbone=str(lm["gpt2"]), dataset=str(lm["texts"]), task="causal-lm",
                      max_length=MAX_LEN, steps=4, lr=2e-2, batch_size=8, rank=2, alpha=4, targets=["c_attn"],
                      progress=False)
    train(cfg, tmp_path / "run", splits=sp)
    ck = load_checkpoint(tmp_path / "run")
    config = export_peft(ck, tmp_path / "peft")
    assert config["task_type"] == "CAUSAL_LM" and config["modules_to_save"] is None
    pm = peft.PeftModel.from_pretrained(_hf(lm["gpt2"]), str(tmp_path / "peft")).eval()
    with torch.no_grad():
        ours = ck.build_model()(**sp.test.features)
        theirs = pm(**sp.test.features).logits
        base = _hf(lm["gpt2"])(**sp.test.features).logits
    assert (ours - theirs).abs().max() < 1e-5
    assert (ours - base).abs().max() > 1e-3  # the update is real, not the base model twice
    back = load_peft(tmp_path / "peft", None, resolve=False)
    assert back.meta.method == method and back.meta.params["data_dependent"] == ck.meta.params["data_dependent"]


def _cli_json(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 0, argv
    return json.loads(capsys.readouterr().out)


def test_cli_train_evaluate_bounds_hessian_landscape(lm, tmp_path, capsys):
    out = tmp_path / "run"
    _cli_json(capsys, ["train", "--method", "cla", "--task", "causal-lm", "--backbone", str(lm["llama"]),
                       "--dataset", str(lm["texts"]), "--max-length", str(MAX_LEN), "--steps", "3", "--rank", "2",
                       "--out", str(out), "--json", "--no-progress"])
    ev = _cli_json(capsys, ["evaluate", str(out), "--json"])
    assert ev["unit"] == "token" and ev["n_unit"] == "sequence" and "target tokens" in ev["note"]
    assert ev["n_train"] == ev["sizes"]["train"] and sum(ev["target_tokens"].values()) > sum(ev["sizes"].values())
    bounds = _cli_json(capsys, ["bounds", str(out), "--json", "--no-progress"])["reports"][0]
    assert bounds["config"]["n_train"] == ev["n_train"]
    assert bounds["units"]["N"].startswith("sequences")
    assert any("N = " in n and "sequences" in n for n in bounds["notes"])
    assert 0 <= bounds["compression"]["train_error_original"] <= 1
    hes = _cli_json(capsys, ["hessian", str(out), "--top-k", "2", "--json", "--no-progress"])
    assert hes["loss"] == pytest.approx(ev["train_loss"], rel=1e-5)  # the token-level mean, as evaluate's
    assert hes["loss_unit"] == "token" and hes["n_targets"] == ev["target_tokens"]["train"]
    land = _cli_json(capsys, ["landscape", str(out), "--dims", "1", "--grid", "3", "--json", "--no-progress"])
    assert land["summary"]["centre_loss"] == pytest.approx(land["reference_loss"], abs=1e-5)


def test_bad_input(lm, tmp_path, capsys, monkeypatch):
    assert main(["train", "--method", "lora", "--task", "causal-lm", "--backbone", "minilm", "--dataset",
                 str(lm["texts"]), "--steps", "1", "--out", str(tmp_path / "x")]) == 2
    assert "not a causal language model" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    bb = get_backbone(str(lm["gpt2"]), "causal-lm")
    import genbound.data.datasets as ds

    def one_token(raw, backbone, max_length, progress=None, **_):  # a tokenizer that can yield one-token texts
        mask = torch.zeros(len(raw), max_length, dtype=torch.int64)
        mask[:, :2] = 1
        mask[1, 1] = 0
        return {"input_ids": torch.ones(len(raw), max_length, dtype=torch.int64), "attention_mask": mask}

    monkeypatch.setattr(ds, "featurize", one_token)
    with pytest.raises(GenboundError, match="text 1 has 1 token"):
        get_dataset(str(lm["texts"])).load(bb, 0, MAX_LEN)
    monkeypatch.undo()
    with pytest.raises(GenboundError, match="no column 'body'"):
        get_dataset(str(lm["texts"]), text_columns=["body"]).load(bb, 0, MAX_LEN)
