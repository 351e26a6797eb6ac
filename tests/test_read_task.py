"""``--task`` on the read-side commands, and the task a peft adapter is evaluated as when it records none
(genbound.sources.tasks): task_type, a saved classifier, the base model's architectures, in that order.

Independent reference: peft's own ``PeftModel`` forward with transformers' ``labels=`` loss (token-level mean)
on the same tokenized split."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from genbound.cli import main
from genbound.models.tinymodels import make_causal_lm, make_texts_jsonl
from genbound.sources.tasks import peft_task

MAX_LEN = 10


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A GPT-2 LoRA adapter saved without task_type, its base folder, a copy of the base whose config.json
    calls it a sequence classifier, and texts without labels."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("read-task")
    base = make_causal_lm(root / "gpt2", "gpt2")
    texts = make_texts_jsonl(root / "texts.jsonl", n=40)
    hf = AutoModelForCausalLM.from_pretrained(str(base), local_files_only=True)
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"],
                                                 fan_in_fan_out=True))
    assert pm.peft_config["default"].task_type is None
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    pm.save_pretrained(str(root / "adapter"))
    cfg = json.loads((root / "adapter" / "adapter_config.json").read_text())
    assert cfg.get("task_type") is None
    seqcls = root / "gpt2-seqcls"
    shutil.copytree(base, seqcls)
    mc = json.loads((seqcls / "config.json").read_text())
    mc["architectures"] = ["GPT2ForSequenceClassification"]
    (seqcls / "config.json").write_text(json.dumps(mc))
    return {"root": root, "base": base, "seqcls": seqcls, "texts": texts, "adapter": root / "adapter",
            "peft": pm.eval()}


def _json(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 0, argv
    return json.loads(capsys.readouterr().out)


def _reference_losses(adapter):
    """peft's PeftModel loss on genbound's tokenized splits (transformers' labels= token mean)."""
    from genbound.sources.peft_source import DataChoice, PeftSource

    src = PeftSource(adapter["adapter"], str(adapter["base"]), DataChoice(str(adapter["texts"]), max_length=MAX_LEN))
    sp = src.load_splits()
    out = {}
    for part in ("train", "test"):
        es = sp.split(part)
        with torch.no_grad():
            out[part] = float(adapter["peft"](input_ids=es.features["input_ids"],
                                              attention_mask=es.features["attention_mask"], labels=es.labels).loss)
    return out


def test_adapter_without_task_type_is_a_causal_lm_by_its_base_config(adapter, capsys):
    ref = _reference_losses(adapter)
    ev = _json(capsys, ["evaluate", str(adapter["adapter"]), "--dataset", str(adapter["texts"]), "--max-length",
                        str(MAX_LEN), "--json"])
    assert ev["task"] == "causal-lm" and ev["unit"] == "token"
    for part in ("train", "test"):
        assert abs(ev[f"{part}_loss"] - ref[part]) < 1e-5


def test_task_option_evaluates_it_as_a_causal_lm(adapter, capsys):
    """The base's config.json says sequence classifier: by default it is one, and the texts have no label; the
    error says which task was assumed, why, and how to choose another; --task causal-lm evaluates it."""
    argv = ["evaluate", str(adapter["adapter"]), "--backbone", str(adapter["seqcls"]), "--dataset",
            str(adapter["texts"]), "--max-length", str(MAX_LEN)]
    assert main([*argv, "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no column 'label'" in err and "evaluated as a sequence classifier (task seq-cls" in err
    assert "GPT2ForSequenceClassification" in err and "--task causal-lm" in err
    ref = _reference_losses(adapter)
    ev = _json(capsys, [*argv, "--task", "causal-lm", "--json"])
    assert ev["task"] == "causal-lm"
    for part in ("train", "test"):
        assert abs(ev[f"{part}_loss"] - ref[part]) < 1e-5
    # the same choice on bounds, hessian, landscape and compare
    assert _json(capsys, ["hessian", *argv[1:], "--task", "causal-lm", "--top-k", "1", "--samples", "8", "--json",
                          "--no-progress"])["loss_unit"] == "token"
    b = _json(capsys, ["bounds", *argv[1:], "--task", "causal-lm", "--no-theorem", "--no-compression", "--json"])
    assert b["reports"][0]["units"]["N"].startswith("sequences")
    land = _json(capsys, ["landscape", *argv[1:], "--task", "causal-lm", "--dims", "1", "--grid", "3", "--samples",
                          "8", "--json", "--no-progress"])
    assert land["summary"]["centre_loss"] == pytest.approx(land["reference_loss"], abs=1e-5)
    rep = _json(capsys, ["compare", str(adapter["adapter"]), str(adapter["adapter"]), "--backbone",
                         str(adapter["seqcls"]), "--dataset", str(adapter["texts"]), "--max-length", str(MAX_LEN),
                         "--task", "causal-lm", "--json", "--no-progress"])
    test_loss = next(r for r in rep["rows"] if r["quantity"] == "test loss (per target token)")
    assert test_loss["a"] == pytest.approx(ev["test_loss"], abs=1e-6) and test_loss["b"] == test_loss["a"]


def test_explicit_classifier_task_on_texts_names_the_assumption(adapter, capsys):
    assert main(["evaluate", str(adapter["adapter"]), "--dataset", str(adapter["texts"]), "--task", "seq-cls"]) == 2
    err = capsys.readouterr().err
    assert "(task seq-cls: --task seq-cls)" in err and "--task causal-lm" in err


def test_checkpoint_task_is_confirmed_not_changed(ckpt_dir, capsys):
    ck = ckpt_dir("lora")
    assert main(["evaluate", str(ck), "--task", "causal-lm"]) == 2
    err = capsys.readouterr().err
    assert "trained as mlp" in err and "cannot be evaluated as causal-lm" in err and "drop --task" in err


def test_inference_order():
    assert peft_task("CAUSAL_LM", ["classifier.weight"], None) == ("causal-lm", "the adapter's task_type CAUSAL_LM")
    assert peft_task(None, ["score.weight"], None)[0] is None  # a saved classifier: classification
    assert peft_task(None, [], None, "causal-lm") == ("causal-lm", "--task causal-lm")
    with pytest.raises(Exception, match="TOKEN_CLS"):
        peft_task("TOKEN_CLS", [], None)
