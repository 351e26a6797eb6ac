"""The researcher's own data: CSV, JSON Lines, Parquet, datasets folders and image folders, the dataset card,
the tweets corpus, and one-line errors for bad data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genbound.core.errors import GenboundError
from genbound.data.datafiles import read_data
from genbound.data.datasets import get_dataset, load_tweets_raw
from genbound.models.backbones import get_backbone
from genbound.models.tinymodels import make_image_folder, make_pairs_csv, make_text_model, make_vit


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    return make_text_model(tmp_path_factory.mktemp("rob") / "m", "roberta")


def _rows(path):
    import csv

    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_csv_pairs_with_split_column(tmp_path, roberta):
    csv_path = make_pairs_csv(tmp_path / "pairs.csv")
    rows = _rows(csv_path)
    backbone = get_backbone(str(roberta))
    splits = get_dataset(str(csv_path), ["s1", "s2"], "label", "split").load(backbone, 0, 32)
    want = {p: sum(r["split"] == p for r in rows) for p in ("train", "validation", "test")}
    assert splits.sizes == {"train": want["train"], "val": want["validation"], "test": want["test"]}
    card = splits.info["card"]
    assert card["columns"] == {"text": ["s1", "s2"], "label": "label", "split": "split"}
    assert card["classes"] == ["0", "1"] and card["sizes"]["train"] == want["train"]
    assert card["digest"].startswith("sha256:")
    # The pair is tokenized as the tokenizer's own pair encoding: compare with a direct call on row 0.
    tok = backbone.tokenizer()
    first = next(r for r in rows if r["split"] == "train")
    enc = tok(first["s1"], first["s2"], truncation=True, max_length=32, padding="max_length", return_tensors="pt")
    assert torch.equal(splits.train.features["input_ids"][0], enc["input_ids"][0])
    assert int(splits.train.labels[0]) == int(first["label"])


def test_formats_agree(tmp_path, roberta):
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_path = make_pairs_csv(tmp_path / "pairs.csv")
    rows = _rows(csv_path)
    with open(tmp_path / "pairs.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps({**r, "label": int(r["label"])}) + "\n")
    table = pa.table({k: [r[k] if k != "label" else int(r[k]) for r in rows] for k in rows[0]})
    pq.write_table(table, tmp_path / "pairs.parquet")
    backbone = get_backbone(str(roberta))
    got = [get_dataset(str(tmp_path / f"pairs.{ext}"), ["s1", "s2"], None, "split").load(backbone, 0, 32)
           for ext in ("csv", "jsonl", "parquet")]
    for s in got[1:]:
        assert s.classes == got[0].classes and s.sizes == got[0].sizes
        assert torch.equal(s.train.features["input_ids"], got[0].train.features["input_ids"])
        assert torch.equal(s.test.labels, got[0].test.labels)
    assert [s.info["card"]["format"] for s in got] == ["csv", "jsonl", "parquet"]


def test_datasets_folder_without_validation_carves_it(tmp_path, roberta):
    import datasets

    rows = _rows(make_pairs_csv(tmp_path / "pairs.csv", n=150, split=False))
    feats = datasets.Features({"s1": datasets.Value("string"), "s2": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["no", "yes"])})

    def part(rs):
        return datasets.Dataset.from_dict({k: [int(r[k]) if k == "label" else r[k] for r in rs] for k in feats},
                                          features=feats)

    datasets.DatasetDict({"train": part(rows[:100]), "test": part(rows[100:])}).save_to_disk(str(tmp_path / "dd"))
    data = read_data(tmp_path / "dd", ["s1", "s2"], "label", None, split_seed=3)
    assert data.classes == ["no", "yes"]
    assert len(data.parts["train"]) + len(data.parts["val"]) == 100 and len(data.parts["test"]) == 50
    assert set(data.parts["val"]) <= set(range(100)) and not set(data.parts["val"]) & set(data.parts["train"])
    assert "carved" in data.card["splits"] and "split seed 3" in data.card["splits"]
    again = read_data(tmp_path / "dd", ["s1", "s2"], "label", None, split_seed=3)
    assert np.array_equal(again.parts["val"], data.parts["val"])
    other = read_data(tmp_path / "dd", ["s1", "s2"], "label", None, split_seed=4)
    assert not np.array_equal(other.parts["val"], data.parts["val"])


def test_seeded_split_without_split_column(tmp_path, roberta):
    csv_path = make_pairs_csv(tmp_path / "p.csv", n=200, split=False)
    s = get_dataset(str(csv_path), ["s1"], "label").load(get_backbone(str(roberta)), 5, 16)
    assert sum(s.sizes.values()) == 200 and s.info["card"]["splits"].startswith("stratified seeded")


def test_image_folder_on_vit(tmp_path):
    folder = make_image_folder(tmp_path / "imgs")
    vit = get_backbone(str(make_vit(tmp_path / "vit")))
    assert vit.task == "image-cls" and vit.data_kind == "image"
    s = get_dataset(str(folder)).load(vit, 0)
    assert s.classes == ["circle", "square", "stripes"] and sum(s.sizes.values()) == 36
    assert s.train.features["pixel_values"].shape[1:] == (3, 16, 16)


@pytest.mark.parametrize("case,match", [
    ("no_column", "has no column 'sentence'"),
    ("negative_label", "out of range"),
    ("empty_test", "the test split is empty"),
    ("bad_split", "are not train, validation"),
    ("one_class", "one class"),
])
def test_bad_data_is_one_line(tmp_path, roberta, case, match):
    rows = _rows(make_pairs_csv(tmp_path / "pairs.csv"))
    cols = ["s1", "s2"]
    if case == "no_column":
        cols = ["sentence"]
    if case == "negative_label":
        rows[3]["label"] = "-1"
    if case == "empty_test":
        rows = [r for r in rows if r["split"] != "test"]
    if case == "bad_split":
        rows[0]["split"] = "holdout"
    if case == "one_class":
        for r in rows:
            r["label"] = "yes"
    import csv

    with open(tmp_path / "bad.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(GenboundError, match=match) as err:
        get_dataset(str(tmp_path / "bad.csv"), cols, "label", "split").load(get_backbone(str(roberta)), 0, 16)
    assert "\n" not in str(err.value)


def test_tokenizer_must_fit_the_model(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from genbound.models.tinymodels import _tokenizer

    folder = tmp_path / "small-vocab"
    BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=8)).save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    csv_path = make_pairs_csv(tmp_path / "p.csv")
    with pytest.raises(GenboundError, match="has 50 embeddings"):
        get_dataset(str(csv_path), ["s1"], "label", "split").load(get_backbone(str(folder)), 0, 16)


def test_tweets_corpus_cleaning():
    texts, labels, classes = load_tweets_raw()
    assert classes == ["negative", "neutral", "positive"]
    assert len(texts) == 37185 and len(set(texts)) == len(texts)
    assert np.bincount(labels).tolist() == [15954, 14424, 6807]
    assert all(t == " ".join(t.split()) for t in texts[:2000])


def test_cli_bad_column_exits_2_and_writes_nothing(tmp_path, roberta, capsys):
    from genbound.cli import main

    csv_path = make_pairs_csv(tmp_path / "pairs.csv")
    out = tmp_path / "never"
    rc = main(["train", "--method", "cla", "--backbone", str(roberta), "--dataset", str(csv_path), "--text-columns",
               "s1,missing", "--split-column", "split", "--steps", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "has no column 'missing'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert main(["train", "--method", "cla", "--backbone", str(roberta), "--dataset", "bbc", "--label-column", "x",
                 "--steps", "2", "--out", str(out)]) == 2
    assert "fixed columns" in capsys.readouterr().err and not out.exists()
