"""Image folders (genbound.data.imagefolders): ``DIR/train|validation|test/CLASS/*`` with the data's own splits as well
as ``DIR/CLASS/*`` with a seeded split; the classes follow the model's own id2label when it names them, and the
dataset card says which order was used.

Independent references: the files written by PIL (counted per folder by hand), and transformers' own
``ViTForImageClassification`` forward with its ``ViTImageProcessor`` (the untrained model's predictions,
mapped through its id2label, must score the same accuracy in genbound as by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genbound.cli import main
from genbound.core.errors import GenboundError
from genbound.data.datafiles import read_data
from genbound.data.datasets import get_dataset
from genbound.data.imagefolders import model_labels
from genbound.models.backbones import get_backbone

CLASSES = ("circle", "square", "stripes")


def _pngs(folder: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, (name, n) in enumerate(per_class.items()):
        d = folder / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = (rng.random((16, 16, 3)) * 80 + 60 * c).clip(0, 255).astype("uint8")
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return folder


def _vit(folder: Path, id2label: dict[int, str] | None) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    extra = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}
    cfg = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, num_labels=3, **extra)
    ViTForImageClassification(cfg).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolders")
    split = root / "split"
    _pngs(split / "train", {"circle": 10, "square": 10, "stripes": 10}, seed=1)
    _pngs(split / "test", {"circle": 4, "square": 3, "stripes": 5}, seed=2)
    with_val = root / "with-val"
    _pngs(with_val / "train", {"circle": 6, "square": 6, "stripes": 6}, seed=3)
    _pngs(with_val / "validation", {"circle": 2, "square": 2, "stripes": 2}, seed=4)
    _pngs(with_val / "test", {"circle": 3, "square": 3, "stripes": 3}, seed=5)
    flat = _pngs(root / "flat", {"circle": 12, "square": 12, "stripes": 12}, seed=6)
    own = _vit(root / "vit-own", {0: "stripes", 1: "circle", 2: "square"})  # not in sorted order
    other = _vit(root / "vit-other", {0: "cat", 1: "dog", 2: "bird"})
    plain = _vit(root / "vit-plain", None)  # transformers' LABEL_0.. names
    return {"root": root, "split": split, "with_val": with_val, "flat": flat, "own": own, "other": other,
            "plain": plain}


def test_split_folders_without_validation(data):
    d = read_data(data["split"], split_seed=3)
    assert d.kind == "image" and d.classes == list(CLASSES)
    assert {k: len(v) for k, v in d.parts.items()} == {"train": 27, "val": 3, "test": 12}  # 10% of each class
    test = [Path(d.examples[i]) for i in d.parts["test"]]
    assert all(p.parts[-3] == "test" for p in test)
    assert sorted(p.parts[-2] for p in test) == sorted(["circle"] * 4 + ["square"] * 3 + ["stripes"] * 5)
    for part in ("train", "val"):
        assert all(Path(d.examples[i]).parts[-3] == "train" for i in d.parts[part])
    assert set(d.parts["train"]).isdisjoint(d.parts["val"])
    for i in range(len(d.examples)):  # every label is its folder's class
        assert d.classes[d.labels[i]] == Path(d.examples[i]).parts[-2]
    assert "carved out as validation" in d.card["splits"] and "split seed 3" in d.card["splits"]
    again = read_data(data["split"], split_seed=3)
    assert all(np.array_equal(again.parts[k], d.parts[k]) for k in d.parts)
    other = read_data(data["split"], split_seed=4)
    assert not np.array_equal(other.parts["val"], d.parts["val"])


def test_split_folders_with_validation(data):
    d = read_data(data["with_val"])
    assert {k: len(v) for k, v in d.parts.items()} == {"train": 18, "val": 6, "test": 9}
    assert all(Path(d.examples[i]).parts[-3] == "validation" for i in d.parts["val"])
    assert d.card["splits"] == "from the data's split folders"
    assert d.card["split_folders"] == {"train": "train", "val": "validation", "test": "test"}


def test_one_folder_is_split_by_seed(data):
    d = read_data(data["flat"], split_seed=0)
    assert d.parts is None and d.classes == list(CLASSES) and len(d.examples) == 36
    assert "seeded 70/10/20" in d.card["splits"]


def test_classes_follow_the_models_own_id2label(data):
    assert model_labels(get_backbone(str(data["own"]))) == ["stripes", "circle", "square"]
    assert model_labels(get_backbone(str(data["plain"]))) is None  # LABEL_0, LABEL_1, LABEL_2
    sp = get_dataset(str(data["split"])).load(get_backbone(str(data["own"])), 0)
    assert sp.classes == ["stripes", "circle", "square"]
    assert "id2label" in sp.info["card"]["classes_from"]
    sp = get_dataset(str(data["split"])).load(get_backbone(str(data["other"])), 0)
    assert sp.classes == list(CLASSES) and "names other classes" in sp.info["card"]["classes_from"]
    sp = get_dataset(str(data["split"])).load(get_backbone(str(data["plain"])), 0)
    assert sp.classes == list(CLASSES) and "no id2label of its own" in sp.info["card"]["classes_from"]


def test_pretrained_head_keeps_its_meaning(data, tmp_path):
    """The model's own classifier, built by genbound on this folder, scores the test accuracy counted by hand
    from transformers' own forward, its argmax named through id2label against each file's folder; a run
    records the classes in that order."""
    from PIL import Image
    from transformers import ViTForImageClassification, ViTImageProcessor

    from genbound.diagnostics.evaluate import evaluate

    bb = get_backbone(str(data["own"]))
    sp = get_dataset(str(data["split"])).load(bb, 0)
    ours = evaluate(bb.build(sp.num_labels, 0).eval(), sp.test, batch_size=5)
    hf = ViTForImageClassification.from_pretrained(str(data["own"]), local_files_only=True).eval()
    proc = ViTImageProcessor.from_pretrained(str(data["own"]), local_files_only=True)
    files = sorted((data["split"] / "test").glob("*/*.png"))
    pixels = proc(images=[Image.open(f).convert("RGB") for f in files], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        pred = hf(pixel_values=pixels).logits.argmax(-1)
    by_hand = float(np.mean([hf.config.id2label[int(p)] == f.parent.name for p, f in zip(pred, files)]))
    assert len(sp.test) == len(files) and ours.accuracy == pytest.approx(by_hand, abs=1e-9)
    # sorted classes instead would permute the labels: the same predictions score differently
    wrong = float(np.mean([CLASSES[int(p)] == f.parent.name for p, f in zip(pred, files)]))
    assert wrong != by_hand
    run = tmp_path / "run"
    assert main(["train", "--method", "lora", "--backbone", str(data["own"]), "--dataset", str(data["split"]),
                 "--steps", "1", "--rank", "2", "--out", str(run), "--no-progress"]) == 0
    meta = json.loads((run / "genbound.json").read_text())
    assert meta["classes"] == ["stripes", "circle", "square"] and meta["sizes"]["test"] == len(files)
    assert "id2label" in meta["dataset_card"]["classes_from"]


def test_bad_layouts(data, tmp_path):
    mixed = tmp_path / "mixed"
    _pngs(mixed / "train", {"a": 2, "b": 2})
    _pngs(mixed, {"cats": 2})
    with pytest.raises(GenboundError, match="mixes split folders"):
        read_data(mixed)
    no_test = tmp_path / "no-test"
    _pngs(no_test / "train", {"a": 2, "b": 2})
    with pytest.raises(GenboundError, match="no test folder"):
        read_data(no_test)
