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
``batched``     several points per forward pass: ``torch.vmap`` over ``functional_call``. For a chunk of P
                points with coefficient rows c = (1, t_1, .., t_k), every moving tensor is built by one matrix
                product (P, k+1) x (k+1, numel) of c with [theta*; d_1; ..; d_k] and mapped over; everything
                that does not depend on the point (embeddings, an unperturbed prefix) is computed once per
                forward, not once per point. Points come in chunks sized to a memory budget (on a CPU also
                to the cache: a large model is compute-bound at one point per forward). A one-point chunk
                runs without vmap; when the chunk size is planned, the first data batch times a chunk
                against single points and the faster schedule is kept (:meth:`GridEvaluator.evaluate`).

Prefix caching (exact algebra). A Linear layer whose weight moves and whose input x does not depend on the
point (every layer before it is unperturbed) computes

    (W* + sum_i t_i D_i) x + (b* + sum_i t_i db_i) = (W* x + b*) + sum_i t_i (D_i x + db_i),

so its k + 1 products are computed once per data batch and reused by every point and every chunk; per
point only their combination with c remains (one (P, k+1) x (k+1, M) product per chunk). This halves the
work for an MLP whose first layer moves. The identity is exact in real arithmetic; in float32 it differs
from the reference by rounding only (tests check 1e-6 on the loss). Which layers qualify is found by a
probe pass (their input does not require grad when only the coordinates do) and re-checked at run time:
a batched input disables the cache.

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

from ..errors import GenboundError
from ..evalset import EvalSet

ENGINES = ("batched", "sequential")
CPU_CHUNK_BYTES = 32 << 20  # target activation bytes per chunk of points on a CPU

try:  # private but stable since torch 2.0; without it the prefix cache is simply not used
    from torch._C._functorch import is_batchedtensor as _is_batched
