"""Evaluating a model on a grid of points theta* + sum_i t_i d_i: batched and exact.

Grids
-----
One axis per direction, ``grid`` points (odd, >= 1) from ``-span`` to ``+span``:
t_j = span (j - c) / c with c = (grid - 1) / 2, so the centre t = 0 is a grid point and its weights are
theta* exactly (theta* + 0 d is bit-identical to theta*).

Engines
-------
``sequential``  the reference: one ``torch.func.functional_call`` per point with the weights
                W = theta* + t_1 d_1 + t_2 d_2, on a private copy of the model in eval mode.
``batched``     several points per forward pass. For a chunk of P points with coefficient rows
                c = (1, t_1, .., t_k), every moving tensor is built by one matrix product (P, k+1) x (k+1, numel)
                of c with [theta*; d_1; ..; d_k]. Two schedules:

                * folded (when only weights and biases of nn.Linear layers move, the common case: the dW space
                  of an adapted model, or all weights with zeroed 1-D directions): the model sees P copies of
                  the data batch stacked along the batch dimension and each moving Linear applies point p's
                  weight to its p-th block of rows (one batched matrix product, :class:`_FoldedLinear`). Every
                  other module runs once on P n rows. Exact because examples are independent in eval mode (the
                  same fact that lets the evaluation set be cut into data batches at all); a layer whose input
                  is not (P n, ...) is detected at run time and the engine falls back to vmap.
                * vmap (any other moving tensor: LayerNorm, embeddings, tied weights): ``torch.vmap`` over
                  ``functional_call`` with the stacked tensors mapped over.

                Points come in chunks sized to a memory budget (on a CPU also to the cache: a large model is
                compute-bound at one point per forward). When the chunk size is planned, the first data batch
                times a chunk against single points in three interleaved rounds (best of each, so one slow
                round on a loaded machine does not decide; process CPU time on a single-threaded CPU, see
                :meth:`GridEvaluator._clock`) and keeps the faster (:meth:`GridEvaluator.evaluate`).

Prefix caching (exact algebra). A Linear layer whose weight moves and whose input x does not depend on the
point (every layer before it is unperturbed) computes

    (W* + sum_i t_i D_i) x + (b* + sum_i t_i db_i) = (W* x + b*) + sum_i t_i (D_i x + db_i),

so its k + 1 products are computed once per data batch (on one copy of the batch) and reused by every point
and every chunk; per point only their combination with c remains (one (P, k+1) x (k+1, M) product per
chunk; with one point per forward, a kept partial sum over t_1 .. t_{k-1} plus t_k times the last product,
since grid points sharing the slow coordinates come in a row: :meth:`_FoldedLinear._combine`). This halves
the work for an MLP whose first layer moves. The identity is exact in real arithmetic; in float32 it differs
from the reference by rounding only (tests check 1e-6 on the loss).
Which layers qualify is found by a probe pass (their input does not require grad when only the coordinates
do) and re-checked at run time: under vmap a batched input disables the cache.

Activation caching (exact reuse). Before that first moving layer, every module that holds no moving tensor
and whose input does not depend on the point (the embeddings and blocks 0..L-2 when only the last block
moves, the whole backbone when only the head moves) is run once per data batch and its output reused by every
point and chunk (:mod:`.memo`), so a head-only plane costs a fraction of a forward per point. Coordinates
whose directions are exactly zero (filter-normalized biases and norms) are constants, not moving tensors.

The caller's model is never touched: engines work on a deep copy (eval mode, no grad).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...core.device import where
from ...core.errors import GenboundError
from ...core.progress import Estimate, say
from ...data.evalset import EvalSet
from ...models.losses import count, point_scores
from .memo import FoldMismatch, PrefixMemo, tensors_in

ENGINES = ("batched", "sequential")
CPU_CHUNK_BYTES = 32 << 20  # target activation bytes per chunk of points on a CPU
CALIBRATION_ROUNDS = 3  # interleaved timings of a chunk against single points (best of each)

try:  # private but stable since torch 2.0; without it the prefix cache is simply not used
    from torch._C._functorch import is_batchedtensor as _is_batched
except ImportError:  # pragma: no cover
    _is_batched = None


MAX_GRID = 2001  # 4 M points in 2-D, each a forward pass: far beyond any landscape worth computing


def check_grid(grid: int) -> int:
    """An odd positive resolution, else a one-line error."""
    if isinstance(grid, bool) or not isinstance(grid, int) and not (isinstance(grid, float) and grid.is_integer()):
        raise GenboundError(f"grid resolution must be an odd positive integer, got {grid!r}")
    grid = int(grid)
    if grid <= 0:
        raise GenboundError(f"grid resolution must be positive, got {grid}; use an odd number such as 21")
    if grid % 2 == 0:
        raise GenboundError(
            f"grid resolution must be odd so that the trained point is a grid point, got {grid}; use {grid + 1}"
        )
    if grid > MAX_GRID:  # before any allocation: a 2-D grid holds grid^2 points, each with coordinates and results
        raise GenboundError(f"grid resolution {grid} gives {grid * grid:,} points in 2-D (about "
                            f"{grid * grid * 40 / 2**30:.0f} GiB of coordinates and results alone); use at most "
                            f"{MAX_GRID}")
    return grid


def check_span(span: float) -> float:
    span = float(span)
    if not math.isfinite(span) or span <= 0:
        raise GenboundError(f"the range must be a positive finite number, got {span}")
    return span


def grid_axis(grid: int, span: float) -> Tensor:
    """``grid`` float64 values from -span to span, centre exactly 0 (module docstring)."""
    grid, span = check_grid(grid), check_span(span)
    if grid == 1:
        return torch.zeros(1, dtype=torch.float64)
    c = (grid - 1) // 2
    return span * torch.arange(-c, c + 1, dtype=torch.float64) / c


def grid_points(axes: Sequence[Tensor]) -> Tensor:
    """All points of a 1-D or 2-D grid as (P, k) rows, first axis slowest (so loss.view(G1, G2)[i, j] is
    the point (axes[0][i], axes[1][j]))."""
    if len(axes) == 1:
        return axes[0].reshape(-1, 1)
    a, b = torch.meshgrid(axes[0], axes[1], indexing="ij")
    return torch.stack([a.reshape(-1), b.reshape(-1)], 1)


# --------------------------------------------------------------------------------------------------


@dataclass
class PointValues:
    """Mean cross-entropy and accuracy at each evaluated point, with how they were computed."""

    loss: Tensor  # (P,) float64
    accuracy: Tensor  # (P,) float64
    engine: str
    seconds: float
    points_per_batch: int
    batch_size: int
    cached_layers: list[str] = field(default_factory=list)
    calibration: dict = field(default_factory=dict)  # a chunk of points vs single points, when timed
    schedule: str = "single"  # batched engine: "folded" (points in the batch dimension) or "vmap"
    memoized: list[str] = field(default_factory=list)  # modules run once per data batch (:mod:`.memo`)
    estimate: dict | None = None  # the time estimate made from the first chunks (core.progress.Estimate)


def _stacked_products(x: Tensor, weight: Tensor, bias: Tensor | None, k: int, out: int) -> Tensor:
    """[W* x + b*; D_1 x + db_1; ..; D_k x + db_k] as a (k+1, rows * out) matrix, from the row-stacked
    weight ((k+1) out, in) and bias ((k+1) out): one matrix product for all k + 1 (prefix caching)."""
    y = F.linear(x, weight, bias)  # (..., (k+1) out)
    return y.reshape(-1, k + 1, out).transpose(0, 1).reshape(k + 1, -1).contiguous()


class _GridLinear(nn.Module):
    """A Linear whose weight moves along k directions but whose input is the same for every point.

    With c = (1, t_1, .., t_k) and the stacked products S = [W* x + b*; D_1 x + db_1; ..; D_k x + db_k]
    (computed once per data batch and cached), the output is c @ S: under vmap a single (P, k+1) x (k+1, M)
    matrix product for a whole chunk of points (module docstring)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, dweight: Tensor, dbias: Tensor | None):
        super().__init__()
        k, out = dweight.shape[0], weight.shape[0]
        self.register_buffer("stacked_weight", torch.cat([weight.unsqueeze(0), dweight]).reshape((k + 1) * out, -1))
        if bias is None and dbias is None:
            stacked_bias = None
        else:
            b0 = bias if bias is not None else torch.zeros(out, dtype=weight.dtype, device=weight.device)
            db = dbias if dbias is not None else torch.zeros(k, out, dtype=weight.dtype, device=weight.device)
            stacked_bias = torch.cat([b0.unsqueeze(0), db]).reshape(-1)
        self.register_buffer("stacked_bias", stacked_bias)
        self.register_buffer("coef", torch.zeros(k + 1, dtype=weight.dtype, device=weight.device))
        self.k, self.out_features = k, out
        self.token: object | None = None
        self._cache: tuple[object, Tensor, tuple[int, ...]] | None = None
        self.uncached_calls = 0

    def _products(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        stacked = _stacked_products(x, self.stacked_weight, self.stacked_bias, self.k, self.out_features)
        return stacked, tuple(x.shape[:-1])

    def forward(self, x: Tensor) -> Tensor:
        if _is_batched is None or _is_batched(x):
            # The input depends on the point after all: still exact, just not cached.
            self.uncached_calls += 1
            stacked, lead = self._products(x)
        elif self._cache is not None and self.token is not None and self._cache[0] is self.token:
            stacked, lead = self._cache[1], self._cache[2]
        else:
            stacked, lead = self._products(x)
            self._cache = (self.token, stacked, lead)
        return (self.coef @ stacked).reshape(*lead, self.out_features)


class _FoldError(RuntimeError):
    """A folded forward met an input whose leading dimension is not (points x examples)."""


class _FoldedLinear(nn.Module):
    """A Linear evaluated at P points in one forward, the points folded into the batch dimension.

    The model sees P copies of the data batch one after the other, so this layer's input x has leading
    dimension P n. Per point p, with c_p = (1, t_p1, .., t_pk), the weight is W_p = c_p [W*; D_1; ..; D_k]
    (one (P, k+1) x (k+1, numel) product for the chunk) and y_p = x_p W_p^T + b_p is one batched matrix
    product. Every other module runs unchanged on the P n rows, which is what makes a chunk cheaper than P
    forwards of n rows: larger matrix products and one pass of Python per chunk.

    With ``shared`` (the input does not depend on the point: an unperturbed prefix) only the first copy is
    multiplied, by the k + 1 stacked matrices once per data batch, and the chunk's outputs are c @ S
    (prefix caching in the module docstring)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, dweight: Tensor, dbias: Tensor | None, shared: bool):
        super().__init__()
        k, out = dweight.shape[0], weight.shape[0]
        self.k, self.out_features, self.in_features, self.shared = k, out, weight.shape[1], shared
        self.register_buffer("stacked_weight", torch.cat([weight.unsqueeze(0), dweight]).reshape(k + 1, -1))
        moving_bias = dbias is not None and bool(dbias.ne(0).any())
        if bias is None and not moving_bias:
            stacked_bias = None
        else:
            b0 = bias if bias is not None else weight.new_zeros(out)
            db = dbias if moving_bias else weight.new_zeros(k, out)
            stacked_bias = torch.cat([b0.unsqueeze(0), db])
        self.register_buffer("stacked_bias", stacked_bias)  # (k+1, out) or None
        self.moving_bias = moving_bias
        self.coef = weight.new_zeros(1, k + 1)  # (P, k+1), set by the evaluator for each chunk
        self.n = 0  # examples per copy, set by the evaluator for each data batch
        self.token: object | None = None
        self._cache: tuple[object, Tensor] | None = None
        self._partial: tuple[Tensor, tuple[float, ...], Tensor] | None = None  # see _combine
        self._partial_w: tuple[Tensor, tuple[float, ...], Tensor] | None = None
        self.uncached_calls = 0

    def _combine(self, stacked: Tensor, slot: str) -> Tensor:
        """c @ stacked for the chunk's coefficient rows c = (1, t_1, .., t_k): (P, k+1) x (k+1, N).

        One point at a time (a large model on a CPU) this product reads k + 1 rows of N numbers to write
        one, and is bound by memory traffic. Grid points come first axis slowest, so consecutive points
        share t_1 .. t_{k-1}: the partial sum stacked[0] + t_1 stacked[1] + .. + t_{k-1} stacked[k-1] is
        kept (``slot``: one per stacked matrix) and each point adds t_k stacked[k] to it, reading two rows
        instead of k + 1. The same sum in the reference engine's order (_combine), rounded per term."""
        c = self.coef
        if c.shape[0] != 1 or self.k < 1 or c.device.type != "cpu":
            return c @ stacked
        coef = c[0].tolist()
        if coef[0] != 1.0:
            return c @ stacked
        head = tuple(coef[1:self.k])
        held = getattr(self, slot)
        if held is not None and held[0] is stacked and held[1] == head:
            partial = held[2]
        else:
            partial = stacked[0]
            for i, ti in enumerate(head, start=1):
                partial = torch.add(partial, stacked[i], alpha=ti)
            setattr(self, slot, (stacked, head, partial))
        return torch.add(partial, stacked[self.k], alpha=coef[self.k]).unsqueeze(0)

    def release(self) -> None:
        """Drop the per-data-batch products and the kept partial sums (end of an evaluation)."""
        self._cache, self.token, self._partial, self._partial_w = None, None, None, None

    def _shared_products(self, x0: Tensor) -> Tensor:
        w = self.stacked_weight.view((self.k + 1) * self.out_features, self.in_features)
        b = None if self.stacked_bias is None else self.stacked_bias.reshape(-1)
        return _stacked_products(x0, w, b, self.k, self.out_features)

    def forward(self, x: Tensor) -> Tensor:
        P = self.coef.shape[0]
        if x.shape[0] != P * self.n:
            raise _FoldError(f"input of leading size {x.shape[0]}, expected {P} x {self.n}")
        out_shape = (*x.shape[:-1], self.out_features)
        if self.shared:
            if self._cache is None or self.token is None or self._cache[0] is not self.token:
                self._cache = (self.token, self._shared_products(x[: self.n]))
            return self._combine(self._cache[1], "_partial").view(out_shape)
        self.uncached_calls += 1
        w = self._combine(self.stacked_weight, "_partial_w").view(P, self.out_features, self.in_features)
        if self.stacked_bias is None:
            b = None
        elif self.moving_bias:
            b = self.coef @ self.stacked_bias  # (P, out)
        else:
            b = self.stacked_bias[0].expand(P, -1)
        if P == 1:
            return F.linear(x, w[0], None if b is None else b[0])
        xs = x.reshape(P, -1, self.in_features)
        y = torch.bmm(xs, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), xs, w.transpose(1, 2))
        return y.view(out_shape)


