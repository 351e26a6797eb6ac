"""Datasets: the named corpora, the researcher's own data files, tokenization and its cache, and the evaluation set
every diagnostic reads.

The names below are the package's public surface; they are imported on first use (PEP 562), so importing one
module of the package does not import the others (``genbound --help`` stays free of torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_surface

if TYPE_CHECKING:
    from .datafiles import read_data, read_texts
    from .datasets import DATASETS, Splits, default_dataset_for, get_dataset
    from .evalset import EvalSet
    from .tokcache import cached_tokens

_SURFACE = {
    "DATASETS": "datasets",
    "Splits": "datasets",
    "get_dataset": "datasets",
    "default_dataset_for": "datasets",
    "EvalSet": "evalset",
    "read_data": "datafiles",
    "read_texts": "datafiles",
    "cached_tokens": "tokcache",
}
__all__ = [
    "DATASETS",
    "EvalSet",
    "Splits",
    "cached_tokens",
    "default_dataset_for",
    "get_dataset",
    "read_data",
    "read_texts",
]


__getattr__ = lazy_surface(__name__, _SURFACE, globals())