except ImportError:  # pragma: no cover
    _is_batched = None


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
    calibration: dict = field(default_factory=dict)  # vmap chunk vs single points, when timed


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
        y = F.linear(x, self.stacked_weight, self.stacked_bias)  # (..., (k+1) out)
        lead = tuple(y.shape[:-1])
        stacked = y.reshape(-1, self.k + 1, self.out_features).transpose(0, 1).reshape(self.k + 1, -1)
        return stacked.contiguous(), lead

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
                 evalset: EvalSet, device: torch.device | str | None = None, batch_size: int | None = None,
                 points_per_batch: int | None = None, memory_budget: int | None = None,
                 cache_prefix: bool = True, progress: bool | None = None):
        if not directions:
            raise GenboundError("a grid needs at least one direction")
        if len(evalset) == 0:
            raise GenboundError("the evaluation set is empty; pass a split with examples")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
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
        self._probe()
        self._auto_chunk = points_per_batch is None
        self.batch_size, self.points_per_batch = self._plan(batch_size, points_per_batch, memory_budget)
        self._batched_model: nn.Module | None = None
        self._grid_modules: dict[str, _GridLinear] = {}

    # -- setup ---------------------------------------------------------------------------------------

    def _private_copy(self, model: nn.Module) -> nn.Module:
        m = copy.deepcopy(model).to(self.device)
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    def _probe(self) -> None:
        """One forward on two examples with the coordinates requiring grad: which Linear layers see an
        input that does not depend on the point, how often each module runs, and activation sizes."""
        from torch.func import functional_call

        calls: dict[str, int] = {}
        input_free: dict[str, bool] = {}
        out_numel: list[int] = []
        hooks = []
        n_probe = min(2, len(self.data))

        def hook(name):
            def fn(mod, args, out):
                calls[name] = calls.get(name, 0) + 1
                tensors = [a for a in args if isinstance(a, Tensor)]
                input_free[name] = input_free.get(name, True) and not any(t.requires_grad for t in tensors)
                if isinstance(out, Tensor):
                    out_numel.append(out.numel())
                elif isinstance(out, (tuple, list)):
                    out_numel.append(sum(o.numel() for o in out if isinstance(o, Tensor)))
                elif hasattr(out, "to_tuple"):
                    out_numel.append(sum(o.numel() for o in out.to_tuple() if isinstance(o, Tensor)))
            return fn

        for name, mod in self.model.named_modules():
            hooks.append(mod.register_forward_hook(hook(name)))
        feats = {k: v[:n_probe] for k, v in self.data.features.items()}
        params = {n: self.centre[n].clone().requires_grad_(True) for n in self.names}
        try:
            with torch.enable_grad():
                functional_call(self.model, params, args=(), kwargs=feats, strict=False)
        finally:
            for h in hooks:
                h.remove()
        per_example = max(out_numel) / n_probe if out_numel else 0.0
        self._act_bytes_per_example = 4.0 * per_example * 4  # a few such tensors are alive at once
        self._eligible = []
        names = set(self.names)
        for mname, mod in self.model.named_modules():
            if type(mod) is not nn.Linear or calls.get(mname, 0) != 1 or not input_free.get(mname, False):
                continue
            wname = f"{mname}.weight" if mname else "weight"
            if wname in names:
                self._eligible.append(mname)

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
        """A second private copy in which cacheable Linear layers are replaced by :class:`_GridLinear`."""
        if self._batched_model is not None:
            return self._batched_model
        model = self.model if not (self.cache_prefix and self._eligible) else copy.deepcopy(self.model)
        self._grid_modules = {}
        if self.cache_prefix and _is_batched is not None:
            for mname in self._eligible:
                lin = model.get_submodule(mname)
                wname, bname = f"{mname}.weight", f"{mname}.bias"
                bias = self.centre.get(bname, lin.bias.detach() if lin.bias is not None else None)
                dbias = self.dirs.get(bname)
                gl = _GridLinear(self.centre[wname], bias, self.dirs[wname], dbias)
                gl.to(self.device)
                parent_name, _, child = mname.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, child, gl)
                self._grid_modules[mname] = gl
        self._batched_model = model
        return model

    # -- evaluation ------------------------------------------------------------------------------------

    def evaluate(self, points: Tensor, engine: str = "batched") -> PointValues:
        """Mean loss and accuracy at ``points`` (P, k) of coefficients t.

        With the batched engine and a planned (not user-given) chunk size above one, the first data batch
        also times a chunk through vmap against the same number of single-point forwards (with the same
        prefix cache) and keeps the faster for the rest: on a CPU a large model gains nothing from vmap.
        Every value is computed exactly either way; only the schedule changes."""
        if engine not in ENGINES:
            raise GenboundError(f"unknown engine '{engine}'; choose one of {', '.join(ENGINES)}")
        points = torch.as_tensor(points, dtype=torch.float64)
        if points.dim() != 2 or points.shape[1] != self.k:
            raise GenboundError(f"points must have shape (P, {self.k}), got {tuple(points.shape)}")
        t0 = time.perf_counter()
        P = points.shape[0]
        self._loss = torch.zeros(P, dtype=torch.float64)
        self._correct = torch.zeros(P, dtype=torch.float64)
        planned = self.points_per_batch if engine == "batched" else 1
        calibrate = engine == "batched" and self._auto_chunk and planned > 1 and P >= 2 * planned + 1
        chosen = planned
        calibration: dict[str, float] = {}
        batches = list(self.data.batches(self.batch_size))
        from tqdm.auto import tqdm

        self._bar = tqdm(total=P * len(batches), desc=f"landscape ({engine})", unit="pt", leave=False,
                         disable=None if self.progress is None else not self.progress)
        model = self._batched() if engine == "batched" else self.model
        with torch.no_grad():
            for bi, (feats, labels) in enumerate(batches):
                token = object()
                for gl in self._grid_modules.values():
                    gl.token = token
                start = 0
                if bi == 0 and calibrate:
                    self._run(model, engine, points, [(0, 1)], feats, labels)  # warm-up and prefix cache
                    a, b, c = 1, 1 + planned, 1 + 2 * planned
                    t_vmap = self._run(model, engine, points, [(a, b)], feats, labels) / planned
                    t_one = self._run(model, engine, points, [(s, s + 1) for s in range(b, c)], feats, labels) / planned
                    chosen = planned if t_vmap < t_one else 1
                    calibration = {"vmap_seconds_per_point": t_vmap, "single_seconds_per_point": t_one,
                                   "vmap_points": planned}
                    start = c
                step = chosen if engine == "batched" else 1
                chunks = [(s, min(s + step, P)) for s in range(start, P, step)]
                self._run(model, engine, points, chunks, feats, labels)
        self._bar.close()
        for gl in self._grid_modules.values():
            gl._cache, gl.token = None, None
        n = len(self.data)
        cached = [m for m, gl in self._grid_modules.items() if gl.uncached_calls == 0] if engine == "batched" else []
        return PointValues(self._loss / n, self._correct / n, engine, time.perf_counter() - t0,
                           chosen if engine == "batched" else 1, self.batch_size, cached, calibration)

    def _run(self, model: nn.Module, engine: str, points: Tensor, chunks: Sequence[tuple[int, int]],
             feats: dict[str, Tensor], labels: Tensor) -> float:
        """Accumulate the summed loss and correct counts of ``chunks`` of points on one data batch;
        returns the seconds taken."""
        t0 = time.perf_counter()
        for s, e in chunks:
            t = points[s:e].to(self.device)
            if engine == "batched":
                logits = self._forward_batched(model, t, feats)
            else:
                logits = self._forward_point(t[0], feats).unsqueeze(0)
            ls, cs = _score(logits, labels)  # moves to the CPU, so the timing includes the device work
            self._loss[s:e] += ls
            self._correct[s:e] += cs
            self._bar.update(e - s)
        return time.perf_counter() - t0

    def _weights(self, t: Tensor, skip: Sequence[str] = ()) -> dict[str, Tensor]:
        return {n: _combine(self.centre[n], self.dirs[n], t.to(self.centre[n].dtype))
                for n in self.names if n not in skip}

    def _forward_point(self, t: Tensor, feats: dict[str, Tensor]) -> Tensor:
        from torch.func import functional_call

        return functional_call(self.model, self._weights(t), args=(), kwargs=feats, strict=False)

    def _forward_batched(self, model: nn.Module, t: Tensor, feats: dict[str, Tensor]) -> Tensor:
        from torch.func import functional_call, vmap

        # c = (1, t_1, .., t_k) per point; every moving tensor of the chunk is one (P, k+1) x (k+1, numel)
        # product, built before vmap and mapped over.
        skip = set()
        for mname in self._grid_modules:
            skip.update({f"{mname}.weight", f"{mname}.bias"})
        weights = {}
        for n in self.names:
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
    """Per point: summed cross-entropy (float64) and number correct, for logits (P, n, C)."""
    P, n, C = logits.shape
    ce = F.cross_entropy(logits.float().reshape(P * n, C), labels.repeat(P), reduction="none").view(P, n)
    correct = (logits.argmax(-1) == labels.unsqueeze(0)).sum(1)
    return ce.double().sum(1).cpu(), correct.double().cpu()


def evaluate_points(model: nn.Module, coords: Mapping[str, Tensor], directions: Sequence[Mapping[str, Tensor]],
                    points: Tensor, evalset: EvalSet, engine: str = "batched",
                    device: torch.device | str | None = None, **kwargs) -> PointValues:
    """Loss and accuracy at arbitrary points theta* + sum_i t_i d_i (rows of ``points``)."""
    ev = GridEvaluator(model, coords, directions, evalset, device=device, **kwargs)
    return ev.evaluate(points, engine)
