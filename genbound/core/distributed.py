"""Running across processes with torch.distributed: diagnostics and training launched by torchrun.

``torchrun --standalone --nproc-per-node 2 -m genbound hessian CKPT ...`` starts the same command in two
processes; torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address. Each command
that runs across processes calls :func:`launched` with its device: outside torchrun (or with one process)
it gives ``None`` and nothing below is used, so a single process computes exactly what it did before.
Inside torchrun it joins the process group, with NCCL on CUDA devices (each process on ``cuda:LOCAL_RANK``)
and gloo on the CPU, and gives a :class:`Group`.

How the work is split (docs/scale.md, "Diagnostics and training across processes"):

* an evaluation set is cut into contiguous shards, one per process (:meth:`Group.shard`); a quantity that
  is a sum over examples divided by the full set's N (the mean loss, its gradient, a Hessian-vector
  product, each example weighted 1/N) is summed over the processes (:meth:`Group.all_reduce_sum`), which is
  the full-set mean exactly in real arithmetic and up to the order of the additions in floating point;
* a set of independent evaluations (landscape grid points) is split the same way, and the results are
  put together by summing vectors that are zero outside each process's own entries (adding zeros is
  exact, so this gather changes no bit);
* everything else (random probes from seeded CPU generators, Lanczos, Hutch++, SLQ, optimizer steps) runs
  identically in every process on identical reduced numbers; only rank 0 writes files and prints.

An all-reduce gives every process the same bits (gloo and NCCL reduce once and share the result), which is
what keeps the control flow of the processes in step: every convergence test sees the same numbers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from .errors import GenboundError

__all__ = ["Group", "launched", "launched_world_size", "local_batch", "reduce_gradients", "shard_range",
           "slice_loss", "summed_loss"]


def launched_world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``), 1 outside torchrun."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise GenboundError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']!r}, not a number; launch with torchrun "
                            "--nproc-per-node N") from None


def shard_range(n: int, rank: int, world: int) -> range:
    """Positions ``[start, stop)`` of process ``rank``'s contiguous share of ``n`` items: the first
    ``n mod world`` processes take one more, so the shares differ by at most one and cover 0..n-1 in order."""
    base, extra = divmod(int(n), int(world))
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


@dataclass(frozen=True)
class Group:
    """This process's place in a torch.distributed process group (``world`` > 1)."""

    rank: int
    world: int
    local_rank: int
    backend: str  # "nccl" or "gloo"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes output and prints."""
        return self.rank == 0

    def shard(self, n: int) -> range:
        """This process's contiguous share of ``n`` items (:func:`shard_range`)."""
        return shard_range(n, self.rank, self.world)

    def device(self, device: torch.device) -> torch.device:
        """The device this process computes on: ``cuda`` without an index becomes ``cuda:LOCAL_RANK``."""
        if device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def _comm_device(self, t: Tensor) -> torch.device:
        # NCCL reduces CUDA tensors only, gloo CPU tensors: a tensor elsewhere travels through a copy.
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """``t`` summed over the processes, in place; the same bits in every process."""
        import torch.distributed as dist

        where = self._comm_device(t)
        if t.device == where and t.is_contiguous():
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            return t
        buf = t.detach().to(where).contiguous()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        t.copy_(buf)
        return t

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        """Python floats summed over the processes (in float64)."""
        t = torch.tensor(list(values), dtype=torch.float64)
        return self.all_reduce_sum(t).tolist()

    def max_float(self, value: float) -> float:
        import torch.distributed as dist

        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device(torch.empty(0)))
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def gather_rows(self, part: Tensor, n: int) -> Tensor:
        """The (n, ...) tensor whose rows :meth:`shard` gives each process, from this process's ``part``
        (its rows): each process writes its rows into zeros and the processes' tensors are summed, which is
        exact (x + 0 = x), so the result holds every process's values bit for bit."""
        r = self.shard(n)
        if part.shape[0] != len(r):
            raise ValueError(f"rank {self.rank} holds {part.shape[0]} rows, its shard has {len(r)}")
        full = torch.zeros((n, *part.shape[1:]), dtype=part.dtype, device=part.device)
        full[r.start:r.stop] = part
        return self.all_reduce_sum(full)

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's ``obj`` in every process (pickled: use it for small Python values only)."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._comm_device(torch.empty(0)))
        return box[0]

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.backend == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def _join(device: torch.device) -> Group:
    import torch.distributed as dist

    if not dist.is_available():
        raise GenboundError("this torch build has no torch.distributed; run in one process (without torchrun)")
    world = launched_world_size()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise GenboundError(f"process {rank} has local rank {local_rank} but this machine has "
                                f"{torch.cuda.device_count()} CUDA devices; lower --nproc-per-node")
        torch.cuda.set_device(local_rank if device.index is None else device.index)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    elif dist.get_backend() != backend:
        raise GenboundError(f"the process group uses {dist.get_backend()} but --device {device} needs {backend}")
    return Group(rank=rank, world=world, local_rank=local_rank, backend=backend)


