"""The Hessian of the mean cross-entropy on a fixed evaluation set, as a matrix-free operator.

For parameters theta (a chosen subset of the model's parameters, flattened in a fixed order) and an
:class:`~genbound.data.evalset.EvalSet` of N examples,

    L(theta) = (1/N) sum_i CE(f(x_i; theta), y_i),        H = nabla^2_theta L(theta),

and ``H v`` is computed exactly (up to floating point) by Pearlmutter's trick (B. A. Pearlmutter, "Fast
exact multiplication by the Hessian", Neural Computation 6(1), 1994): forward-mode differentiation of the
reverse-mode gradient, ``jvp(grad(L), theta, v)``, or the double backward ``grad(<grad L, v>)``; when the
first-order graph of every mini-batch fits a memory budget it is built once (``create_graph``) and each
product is one backward pass through it (mode ``"cached"``, chosen by ``"auto"``, what pyhessian does for a
single batch). The evaluation set is processed in mini-batches whose summed losses
are divided by N, so every example has weight exactly 1/N whatever the batch sizes.

Across processes (``group``, a :class:`genbound.core.distributed.Group` under torchrun) each process holds a
contiguous shard of the evaluation set, still divides by the full set's N, and the loss, the gradient and
every product are summed over the processes: the full-set mean, the same numbers in every process, so the
algorithms built on the operator (Lanczos, Hutch++, SLQ) run identically everywhere.

The caller's model is never modified: all parameters and buffers are passed to
:func:`torch.func.functional_call` as detached tensors, so values and ``requires_grad`` flags stay as they
were; only its train/eval flags are switched to eval for the duration of a product and restored after
(or, when another device or dtype is asked for, a private copy is used instead).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from ...core.device import where
from ...core.distributed import Group
from ...core.errors import GenboundError, NonFiniteError
from ...core.sharding import is_sharded, lockstep_slices
from ...data.evalset import EvalSet
from ...models.losses import count, summed_loss
from ...models.precision import cast_base, precision_of

ParamSelection = str | Sequence[str] | None


def select_parameters(
    model: nn.Module, params: ParamSelection = None, trained: Sequence[str] | None = None
) -> list[str]:
    """Names (in ``model.named_parameters()`` order) of the parameters to differentiate.

    ``None`` or ``"trained"``: ``trained`` when given (a checkpoint's trained parameters), else those with
    ``requires_grad``; ``"all"``: every parameter; a list (or comma-separated string) of names: each is a
    parameter name or a module prefix (``"fc1"`` selects ``fc1.weight`` and ``fc1.bias``).
    """
    named = [n for n, _ in model.named_parameters()]
    if isinstance(params, str) and params not in ("trained", "all"):
        params = [s.strip() for s in params.split(",") if s.strip()]
    if params is None or params == "trained":
        if trained is not None:
            unknown = sorted(set(trained) - set(named))
            if unknown:
                raise GenboundError(
                    f"trained parameter {unknown[0]!r} is not in the model; rebuild it from its checkpoint"
                )
            wanted = set(trained)
            chosen = [n for n in named if n in wanted]
        else:
            chosen = [n for n, p in model.named_parameters() if p.requires_grad]
        what = "trained"
    elif params == "all":
        chosen = named
        what = "all"
    else:
        chosen_set: set[str] = set()
        for item in params:
            hits = [n for n in named if n == item or n.startswith(item + ".")]
            if not hits:
                sample = ", ".join(named[:6]) + (", ..." if len(named) > 6 else "")
                raise GenboundError(f"no parameter or module named {item!r} in the model (parameters: {sample})")
            chosen_set.update(hits)
        chosen = [n for n in named if n in chosen_set]
        what = ",".join(params)
    if not chosen:
        raise GenboundError(
            f"the parameter selection {what!r} is empty; pass --params all or name layers (e.g. --params head)"
        )
    return chosen


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def _differentiable_attention() -> Iterator[None]:
    # Fused CPU/GPU attention kernels have neither a forward-mode rule nor a double backward; the math
    # kernel is made of ordinary differentiable operations and computes the same function.
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


def _grad_or_none(loss: Tensor, leaves: list[Tensor]) -> Sequence[Tensor | None]:
    # A loss that reaches none of the selected parameters has no graph to differentiate: all-zero Hessian.
    if not loss.requires_grad:
        return [None] * len(leaves)
    return torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)


@dataclass
class HVPStats:
    """Bookkeeping: Hessian-vector products (one = one H v over the whole evaluation set) and time."""

    n_hvp: int = 0
    seconds: float = 0.0


def _sharded_mode(model: nn.Module, names: Sequence[str], mode: str, moved: bool) -> str:
    """The product mode for a model whose frozen base is FSDP-sharded (genbound.core.sharding): forward
    (jvp of grad), the one that runs through FSDP's gather hooks; the double backward does not (FSDP frees the
    gathered weights after the first backward, which the second-order graph still needs)."""
    from torch.distributed.tensor import DTensor  # loaded already: the model is sharded

    params = dict(model.named_parameters())
    sharded = [n for n in names if isinstance(params[n], DTensor)]
    if sharded:
        raise GenboundError(f"{sharded[0]} is sharded (--shard fsdp shards the frozen base); differentiate the "
                            "trained parameters (--params trained) or drop --shard")
    if mode in ("cached", "reverse"):
        raise GenboundError(f"Hessian-vector products of mode {mode} (a double backward) do not run through an "
                            "FSDP-sharded model; use mode forward or auto")
    if moved:
        raise GenboundError("a sharded model is computed on its own device and dtype; shard it after moving it "
                            "(genbound.core.sharding.shard_frozen)")
    return "forward"


def _mixed_base(model: nn.Module, names: Sequence[str]) -> bool:
    """Whether ``model``'s frozen base is held in another precision than its selected parameters: cast by
    genbound.models.precision (marked), or by hand (bf16 under float32 adapters). Such a base is kept as it is;
    the selected parameters, the vectors and every product are float32 (a low-precision selected one is upcast),
    and only an explicit ``dtype`` casts the frozen tensors too."""
    if precision_of(model) != torch.float32:
        return True
    params = dict(model.named_parameters())
    theta = {id(params[n]) for n in names}
    ref = params[names[0]].dtype
    return any(t.is_floating_point() and t.dtype != ref and id(t) not in theta
               for t in [*model.parameters(), *model.buffers()])


class HessianOperator:
    """Matrix-free H of the mean cross-entropy over ``evalset`` w.r.t. the parameters ``names``.

    Vectors are flat tensors of length :attr:`dim` in the compute dtype on the compute device, laid out as
    the concatenation of the selected parameters in :attr:`names` order (:meth:`unflatten` gives views).
    :meth:`matvec` computes H v, :meth:`matmat` H applied to each row of a (k, dim) block (batched with
    :func:`torch.func.vmap` when ``probe_batch > 1``), :meth:`loss` the mean loss.

    ``mode``: ``"cached"`` (the gradient graph of every batch kept and differentiated again per product),
    ``"forward"`` (jvp of grad), ``"reverse"`` (double backward, recomputed) or ``"auto"``: cached when the
    tensors that graph saves (measured on the first batch with saved-tensor hooks, times the number of
    batches) fit ``cache_bytes`` (default 2 GiB, on CUDA a third of the free memory), else forward, falling
    back to reverse the first time an operation lacks a forward-mode rule. A cached operator is a snapshot:
    changing the model's weights in place afterwards makes autograd refuse the next product.

    ``dtype``: the compute dtype, default that of the first selected parameter. Given, the whole model is
    copied in it; not given, frozen tensors in another dtype (a bfloat16 base under float32 adapters) are
    used as they are, and only selected parameters of another dtype make a copy.
    """

    def __init__(
        self,
        model: nn.Module,
        evalset: EvalSet,
        params: ParamSelection = None,
        *,
        trained: Sequence[str] | None = None,
        batch_size: int | None = 256,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        mode: str = "auto",
        probe_batch: int | None = None,
        cache_bytes: int | None = None,
        group: Group | None = None,
        memory_budget: int | None = None,
    ):
        if mode not in ("auto", "cached", "forward", "reverse"):
            raise GenboundError(
                f"unknown Hessian-vector product mode {mode!r}; use auto, cached, forward or reverse"
            )
        if len(evalset) == 0:
            raise GenboundError("the evaluation set is empty; pass a split with examples or a positive --samples")
        self.names = select_parameters(model, params, trained)
        ref = dict(model.named_parameters())[self.names[0]]
        self.device = where(device, ref)
        mixed = dtype is None and _mixed_base(model, self.names)
        self.dtype = dtype or (torch.float32 if ref.dtype in (torch.bfloat16, torch.float16) else ref.dtype)
        if not self.dtype.is_floating_point:
            raise GenboundError(f"parameters of dtype {self.dtype} have no Hessian; select floating-point ones")
        self.sharded = is_sharded(model)  # FSDP (genbound.core.sharding): products forward-over-reverse
        if self.sharded:
            mode = _sharded_mode(model, self.names, mode, self._needs_copy(model, mixed))
        self._module, self._own = self._private(model, mixed)
        # torch.func's grad and jvp of the math attention kernel under autocast fail on a dtype check (torch
        # 2.13: "expected scalar type Float but found BFloat16"); autograd's own double backward runs, so a
        # low-precision base takes the reverse-mode products and an autograd gradient.
        self._autograd_only = precision_of(self._module) != torch.float32
        state = {n: p.detach() for n, p in self._module.named_parameters()  # sharded ones: gathered by FSDP's hooks
                 if n in self.names or not self.sharded}
        state.update({n: b.detach() for n, b in self._module.named_buffers()})
        self._theta = {n: state.pop(n) for n in self.names}
        self._frozen = state
        self.shapes = [tuple(self._theta[n].shape) for n in self.names]
        self.numels = [int(np.prod(s)) for s in self.shapes]
        self.dim = int(sum(self.numels))
        self.n_examples = len(evalset)
        self.n_targets = count(evalset.labels)  # examples, or target tokens (genbound.models.losses), of the whole set
        self.group = group
        self._evalset = evalset  # the whole set (a float64 check builds its operator from it)
        if group is not None:  # this process's shard; the 1/N weights stay those of the whole set
            if self.n_examples < group.world:
                raise GenboundError(f"the evaluation set has {self.n_examples} examples, fewer than the "
                                    f"{group.world} processes; pass more --samples or start fewer processes")
            shard = group.shard(len(evalset))
            sl = slice(shard.start, shard.stop)
            evalset = evalset.index(sl)
        self.batch_size = int(batch_size) if batch_size else self.n_examples
        if self.batch_size <= 0:
            raise GenboundError(f"batch size must be positive, got {batch_size}")
        feats = {
            k: (v.to(self.dtype) if v.is_floating_point() else v) for k, v in evalset.features.items()
        }
        self._data = EvalSet(feats, evalset.labels).to(self.device)
        self._local_batches = -(-len(self._data) // self.batch_size)
        self.mode = mode
        self._graphs: list[tuple[list[Tensor], list[int]]] | None = None
        self._cached_value: tuple[float, Tensor] | None = None  # (loss, gradient) from the caching pass
        self._leaves: list[Tensor] = []
        self._cache_refused = False
        if cache_bytes is None:
            cache_bytes = 2 << 30
            if self.device.type == "cuda":
                cache_bytes = torch.cuda.mem_get_info(self.device)[0] // 3
        self.cache_bytes = int(cache_bytes)
        self.probe_batch = int(probe_batch) if probe_batch else (1 if self.device.type == "cpu" else 8)
        self._vmap_ok = True
        self.stats = HVPStats()
        self.memory_budget = int(memory_budget) if memory_budget else None
        if self.memory_budget:
            self._fit_budget(self.memory_budget)

    def _needs_copy(self, model: nn.Module, mixed: bool) -> bool:
        """Whether ``model`` is off the device or (outside a mixed-precision base) off the dtype."""
        tensors = [*model.parameters(), *model.buffers()]
        if mixed:
            selected = dict(model.named_parameters())
            return not (all(t.device == self.device for t in tensors) and all(
                selected[n].dtype == self.dtype for n in self.names))
        return not all(t.device == self.device and (not t.is_floating_point() or t.dtype == self.dtype)
                       for t in tensors)

    def _private(self, model: nn.Module, mixed: bool) -> tuple[nn.Module, bool]:
        """The module the products run on: ``model`` itself when it is on the device in the dtype, else a
        private copy (so the caller's model is not moved or cast); the second item says which."""
        if not self._needs_copy(model, mixed):
            return model, False
        if mixed:
            module = copy.deepcopy(model).to(device=self.device).eval()
            params = dict(module.named_parameters())
            for n in self.names:
                params[n].data = params[n].data.to(self.dtype)
            return module, True
        # The whole model in one dtype (a float64 check): no mixed precision left on the copy.
        return cast_base(copy.deepcopy(model).to(device=self.device, dtype=self.dtype), None).eval(), True

    def _saved_bytes(self, feats: dict[str, Tensor], labels: Tensor) -> int:
        """Bytes of the tensors the first-order graph of one batch saves (the gradient built with
        ``create_graph``), each storage counted once and the model's own weights not at all."""
        own = {t.untyped_storage().data_ptr() for t in [*self._theta.values(), *self._frozen.values()]}
        seen: set[int] = set()
        total = [0]

        def pack(t: Tensor) -> Tensor:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in own and ptr not in seen:
                seen.add(ptr)
                total[0] += t.untyped_storage().nbytes()
            return t

        leaves = {n: t.detach().requires_grad_(True) for n, t in self._theta.items()}
        with self._context(), torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _grad_or_none(self._batch_loss(leaves, feats, labels), list(leaves.values()))
        return total[0]

    def _fit_budget(self, budget: int) -> None:
        """Batch size and graph cache within ``budget`` bytes for the weights, one product's graphs and the
        cached graphs. One probe batch of 4 examples measures the first-order graph's saved tensors per
        example, g; a product holds that graph and the second-order pass through it, which saves about as much
        again plus the products' vectors, so a batch of B takes ~3 g B. B is the largest that fits next to the
        weights; the graph cache (mode auto) gets what is left. The data are summed over batches with 1/N
        weights, so the result does not depend on B (up to the order of float additions)."""
        weights = sum(t.numel() * t.element_size() for t in self._module.parameters())
        weights += sum(t.numel() * t.element_size() for t in self._module.buffers())
        feats, labels = next(iter(self._data.batches(min(4, len(self._data)))))
        per_example = max(self._saved_bytes(feats, labels) / len(labels), 1.0)
        room = budget - weights
        if room < 3 * per_example:
            raise GenboundError(f"--max-memory {budget / 2**20:.0f} MiB does not hold the model ({weights / 2**20:.0f}"
                                f" MiB) and one example's Hessian-vector product ({3 * per_example / 2**20:.1f} "
                                "MiB); raise it, or pass --dtype bfloat16 to halve the weights")
        self.batch_size = max(1, min(self.batch_size, int(room // (3 * per_example))))
        self._local_batches = -(-len(self._data) // self.batch_size)
        self.cache_bytes = int(room - 3 * per_example * self.batch_size)
        self.saved_per_example = per_example

    # -- layout ------------------------------------------------------------------------------------

    def flatten(self, tensors: dict[str, Tensor] | Sequence[Tensor]) -> Tensor:
        seq = [tensors[n] for n in self.names] if isinstance(tensors, dict) else list(tensors)
        return torch.cat([t.reshape(-1) for t in seq])

    def unflatten(self, v: Tensor) -> dict[str, Tensor]:
        """Views of a flat vector (or of a (k, dim) block, giving (k, *shape) views) per parameter."""
        lead = tuple(v.shape[:-1])
        parts = torch.split(v, self.numels, dim=-1)
        return {n: p.reshape(*lead, *s) for n, p, s in zip(self.names, parts, self.shapes)}

    # -- the loss ----------------------------------------------------------------------------------

    def _batches(self) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        """This process's mini-batches; with a sharded model the same number in every process (each forward
        all-gathers weights, genbound.core.sharding.lockstep_slices)."""
        if not self.sharded:
            yield from self._data.batches(self.batch_size)
            return
        for sl in lockstep_slices(len(self._data), self.batch_size, self.group):
            yield {k: v[sl] for k, v in self._data.features.items()}, self._data.labels[sl]

    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            if not self._own:
                stack.enter_context(eval_mode(self._module))
            stack.enter_context(_differentiable_attention())
            yield

    def _batch_loss(self, theta: dict[str, Tensor], feats: dict[str, Tensor], labels: Tensor) -> Tensor:
        state = dict(self._frozen)
        state.update(theta)
        logits = functional_call(self._module, state, (), feats)
        # Summed over the batch and divided by the whole set's size: exact 1/N weights per example (per target
        # token for a causal LM: the token-level mean loss that evaluate reports).
        return summed_loss(logits, labels, upcast=False) / self.n_targets

    def loss_and_gradient(self) -> tuple[float, Tensor]:
        """L(theta) and nabla L(theta) (flat). In mode auto / cached they come out of the pass that builds
        the cached first-order graph (no separate forward and backward); otherwise two passes."""
        if self.mode in ("auto", "cached") and self._graphs is None and not self._cache_refused:
            if self._build_cache():
                self.mode = "cached"
            else:
                self._cache_refused = True
        if self._cached_value is not None:
            return self._cached_value
        return self.loss(), self.gradient()

    def _check_loss(self, total: float) -> None:
        if not np.isfinite(total):
            raise NonFiniteError(
                f"the loss is {total} at these parameters; the model or checkpoint is diverged, nothing to analyse"
            )

    def loss(self) -> float:
        """The mean loss L(theta) over the evaluation set; NonFiniteError if it is NaN or infinite."""
        if self._cached_value is not None:
            return self._cached_value[0]
        total = 0.0
        with torch.no_grad(), self._context():
            for feats, labels in self._batches():
                total += float(self._batch_loss(self._theta, feats, labels))
        if self.group is not None:
            total = self.group.sum_floats([total])[0]
        self._check_loss(total)
        return total

    def gradient(self) -> Tensor:
        """nabla L(theta), flattened."""
        if self._cached_value is not None:
            return self._cached_value[1]
        out = torch.zeros(self.dim, device=self.device, dtype=self.dtype)
        with self._context():
            for feats, labels in self._batches():
                if self._autograd_only:
                    leaves = {n: t.detach().requires_grad_(True) for n, t in self._theta.items()}
                    with torch.enable_grad():
                        loss = self._batch_loss(leaves, feats, labels)
                        gs = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True) \
                            if loss.requires_grad else [None] * len(leaves)
                    g = [gi if gi is not None else torch.zeros_like(t) for gi, t in zip(gs, leaves.values())]
                else:
                    g = grad(self._batch_loss)(self._theta, feats, labels)
                out += self.flatten(g)
        if self.group is not None:
            self.group.all_reduce_sum(out)
        return out

    # -- products ----------------------------------------------------------------------------------

    def _hvp_forward(self, vs: dict[str, Tensor], feats, labels) -> dict[str, Tensor]:
        def g(theta):
            return grad(self._batch_loss)(theta, feats, labels)

        return jvp(g, (self._theta,), (vs,))[1]

    def _hvp_reverse(self, vs: dict[str, Tensor], feats, labels, batched: bool) -> list[Tensor]:
        leaves = {n: t.detach().requires_grad_(True) for n, t in self._theta.items()}
        with torch.enable_grad():
            loss = self._batch_loss(leaves, feats, labels)
            gs = _grad_or_none(loss, list(leaves.values()))
            # A parameter the loss does not reach, or reaches only linearly, has a zero Hessian row.
            live = [i for i, gi in enumerate(gs) if gi is not None and gi.requires_grad]
            outs: list[Tensor | None] = [None] * len(self.names)
            if live:
                hv = torch.autograd.grad(
                    [gs[i] for i in live],
                    list(leaves.values()),
                    grad_outputs=[vs[self.names[i]] for i in live],
                    allow_unused=True,
                    is_grads_batched=batched,
                )
                outs = list(hv)
        lead = (next(iter(vs.values())).shape[0],) if batched else ()
        return [
            (o.detach() if o is not None else torch.zeros(*lead, *s, device=self.device, dtype=self.dtype))
            for o, s in zip(outs, self.shapes)
        ]

    def _build_cache(self) -> bool:
        """Keep the first-order graph of every batch if its saved tensors fit ``cache_bytes``."""
        leaves = {n: t.detach().requires_grad_(True) for n, t in self._theta.items()}
        n_batches = self._local_batches
        saved = [0]

        def fits(need: int) -> bool:
            if self.mode != "auto":
                return True
            ok = need <= self.cache_bytes
            if self.group is not None:  # one decision for all processes: cached only if every shard fits
                ok = self.group.max_float(0.0 if ok else 1.0) == 0.0
            return ok

        def pack(t: Tensor) -> Tensor:
            saved[0] += t.numel() * t.element_size()
            return t

        graphs = []
        total = 0.0
        grad_flat = torch.zeros(self.dim, device=self.device, dtype=self.dtype)
        with self._context(), torch.enable_grad():
            for b, (feats, labels) in enumerate(self._data.batches(self.batch_size)):
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    loss = self._batch_loss(leaves, feats, labels)
                    gs = _grad_or_none(loss, list(leaves.values()))
                if b == 0 and not fits(saved[0] * n_batches):
                    return False
                # The same pass gives the loss and the gradient: no separate forward / backward for them.
                total += float(loss.detach())
                grad_flat += torch.cat([
                    (g.detach().reshape(-1) if g is not None else torch.zeros(n, device=self.device, dtype=self.dtype))
                    for g, n in zip(gs, self.numels)
                ])
                live = [i for i, gi in enumerate(gs) if gi is not None and gi.requires_grad]
                graphs.append(([gs[i] for i in live], live))
        if n_batches == 0 and not fits(0):  # an empty shard still takes part in the decision
            return False
        if self.group is not None:
            total = self.group.sum_floats([total])[0]
            self.group.all_reduce_sum(grad_flat)
        self._check_loss(total)
        self._graphs, self._leaves = graphs, list(leaves.values())
        self._cached_value = (total, grad_flat)
        return True

    def _apply_cached(self, vs: dict[str, Tensor], k: int) -> Tensor:
        parts = []
        for gs, live in self._graphs or []:
            if not live:
                continue
            if k == 1:
                hv = torch.autograd.grad(gs, self._leaves, [vs[self.names[i]][0] for i in live],
                                         retain_graph=True, allow_unused=True)
            else:
                hv = torch.autograd.grad(gs, self._leaves, [vs[self.names[i]] for i in live],
                                         retain_graph=True, allow_unused=True, is_grads_batched=True)
            parts.append(torch.cat([
                (h.detach() if h is not None else torch.zeros(k, *s, device=self.device, dtype=self.dtype))
                .reshape(k, -1) for h, s in zip(hv, self.shapes)
            ], dim=1))
        if not parts:
            return torch.zeros(k, self.dim, device=self.device, dtype=self.dtype)
        return torch.stack(parts).sum(0)

    def _apply(self, V: Tensor) -> Tensor:
        """H applied to each row of V (k, dim), all k in one pass over the data."""
        k = V.shape[0]
        vs = self.unflatten(V)
        if self.mode in ("auto", "cached") and self._graphs is None and not self._cache_refused:
            if self._build_cache():
                self.mode = "cached"
            else:
                self._cache_refused = True  # over budget: recompute per product from now on
        if self.mode == "cached":
            return self._apply_cached(vs, k)
        out = torch.zeros_like(V)
        with self._context():
            for feats, labels in self._batches():
                part = None
                if self.mode in ("auto", "forward") and self._autograd_only:
                    if self.mode == "forward":
                        raise GenboundError("forward-mode Hessian products do not run through mixed precision; "
                                            "use mode reverse (or auto) with a low-precision base")
                    self.mode = "reverse"
                if self.mode in ("auto", "forward"):
                    try:
                        if k == 1:
                            hv = self._hvp_forward({n: t[0] for n, t in vs.items()}, feats, labels)
                            part = self.flatten(hv).unsqueeze(0)
                        else:
                            hv = vmap(lambda v, f=feats, y=labels: self._hvp_forward(v, f, y))(vs)
                            part = torch.cat([hv[n].reshape(k, -1) for n in self.names], dim=1)
                        self.mode = "forward"
                    except (NotImplementedError, RuntimeError):
                        if self.mode == "forward":
                            raise
                        self.mode = "reverse"  # remembered: later products go straight to reverse mode
                if part is None:
                    if k == 1:
                        hv = self._hvp_reverse({n: t[0] for n, t in vs.items()}, feats, labels, False)
                        part = self.flatten(hv).unsqueeze(0)
                    else:
                        hv = self._hvp_reverse(vs, feats, labels, True)
                        part = torch.cat([h.reshape(k, -1) for h in hv], dim=1)
                out += part
        return out

    def matmat(self, V: Tensor) -> Tensor:
        """H v for each row v of V, shape (k, dim) -> (k, dim); probes go ``probe_batch`` at a time."""
        if V.ndim != 2 or V.shape[1] != self.dim:
            raise ValueError(f"expected a (k, {self.dim}) block, got {tuple(V.shape)}")
        V = V.to(device=self.device, dtype=self.dtype)
        t0 = time.perf_counter()
        outs = []
        step = self.probe_batch if self._vmap_ok else 1
        start = 0
        while start < V.shape[0]:
            chunk = V[start : start + step]
            try:
                outs.append(self._apply(chunk))
            except (RuntimeError, NotImplementedError):
                if chunk.shape[0] == 1:
                    raise
                # vmap over this model failed (an op without a batching rule, or memory): one at a time.
                self._vmap_ok = False
                step = 1
                continue
            start += chunk.shape[0]
        out = torch.cat(outs) if outs else V.clone()
        if self.group is not None and outs:  # this shard's part of H v, summed: the whole set's
            self.group.all_reduce_sum(out)
        self.stats.n_hvp += V.shape[0]
        self.stats.seconds += time.perf_counter() - t0
        return out

    def matvec(self, v: Tensor) -> Tensor:
        """H v for one flat vector v of length :attr:`dim`."""
        return self.matmat(v.reshape(1, -1))[0]

    __matmul__ = matvec

    def as_linear_operator(self):
        """H as a float64 :class:`scipy.sparse.linalg.LinearOperator` (for scipy's eigsh and tests)."""
        from scipy.sparse.linalg import LinearOperator

        def mv(x: np.ndarray) -> np.ndarray:
            v = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(-1))
            return self.matvec(v).detach().cpu().to(torch.float64).numpy()

        def mm(X: np.ndarray) -> np.ndarray:
            V = torch.as_tensor(np.asarray(X, dtype=np.float64).T.copy())
            return self.matmat(V).detach().cpu().to(torch.float64).numpy().T

        return LinearOperator((self.dim, self.dim), matvec=mv, matmat=mm, rmatvec=mv, dtype=np.float64)


Matmat = Callable[[Tensor], Tensor]
