"""A labelled split held in memory: the unit every diagnostic evaluates on.

Every genbound model is called as ``logits = model(**features)``; an :class:`EvalSet` holds the
``features`` (a dict of tensors with a leading example dimension) and integer ``labels``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.errors import GenboundError


@dataclass
class EvalSet:
    """Features (dict of tensors, leading dim N) and labels (N,), int64."""

    features: dict[str, Tensor]
    labels: Tensor

    def __post_init__(self) -> None:
        n = int(self.labels.shape[0])
        for key, value in self.features.items():
            if int(value.shape[0]) != n:
                raise GenboundError(f"feature '{key}' has {value.shape[0]} rows but there are {n} labels")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def index(self, idx: Tensor | slice) -> EvalSet:
        """The examples at positions ``idx``, in that order."""
        return EvalSet({k: v[idx] for k, v in self.features.items()}, self.labels[idx])

    def subset(self, n: int | None, seed: int = 0) -> EvalSet:
        """A seeded random subset of ``n`` examples (all of them when ``n`` is None or >= N)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise GenboundError(f"a subset needs at least one example, got {n}; pass a positive --samples")
        g = torch.Generator().manual_seed(int(seed))
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        return self.index(idx)

    def to(self, device: torch.device | str) -> EvalSet:
        return EvalSet({k: v.to(device) for k, v in self.features.items()}, self.labels.to(device))

    def batches(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        """Consecutive mini-batches in order (the last may be smaller)."""
        if batch_size <= 0:
            raise GenboundError(f"batch size must be positive, got {batch_size}")
        for start in range(0, len(self), batch_size):
            sl = slice(start, start + batch_size)
            feats = {k: v[sl] for k, v in self.features.items()}
            labels = self.labels[sl]
            if device is not None:
                feats = {k: v.to(device, non_blocking=True) for k, v in feats.items()}
                labels = labels.to(device, non_blocking=True)
            yield feats, labels
