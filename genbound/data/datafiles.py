"""Datasets from the researcher's own files: CSV, JSON Lines, Parquet, a ``datasets`` folder, an image folder.

``--dataset PATH`` reads

* ``*.csv``, ``*.jsonl`` / ``*.json`` (JSON Lines), ``*.parquet``: one table, read with pyarrow;
* a folder written by ``datasets``' ``save_to_disk`` (a ``DatasetDict`` with its splits, or one ``Dataset``);
* an image folder: one subfolder per class, images inside, or ``train`` / ``test`` (and ``validation``) folders of
  class subfolders (genbound.data.imagefolders: the classes in the order of the model's own ``id2label`` when it names
  them, else sorted by name).

Text examples come from ``text_columns`` (one column, or two for a GLUE-style sentence pair that the tokenizer
joins with its separator), labels from ``label_column`` (strings become classes sorted by name; integers
0..C-1 are kept, other integers become the classes the data holds, sorted by value and named by it; a
``datasets`` ``ClassLabel`` keeps its names; genbound.data.checks).

Splits, in order of precedence:

1. ``split_column``: its values name the split of each row (``train``; ``validation`` / ``val`` / ``dev``;
   ``test``);
2. the splits of a ``DatasetDict`` (same names);
3. otherwise the stratified seeded 70 / 10 / 20 split of :func:`genbound.data.datasets.stratified_split`.

With 1 or 2 and no validation split, 10% of the training rows (stratified, from ``split_seed``) are carved out
as validation, and the dataset card says so; a missing train or test split is an error.

The dataset card that a checkpoint records (docs/checkpoint-format.md) names the source, its format, the
columns, the classes, the split sizes, how the splits were made and the sha256 of the file contents.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..core.errors import GenboundError
from .checks import check_data_path, check_datasets_folder, labels_from_values, table_options, to_dataset
from .filedata import CARVE_FRACTION, FileData, _carve_validation
from .imagefolders import read_image_folder

TABLE_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "valid": "val", "dev": "val", "test": "test"}


class MissingColumnError(GenboundError):
    """The data lacks a column the task needs (a label column for a classifier): data of another task, perhaps."""




def is_data_path(name: str) -> bool:
    """A dataset name that points at a file or folder rather than the registry."""
    p = Path(name)
    return p.exists() or p.suffix.lower() in TABLE_SUFFIXES


def content_digest(path: Path) -> str:
    """sha256 over a file's bytes, or over a folder's files (relative path and bytes, in sorted order)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def _read_table(path: Path, fmt: str):
    """A pyarrow Table from a CSV, JSON Lines or Parquet file; a read error becomes one line."""
    try:
        if fmt == "csv":
            from pyarrow import csv

            return csv.read_csv(str(path), **table_options(path, fmt))
        if fmt == "jsonl":
            from pyarrow import json

            return json.read_json(str(path), **table_options(path, fmt))
        from pyarrow import parquet

        return parquet.read_table(str(path))
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GenboundError(f"cannot read {path} as {fmt}: {first}; check the file's format") from None


def _tables(path: Path) -> tuple[dict[str, object], str, dict[str, list[str]]]:
    """{split name or "all": datasets.Dataset}, the format, and ClassLabel names per column."""
    import datasets

    if path.is_file():
        fmt = TABLE_SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            raise GenboundError(f"{path}: unknown data file type '{path.suffix}'; use .csv, .jsonl or .parquet")
        return {"all": to_dataset(_read_table(path, fmt), path)}, fmt, {}
    if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
        check_datasets_folder(path)
        try:
            loaded = datasets.load_from_disk(str(path))
        except (OSError, ValueError, FileNotFoundError) as exc:
            raise GenboundError(f"cannot read the datasets folder {path}: {exc}; write it with save_to_disk") from None
        parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"all": loaded}
        names: dict[str, list[str]] = {}
        for ds in parts.values():
            for col, feat in ds.features.items():
                if isinstance(feat, datasets.ClassLabel):
                    names[col] = list(feat.names)
        return parts, "datasets", names
    raise GenboundError(
        f"{path} is a folder but neither a datasets save_to_disk folder nor an image folder (one subfolder per "
        "class); point --dataset at a .csv, .jsonl or .parquet file or such a folder"
    )


