"""``bounds``' "Theorem 1 not applicable" text describes the model at hand (genbound.bounds.architecture):
its architecture, depth, heads, activation and normalization as its config.json gives them, its inputs, its
output and the adapted layers, not MiniLM for every model."""

from __future__ import annotations

import json

import pytest

from genbound.bounds.architecture import describe
from genbound.cli import main
from genbound.models.tinymodels import make_causal_lm, make_image_folder, make_text_model, make_texts_jsonl, make_vit


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("theorem-text")
    return {"gpt2": make_causal_lm(root / "gpt2", "gpt2"), "llama": make_causal_lm(root / "llama", "llama"),
            "bert": make_text_model(root / "bert", "bert"), "vit": make_vit(root / "vit"),
            "texts": make_texts_jsonl(root / "texts.jsonl", n=40), "images": make_image_folder(root / "images"),
            "root": root}


def _cfg(folder):
    return json.loads((folder / "config.json").read_text())


def test_each_model_is_described_by_its_own_config(models):
    gpt2, llama, bert, vit = (_cfg(models[k]) for k in ("gpt2", "llama", "bert", "vit"))
    chain, reasons = describe(models["gpt2"], ["backbone.transformer.h.0.attn.c_attn",
                                               "backbone.transformer.h.1.attn.c_attn"], "causal-lm")
    assert chain.startswith("GPT2LMHeadModel:") and f"{gpt2['n_layer']} x [" in chain
    assert f"{gpt2['n_head']} heads" in chain and gpt2["activation_function"] in chain
    assert "causal self-attention" in chain and "next-token softmax" in chain and "c_attn (2 adapted maps)" in chain
    assert any("LayerNorm" in r for r in reasons) and not any("RMSNorm" in r for r in reasons)
    assert any("next-token losses" in r for r in reasons)

    chain, reasons = describe(models["llama"], ["backbone.model.layers.0.self_attn.q_proj"], "causal-lm")
    assert chain.startswith("LlamaForCausalLM:") and llama["hidden_act"] in chain and "RMSNorm" in chain
    assert any("RMSNorm is not globally Lipschitz" in r for r in reasons)
    assert not any("LayerNorm" in r for r in reasons)

    chain, reasons = describe(models["bert"], ["backbone.bert.encoder.layer.0.attention.self.query"], "seq-cls")
    assert chain.startswith("BertForSequenceClassification:") and f"{bert['num_hidden_layers']} x [" in chain
    assert "[CLS]" in chain and "token ids" in chain and "causal" not in chain

    chain, reasons = describe(models["vit"], ["backbone.vit.encoder.layer.0.attention.attention.query"],
                              "image-cls")
    assert chain.startswith("ViTForImageClassification:") and "patch embeddings" in chain
    assert f"{vit['num_hidden_layers']} x [" in chain
    assert any("images cut into patches" in r for r in reasons)
    assert not any("token sequences" in r for r in reasons)


def test_bounds_prints_the_checkpoints_own_model(models, capsys):
    run = models["root"] / "gpt2-run"
    assert main(["train", "--method", "lora", "--task", "causal-lm", "--backbone", str(models["gpt2"]), "--dataset",
                 str(models["texts"]), "--max-length", "10", "--steps", "2", "--rank", "2", "--out", str(run),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["bounds", str(run), "--no-compression"]) == 0
    out = capsys.readouterr().out
    assert "Theorem 1: not applicable" in out and "GPT2LMHeadModel" in out and "MiniLM" not in out
    assert "6 x [" not in out and "2 x [" in out  # the tiny GPT-2's 2 blocks, not MiniLM's 6
    capsys.readouterr()
    assert main(["bounds", str(run), "--no-compression", "--json"]) == 0
    t = json.loads(capsys.readouterr().out)["reports"][0]["theorem1"]
    assert not t["applicable"] and t["chain_of_maps"].startswith("GPT2LMHeadModel:")