def _combine(centre: Tensor, dirs: Tensor, t: Tensor) -> Tensor:
    """theta* + sum_i t_i d_i, in this order, by elementwise ops: the reference engine's definition of a
    point (the batched engine's matrix-product form differs from it by rounding only)."""
    w = centre
    for i in range(dirs.shape[0]):
        w = w + t[i] * dirs[i]
    return w


class GridEvaluator:
    """Loss and accuracy of ``model`` at points theta* + sum_i t_i d_i (module docstring).

    ``coords``: the centre theta* (names of parameters or buffers of ``model``); ``directions``: k dicts of
    tensors over the same names. The model is deep-copied; the caller's model is not changed."""

    def __init__(self, model: nn.Module, coords: Mapping[str, Tensor], directions: Sequence[Mapping[str, Tensor]],
                 evalset: EvalSet, device: torch.device | None = None, batch_size: int | None = None,
                 points_per_batch: int | None = None, memory_budget: int | None = None,
                 cache_prefix: bool = True, progress: bool | None = None):
        if not directions:
            raise GenboundError("a grid needs at least one direction")
        if len(evalset) == 0:
            raise GenboundError("the evaluation set is empty; pass a split with examples")
        self.device = where(device, model)
        self.names = list(coords)
        own = dict(model.named_parameters()) | dict(model.named_buffers())
        for n in self.names:
            if n not in own:
                raise GenboundError(f"coordinate '{n}' is not a parameter of the model")
            if tuple(own[n].shape) != tuple(coords[n].shape):
                raise GenboundError(f"coordinate '{n}' has shape {tuple(coords[n].shape)}, the model's is "
                                    f"{tuple(own[n].shape)}")
            for d in directions:
                if n not in d or tuple(d[n].shape) != tuple(coords[n].shape):
                    raise GenboundError(f"a direction lacks coordinate '{n}' or has the wrong shape for it")
        self.k = len(directions)
        self.centre = {n: coords[n].detach().to(self.device) for n in self.names}
        self.dirs = {n: torch.stack([d[n].detach().to(self.device, self.centre[n].dtype) for d in directions])
                     for n in self.names}
        self.model = self._private_copy(model)
        self.data = evalset.to(self.device)
        self.progress = progress
        self.cache_prefix = cache_prefix
        # Coordinates whose directions are exactly zero (filter-normalized biases and norms) stay at the
        # centre at every point (theta* + 0 d = theta* exactly): only the others move.
        self._moving = [n for n in self.names if bool(self.dirs[n].ne(0).any())]
        self._memo_state: dict = {"token": None, "fold": None}
        self._memos: dict[str, PrefixMemo] = {}
        self._tied = self._tied_coordinates()
        self._probe()
        self._fold = self._fold_modules()
        self._fold_error: str | None = None
        self._token: object | None = None
        self._auto_chunk = points_per_batch is None
        self.batch_size, self.points_per_batch = self._plan(batch_size, points_per_batch, memory_budget)
        self._batched_model: nn.Module | None = None
        self._grid_modules: dict[str, _GridLinear | _FoldedLinear] = {}

    # -- setup ---------------------------------------------------------------------------------------

    def _private_copy(self, model: nn.Module) -> nn.Module:
        m = copy.deepcopy(model).to(self.device)
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    def _tied_coordinates(self) -> set[str]:
        """Coordinates whose tensor is shared by several modules (tied weights): moving one moves all, so
        no engine may replace one of its modules."""
        uses: dict[int, int] = {}
        for _, p in self.model.named_parameters(remove_duplicate=False):
            uses[id(p)] = uses.get(id(p), 0) + 1
        own = dict(self.model.named_parameters())
        return {n for n in self.names if n in own and uses[id(own[n])] > 1}

    def _probe(self) -> None:
        """One forward on two examples with the moving coordinates requiring grad: which Linear layers see
        an input that does not depend on the point, which modules can be cached whole (:mod:`.memo`), how
        often each module runs, and activation sizes."""
        from torch.func import functional_call

        calls: dict[str, int] = {}
        input_free: dict[str, bool] = {}
        output_free: dict[str, bool] = {}
        batch_major: dict[str, bool] = {}
        out_numel: list[int] = []
        hooks = []
        n_probe = min(2, len(self.data))

        def hook(name):
            def fn(mod, args, kwargs, out):
                calls[name] = calls.get(name, 0) + 1
                ins, outs = tensors_in((args, kwargs)), tensors_in(out)
                input_free[name] = input_free.get(name, True) and ins is not None and not any(
                    t.requires_grad for t in ins)
                output_free[name] = outs is not None and not any(t.requires_grad for t in outs)
                batch_major[name] = (n_probe == 2 and ins is not None and outs is not None
                                     and all(t.dim() > 0 and t.shape[0] == n_probe for t in ins + outs))
                out_numel.append(sum(o.numel() for o in outs or []))
            return fn

        for name, mod in self.model.named_modules():
            hooks.append(mod.register_forward_hook(hook(name), with_kwargs=True))
        feats = {k: v[:n_probe] for k, v in self.data.features.items()}
        params = {n: self.centre[n].clone().requires_grad_(n in self._moving) for n in self.names}
        try:
            with torch.enable_grad():
                functional_call(self.model, params, args=(), kwargs=feats, strict=False)
        finally:
            for h in hooks:
                h.remove()
        per_example = max(out_numel) / n_probe if out_numel else 0.0
        self._act_bytes_per_example = 4.0 * per_example * 4  # a few such tensors are alive at once
        self._eligible = []
        names = set(self._moving) - self._tied
        for mname, mod in self.model.named_modules():
            if type(mod) is not nn.Linear or calls.get(mname, 0) != 1 or not input_free.get(mname, False):
                continue
            wname = f"{mname}.weight" if mname else "weight"
            if wname in names and f"{mname}.bias" not in self._tied:
                self._eligible.append(mname)
        # Modules computed once per data batch (memo): run once, point-free in and out, holding no moving
        # tensor (by identity, so that a tied copy of a moving weight counts as moving).
        own = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        moving_ids = {id(own[n]) for n in self._moving}
        self._memo_ok: dict[str, tuple[bool, bool]] = {}
        for mname, mod in self.model.named_modules():
            if not mname or calls.get(mname, 0) != 1 or not input_free.get(mname) or not output_free.get(mname):
                continue
            held = [t for _, t in (*mod.named_parameters(remove_duplicate=False),
                                   *mod.named_buffers(remove_duplicate=False))]
            if any(id(t) in moving_ids for t in held):
                continue
            self._memo_ok[mname] = (True, batch_major.get(mname, False))

    def _memo_modules(self, folded: bool) -> list[str]:
        """The largest cacheable modules (none inside another), in the order named_modules gives them."""
        if not self.cache_prefix:
            return []
        chosen: list[str] = []
        for mname, (any_ok, fold_ok) in self._memo_ok.items():
            if not (fold_ok if folded else any_ok):
                continue
            if any(mname.startswith(c + ".") for c in chosen):
                continue
            chosen.append(mname)
        return chosen

    def _install_memos(self, model: nn.Module, folded: bool) -> None:
        self._memos = {}
        for mname in self._memo_modules(folded):
            mod = model.get_submodule(mname)
            if isinstance(mod, (_GridLinear, _FoldedLinear)):
                continue
            memo = PrefixMemo(mod, mname, self._memo_state)
            memo.install()
            self._memos[mname] = memo

    def _fold_modules(self) -> list[str] | None:
        """The Linear layers whose weight or bias moves, when only such tensors move: then the batched
        engine folds the points into the batch dimension (:class:`_FoldedLinear`). Coordinates whose
        directions are exactly zero (filter-normalized biases) are constants. None (vmap instead) when any
        other tensor moves, or a moving tensor is shared by several modules (tied weights)."""
        modules: list[str] = []
        for n in self.names:
            if not bool(self.dirs[n].ne(0).any()):
                continue
            mname, _, leaf = n.rpartition(".")
            mod = self.model.get_submodule(mname) if mname else self.model
            if type(mod) is not nn.Linear or leaf not in ("weight", "bias") or n in self._tied:
                return None
            if mname not in modules:
                modules.append(mname)
        return modules

    def _plan(self, batch_size: int | None, points_per_batch: int | None, budget: int | None) -> tuple[int, int]:
        n = len(self.data)
        if budget is None:
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                budget = int(0.5 * free)
            else:
                budget = 1 << 30
        weight_bytes = 2 * sum(t.numel() * t.element_size() for t in self.centre.values())
        act = self._act_bytes_per_example
        if batch_size is None:
            batch_size = n
            while batch_size > 1 and budget // (weight_bytes + batch_size * act) < 2:
                batch_size = (batch_size + 1) // 2
        if batch_size <= 0:
            raise GenboundError(f"batch size must be positive, got {batch_size}")
        if points_per_batch is None:
            points_per_batch = int(budget // (weight_bytes + batch_size * act))
            if self.device.type == "cuda":
                cap = 256
            else:
                # On a CPU a large model is compute-bound at one point per forward and more points only
                # spill the caches; a small one is overhead-bound and gains from many: aim at a chunk
                # whose activations stay near the size of a last-level cache.
                cap = int(max(1, min(64, CPU_CHUNK_BYTES // max(1.0, batch_size * act))))
            points_per_batch = max(1, min(cap, points_per_batch))
        if points_per_batch <= 0:
            raise GenboundError(f"points per batch must be positive, got {points_per_batch}")
        return int(min(batch_size, n)), int(points_per_batch)

    def _batched(self) -> nn.Module:
        """A second private copy for the batched engine: moving Linear layers replaced by
        :class:`_FoldedLinear` (every other tensor at the centre), or, when the points cannot be folded,
        cacheable Linear layers replaced by :class:`_GridLinear` for vmap."""
        if self._batched_model is not None:
            return self._batched_model
        if self._fold is not None:
            return self._folded()
        model = self._structural_copy()
        self._grid_modules = {}
        if self.cache_prefix and _is_batched is not None:
            for mname in self._eligible:
                lin = model.get_submodule(mname)
                wname, bname = f"{mname}.weight", f"{mname}.bias"
                bias = self.centre.get(bname, lin.bias.detach() if lin.bias is not None else None)
                dbias = self.dirs.get(bname)
                gl = _GridLinear(self.centre[wname], bias, self.dirs[wname], dbias)
                gl.to(self.device)
                model.set_submodule(mname, gl)
                self._grid_modules[mname] = gl
        self._install_memos(model, folded=False)
        self._batched_model = model
        return model

    def _structural_copy(self) -> nn.Module:
        """A copy of the private model's modules that shares its tensors (no second copy of the weights):
        the batched engine replaces modules and instance attributes, never tensors, and sets coordinates
        to the centre, which is where the sequential engine's tensors are read from anyway: tensors that do not
        move sit at the centre, moving ones are passed in."""
        shared = {id(t): t for t in (*self.model.parameters(), *self.model.buffers())}
        model = copy.deepcopy(self.model, shared)
        own = dict(model.named_parameters()) | dict(model.named_buffers())
        with torch.no_grad():
            for n in self.names:
                own[n].copy_(self.centre[n])
        return model

    def _folded(self) -> nn.Module:
        model = self._structural_copy()
        self._grid_modules = {}
        for mname in self._fold:
            lin = model.get_submodule(mname)
            wname, bname = f"{mname}.weight", f"{mname}.bias"
            weight = self.centre.get(wname, lin.weight.detach())
            dweight = self.dirs.get(wname, weight.new_zeros(self.k, *weight.shape))
            bias = self.centre.get(bname, lin.bias.detach() if lin.bias is not None else None)
            shared = self.cache_prefix and mname in self._eligible
            fl = _FoldedLinear(weight, bias, dweight, self.dirs.get(bname), shared).to(self.device)
            model.set_submodule(mname, fl)
            self._grid_modules[mname] = fl
        self._install_memos(model, folded=True)
        self._batched_model = model
        return model

    def _unfold(self, why: str) -> None:
        """Give up folding (a layer's input was not points x examples): vmap from here on, still exact."""
        self._fold, self._fold_error = None, why
        self._batched_model, self._grid_modules, self._memos = None, {}, {}

    # -- evaluation ------------------------------------------------------------------------------------

    def evaluate(self, points: Tensor, engine: str = "batched") -> PointValues:
        """Mean loss and accuracy at ``points`` (P, k) of coefficients t.

        With the batched engine and a planned (not user-given) chunk size above one, the first data batch
        also times a chunk (folded or through vmap) against the same number of single-point forwards (with
        the same prefix cache), in interleaved rounds (best of each), and keeps the faster for the rest: on a
        CPU a large model gains nothing from more points per forward.
        Every value is computed exactly either way; only the schedule changes."""
        if engine not in ENGINES:
            raise GenboundError(f"unknown engine '{engine}'; choose one of {', '.join(ENGINES)}")
        points = torch.as_tensor(points, dtype=torch.float64)
        if points.dim() != 2 or points.shape[1] != self.k:
            raise GenboundError(f"points must have shape (P, {self.k}), got {tuple(points.shape)}")
        t0 = time.perf_counter()
        P = points.shape[0]
        self._estimate: Estimate | None = None
        self._loss = torch.zeros(P, dtype=torch.float64)
        for memo in self._memos.values():
            memo.hits = memo.misses = 0
        self._correct = torch.zeros(P, dtype=torch.float64)
        planned = self.points_per_batch if engine == "batched" else 1
        rounds = min(CALIBRATION_ROUNDS, (P - 1) // (2 * planned)) if planned > 1 else 0
        calibrate = engine == "batched" and self._auto_chunk and rounds >= 1
        chosen = planned
        calibration: dict[str, float] = {}
        batches = list(self.data.batches(self.batch_size))
        from tqdm.auto import tqdm

        self._bar = tqdm(total=P * len(batches), desc=f"landscape ({engine})", unit="pt", leave=False,
                         disable=None if self.progress is None else not self.progress)
        with torch.no_grad():
            for bi, (feats, labels) in enumerate(batches):
                self._token = object()  # a new data batch: prefix products are recomputed once
                start = 0
                if bi == 0 and calibrate:
                    # Interleaved rounds, best of each: one slow round (another job taking the core) cannot
                    # decide the schedule. Every timed point is a real grid point, so nothing is wasted.
                    self._run(engine, points, [(0, 1)], feats, labels)  # warm-up and prefix cache
                    t_chunk, t_one, a = [], [], 1
                    for _ in range(rounds):
                        b, c = a + planned, a + 2 * planned
                        t_chunk.append(self._run(engine, points, [(a, b)], feats, labels) / planned)
                        t_one.append(self._run(engine, points, [(s, s + 1) for s in range(b, c)], feats,
                                               labels) / planned)
                        a = c
                    chosen = planned if min(t_chunk) < min(t_one) else 1
                    calibration = {"chunk_seconds_per_point": min(t_chunk), "single_seconds_per_point": min(t_one),
                                   "chunk_points": planned, "rounds": rounds,
                                   "clock": "process" if self._clock() is time.process_time else "wall"}
                    start = a
                step = chosen if engine == "batched" else 1
                chunks = [(s, min(s + step, P)) for s in range(start, P, step)]
                if bi == 0:
                    chunks = self._announce(engine, points, chunks, feats, labels, P, len(batches))
                self._run(engine, points, chunks, feats, labels)
        self._bar.close()
        for gl in self._grid_modules.values():
            if isinstance(gl, _FoldedLinear):
                gl.release()
            else:
                gl._cache, gl.token = None, None
        memoized = []
        for mname, memo in self._memos.items():
            if memo.misses == 0 and memo.token is not None:
                memoized.append(mname)
            memo.out, memo.token, memo.versions = None, None, []  # release the cached activations
        self._memo_state["token"] = None
        n = count(self.data.labels)  # examples, or target tokens for a causal LM
        cached = [m for m, gl in self._grid_modules.items() if gl.uncached_calls == 0] if engine == "batched" else []
        schedule = ("folded" if self._fold is not None else "vmap") if engine == "batched" else "single"
        return PointValues(self._loss / n, self._correct / n, engine, time.perf_counter() - t0,
                           chosen if engine == "batched" else 1, self.batch_size, cached, calibration, schedule,
                           memoized if engine == "batched" else [],
                           self._estimate.record() if self._estimate is not None else None)

    def _announce(self, engine: str, points: Tensor, chunks: list[tuple[int, int]], feats: dict[str, Tensor],
                  labels: Tensor, P: int, n_batches: int) -> list[tuple[int, int]]:
        """Time the first two chunks of the chosen schedule on the first data batch (real grid points: their
        values are kept), print the estimate for the whole grid (genbound.core.progress.Estimate, one unit =
        one grid point over the whole evaluation set) and return the chunks still to run. The cheaper of the
        two per point: the first can carry one-time costs, as the schedule's warm-up does."""
        self._estimate = None
        per: list[tuple[float, float]] = []
        for c in chunks[:2]:
            w0, c0 = time.perf_counter(), time.process_time()
            self._run(engine, points, [c], feats, labels)
            k = c[1] - c[0]
            per.append(((time.perf_counter() - w0) / k, (time.process_time() - c0) / k))
        if per:
            wall, cpu = min(p[0] for p in per), min(p[1] for p in per)
            self._estimate = Estimate("landscape", "grid point", P, wall * n_batches, cpu * n_batches, note=(
                f"{n_batches} data batches of {self.batch_size} per point" if n_batches > 1 else ""))
            say(self.progress, self._estimate.line())
        return chunks[2:]

    def _run(self, engine: str, points: Tensor, chunks: Sequence[tuple[int, int]],
             feats: dict[str, Tensor], labels: Tensor) -> float:
        """Accumulate the summed loss and correct counts of ``chunks`` of points on one data batch;
        returns the seconds taken."""
        clock = self._clock()
        t0 = clock()
        for s, e in chunks:
            t = points[s:e].to(self.device)
            if engine == "batched":
                logits = self._forward_batched(t, feats)
            else:
                logits = self._forward_point(t[0], feats).unsqueeze(0)
            ls, cs = _score(logits, labels)  # moves to the CPU, so the timing includes the device work
            self._loss[s:e] += ls
            self._correct[s:e] += cs
            self._bar.update(e - s)
        return clock() - t0

    def _clock(self):
        """The clock the schedule is timed with. On a CPU with one torch thread, process CPU time: the work
        done, which another job taking the core does not inflate (wall-clock timings on a loaded machine
        picked the slower schedule); with several threads or on a GPU, wall-clock time (what the user waits
        for; CPU time would count every thread's spinning or none of the device's work)."""
        if self.device.type == "cpu" and torch.get_num_threads() == 1:
            return time.process_time
        return time.perf_counter

    def _weights(self, t: Tensor, skip: Sequence[str] = ()) -> dict[str, Tensor]:
        return {n: _combine(self.centre[n], self.dirs[n], t.to(self.centre[n].dtype))
                for n in self.names if n not in skip}

    def _forward_point(self, t: Tensor, feats: dict[str, Tensor]) -> Tensor:
        from torch.func import functional_call

        return functional_call(self.model, self._weights(t), args=(), kwargs=feats, strict=False)

    def _forward_batched(self, t: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """Logits (P, n, C) of a chunk of points: folded into the batch dimension when only Linear layers
        move, else through vmap."""
        if self._fold is not None:
            model = self._batched()
            try:
                return self._forward_folded(model, t, feats)
            except (_FoldError, FoldMismatch) as e:
                self._unfold(str(e))
            finally:
                self._memo_state["fold"] = None
        model = self._batched()
        for gl in self._grid_modules.values():
            gl.token = self._token
        self._memo_state["token"] = self._token
        return self._forward_vmap(model, t, feats)

    def _forward_folded(self, model: nn.Module, t: Tensor, feats: dict[str, Tensor]) -> Tensor:
        P = t.shape[0]
        n = next(iter(feats.values())).shape[0]
        coef = torch.cat([torch.ones_like(t[:, :1]), t], 1)
        for fl in self._grid_modules.values():
            fl.coef, fl.n, fl.token = coef.to(fl.stacked_weight.dtype), n, self._token
        self._memo_state["token"], self._memo_state["fold"] = self._token, (P, n)
        if P > 1:  # the examples are independent in eval mode, so P copies of the batch are P evaluations
            feats = {k: v.repeat(P, *([1] * (v.dim() - 1))) for k, v in feats.items()}
        logits = model(**feats)
        if not isinstance(logits, Tensor) or logits.shape[0] != P * n:
            raise _FoldError("the model's output is not (points x examples, classes)")
        return logits.reshape(P, n, *logits.shape[1:])

    def _forward_vmap(self, model: nn.Module, t: Tensor, feats: dict[str, Tensor]) -> Tensor:
        from torch.func import functional_call, vmap

        # c = (1, t_1, .., t_k) per point; every moving tensor of the chunk is one (P, k+1) x (k+1, numel)
        # product, built before vmap and mapped over.
        skip = set()
        for mname in self._grid_modules:
            skip.update({f"{mname}.weight", f"{mname}.bias"})
        weights = {}
        for n in self._moving:
            if n in skip:
                continue
            stacked = self._stacked(n)
            c = torch.cat([torch.ones_like(t[:, :1]), t], 1).to(stacked.dtype)
            weights[n] = (c @ stacked).reshape(t.shape[0], *self.centre[n].shape)
        coefs = torch.cat([torch.ones_like(t[:, :1]), t], 1)
        coef_dtype = {m: gl.coef.dtype for m, gl in self._grid_modules.items()}

        def one(w: dict[str, Tensor], c: Tensor) -> Tensor:
            params = dict(w)
            for mname in self._grid_modules:
                params[f"{mname}.coef"] = c.to(coef_dtype[mname])
            return functional_call(model, params, args=(), kwargs=feats, strict=False)

        if t.shape[0] == 1:
            # One point per forward (large models on a CPU): no vmap, plain matrix products, same cache.
            return one({n: w[0] for n, w in weights.items()}, coefs[0]).unsqueeze(0)
        return vmap(one)(weights, coefs)

    def _stacked(self, name: str) -> Tensor:
        """[theta*; d_1; ..; d_k] of one coordinate as a (k+1, numel) matrix (built once)."""
        cache = self.__dict__.setdefault("_stacked_cache", {})
        if name not in cache:
            cache[name] = torch.cat([self.centre[name].unsqueeze(0), self.dirs[name]]).reshape(self.k + 1, -1)
        return cache[name]


def _score(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per point: summed cross-entropy (float64) and number correct, for logits (P, n, C); for a causal LM's
    logits (P, n, T, V) summed over target tokens (genbound.models.losses)."""
    if labels.dim() == 2:
        ls, cs = point_scores(logits, labels)
        return ls.cpu(), cs.cpu()
    P, n, C = logits.shape
    ce = F.cross_entropy(logits.float().reshape(P * n, C), labels.repeat(P), reduction="none").view(P, n)
    correct = (logits.argmax(-1) == labels.unsqueeze(0)).sum(1)
    return ce.double().sum(1).cpu(), correct.double().cpu()


def evaluate_points(model: nn.Module, coords: Mapping[str, Tensor], directions: Sequence[Mapping[str, Tensor]],
                    points: Tensor, evalset: EvalSet, engine: str = "batched",
                    device: torch.device | None = None, **kwargs) -> PointValues:
    """Loss and accuracy at arbitrary points theta* + sum_i t_i d_i (rows of ``points``)."""
    ev = GridEvaluator(model, coords, directions, evalset, device=device, **kwargs)
    return ev.evaluate(points, engine)
