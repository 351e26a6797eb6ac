"""The per-run measures of claim (c), computed once per checkpoint and cached beside the run."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from genbound.bounds.pacbayes import pac_bayes_bound
from genbound.checkpoints.checkpoint import load_checkpoint
from genbound.core.atomic import write_json
from genbound.core.errors import GenboundError
from genbound.diagnostics.hessian.spectrum import hessian_from_checkpoint
from genbound.diagnostics.intruders import intruders
from genbound.diagnostics.landscape.api import landscape_from_checkpoints
from genbound.diagnostics.spectra import spectra
from genbound.sources.hypothesis import from_checkpoint

from ..sweep import _meta_digest, plan, read_cache
from .cells import Cell, Measures

# -- per-run measures (claim c) ---------------------------------------------------------------------------

# key -> (label, what is compared with the gap)
MEASURES: dict[str, tuple[str, str]] = {
    "mi": ("Table 1 MI bound (head counted)", "bound on the expected 0-1 gap"),
    "certificate": ("compression certificate (bound - train error)", "certified test error minus the decoded "
                    "model's train error, of the same method and seed trained in a random subspace"),
    "pac_bayes": ("PAC-Bayes (bound - train error)", "bound on the posterior's test error minus the trained "
                  "model's train error"),
    "fcmi": ("f-CMI estimate", "expected gap estimate per method (supersample runs; no seeds)"),
    "hessian_top": ("Hessian top eigenvalue", "lambda_max of the training loss over the trained parameters"),
    "hessian_trace": ("Hessian trace", "Hutch++ estimate of tr(H) over the trained parameters"),
    "sharpness": ("landscape sharpness", "max loss rise within radius 0.5 on a filter-normalized random line"),
    "intruders": ("intruder dimensions", "count over adapted layers (k = 10, eps = 0.5)"),
    "stable_rank": ("stable rank of dW", "mean over adapted layers of ||dW||_F^2 / ||dW||_2^2"),
    "trainable": ("trainable parameter count", "the naive count Table 1 replaces by D"),
}
INFORMATION_THEORETIC = ("mi", "certificate", "pac_bayes", "fcmi")


def _digest(path: Path) -> str:
    return _meta_digest(path)


def _cached(cache: Path, key: dict[str, Any], compute) -> dict[str, Any]:
    """``compute()`` unless ``cache`` holds a result for the same ``key`` (then read, nothing recomputed)."""

    if (data := read_cache(cache, key, "value")) is not None:
        return data["value"]
    value = compute()
    write_json(cache, {"key": key, "value": value})
    return value


def run_measures(path: Path, measures: Measures, device: str = "cpu") -> dict[str, Any]:
    """The claim-(c) measures of one checkpoint that need only the checkpoint (seed 0 for every random
    choice: subsets, probes, directions, posterior draws). A measure that does not apply (e.g. intruders of
    full fine-tuning's head-only layers) is None with its reason in ``notes``."""
    import torch

    dev = torch.device(device)
    ck = load_checkpoint(path)
    out: dict[str, Any] = {"notes": {}}
    timing: dict[str, float] = {}

    def attempt(name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            out.update(fn())
        except (GenboundError, ValueError, RuntimeError) as exc:
            out["notes"][name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        timing[name] = time.perf_counter() - t0

    if measures.hessian_samples:
        def hessian() -> dict[str, Any]:
            rep = hessian_from_checkpoint(ck, samples=measures.hessian_samples, device=dev, seed=0, top_k=1,
                                          max_steps=measures.hessian_steps, trace=True,
                                          trace_max_probes=measures.trace_probes, trace_sketch=4, progress=False)
            return {"hessian_top": rep.eigen.top[0] if rep.eigen and rep.eigen.top else None,
                    "hessian_trace": rep.trace.estimate if rep.trace else None,
                    "hessian_converged": bool(rep.eigen.converged) if rep.eigen else None}
        attempt("hessian", hessian)
    if measures.landscape_samples:
        def sharp() -> dict[str, Any]:
            res = landscape_from_checkpoints([ck], "random", dims=1, grid=measures.landscape_grid, span=1.0,
                                             samples=measures.landscape_samples, seed=0, device=dev)
            best = min(res.summary.sharpness, key=lambda s: abs(s.radius - 0.5))
            return {"sharpness": best.max_rise, "sharpness_radius": best.radius}
        attempt("sharpness", sharp)
    if measures.pac_bayes:
        def pac() -> dict[str, Any]:
            hyp = from_checkpoint(ck, dev)
            pb = pac_bayes_bound(hyp, ck.load_splits().train, mc_samples=measures.pac_bayes_samples, seed=0,
                                 device=dev)
            return {"pac_bayes": pb.bound - pb.deterministic_train_error, "pac_bayes_bound": pb.bound,
                    "pac_bayes_vacuous": pb.vacuous}
        attempt("pac_bayes", pac)
    if measures.intruders or measures.spectra:
        def weights() -> dict[str, Any]:
            updates = ck.layer_updates()
            res: dict[str, Any] = {}
            if measures.spectra:
                res["stable_rank"] = spectra(updates, device=dev).overall.mean_stable_rank
            if measures.intruders:
                res["intruders"] = float(intruders(ck.base_weights(), updates, k=10, eps=0.5, device=dev).total)
            return res
        attempt("weights", weights)
    out["seconds"] = timing
    return out


def cached_run_measures(spec, cell: Cell, out_cell: Path, device: str) -> dict[str, Any]:
    key = {"checkpoint": _digest(spec.path), "measures": {k: v for k, v in cell.measures.to_dict().items()
                                                          if k not in ("certificate", "fcmi")}}
    return _cached(out_cell / "derived" / f"{spec.name}.claims.json", key,
                   lambda: run_measures(spec.path, cell.measures, device))


def certificate_specs(cell: Cell, out_cell: Path, methods: tuple[str, ...], device: str) -> list:
    """The subspace runs certified for claim (c): each (method, seed) of the cell trained in a
    ``subspace_dim``-dimensional random subspace (genbound.methods.subspace), in ``<cell>/cert``."""
    c = cell.measures.certificate or {}
    preset = replace(cell.preset, name=cell.preset.name + "-cert", lr=c["lr"], lr_full=c["lr"], steps=c["steps"],
                     epochs=None, extra={**cell.preset.extra, "subspace_dim": c["subspace_dim"]})
    return plan(preset, list(methods), list(cell.seeds), out_cell / "cert", device, progress=False)


CERT_SETTINGS = ("levels", "qat_steps", "qat_lr", "rate", "delta")