@contextlib.contextmanager
def launched(device: torch.device) -> Iterator[Group | None]:
    """The process group when this process was started by torchrun with more than one process, else None.

    Joins the group on entry (NCCL for a CUDA ``device``, gloo for the CPU) and leaves it on exit, so a
    command is written once: ``with launched(device) as group: ...`` with ``group=None`` meaning one
    process."""
    if launched_world_size() <= 1 or "RANK" not in os.environ:
        yield None
        return
    import torch.distributed as dist

    joined_here = not dist.is_initialized()
    group = _join(device)
    try:
        yield group
    finally:
        if joined_here and dist.is_initialized():
            dist.destroy_process_group()


# -- data-parallel training ------------------------------------------------------------------------------


def local_batch(group: Group, idx: Tensor) -> Tensor:
    """This process's contiguous slice of a global batch's example positions ``idx``."""
    share = group.shard(len(idx))
    return idx[share.start:share.stop]


def summed_loss(logits: Tensor, labels: Tensor, n_global: int) -> Tensor:
    """This slice's summed cross-entropy divided by the global batch size: summed over the processes it is
    the global batch's mean loss, each example weighted 1/n_global however the batch was cut."""
    return F.cross_entropy(logits, labels, reduction="sum") / n_global


def reduce_gradients(group: Group, params: Sequence[Tensor], loss: Tensor) -> Tensor:
    """Sum the gradients of ``params`` and the (detached) ``loss`` over the processes, in one all-reduce.

    With :func:`summed_loss` every process's gradient is its slice's share of the global batch's mean, so
    the sum is the gradient one process would compute on the whole batch (exact in real arithmetic; the
    float sum is in another order). Every process gets the same bits, so the optimizer steps stay in
    lockstep with no parameter broadcast. A flag per parameter travels along: a gradient that is None in
    every process (a parameter no example reached) stays None, as in one process."""
    grads = [p.grad for p in params]
    ref = loss.detach().reshape(1)
    parts = [torch.zeros(p.numel(), dtype=ref.dtype, device=ref.device) if g is None
             else g.detach().reshape(-1).to(ref.dtype) for p, g in zip(params, grads)]
    flags = torch.tensor([0.0 if g is None else 1.0 for g in grads], dtype=ref.dtype, device=ref.device)
    flat = group.all_reduce_sum(torch.cat([*parts, flags, ref]))
    offset = 0
    sizes = [p.numel() for p in params]
    for i, (p, n) in enumerate(zip(params, sizes)):
        if flat[sum(sizes) + i] > 0:
            p.grad = flat[offset:offset + n].view_as(p).to(p.dtype).clone()
        offset += n
    return flat[-1]


def slice_loss(model, feats: dict[str, Tensor], labels: Tensor, n_global: int, params: Sequence[Tensor],
               lockstep: bool = False) -> Tensor:
    """:func:`summed_loss` of ``model`` on this process's slice; an empty slice (a last batch smaller than
    the number of processes) contributes zero gradients without a forward pass on no examples, unless
    ``lockstep`` (an FSDP-sharded model, genbound.core.sharding): then its forward and backward run on no
    examples, since every process must take part in the weight gathers they hold."""
    if labels.shape[0] == 0 and not lockstep:
        return sum((p.sum() * 0.0 for p in params), torch.zeros((), device=labels.device))
    return summed_loss(model(**feats), labels, n_global)


def train_replica(group: Group, out, lock, run):
    """One process's part of a training run across processes: rank 0 holds the run's lock on ``out`` (no
    other run may write it meanwhile); the others run without it, since they write nothing."""
    if group.is_main:
        with lock(out):
            return run()
    return run()