def _image_folder(path: Path, split_seed: int = 0, labels: list[str] | None = None) -> FileData | None:
    """An image folder (one folder of classes, or split folders of classes: genbound.data.imagefolders), or None."""

    return read_image_folder(path, split_seed, labels)


def _labels(values: list, column: str, names: list[str] | None, where: str) -> tuple[np.ndarray, list[str]]:
    """Integer labels 0..C-1 and class names from a label column (genbound.data.checks.labels_from_values)."""
    return labels_from_values(values, column, names, where)


def _rows(path: Path, parts: dict, text_columns: list[str], other_columns: list[str],
          split_column: str | None) -> tuple[list[list], dict[str, list], list[str]]:
    """Every part's rows in order: the text values per row (None refused), the other columns' values and the
    split of each row (the ``split_column`` value, or a DatasetDict's split name; empty when neither)."""
    for name, ds in parts.items():
        for col in [*text_columns, *other_columns, *([split_column] if split_column else [])]:
            if col not in ds.column_names:
                where = f"{path}" + ("" if name == "all" else f" (split '{name}')")
                raise MissingColumnError(f"{where} has no column '{col}'; choose from {', '.join(ds.column_names)}")
    texts: list[list] = []
    others: dict[str, list] = {c: [] for c in other_columns}
    split_of: list[str] = []
    for name, ds in parts.items():
        cols = ds.to_dict() if len(ds) else {c: [] for c in ds.column_names}
        for i in range(len(ds)):
            vals = [cols[c][i] for c in text_columns]
            if any(v is None for v in vals):
                raise GenboundError(f"{path}: row {i} has an empty text in {', '.join(text_columns)}; fill or drop "
                                    "such rows")
            texts.append(vals)
        for c in other_columns:
            others[c] += cols[c]
        if split_column:
            split_of += [str(v) for v in cols[split_column]]
        elif name != "all":
            split_of += [name] * len(ds)
    return texts, others, split_of


def _split_rows(path: Path, split_of: list[str]) -> dict[str, np.ndarray]:
    """Row indices of train / val / test from the data's own split values; train and test must not be empty
    (an empty validation split is left for the caller to carve)."""
    unknown = sorted(set(split_of) - set(SPLIT_NAMES))
    if unknown:
        raise GenboundError(f"{path}: split value(s) {unknown[:4]} are not train, validation (val, dev) or test; "
                            "rename them")
    canon = np.asarray([SPLIT_NAMES[s] for s in split_of])
    rows = {k: np.flatnonzero(canon == k) for k in ("train", "val", "test")}
    for k in ("train", "test"):
        if rows[k].size == 0:
            raise GenboundError(f"{path}: the {k} split is empty; give it rows or drop --split-column to split with "
                                "--split-seed")
    return rows


