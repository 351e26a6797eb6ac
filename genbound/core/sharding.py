"""Sharding a model's frozen base over the processes with FSDP2 (``torch.distributed.fsdp.fully_shard``).

``--shard fsdp`` under torchrun (:mod:`genbound.core.distributed`) keeps each frozen weight of the model in
1/world pieces, one per process, and all-gathers a block's weights only while that block runs (Zhao et al.,
"PyTorch FSDP: experiences on scaling fully sharded data parallel", VLDB 2023; FSDP2 shards each parameter
as a DTensor along dim 0). What is differentiated in genbound, the adapter's factors and the head, is small
and stays whole in every process (``ignored_params``): its gradients, Hessian-vector products and landscape
perturbations are the data-parallel ones of genbound.core.distributed, summed over the processes, while the
frozen base, which dominates memory, is never held whole outside the block being computed.

The units sharded together (one all-gather each) are the blocks of the model's outermost ``nn.ModuleList``
(a transformer's layers); a model without one (the mlp) shards each top-level child that holds frozen
weights; the root takes what is left (embeddings).

What this torch (2.13) supports on FSDP2-sharded modules, measured on gloo with 2 CPU processes
(docs/scale.md, "Sharded models (FSDP)"): forward, backward, ``torch.func.grad`` and ``torch.func.jvp`` of
it (forward-over-reverse Hessian-vector products, also under ``vmap``) give one process's values; a double
backward (``torch.autograd.grad(..., create_graph=True)`` then a second ``grad``) fails, because FSDP frees
the gathered weights after the first backward while the second-order graph still refers to them.

Every process must run the same number of forward passes (each one all-gathers): :func:`lockstep_slices`
cuts each process's shard of an evaluation set into the same number of mini-batches everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch
from torch import nn

from .distributed import Group
from .errors import GenboundError

__all__ = ["SHARD_CHOICES", "check_shard", "is_sharded", "lockstep_slices", "shard_frozen", "shard_units"]

SHARD_CHOICES = ("none", "fsdp")


def check_shard(shard: str | None, group: Group | None) -> bool:
    """Whether to shard: ``"fsdp"`` needs torchrun with 2 or more processes (there is nothing to shard over
    in one), ``"none"`` / None never shards."""
    if shard in (None, "none"):
        return False
    if shard != "fsdp":
        raise GenboundError(f"unknown --shard {shard!r}; use none or fsdp")
    if group is None:
        raise GenboundError("--shard fsdp shards the model over processes; launch with torchrun --nproc-per-node 2 "
                            "or more (one process holds the whole model: drop --shard)")
    return True


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is an FSDP-sharded DTensor."""
    from torch.distributed.tensor import DTensor  # torch.distributed is loaded only when sharding is asked for

    return any(isinstance(p, DTensor) for p in model.parameters())


def _frozen(module: nn.Module, kept: set[nn.Parameter]) -> bool:
    return any(p not in kept for p in module.parameters())


def shard_units(model: nn.Module, kept: set[nn.Parameter] | None = None) -> list[nn.Module]:
    """The submodules sharded as one unit each: the elements of the outermost ``nn.ModuleList`` (in module
    order) that hold parameters to shard (those not in ``kept``; default: the frozen ones), else the top-level
    children that do."""
    if kept is None:
        kept = {p for p in model.parameters() if p.requires_grad}
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return [m for m in module if _frozen(m, kept)]
    return [m for m in model.children() if _frozen(m, kept)]


def shard_frozen(model: nn.Module, group: Group, device: torch.device, keep: Collection[str] | None = None
                 ) -> nn.Module:
    """Shard the frozen parameters of ``model`` (in place) over ``group``'s processes with FSDP2; the
    parameters with ``requires_grad`` (or those named in ``keep``) stay whole and local (``ignored_params``),
    moved to ``device``; the model may be on the CPU (built there, so that no device ever holds all of it).
    Returns ``model``."""
    from torch.distributed.device_mesh import init_device_mesh  # optional heavy: only under --shard fsdp
    from torch.distributed.fsdp import fully_shard

    if keep is None:
        trained = {p for p in model.parameters() if p.requires_grad}
    else:
        trained = {p for n, p in model.named_parameters() if n in set(keep)}
    if len(trained) == len(list(model.parameters())):
        raise GenboundError("--shard fsdp shards the frozen base, and every parameter of this model is trained or "
                            "perturbed (fft, --space all); use an adapter method or another space, or drop --shard")
    # The whole model may be built on the CPU: the trained parameters and the buffers move to the device here,
    # and fully_shard moves each process's pieces of the frozen weights to the mesh's device (cuda:LOCAL_RANK).
    with torch.no_grad():
        for p in trained:
            p.data = p.data.to(device)
        for module in model.modules():
            for name, b in module._buffers.items():
                if b is not None:
                    module._buffers[name] = b.to(device)
    mesh = init_device_mesh(device.type, (group.world,))
    for unit in shard_units(model, trained):
        # Resharded after its forward: the block's gathered weights are freed until its backward needs them.
        fully_shard(unit, mesh=mesh, reshard_after_forward=True,
                    ignored_params={p for p in unit.parameters() if p in trained})
    fully_shard(model, mesh=mesh, ignored_params=trained)
    return model


def lockstep_slices(n_local: int, batch_size: int, group: Group) -> list[slice]:
    """This process's ``n_local`` examples cut into K consecutive slices of near-equal size (at most
    ``batch_size``), K = the largest ceil(n / batch_size) over the processes, so that every process runs K
    forward passes (each all-gathers the sharded weights). A slice is empty only when the shard has fewer
    than K examples."""
    mine = math.ceil(n_local / batch_size) if n_local else 0
    k = int(group.max_float(mine))
    base, extra = divmod(n_local, k) if k else (0, 0)
    out, start = [], 0
    for i in range(k):
        stop = start + base + (1 if i < extra else 0)
        out.append(slice(start, stop))
        start = stop
    return out
