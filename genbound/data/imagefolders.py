"""Image folders as datasets: ``DIR/CLASS/*`` with a seeded split, or ``DIR/SPLIT/CLASS/*`` with the data's own.

Two layouts are read (``--dataset DIR``):

* **one folder of classes**, ``DIR/CLASS/*.png``: the stratified seeded 70 / 10 / 20 split of
  :func:`genbound.data.datasets.stratified_split` (``--split-seed``);
* **split folders**, ``DIR/train/CLASS/*``, ``DIR/test/CLASS/*`` and optionally ``DIR/validation/CLASS/*``
  (also ``val``, ``valid``, ``dev``): the splits as given; without a validation folder, 10% of the training
  images (stratified, from the split seed) are carved out as validation, as for a table's own splits
  (genbound.data.datafiles). A folder that mixes split folders with other folders is refused.

The classes are the class folders' names (over all splits). Their order, which fixes each label's index, is
the model's ``id2label`` when it has one of its own naming exactly these classes (a classifier whose head
was trained on them keeps its meaning); otherwise the names sorted. An ``id2label`` of transformers' default
names (``LABEL_0``, ``LABEL_1``, ...) is none of its own. The dataset card says which order was used and why
(``classes_from``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..core.errors import GenboundError
from .filedata import CARVE_FRACTION, IMAGE_SUFFIXES, FileData, _carve_validation

SPLIT_DIRS = {"train": "train", "validation": "val", "val": "val", "valid": "val", "dev": "val", "test": "test"}
_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")


def model_labels(backbone) -> list[str] | None:
    """The class names of a model folder's ``id2label`` in index order, or None where it has none of its own
    (no config, no id2label, transformers' default ``LABEL_i`` names, or indices that are not 0..C-1)."""
    folder = getattr(backbone, "folder", None)
    if folder is None:
        return None
    import json

    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
        raw = cfg.get("id2label") or {}
        pairs = sorted((int(k), str(v)) for k, v in raw.items())
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if not pairs or [i for i, _ in pairs] != list(range(len(pairs))):
        return None
    names = [v for _, v in pairs]
    if all(_DEFAULT_LABEL.match(v) for v in names) or len(set(names)) != len(names):
        return None
    return names


def _images(folder: Path) -> list[str]:
    return [str(f) for f in sorted(folder.iterdir()) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]


def _class_order(found: list[str], labels: list[str] | None) -> tuple[list[str], str]:
    found = sorted(set(found))
    if labels is not None and set(labels) == set(found):
        return list(labels), "the model's id2label (config.json): its classes in its order"
    if labels is not None:
        return found, (f"the class folders' names, sorted: the model's id2label names other classes "
                       f"({len(labels)} labels, e.g. {', '.join(labels[:3])})")
    return found, "the class folders' names, sorted (the model has no id2label of its own)"


def read_image_folder(path: Path, split_seed: int = 0, labels: list[str] | None = None):
    """The image folder at ``path`` as :class:`genbound.data.filedata.FileData` (module docstring), or None when
    ``path`` is no image folder. ``labels``: the model's class names (:func:`model_labels`)."""
    subdirs = sorted(p for p in path.iterdir() if p.is_dir())
    if not subdirs or (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
        return None
    splits = [d for d in subdirs if d.name.lower() in SPLIT_DIRS]
    if splits and len(splits) != len(subdirs):
        others = [d.name for d in subdirs if d not in splits]
        raise GenboundError(f"{path} mixes split folders ({', '.join(d.name for d in splits)}) with other folders "
                            f"({', '.join(others[:4])}); use DIR/train/CLASS/* and DIR/test/CLASS/* (and "
                            "validation), or one folder of CLASS/* folders")
    if not splits:  # one folder of classes
        files = {d.name: _images(d) for d in subdirs}
        if not any(files.values()):
            return None
        classes, why = _class_order(list(files), labels)
        examples = [f for c in classes for f in files[c]]
        y = np.asarray([i for i, c in enumerate(classes) for _ in files[c]], dtype=np.int64)
        card = {"source": str(path), "format": "imagefolder", "columns": {"image": "file", "label": "subfolder"},
                "classes": classes, "classes_from": why,
                "splits": f"stratified seeded 70/10/20 split (split seed {split_seed})"}
        return FileData(examples, y, classes, None, card, kind="image")
    canon: dict[str, Path] = {}
    for d in splits:
        key = SPLIT_DIRS[d.name.lower()]
        if key in canon:
            raise GenboundError(f"{path} has two {key} folders ({canon[key].name}, {d.name}); keep one")
        canon[key] = d
    for key in ("train", "test"):
        if key not in canon:
            raise GenboundError(f"{path} has split folders but no {key} folder; add {path}/{key}/CLASS/* or use "
                                "one folder of CLASS/* folders with a seeded split")
    per_split = {k: {c.name: _images(c) for c in sorted(p for p in d.iterdir() if p.is_dir())}
                 for k, d in canon.items()}
    classes, why = _class_order([c for files in per_split.values() for c in files], labels)
    index = {c: i for i, c in enumerate(classes)}
    examples, y, rows = [], [], {}
    for key in ("train", "val", "test"):
        start = len(examples)
        for c, files in sorted(per_split.get(key, {}).items(), key=lambda kv: index[kv[0]]):
            examples += files
            y += [index[c]] * len(files)
        rows[key] = np.arange(start, len(examples))
    labels_arr = np.asarray(y, dtype=np.int64)
    for key in ("train", "test"):
        if rows[key].size == 0:
            raise GenboundError(f"{canon[key]} holds no images; put them in {canon[key]}/CLASS/")
    card = {"source": str(path), "format": "imagefolder",
            "columns": {"image": "file", "label": "subfolder", "split": "folder"},
            "classes": classes, "classes_from": why,
            "split_folders": {k: canon[k].name for k in ("train", "val", "test") if k in canon}}
    if rows["val"].size == 0:
        rows["train"], rows["val"] = _carve_validation(labels_arr, rows["train"], split_seed)
        card["splits"] = (f"from the data's split folders; no validation folder, so {CARVE_FRACTION:.0%} of train "
                          f"was carved out as validation (stratified, split seed {split_seed})")
    else:
        card["splits"] = "from the data's split folders"
    return FileData(examples, labels_arr, classes, rows, card, kind="image")
