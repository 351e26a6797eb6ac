"""Model folders built as the researcher's own task model: same logits as transformers' Auto class, every
method on Linear and GPT-2 Conv1D targets chosen peft-style, checkpoints that rebuild exactly, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from genbound.checkpoints.checkpoint import load_checkpoint
from genbound.core.errors import GenboundError
from genbound.diagnostics.evaluate import evaluate
from genbound.methods.catalogue import METHODS
from genbound.models.backbones import get_backbone, module_matches
from genbound.models.tinymodels import TEXT_KINDS, make_pairs_csv, make_text_model, make_vit
from genbound.training.train import TrainConfig, train


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = make_vit(root / kind) if kind == "vit" else make_text_model(root / kind, kind)
        return cache[kind]

    return get


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pairs_csv(tmp_path_factory.mktemp("data") / "pairs.csv", n=90)


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_task_model_logits_equal_transformers(folders, kind):
    from transformers import AutoModelForSequenceClassification

    folder = folders(kind)
    backbone = get_backbone(str(folder))
    assert backbone.task == "seq-cls"
    ours = backbone.build(2, seed=0).eval()
    ref = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True).eval()
    tok = backbone.tokenizer()
    enc = tok(["good cat", "a sad dog went home"], ["fine", "bad tree"], padding="max_length", max_length=12,
              truncation=True, return_tensors="pt")
    with torch.no_grad():
        got = ours(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        want = ref(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert isinstance(ours.head, torch.nn.Linear)
    assert all(n.startswith("head.") or n.startswith("backbone.") for n, _ in ours.named_parameters())


def test_vit_logits_equal_transformers(folders):
    from transformers import AutoModelForImageClassification

    folder = folders("vit")
    ours = get_backbone(str(folder)).build(3, seed=0).eval()
    ref = AutoModelForImageClassification.from_pretrained(str(folder), local_files_only=True).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(pixel_values=x), ref(pixel_values=x).logits, rtol=1e-5, atol=1e-5)


def test_targets_follow_peft_semantics(folders):
    backbone = get_backbone(str(folders("gpt2")))
    model = backbone.build(2)
    assert model.fan_in_fan_out  # Conv1D became Linear
    names = backbone.adaptable_layers(model, ["c_attn"])
    assert names == [f"backbone.transformer.h.{i}.attn.c_attn" for i in range(2)]
    assert backbone.adaptable_layers(model, r"transformer\.h\.1\.(attn\.c_attn|mlp\.c_fc)") == [
        "backbone.transformer.h.1.attn.c_attn", "backbone.transformer.h.1.mlp.c_fc"]
    assert backbone.adaptable_layers(model, ["c_attn"], exclude=["h.0.attn.c_attn"]) == [names[1]]
    assert module_matches("backbone.a.b.query", ["b.query"]) and not module_matches("backbone.a.bquery", ["query"])
    with pytest.raises(GenboundError, match="no Linear layer"):
        backbone.adaptable_layers(model, ["nope"])


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_on_gpt2_conv1d(folders, pairs, tmp_path, method):
    chain = 2 if METHODS[method].chained else 1
    cfg = TrainConfig(method=method, backbone=str(folders("gpt2")), dataset=str(pairs), text_columns=["s1", "s2"],
                      split_column="split", rank=2, chain=chain, steps=4, batch_size=16, max_length=16,
                      targets=["c_attn", "c_proj"], exclude=["mlp.c_proj"], progress=False, lr=1e-3)
    result = train(cfg, tmp_path / "ck", save_every=0)
    meta = result.meta
    assert meta.hyperparameters["task"] == "seq-cls" and meta.dataset_card["columns"]["text"] == ["s1", "s2"]
    if METHODS[method].adapter:
        assert {li.name.rsplit(".", 2)[-2] + "." + li.name.rsplit(".", 1)[-1] for li in meta.layers} == {
            "attn.c_attn", "attn.c_proj"}
    assert meta.head_bias is False  # GPT-2's score layer has no bias
    ck = load_checkpoint(result.path)
    splits = ck.load_splits()
    for merged in (False, True):
        model = ck.build_model(merged=merged)
        ev = evaluate(model, splits.test)
        assert ev.loss == pytest.approx(meta.results["test_loss"], rel=1e-5, abs=1e-6)


def test_roberta_checkpoint_rebuilds_bit_exact(folders, pairs, tmp_path):
    cfg = TrainConfig(method="cla", backbone=str(folders("roberta")), dataset=str(pairs), text_columns=["s1", "s2"],
                      label_column="label", split_column="split", rank=4, steps=6, batch_size=16, max_length=64,
                      progress=False)
    meta = train(cfg, tmp_path / "ck", save_every=0).meta
    ck = load_checkpoint(tmp_path / "ck")
    splits = ck.load_splits()
    assert evaluate(ck.build_model(), splits.train).loss == meta.results["train_loss"]
    raw = json.loads((tmp_path / "ck" / "genbound.json").read_text())
    assert raw["dataset_card"]["sizes"] == {"train": meta.sizes["train"], "val": meta.sizes["val"],
                                            "test": meta.sizes["test"]}


def test_model_folder_errors(tmp_path, folders):
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "noweights" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(GenboundError, match="has neither model.safetensors nor .*pickle"):
        get_backbone(str(tmp_path / "noweights"))
    from transformers import WhisperConfig, WhisperModel

    WhisperModel(WhisperConfig(d_model=8, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                               decoder_attention_heads=2, encoder_ffn_dim=8, decoder_ffn_dim=8, vocab_size=20,
                               num_mel_bins=4, max_source_positions=8, max_target_positions=8, pad_token_id=1,
                               bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
                 ).save_pretrained(tmp_path / "whisper")
    with pytest.raises(GenboundError, match="no sequence-classification class") as err:
        get_backbone(str(tmp_path / "whisper")).build(2)
    assert "\n" not in str(err.value)