def read_data(path: str | Path, text_columns: list[str] | None = None, label_column: str | None = None,
              split_column: str | None = None, split_seed: int = 0, labels: list[str] | None = None) -> FileData:
    """Read ``path`` into raw examples, integer labels and (when the data names them) the split rows.
    ``labels``: the model's own class names (its id2label), which order an image folder's classes."""
    path = Path(path)
    if not path.exists():
        raise GenboundError(f"dataset file {path} does not exist; pass a .csv, .jsonl, .parquet file or a folder")
    check_data_path(path)
    if path.is_dir():
        images = _image_folder(path, split_seed, labels)
        if images is not None:
            if split_column:
                raise GenboundError(f"{path} is an image folder, which has no columns; drop --split-column")
            images.card["digest"] = content_digest(path)
            return images
    parts, fmt, class_names = _tables(path)
    first = next(iter(parts.values()))
    columns = list(first.column_names)
    label_column = label_column or ("label" if "label" in columns else None)
    if label_column is None:
        raise MissingColumnError(f"{path} has no column 'label'; name the label column with --label-column "
                            f"(columns: {', '.join(columns)})")
    if not text_columns:
        text_columns = [c for c in ("text", "sentence") if c in columns][:1]
        if not text_columns:
            raise MissingColumnError(f"{path} has no column 'text'; name the text column(s) with --text-columns a[,b] "
                                f"(columns: {', '.join(columns)})")
    if len(text_columns) > 2:
        raise GenboundError(f"--text-columns takes one column or a pair, got {len(text_columns)}")
    # One table with a split column (or none); a DatasetDict's splits become a split column of their own.
    texts, others, split_of = _rows(path, parts, text_columns, [label_column], split_column)
    examples: list = [str(v[0]) if len(v) == 1 else (str(v[0]), str(v[1])) for v in texts]
    label_values = others[label_column]
    if not examples:
        raise GenboundError(f"{path} holds no rows; a dataset needs labelled examples")
    labels, classes = _labels(label_values, label_column, class_names.get(label_column), str(path))
    if len(classes) < 2:
        raise GenboundError(f"{path}: the label column '{label_column}' has one class; a classifier needs two")
    card = {"source": str(path), "format": fmt, "columns": {"text": list(text_columns), "label": label_column},
            "classes": classes, "digest": content_digest(path)}
    if split_column:
        card["columns"]["split"] = split_column
    part_rows = None
    if split_of:
        part_rows = _split_rows(path, split_of)
        if part_rows["val"].size == 0:
            part_rows["train"], part_rows["val"] = _carve_validation(labels, part_rows["train"], split_seed)
            card["splits"] = (f"from the data's splits; no validation split, so {CARVE_FRACTION:.0%} of train "
                              f"was carved out as validation (stratified, split seed {split_seed})")
        else:
            card["splits"] = "from the data's splits" + (f" (column '{split_column}')" if split_column else "")
    else:
        card["splits"] = f"stratified seeded 70/10/20 split (split seed {split_seed})"
    return FileData(examples, labels, classes, part_rows, card)


def read_texts(path: str | Path, text_columns: list[str] | None = None, split_column: str | None = None,
               split_seed: int = 0) -> tuple[list[str], dict[str, np.ndarray] | None, dict]:
    """Texts for causal language modelling (no labels): the text column (default ``text``; a pair of columns
    is joined with a newline), the split rows when the data names them (``split_column`` or a DatasetDict's
    splits; without a validation split, a seeded 10% of train is carved out), and the dataset card."""
    path = Path(path)
    if not path.exists():
        raise GenboundError(f"dataset file {path} does not exist; pass a .csv, .jsonl, .parquet file or a folder")
    check_data_path(path)
    if path.is_dir() and _image_folder(path) is not None:
        raise GenboundError(f"{path} is an image folder; a causal language model trains on texts")
    parts, fmt, _ = _tables(path)
    columns = list(next(iter(parts.values())).column_names)
    if not text_columns:
        text_columns = [c for c in ("text", "sentence", "content") if c in columns][:1]
        if not text_columns:
            raise MissingColumnError(f"{path} has no column 'text'; name the text column with --text-columns NAME "
                                f"(columns: {', '.join(columns)})")
    if len(text_columns) > 2:
        raise GenboundError(f"--text-columns takes one column or a pair, got {len(text_columns)}")
    rows_, _, split_of = _rows(path, parts, text_columns, [], split_column)
    texts = ["\n".join(str(v) for v in vals) for vals in rows_]
    if not texts:
        raise GenboundError(f"{path} holds no rows; a causal language model needs texts")
    card: dict = {"source": str(path), "format": fmt, "columns": {"text": list(text_columns)}, "classes": [],
                  "digest": content_digest(path)}
    if split_column:
        card["columns"]["split"] = split_column
    if not split_of:
        return texts, None, card
    rows = _split_rows(path, split_of)
    if rows["val"].size == 0:
        perm = rows["train"][np.random.default_rng([int(split_seed), 1]).permutation(rows["train"].size)]
        n_val = int(round(CARVE_FRACTION * perm.size))
        rows["val"], rows["train"] = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        card["splits"] = (f"from the data's splits; no validation split, so {CARVE_FRACTION:.0%} of train was "
                          f"carved out as validation (seeded, split seed {split_seed})")
    else:
        card["splits"] = "from the data's splits" + (f" (column '{split_column}')" if split_column else "")
    return texts, rows, card
