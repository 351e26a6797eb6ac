"""The researcher's experiment end to end through the CLI: a tiny RoBERTa-style classifier folder and a CSV of
sentence pairs with a split column; genbound trains and exports; a LoRA adapter trained with peft itself goes
through evaluate, bounds, hessian, landscape and compare with peft's own losses."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

from genbound.cli import main
from genbound.data.datasets import get_dataset
from genbound.models.backbones import get_backbone
from genbound.models.tinymodels import make_pairs_csv, make_text_model

peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

DATA = ["--text-columns", "s1,s2", "--label-column", "label", "--split-column", "split", "--max-length", "64"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("byo")
    folder = make_text_model(root / "roberta", "roberta")
    csv_path = make_pairs_csv(root / "pairs.csv", n=120)
    # A LoRA adapter trained with peft (plain loop, 15 steps) on the same data and model.
    splits = get_dataset(str(csv_path), ["s1", "s2"], "label", "split").load(get_backbone(str(folder)), 0, 64)
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True)
    pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS"))
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=5e-3)
    tr = splits.train
    for step in range(15):
        idx = torch.arange(step * 16, step * 16 + 16) % len(tr)
        loss = F.cross_entropy(pm(**{k: v[idx] for k, v in tr.features.items()}).logits, tr.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    pm.save_pretrained(str(root / "peft-lora"))
    return root, folder, csv_path, splits, pm.eval()


def _json(capsys, argv):
    assert main(argv) == 0, argv
    return json.loads(capsys.readouterr().out)


def test_train_cla_and_export_to_peft(experiment, capsys):
    from transformers import AutoModelForSequenceClassification

    from genbound.checkpoints.checkpoint import load_checkpoint

    root, folder, csv_path, splits, _ = experiment
    out = root / "X"
    meta = _json(capsys, ["train", "--method", "cla", "--backbone", str(folder), "--dataset", str(csv_path), *DATA,
                          "--steps", "20", "--out", str(out), "--json"])
    assert meta["method"] == "cla" and meta["dataset_card"]["columns"]["text"] == ["s1", "s2"]
    assert _json(capsys, ["export", str(out), "--peft", str(root / "P"), "--json"])["config"]["r"] == 16
    base = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True)
    pm = PeftModel.from_pretrained(base, str(root / "P")).eval()
    with torch.no_grad():
        torch.testing.assert_close(pm(**splits.test.features).logits,
                                   load_checkpoint(out).build_model()(**splits.test.features), rtol=1e-5, atol=1e-5)


def test_peft_lora_through_every_command(experiment, capsys):
    root, folder, csv_path, splits, pm = experiment
    adapter = str(root / "peft-lora")
    src = ["--backbone", str(folder), "--dataset", str(csv_path), *DATA]
    ev = _json(capsys, ["evaluate", adapter, *src, "--json"])
    with torch.no_grad():
        for part in ("train", "val", "test"):
            data = splits.split(part)
            want = F.cross_entropy(pm(**data.features).logits, data.labels).item()
            assert ev[f"{part}_loss"] == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert ev["gap"] == pytest.approx(ev["test_loss"] - ev["train_loss"]) and ev["unit"] == "sequence"
    assert ev["n_train"] == len(splits.train)

    b = _json(capsys, ["bounds", adapter, *src, "--json"])
    report = b[0] if isinstance(b, list) else b["reports"][0] if "reports" in b else b
    text = json.dumps(report)
    assert "compression" in text and str(len(splits.train)) in text

    h = _json(capsys, ["hessian", adapter, *src, "--top-k", "2", "--samples", "24", "--json"])
    assert len(h["eigen"]["top"]) == 2 and h["source"]["kind"] == "peft"

    ls = _json(capsys, ["landscape", adapter, *src, "--grid", "3", "--samples", "16", "--json"])
    centre = ls["loss"][1][1]
    with torch.no_grad():
        sub = splits.train.subset(16, 0)
        want = F.cross_entropy(pm(**sub.features).logits, sub.labels).item()
    assert centre == pytest.approx(want, rel=1e-4)

    cmp = _json(capsys, ["compare", adapter, str(root / "X") if (root / "X").exists() else adapter, *src,
                         "--hessian", "--samples", "16", "--json"])
    rows = {(r["section"], r["quantity"]): r for r in cmp["rows"]}
    assert rows[("fit", "test loss")]["a"] == pytest.approx(ev["test_loss"], rel=1e-6)
    assert rows[("hessian", "eigenvalue 1")]["a"] is not None
