"""Landscape points of a model whose frozen base is FSDP-sharded over torchrun's processes (``--shard fsdp``).

The coordinates (the ``--space``'s tensors: adapter factors and head, or the adapted layers' merged weights)
stay whole in every process and everything else is sharded (genbound.core.sharding). A point
theta* + sum_i t_i d_i is evaluated as the ``sequential`` engine defines it (grid._combine, one
``torch.func.functional_call`` per point and batch, in eval mode) on the whole evaluation set; each process
takes its contiguous share of the points, as without sharding, and the values are gathered exactly
(genbound.core.distributed.Group.gather_rows). Each forward pass gathers the sharded weights, which every
process must take part in, so a process with a shorter share evaluates its last point again (discarded) until
every process has run as many passes. The batched engine (folded modules, prefix caches, a private deep copy
of the model) has not been adapted to a sharded model and is not used here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ...core.distributed import Group, shard_range
from ...data.evalset import EvalSet
from ...models.losses import correct as n_correct
from ...models.losses import count, summed_loss
from .grid import _combine


def sharded_point_values(model: nn.Module, centre: dict[str, Tensor], dirs: dict[str, Tensor], points: Tensor,
                         data: EvalSet, batch_size: int, device: torch.device, group: Group) -> tuple[Tensor, Tensor]:
    """Mean loss and accuracy (float64, shape (P,)) at every row of ``points`` (P, k), in every process.
    ``centre``: theta* by coordinate name; ``dirs``: the k directions stacked, (k, *shape) by name."""
    n_points = points.shape[0]
    share = group.shard(n_points)
    most = len(shard_range(n_points, 0, group.world))  # rank 0's share is the longest
    loss = torch.zeros(len(share), dtype=torch.float64)
    acc = torch.zeros(len(share), dtype=torch.float64)
    targets = count(data.labels)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(most):
                t = points[share.start + min(i, len(share) - 1)] if len(share) else points[0]
                theta = {n: _combine(c, dirs[n], t.to(c.dtype)) for n, c in centre.items()}
                total, hits = 0.0, 0
                for feats, labels in data.batches(batch_size, device):
                    logits = functional_call(model, theta, args=(), kwargs=feats, strict=False)
                    total += float(summed_loss(logits, labels))
                    hits += int(n_correct(logits, labels))
                if i < len(share):
                    loss[i], acc[i] = total / targets, hits / targets
    finally:
        model.train(was_training)
    return group.gather_rows(loss, n_points), group.gather_rows(acc, n_points)
