"""peft adapters as full sources: genbound's rebuilt model gives peft's own PeftModel logits (to 1e-5)."""

from __future__ import annotations

import json

import pytest
import torch

from genbound.core.errors import GenboundError
from genbound.models.tinymodels import make_pairs_csv, make_text_model, make_vit
from genbound.sources.peft_source import DataChoice, PeftSource

peft = pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model  # noqa: E402

CASES = {
    "bert": dict(target_modules=["query", "value"], task_type="SEQ_CLS"),
    "roberta": dict(target_modules=r".*layer\.\d+\.(attention\.self\.(query|key|value)|output\.dense)",
                    task_type="SEQ_CLS", use_rslora=True),
    "gpt2": dict(target_modules=["c_attn", "c_proj"], fan_in_fan_out=True, task_type="SEQ_CLS",
                 rank_pattern={"h.0.attn.c_attn": 2}),
    "llama": dict(target_modules=["q_proj", "v_proj", "gate_proj"], task_type="SEQ_CLS",
                  rank_pattern={"layers.1.self_attn.q_proj": 6}, alpha_pattern={"gate_proj": 3}),
    "vit": dict(target_modules=["q_proj", "v_proj", "fc1"], modules_to_save=["classifier"]),
}


def _randomize(pm, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:  # LoRA factors and the modules_to_save copy
                p.add_(torch.randn(p.shape, generator=g) * 0.2)


def make_adapter(root, kind, seed=0):
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    folder = make_vit(root / kind) if kind == "vit" else make_text_model(root / kind, kind)
    auto = AutoModelForImageClassification if kind == "vit" else AutoModelForSequenceClassification
    base = auto.from_pretrained(str(folder), local_files_only=True)
    pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, **CASES[kind]))
    _randomize(pm, seed)
    pm.save_pretrained(str(root / f"{kind}-adapter"))
    return folder, root / f"{kind}-adapter", pm.eval()


def _inputs(kind, folder):
    if kind == "vit":
        return {"pixel_values": torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    enc = tok(["good cat sat", "a sad dog went home today"], ["fine", "bad tree"], padding="max_length",
              max_length=14, truncation=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@pytest.mark.parametrize("kind", list(CASES))
def test_peft_source_logits_equal_peft(tmp_path, kind):
    folder, adapter, pm = make_adapter(tmp_path, kind)
    feats = _inputs(kind, folder)
    with torch.no_grad():
        want = pm(**feats).logits
    for backbone in (str(folder), None):  # --backbone, or base_model_name_or_path (a local folder)
        src = PeftSource(adapter, backbone)
        for merged in (False, True):
            with torch.no_grad():
                got = src.build_model(merged=merged)(**feats)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The adapted model's trained tensors: the factors and the restored modules_to_save.
    names = src.trained_parameter_names(src.build_model())
    assert any(n.endswith(".A") for n in names) and any(n.startswith("head.") for n in names)


def test_peft_source_losses_equal_peft_on_a_csv(tmp_path):
    from torch.nn import functional as F

    folder, adapter, pm = make_adapter(tmp_path, "roberta")
    csv_path = make_pairs_csv(tmp_path / "pairs.csv")
    src = PeftSource(adapter, str(folder), DataChoice(str(csv_path), ["s1", "s2"], "label", "split", 0, 32))
    from genbound.diagnostics.evaluate import evaluate_source

    report = evaluate_source(src)
    test = src.load_splits().test
    with torch.no_grad():
        want = F.cross_entropy(pm(**test.features).logits, test.labels).item()
    assert report["test_loss"] == pytest.approx(want, rel=1e-5)
    assert report["gap"] == pytest.approx(report["test_loss"] - report["train_loss"])
    assert report["n_train"] == src.meta.n_train == len(src.load_splits().train)


def test_adapter_for_another_base_is_refused(tmp_path):
    _, adapter, _ = make_adapter(tmp_path, "bert")
    other = make_text_model(tmp_path / "llama2", "llama")
    with pytest.raises(GenboundError, match="not a module of backbone"):
        PeftSource(adapter, str(other))
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "someone/on-the-hub"
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(GenboundError, match="pass --backbone DIR"):
        PeftSource(adapter)
