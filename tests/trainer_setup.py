"""The set-up the Hugging Face Trainer tests share: a tiny BERT classifier with a LoRA PeftModel, and a
sentence-pair CSV's splits as the rows the Trainer iterates."""

from __future__ import annotations

from pathlib import Path

import torch

from genbound.data.datasets import get_dataset
from genbound.models.backbones import get_backbone
from genbound.models.tinymodels import make_pairs_csv, make_text_model


class SplitRows(torch.utils.data.Dataset):
    """One split of genbound's tokenized data as Trainer rows (the model inputs and ``labels``)."""

    def __init__(self, split):
        self.split = split

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        return {**{k: v[i] for k, v in self.split.features.items()}, "labels": self.split.labels[i]}


def lora_bert(tmp_path: Path):
    """(model folder, splits of a 60-pair CSV at 16 tokens, a rank-2 LoRA PeftModel on query / value)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    folder = make_text_model(tmp_path / "bert", "bert")
    splits = get_dataset(str(make_pairs_csv(tmp_path / "p.csv", n=60)), ["s1", "s2"], "label", "split").load(
        get_backbone(str(folder)), 0, 16)
    base = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True)
    pm = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], task_type="SEQ_CLS"))
    return folder, splits, pm
