"""What the readers of the researcher's files produce (genbound.data.datafiles for tables, genbound.data.imagefolders
for images): raw examples, integer labels and how they were split, and the one rule for carving a validation
split out of train."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CARVE_FRACTION = 0.1  # validation carved from train when the data has no validation split


@dataclass
class FileData:
    """Raw examples and labels of a dataset read from files, and how it was split."""

    examples: list  # str, (str, str) pairs, or image paths
    labels: np.ndarray  # int64, 0..C-1
    classes: list[str]
    parts: dict[str, np.ndarray] | None  # "train" / "val" / "test" -> row indices, or None (split by seed)
    card: dict = field(default_factory=dict)
    kind: str = "text"  # "text" or "image"


def _carve_validation(labels: np.ndarray, train: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified: per class, a seeded permutation of the training rows gives CARVE_FRACTION as validation."""
    rng = np.random.default_rng([int(seed), 1])
    val, keep = [], []
    for c in np.unique(labels[train]):
        rows = train[labels[train] == c]
        rows = rows[rng.permutation(len(rows))]
        n_val = int(round(CARVE_FRACTION * len(rows)))
        val.append(rows[:n_val])
        keep.append(rows[n_val:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(val))
