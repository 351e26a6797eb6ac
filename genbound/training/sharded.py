"""Training with the frozen base sharded over torchrun's processes (``genbound train --shard fsdp``).

The model's frozen weights are sharded with FSDP2 (genbound.core.sharding); the adapter's factors and the
head stay whole in every process and are trained data-parallel exactly as without sharding
(genbound.core.distributed: each process's slice of the global batch, gradients summed in one all-reduce,
identical optimizer steps), so a sharded run computes what a one-process run computes, up to the order of
float additions. Every process runs the same forward and backward passes (each gathers the sharded
weights), also on an empty slice.

What changes the frozen base after the start is refused, since its weights exist only as pieces: chained
methods (each link merges into the base), subspace training, full fine-tuning (nothing is frozen), and a
tracker monitor (it runs extra forward passes on rank 0 alone).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.distributed import Group
from ..core.errors import GenboundError
from ..core.sharding import check_shard, shard_frozen


def place_model(model: nn.Module, device: torch.device, shard: str | None, group: Group | None, method,
                subspace: bool, monitor) -> bool:
    """Move ``model`` to ``device``, or, with ``shard="fsdp"``, shard its frozen base over ``group`` (only
    this process's pieces reach the device). Returns whether the model is sharded."""
    if not check_shard(shard, group):
        model.to(device)
        return False
    why = ("it trains every parameter, so nothing is frozen to shard" if not method.adapter else
           "each chain link merges into the frozen base" if method.chained else
           "subspace training reparametrizes the whole model" if subspace else
           "a tracker monitor runs forward passes on rank 0 alone" if monitor is not None else None)
    if why:
        raise GenboundError(f"--shard fsdp cannot train this run: {why}; drop --shard (every process then holds "
                            "the whole model)")
    shard_frozen(model, group, device)
    return True
