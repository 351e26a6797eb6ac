"""Exact reuse of the point-independent prefix of a forward pass (activation caching for grid engines).

On a grid theta* + sum_i t_i d_i, a module none of whose tensors moves and whose inputs do not depend on the
point computes the same output at every point of a data batch. Such a module (the largest one: the whole
backbone when only the head moves, the embeddings and blocks 0..L-2 when only the last block moves) is run
once per data batch and its output is reused by every point: the activations entering the first module that
depends on the point are computed once. Nothing is approximated: the reused tensors are the ones the module
returned, bit for bit.

Which modules qualify is found by a probe pass with the moving coordinates requiring grad (a module whose
inputs and outputs do not require grad, that runs once per forward, and holds no moving tensor) and is
re-checked at run time:

* under ``torch.vmap`` an input that is a batched tensor (it depends on the point after all) bypasses the
  cache;
* in the folded schedule (P points stacked in the batch dimension, see :mod:`.grid`) the module sees P
  copies of the batch: it is run on the first copy and its output repeated P times, which the probe allows
  only for modules whose every output tensor is batch-major;
* a cached tensor modified in place downstream (its version counter moved) is recomputed, never reused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

try:  # private but stable since torch 2.0; without it nothing is cached under vmap
    from torch._C._functorch import is_batchedtensor as _is_batched
except ImportError:  # pragma: no cover
    _is_batched = None

_LEAVES = (int, float, bool, str, type(None))


def tensors_in(obj: Any) -> list[Tensor] | None:
    """Every tensor of a (nested) tuple / list / dict / model-output structure, None if ``obj`` holds
    anything else (then it is not cached: it could not be rebuilt faithfully)."""
    out: list[Tensor] = []

    def walk(o: Any) -> bool:
        if isinstance(o, Tensor):
            out.append(o)
            return True
        if isinstance(o, _LEAVES):
            return True
        if isinstance(o, (tuple, list)):
            return all(walk(v) for v in o)
        if isinstance(o, dict):
            return all(walk(v) for v in o.values())
        return False

    return out if walk(obj) else None


def map_tensors(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``obj`` with every tensor replaced by ``fn(tensor)``, same container types (model outputs included)."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(map_tensors(v, fn) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    if isinstance(obj, dict):
        items = {k: map_tensors(v, fn) for k, v in obj.items()}
        try:
            return type(obj)(**items)  # transformers' ModelOutput and plain dicts
        except TypeError:
            return type(obj)(items)
    return obj


class FoldMismatch(RuntimeError):
    """A cached module met, in the folded schedule, an output that is not (examples, ...)."""


class PrefixMemo:
    """Replaces ``module.forward``: the first call of a data batch runs it, later calls reuse the output.

    ``state`` is shared by every memo of one evaluator: ``token`` (a new object per data batch) and
    ``fold`` ((P, n) in the folded schedule, None under vmap or for single points)."""

    def __init__(self, module: nn.Module, name: str, state: dict):
        self.module, self.name, self.state = module, name, state
        self.forward = module.forward
        self.token: object | None = None
        self.out: Any = None
        self.versions: list[int] = []
        self.hits = 0
        self.misses = 0

    def install(self) -> None:
        self.module.forward = self  # an instance attribute: nn.Module.__call__ now calls the memo

    def _fresh(self) -> bool:
        if self.token is None or self.token is not self.state["token"]:
            return False
        tensors = tensors_in(self.out) or []
        return [t._version for t in tensors] == self.versions

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        inputs = tensors_in((args, kwargs)) or []
        if _is_batched is None or any(_is_batched(t) for t in inputs):
            self.misses += 1  # depends on the point after all: computed, exact, not cached
            return self.forward(*args, **kwargs)
        fold = self.state.get("fold")
        P, n = fold if fold is not None else (1, 0)
        if P > 1:  # P copies of the batch: the first one is the batch
            args, kwargs = map_tensors((args, kwargs), lambda t: t[:n] if t.dim() and t.shape[0] == P * n else t)
        if not self._fresh():
            self.out = self.forward(*args, **kwargs)
            self.token = self.state["token"]
            self.versions = [t._version for t in tensors_in(self.out) or []]
        else:
            self.hits += 1
        if P == 1:
            return self.out

        def repeat(t: Tensor) -> Tensor:
            if not t.dim() or t.shape[0] != n:
                raise FoldMismatch(f"{self.name} returned a tensor of leading size {tuple(t.shape)[:1]}, not {n}")
            return t.repeat(P, *([1] * (t.dim() - 1)))

        return map_tensors(self.out, repeat)
