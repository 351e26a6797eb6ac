"""Side-by-side comparison of two fine-tuned checkpoints: one row per quantity, the better value marked.

Sections (each computed by the module that owns the quantity, never recomputed here):

* run, parameters, fit     the checkpoints' metadata: method, trainable and data-dependent parameters,
                           train / test loss and accuracy, the empirical gap G = L_test - L_train;
* bounds                   genbound.bounds: the paper's Table 1 bound, Theorem 1 (or why it does not apply),
                           the compression bound (and PAC-Bayes on request), each flagged vacuous or not;
* spectra, intruders       genbound.diagnostics.spectra / genbound.diagnostics.intruders: per-layer norms and ranks
of dW, intruder
                           dimensions of W0 + dW;
* similarity               genbound.diagnostics.similarity: principal angles between A's and B's updates;
* hessian, landscape       optional (``hessian=True`` / ``landscape=True``): genbound.diagnostics.hessian top
eigenvalues
                           and trace; genbound.diagnostics.landscape sharpness around each checkpoint and the loss along
                           the straight line from A to B.

"Better" is marked only where it means something: lower loss, bound, absolute gap |G|, parameter count,
intruder count and sharpness; higher accuracy. The signed gaps carry no mark (an underfit model with G < 0 is
not better than one with a small positive G). Per-layer rows cover the union of A's and B's layers, with
"absent" where a side lacks one, and a total over different layer sets says so and is not marked.

Checkpoints on different backbones or datasets are refused (:class:`MismatchError`, exit code 2) unless
``allow_mismatch``: then nothing is marked and every output carries :attr:`CompareReport.banner`.
"""

from __future__ import annotations

import math
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..bounds.mi import MIBound, mi_gap_bound
from ..bounds.report import report_for_checkpoint
from ..core.device import where
from ..core.errors import GenboundError
from ..core.progress import Estimate, FirstCall, bar, duration, say, shown
from ..core.render import cell, latex_table, markdown_table, md_escape, tex_escape, text_table, to_jsonable
from ..diagnostics.evaluate import evaluate, skipped_final_eval, source_results
from ..diagnostics.hessian.operator import HessianOperator
from ..diagnostics.intruders import eps_sweep, intruders
from ..diagnostics.landscape import landscape_from_checkpoints
from ..diagnostics.similarity import compare_updates
from ..diagnostics.spectra import spectra
from ..models.causal_lm import is_causal_meta
from ..models.precision import dtype_name
from ..sources.context import BuildCache, RunContext
from ..sources.protocol import is_full
from ..sources.source import load_source

if TYPE_CHECKING:
    import torch

LOWER, HIGHER = "lower", "higher"


@dataclass
class Row:
    section: str
    quantity: str
    a: Any
    b: Any
    better: str | None = None  # "a", "b", "=" or None (no meaningful order)
    note: str = ""


@dataclass
class CompareReport:
    a: str
    b: str
    labels: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    banner: str = ""  # set when different backbones or datasets were compared on purpose (allow_mismatch)
    estimates: list[dict[str, Any]] = field(default_factory=list)  # printed before the slow sections

    def row(self, section: str, quantity: str) -> Row:
        for r in self.rows:
            if r.section == section and r.quantity == quantity:
                return r
        raise KeyError((section, quantity))

    def to_dict(self) -> dict:
        return {"source": [self.a, self.b], **to_jsonable(self)}

    @classmethod
    def from_dict(cls, d: dict) -> CompareReport:
        rows = [Row(**r) for r in d["rows"]]
        return cls(d["a"], d["b"], list(d["labels"]), rows, list(d.get("notes", [])), dict(d.get("settings", {})),
                   list(d.get("figures", [])), dict(d.get("timing", {})), str(d.get("banner", "")))


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, (int, float)) and math.isfinite(x):
        return float(x)
    return None


def better(a: Any, b: Any, prefer: str | None) -> str | None:
    """Which value is better under ``prefer`` ("lower" / "higher"); None when not comparable."""
    x, y = _num(a), _num(b)
    if prefer is None or x is None or y is None:
        return None
    if math.isclose(x, y, rel_tol=1e-12, abs_tol=0.0):
        return "="
    return ("a" if x < y else "b") if prefer == LOWER else ("a" if x > y else "b")


def _short(layer: str) -> str:
    return layer.replace("backbone.encoder.layer.", "L").replace(".attention.self.", ".")


def _load(path: str | Path, backbone: str | None, data=None, task: str | None = None):
    """A source (genbound.sources.source): a peft adapter is a full source on its base folder when ``data`` names a
    dataset (its fit measured once here), else its factors alone; a moved genbound checkpoint is pointed at
    ``backbone`` and ``data.dataset`` (checked by fingerprint, genbound.checkpoints.provenance)."""
    try:
        wants_data = data is not None and bool(data.dataset)
        src = load_source(path, backbone, data if wants_data else None,
                          dataset=data.dataset if wants_data else None, task=task)
        if wants_data and getattr(src, "kind", "") == "peft" and callable(getattr(src, "results", None)):
            src.load_splits()
            source_results(src)
        return src
    except GenboundError:
        raise
    except FileNotFoundError as exc:
        raise GenboundError(f"{path} is not a checkpoint: {exc}") from None


def _same_backbone(a, b) -> str | None:
    """None if both sit on one backbone (the same model by content:
    genbound.checkpoints.provenance.same_backbone), else the reason."""
    from ..checkpoints.provenance import same_backbone

    same = same_backbone(a.meta, b.meta)
    if same is None:
        return "the backbone of a peft adapter is not known exactly; pass --backbone"
    if not same:
        return f"different backbones ({a.meta.backbone} vs {b.meta.backbone})"
    return None


ABSENT = "absent"  # the cell of a per-layer row whose layer that side does not adapt


def mismatch(a, b) -> str | None:
    """Why A and B are not comparable as fine-tunings of one model on one task (different backbones or
    datasets), or None. A side that does not record its backbone or dataset (a peft adapter) is not held
    against the other."""
    from ..checkpoints.provenance import dataset_identity, same_backbone

    reasons = []
    ba, bb = getattr(a.meta, "backbone", None), getattr(b.meta, "backbone", None)
    same = same_backbone(a.meta, b.meta)  # by content, not by how each names its model (a path, a name)
    if same is False or (same is None and ba and bb and ba != bb):
        reasons.append(f"different backbones ({ba} vs {bb})")
    da, db = getattr(a.meta, "dataset", None), getattr(b.meta, "dataset", None)
    if da and db and da != db and dataset_identity(a.meta) != dataset_identity(b.meta):
        reasons.append(f"different datasets ({da} vs {db})")
    return " and ".join(reasons) or None


# -- sections: each (a, b, pair) -> rows -------------------------------------------------------------------


@dataclass
class Pair:
    """What the sections share besides the two sources: the settings, the paths, whether both sit on one
    backbone (``same`` is None) and what a section leaves for the figures (``raw``) and the notes."""

    path_a: str
    path_b: str
    device: Any
    top_k: int = 10
    eps: float = 0.5
    data_bounds: bool | None = None
    pac_bayes: bool = False
    samples: int = 256
    grid: int = 11
    seed: int = 0
    n_train: int | None = None
    progress: bool | None = None
    same: str | None = None
    memory_budget: int | None = None  # bytes for the Hessian's and the landscape's batches (--max-memory)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)


def _row(section: str, quantity: str, a: Any, b: Any, prefer: str | None = None, note: str = "") -> Row:
    return Row(section, quantity, a, b, better(a, b, prefer), note)


def run_rows(a, b, pair: Pair) -> list[Row]:
    """The run: method, backbone, data, rank, chain, N and seed of each side (no order); a causal LM's N counts
    sequences (docs/concepts.md, "Causal language modelling: tokens and sequences")."""
    n_title = "training sequences N" if _causal(a, b) else "training examples N"
    return [_row("run", title, getattr(a.meta, key, None), getattr(b.meta, key, None))
            for key, title in (("method", "method"), ("backbone", "backbone"), ("dataset", "dataset"),
                               ("rank", "rank r"), ("chain", "chain k"), ("n_train", n_title),
                               ("seed", "seed"))]


def _causal(a, b) -> bool:
    return any(is_causal_meta(x.meta) for x in (a, b))


def parameter_rows(a, b, pair: Pair) -> list[Row]:
    """Trainable and data-dependent parameter counts (docs/concepts.md, "The data-dependent parameter count
    D"); fewer is better."""
    pa, pb = a.meta.params or {}, b.meta.params or {}
    return [_row("parameters", "trainable", pa.get("trainable"), pb.get("trainable"), LOWER),
            _row("parameters", "data-dependent D", pa.get("data_dependent"), pb.get("data_dependent"), LOWER,
                 "what the information-theoretic bounds count")]


def fit_rows(a, b, pair: Pair) -> list[Row]:
    """Train / test loss and accuracy and the gaps (docs/concepts.md, "Empirical generalization gap"); a side
    trained with --no-final-eval records none, so its fit is measured here."""
    for side, label in ((a, "A"), (b, "B")):
        if skipped_final_eval(side.meta):
            source_results(side, pair.device)
            pair.notes.append(f"{label} was trained with --no-final-eval: its fit and gap were measured here")
    ra, rb = getattr(a.meta, "results", {}) or {}, getattr(b.meta, "results", {}) or {}
    missing = "" if (ra and rb) else "a peft adapter records no results; pass --dataset to measure them"
    per = " (per target token)" if _causal(a, b) else ""  # a causal LM's fit is a mean over target tokens
    if per:
        pair.notes.append("causal LM: losses, accuracies (next-token top-1) and gaps are means over target tokens; "
                          "N counts training sequences, the i.i.d. samples of every bound, whose 0-1 loss is each "
                          "sequence's next-token error rate")
    rows = [_row("fit", title + per, ra.get(key), rb.get(key), prefer, missing)
            for key, title, prefer in (("train_loss", "train loss", LOWER),
                                       ("train_accuracy", "train accuracy", HIGHER),
                                       ("test_loss", "test loss", LOWER), ("test_accuracy", "test accuracy", HIGHER))]
    # A signed gap has no better direction (G < 0 is underfitting's signature as often as luck); how far it is
    # from 0, |G|, is what the bounds bound and what "generalizes better" means.
    for key, title, abs_title in (("gap", "gap G = L_test - L_train", "|G| (closer to 0: generalizes better)"),
                                  ("gap_01", "0-1 gap (train acc - test acc)", "|0-1 gap|")):
        ga, gb = ra.get(key), rb.get(key)
        rows.append(_row("fit", title + per, ga, gb, None, missing or "signed: not marked (see the |gap| row)"))
        rows.append(_row("fit", abs_title + per, *(abs(g) if _num(g) is not None else None for g in (ga, gb)), LOWER,
                         missing))
    return rows


@dataclass
class SideBounds:
    """The bounds of one side: Table 1 (always), Theorem 1 and the data-dependent bounds where computed."""

    table1: list = field(default_factory=list)
    theorem1: Any = None
    compression: Any = None
    pac_bayes: Any = None


def bound_rows(a, b, pair: Pair) -> list[Row]:
    """Table 1, Theorem 1 and the compression / PAC-Bayes bounds (docs/concepts.md, "Bounds"); lower is
    better unless both are vacuous."""
    reports = [_bounds(ck, path, pair) for ck, path in ((a, pair.path_a), (b, pair.path_b))]
    pair.raw["bounds"] = reports
    ta, tb = (r.table1[0] if r is not None else None for r in reports)
    rows = [_row("bounds", "Table 1 MI bound (expected gap)", ta and ta.value, tb and tb.value,
                 _bound_prefer(ta, tb), _vacuity(ta, tb) + _vacuous_tail(ta, tb))]
    th = [r.theorem1 if r is not None else None for r in reports]
    rows.append(_row("bounds", "Theorem 1 bound on G(W0 + dW)", *(_theorem_value(x) for x in th), _bound_prefer(*th),
                     _pair_note(*(_theorem_note(x) for x in th)) + _vacuous_tail(*th)))
    kinds = [("compression", "compression bound (test error)", "compression")]
    if pair.pac_bayes:
        kinds.append(("pac_bayes", "PAC-Bayes bound (test error)", "PAC-Bayes"))
    for attr, title, what in kinds:
        got = [getattr(r, attr, None) if r is not None else None for r in reports]
        rows.append(_row("bounds", title, *(_bound_value(c) for c in got), _bound_prefer(*got),
                         _data_note(got, what) + _vacuous_tail(*got)))
    return rows


def spectra_rows(a, b, pair: Pair) -> list[Row]:
    """Norms and ranks of dW, overall and per layer (docs/concepts.md, "Factored update spectra")."""
    sa, sb = (spectra(ck.layer_updates(), top_k=pair.top_k, device=pair.device, progress=pair.progress)
              for ck in (a, b))
    pair.raw["spectra"] = (sa, sb)
    layer_note = _layer_sets_note([x.name for x in sa.layers], [x.name for x in sb.layers])
    rows = [_row("spectra", title, getattr(sa.overall, attr), getattr(sb.overall, attr), note=layer_note)
            for attr, title in (("spectral_norm", "overall ||dW||_2"), ("frobenius_norm", "overall ||dW||_F"),
                                ("mean_stable_rank", "mean stable rank"),
                                ("mean_effective_rank", "mean effective rank"))]
    la, lb = {x.name: x for x in sa.layers}, {x.name: x for x in sb.layers}
    for name in _union(la, lb):
        x, y = la.get(name), lb.get(name)
        s = _short(name)
        for attr, title in (("spectral_norm", "||dW||_2"), ("frobenius_norm", "||dW||_F"),
                            ("stable_rank", "stable rank"), ("effective_rank", "effective rank")):
            rows.append(_row("spectra", f"{s} {title}", _layer_value(x, attr), _layer_value(y, attr),
                             note="" if x is not None and y is not None else _absent_note(x, y)))
    return rows


def intruder_rows(a, b, pair: Pair) -> list[Row]:
    """Intruder dimensions of W0 + dW, total and per layer (docs/concepts.md, "Intruder dimensions"); fewer is
    better where both sides count the same layers."""
    sweep = eps_sweep(10)
    ia = ib = None
    try:
        ua, ub = a.layer_updates(), b.layer_updates()
        wa = a.base_weights()
        # One backbone and one layer set: B's pretrained weights are A's, so read them once.
        wb = wa if pair.same is None and set(ua) == set(ub) else b.base_weights()
        ia = intruders(wa, ua, k=pair.top_k, eps=pair.eps, sweep=sweep, device=pair.device, progress=pair.progress)
        ib = intruders(wb, ub, k=pair.top_k, eps=pair.eps, sweep=sweep, device=pair.device, progress=pair.progress)
    except GenboundError as exc:
        pair.notes.append(f"intruder dimensions skipped: {exc}")
    pair.raw["intruders"] = (ia, ib)
    if ia is None or ib is None:
        return []
    ca, cb = {x.name: x.count for x in ia.layers}, {x.name: x.count for x in ib.layers}
    differ = _layer_sets_note(list(ca), list(cb))
    # a total over different layer sets counts different things: no mark, and the note says why
    rows = [_row("intruders", f"total (k = {pair.top_k}, eps = {pair.eps})", ia.total, ib.total,
                 None if differ else LOWER,
                 differ + "; not marked" if differ else "Shuttleworth et al. 2024: fewer intruders, less forgetting")]
    for name in _union(ca, cb):
        both = name in ca and name in cb
        rows.append(_row("intruders", f"{_short(name)} count", ca.get(name, ABSENT), cb.get(name, ABSENT),
                         LOWER if both else None, "" if both else _absent_note(ca.get(name), cb.get(name))))
    return rows


def similarity_rows(a, b, pair: Pair) -> list[Row]:
    """The mean overlap of A's and B's top singular subspaces (docs/concepts.md, "Principal angles and
    subspace overlap"); empty across backbones."""
    title = "mean subspace overlap of A's and B's dW"
    if pair.same is not None:
        return [_row("similarity", title, None, None, note=f"empty: {pair.same}")]

    sim = compare_updates(a.layer_updates(), b.layer_updates(), k=min(8, pair.top_k), device=pair.device)
    pair.raw["similarity"] = sim
    return [_row("similarity", title, sim.mean_overlap, sim.mean_overlap,
                 note=f"between the two updates (1 = same top-{sim.k} subspaces, 0 = orthogonal)")]


def hessian_rows(a, b, pair: Pair) -> list[Row]:
    """Top eigenvalues and the trace of the training loss's Hessian in the trained parameters
    (docs/concepts.md, "Hessian spectra"), on ``samples`` seeded training examples."""
    # imported here, as in report/runs.py: only --hessian needs Lanczos, traces and densities (and their SciPy)
    from ..diagnostics.hessian import hessian_from_checkpoint

    reps = []
    for ck, path in ((a, pair.path_a), (b, pair.path_b)):
        if not is_full(ck):
            pair.notes.append(f"{path}: Hessian needs the training data; a peft adapter records none")
            reps.append(None)
            continue
        reps.append(hessian_from_checkpoint(ck, samples=pair.samples, device=pair.device, seed=pair.seed,
                                            progress=pair.progress, memory_budget=pair.memory_budget,
                                            **HESSIAN_SETTINGS))
    pair.raw["hessian"] = reps
    top = [r.eigen.top if r is not None and r.eigen is not None else [] for r in reps]
    rows = []
    for i in range(3):
        va = top[0][i] if len(top[0]) > i else None
        vb = top[1][i] if len(top[1]) > i else None
        rows.append(_row("hessian", f"eigenvalue {i + 1}", va, vb, LOWER if i == 0 else None,
                         "lower top eigenvalue: flatter minimum" if i == 0 else ""))
    tr = [r.trace.estimate if r is not None and r.trace is not None else None for r in reps]
    rows.append(_row("hessian", "trace (Hutch++)", tr[0], tr[1], LOWER,
                     f"on {pair.samples} seeded training examples, trained parameters"))
    return rows


def landscape_rows(a, b, pair: Pair) -> list[Row]:
    """Sharpness, curvature and basin area on a random plane around each side, and the barrier on the line
    from A to B (docs/concepts.md, "Loss landscapes")."""
    out: dict[str, Any] = {}
    planes = []
    opts = dict(grid=pair.grid, samples=pair.samples, seed=pair.seed, device=pair.device, progress=pair.progress,
                memory_budget=pair.memory_budget)
    for ck, path in ((a, pair.path_a), (b, pair.path_b)):
        if not is_full(ck):
            pair.notes.append(f"{path}: landscapes need the training data; a peft adapter records none")
            planes.append(None)
            continue
        planes.append(landscape_from_checkpoints([ck], "random", **opts))
    out["planes"] = planes
    sums = [p.summary if p is not None else None for p in planes]
    rows = [_row("landscape", "max loss rise within radius (sharpness)",
                 *(s.sharpness[-1].max_rise if s is not None and s.sharpness else None for s in sums), LOWER,
                 "filter-normalized random plane" if any(sums) else ""),
            _row("landscape", "curvature along d1", *(s.curvature[0].finite_difference if s else None for s in sums),
                 LOWER),
            _row("landscape", "basin area below threshold", *(s.basin.area if s else None for s in sums), HIGHER)]
    if pair.same is None:
        line = landscape_from_checkpoints([a, b], "interpolate", span=1.0, **opts)
        out["interpolation"] = line
        # With span 1 the grid runs from t = -1 to t = 1: A is the centre point and B the last one.
        segment = line.loss[line.centre[0]:].cpu().tolist()
        barrier = max(segment) - max(segment[0], segment[-1])
        rows.append(_row("landscape", "barrier on the line A -> B", barrier, barrier,
                         note="max loss on the segment minus the higher end point (0: linearly connected)"))
    else:
        rows.append(_row("landscape", "barrier on the line A -> B", None, None, note=f"empty: {pair.same}"))
    pair.raw["landscape"] = out
    return rows


# The sections in report order: (name, rows, whether it needs the slow models). Hessian and landscape are
# added on request.
SECTIONS: list[tuple[str, Callable[[Any, Any, Pair], list[Row]]]] = [
    ("run", run_rows), ("parameters", parameter_rows), ("fit", fit_rows), ("bounds", bound_rows),
    ("spectra", spectra_rows), ("intruders", intruder_rows), ("similarity", similarity_rows),
]
OPTIONAL_SECTIONS: dict[str, Callable[[Any, Any, Pair], list[Row]]] = {
    "hessian": hessian_rows, "landscape": landscape_rows,
}


def compare(
    path_a: str | Path,
    path_b: str | Path,
    *,
    device: torch.device | None = None,
    top_k: int = 10,
    eps: float = 0.5,
    data_bounds: bool | None = None,
    pac_bayes: bool = False,
    hessian: bool = False,
    landscape: bool = False,
    samples: int = 256,
    grid: int = 11,
    seed: int = 0,
    n_train: int | None = None,
    backbone: str | None = None,
    figures: str | Path | None = None,
    progress: bool | None = None,
    allow_mismatch: bool = False,
    data=None,
    task: str | None = None,
    base_dtype: str | None = None,
    memory_budget: int | None = None,
) -> CompareReport:
    """Compare two checkpoints (genbound or peft). ``data_bounds`` (default: on for the mlp backbone,
    off for transformers, where it costs minutes) adds the compression bound; ``pac_bayes`` the PAC-Bayes
    bound. ``hessian`` / ``landscape`` add those sections on a seeded subset of ``samples`` training examples.
    Checkpoints on different backbones or datasets raise GenboundError unless ``allow_mismatch``, which marks
    nothing and sets the report's banner.
    ``data`` (a :class:`genbound.sources.peft_source.DataChoice` naming a dataset) makes a peft adapter a full source
    on its base model folder: its fit, gap, data-dependent bounds, Hessian and landscape are then measured.
    ``backbone`` / ``data.dataset`` also point a moved genbound checkpoint at its model and data (checked by
    fingerprint); ``task`` is the task a peft adapter is evaluated as (genbound.sources.tasks). ``base_dtype``:
    the frozen base's precision (genbound.models.precision; contexts given keep their own); ``memory_budget``
    (bytes): the Hessian's and the landscape's batches sized to it.
    ``path_a`` / ``path_b`` may also be sources or run contexts (genbound.sources.source, genbound.sources.context).

    Each section is a function (a, b, pair) -> rows (:data:`SECTIONS`); A and B are run contexts sharing one
    cache, so the backbone is built and each dataset loaded once for the whole comparison.
    """
    device = where(device)  # checkpoints are read onto the CPU; "auto" is the CLI's to resolve
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    given = (path_a, path_b)
    path_a, path_b = (str(p) if isinstance(p, (str, Path)) else str(p.path) for p in given)
    a, b = (_load(p, backbone, data, task) if isinstance(p, (str, Path)) else p for p in given)
    why = mismatch(a, b)
    banner = _mismatch_banner(why, path_a, path_b, allow_mismatch)
    # One run context per side, sharing a cache: the backbone is built and each dataset loaded once for both.
    cache = next((x.cache for x in (a, b) if isinstance(x, RunContext)), None) or BuildCache()
    a, b = (RunContext(x, device, cache, base_dtype) if is_full(x) and not isinstance(x, RunContext) else x
            for x in (a, b))
    labels = _labels(a, b)
    pair = Pair(path_a, path_b, device, top_k, eps, data_bounds, pac_bayes, samples, grid, seed, n_train, progress,
                _same_backbone(a, b), memory_budget)
    chosen = SECTIONS + [(name, OPTIONAL_SECTIONS[name]) for name, on in (("hessian", hessian),
                                                                          ("landscape", landscape)) if on]
    estimates = _estimate(a, b, hessian, landscape, samples, grid, device, seed, progress)
    stage = bar(total=len(chosen) + (figures is not None), desc="compare", unit="section", progress=progress,
                leave=False)
    rows = _run_sections(chosen, a, b, pair, stage, timing)
    if why is not None:  # not comparable: nothing is better
        for r in rows:
            r.better = None
    report = CompareReport(path_a, path_b, labels, rows, pair.notes,
                           {"device": str(device), "top_k": top_k, "eps": eps, "seed": seed, "samples": samples,
                            "grid": grid, "hessian": hessian, "landscape": landscape,
                            "data_bounds": data_bounds, "pac_bayes": pac_bayes, "allow_mismatch": allow_mismatch,
                            "base_dtype": dtype_name(base_dtype), "memory_budget": memory_budget},
                           [], timing, banner, estimates)
    if figures is not None:
        t = time.perf_counter()
        report.figures = [str(p) for p in write_figures(report, pair.raw, figures)]
        timing["figures"] = time.perf_counter() - t
        stage.set_postfix_str("figures", refresh=False)
        stage.update(1)
    stage.close()
    timing["total"] = time.perf_counter() - t0
    return report


def _labels(a, b) -> list[str]:
    """The two columns' names: the methods, marked (A) and (B) when they are the same."""
    labels = [str(a.meta.method), str(b.meta.method)]
    return [f"{labels[0]} (A)", f"{labels[1]} (B)"] if labels[0] == labels[1] else labels


def _mismatch_banner(why: str | None, path_a: str, path_b: str, allow_mismatch: bool) -> str:
    """The report's banner for checkpoints of different backbones or datasets (``why``), refused unless
    ``allow_mismatch``; empty when they are comparable."""
    if why is None:
        return ""
    if not allow_mismatch:
        raise GenboundError(f"{path_a} and {path_b} are not comparable: {why}; compare checkpoints of one "
                            "backbone and dataset, or pass --allow-mismatch (allow_mismatch=True) to see "
                            "them side by side without any value marked better")
    return (f"MISMATCH: {why}. These are different tasks or models; no value is marked better and no row "
            "is a like-for-like comparison.")


def _run_sections(chosen: list, a, b, pair: Pair, stage, timing: dict[str, float]) -> list[Row]:
    """Every chosen section's rows in order, each section timed into ``timing`` and ticked on ``stage``."""
    rows: list[Row] = []
    for name, section in chosen:
        t = time.perf_counter()
        rows += section(a, b, pair)
        timing[name] = time.perf_counter() - t
        stage.set_postfix_str(name, refresh=False)
        stage.update(1)
    return rows


# -- section helpers -------------------------------------------------------------------------------------------

# The Hessian section's settings, read by the section and by its estimate (planned_products): one checkpoint
# takes ~64 steps shared by the eigenvalues and the first density probe, 3 x 64 for the other probes and about 10
# Hutch++ probes (266 measured on the mlp pair, tests/test_compare.py).
HESSIAN_SETTINGS: dict[str, Any] = {"top_k": 3, "trace": True, "density": True}


def _unit_cost(fn: Callable[..., Any], *args: Any) -> tuple[float, float]:
    """(wall, CPU) seconds of one call of ``fn``, the cheaper of two (genbound.core.progress.FirstCall)."""
    got: list[tuple[float, float]] = []
    f = FirstCall(fn, lambda wall, cpu: got.append((wall, cpu)))
    f(*args)
    f(*args)
    return got[0]


def _estimate(a, b, hessian: bool, landscape: bool, samples, grid: int, device, seed: int,
              progress) -> list[dict[str, Any]]:
    """Print, before the slow sections start, how long they will take (genbound.core.progress.Estimate, the
    estimator ``genbound hessian`` uses): a Hessian-vector product and a forward pass over the ``samples``
    examples are timed on A and scaled by the work each section needs (the Hessian's count from
    genbound.diagnostics.hessian.planned_products). The sections run later on models of their own, so these
    two products and two forwards are spent on the estimate alone (under 1% of the sections' work); each
    Hessian section then prints its own estimate from its first products. Returns the estimate records."""
    if not (hessian or landscape) or not shown(progress):
        return []
    genbound = [ck for ck in (a, b) if is_full(ck)]
    if not genbound:
        return []
    ck, n = genbound[0], len(genbound)
    model = ck.build_model(device=device)
    evalset = ck.load_splits().split("train").subset(samples, seed)
    ests = []
    if hessian:
        import torch

        # imported here, as hessian_rows does: only --hessian needs the Lanczos and trace modules
        from ..diagnostics.hessian import planned_products

        op = HessianOperator(model, evalset, "trained", trained=ck.trained_parameter_names(model), device=device)
        v = torch.randn(1, op.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        wall, cpu = _unit_cost(op.matmat, v.to(op.dtype))
        exp, lo, hi, note = planned_products(**HESSIAN_SETTINGS)
        ests.append(Estimate("compare --hessian", "Hessian-vector product", n * exp, wall, cpu, n * lo, n * hi,
                             f"{n} checkpoint(s) x ({note})"))
    if landscape:
        wall, cpu = _unit_cost(evaluate, model, evalset, 256, device)
        points = n * grid * grid + (grid if n == 2 else 0)
        ests.append(Estimate("compare --landscape", "forward pass", points, wall, cpu, None, points,
                             f"one pass over {len(evalset)} examples per grid point at most; batching makes it "
                             "faster"))
    for e in ests:
        say(progress, e.line())
    say(progress, f"compare: the slow sections take about {duration(sum(e.seconds for e in ests))}")
    return [e.record() for e in ests]


def _bounds(ck, path, pair: Pair) -> SideBounds | None:
    """One side's bounds: a full source's from genbound.bounds; a peft adapter read alone gets its Table 1 row
    from D of its own per-layer ranks (rank_pattern included), q = 32 bits, sigma = 1/2 (0-1 loss) and the N
    the caller gives (peft records none), or None without N."""
    if not is_full(ck):
        if pair.n_train is None:
            pair.notes.append(f"{path}: a peft adapter records no N; pass --n to bound it")
            return None
        d = int(ck.meta.params["data_dependent"])
        value = mi_gap_bound(d, 32, 0.5, pair.n_train)
        pair.notes.append(f"{path}: Table 1 bound with D = {d:,} (peft per-layer ranks), q = 32, sigma = 1/2, "
                          f"N = {pair.n_train} (given)")
        row = MIBound(method=str(ck.meta.method), title="peft adapter", chained=False, rank=int(ck.meta.rank),
                      chain=1, per_link=d, head_params=0, data_dependent_params=d, q=32.0, sigma=0.5,
                      n_train=int(pair.n_train), value=value, loss_range=1.0, vacuous=value >= 1.0,
                      symbolic=r"\sum_i r_i (n_i + m_i)", note="D from the adapter's per-layer ranks")
        return SideBounds(table1=[row])

    mlp = getattr(ck.meta, "backbone", None) == "mlp"
    use_data = mlp if pair.data_bounds is None else pair.data_bounds
    rep = report_for_checkpoint(ck, compression=use_data, pac_bayes=pair.pac_bayes and use_data, seed=pair.seed,
                                device=pair.device, progress=pair.progress, theorem=True)
    return SideBounds(rep.table1, rep.theorem1, rep.compression, rep.pac_bayes)


def _all_vacuous(*bounds) -> bool:
    present = [x for x in bounds if x is not None and getattr(x, "applicable", True)]
    return bool(present) and all(getattr(x, "vacuous", False) for x in present)


def _bound_prefer(*bounds) -> str | None:
    """Lower is better for a bound, but between two vacuous bounds (both at least the largest possible value)
    neither says anything: no mark."""
    return None if _all_vacuous(*bounds) else LOWER


def _vacuous_tail(*bounds) -> str:
    present = [x for x in bounds if x is not None and getattr(x, "applicable", True)]
    return " (both vacuous: not marked)" if len(present) == 2 and _all_vacuous(*present) else ""


def _union(a, b) -> list[str]:
    """A's layer names in A's order, then B's that A lacks."""
    return list(a) + [n for n in b if n not in a]


def _layer_value(layer, attr: str) -> Any:
    return ABSENT if layer is None else getattr(layer, attr)


def _absent_note(x, y) -> str:
    return "only B adapts this layer" if x is None else "only A adapts this layer"


def _layer_sets_note(a: list[str], b: list[str]) -> str:
    if set(a) == set(b):
        return ""
    return (f"the layer sets differ: A adapts {len(a)} layers, B {len(b)}, {len(set(a) & set(b))} in common; "
            "totals and means are over different layers")


def _pair_note(na: str, nb: str) -> str:
    """One note for a row from A's and B's notes, in that order (one of them when they agree)."""
    if na == nb:
        return na
    return "; ".join(f"{side}: {n}" for side, n in (("A", na), ("B", nb)) if n)


def _vacuity(*rows) -> str:
    """A's flag / B's flag ("-" for a side without the bound)."""
    flags = ["-" if r is None else "vacuous" if getattr(r, "vacuous", False) else "non-vacuous" for r in rows]
    return " / ".join(flags)


def _theorem_value(t) -> float | None:
    if t is None or not getattr(t, "applicable", False):
        return None
    return getattr(t, "bound", None)


def _theorem_note(t) -> str:
    if t is None:
        return ""
    if not t.applicable:  # the model's own failed assumptions: genbound.bounds.architecture
        what = (t.chain_of_maps or "").split(":", 1)[0] if ":" in (t.chain_of_maps or "") else "a transformer"
        short = "; ".join(r.split(":", 1)[0] for r in (t.reasons or [])[:3])
        return f"not applicable to {what} ({short}): see `genbound bounds`"
    return getattr(t, "verdict", "") or ""


def _bound_value(c) -> float | None:
    return None if c is None else getattr(c, "bound", None)


def _data_note(items, what: str) -> str:
    if all(c is None for c in items):
        return f"skipped: pass --data-bounds to evaluate the {what} bound on the full training split"
    flags = ["-" if c is None else ("vacuous" if getattr(c, "vacuous", False) else "non-vacuous") for c in items]
    return " / ".join(flags)


# -- output: every format through genbound.core.render ------------------------------------------------------------


def _marked(r: Row, bold, text=cell) -> tuple[str, str]:
    """The A and B cells of a row (values through ``text``), the better one passed through ``bold``."""
    ca, cb = text(r.a), text(r.b)
    if r.better == "a":
        ca = bold(ca)
    elif r.better == "b":
        cb = bold(cb)
    return ca, cb


def to_text(report: CompareReport) -> str:
    """Terminal table; the better value carries a '*'. Row notes become numbered footnotes under the table,
    so the table stays narrow; a section's name is printed on its first row only. A mismatch banner comes
    first."""
    rows, foot, last = [], {}, None
    for r in report.rows:
        # Right-aligned values keep their digits aligned: an unmarked value is padded where '*' would be.
        ca, cb = _marked(r, lambda c: c + " *")
        ca, cb = (c if c.endswith(" *") else c + "  " for c in (ca, cb))
        ref = f"[{foot.setdefault(r.note, len(foot) + 1)}]" if r.note else ""
        rows.append([r.section if r.section != last else "", r.quantity, ca, cb, ref])
        last = r.section
    table = text_table(rows, ["section", "quantity", report.labels[0], report.labels[1], "note"], align="llrrl")
    out = ([report.banner, ""] if report.banner else []) + [
        f"A = {report.a} ({report.labels[0]})", f"B = {report.b} ({report.labels[1]})", "", table, "",
        "* marks the better value where 'better' is meaningful."]
    for n, i in foot.items():  # wrapped under the table's width, continuation lines indented
        out += textwrap.wrap(n, width=max(60, len(table.splitlines()[0])), initial_indent=f"[{i}] ",
                             subsequent_indent=" " * (len(str(i)) + 3))
    out += [f"note: {n}" for n in report.notes]
    if report.figures:
        out.append("figures: " + ", ".join(report.figures))
    return "\n".join(out)


def to_markdown(report: CompareReport) -> str:
    """Markdown table with every row's note, then the report's notes; the better value in bold; a mismatch
    banner as a quote above the table."""
    rows = [[r.section, r.quantity, *_marked(r, lambda c: f"**{c}**"), r.note] for r in report.rows]
    table = markdown_table(rows, ["section", "quantity", report.labels[0], report.labels[1], "note"],
                           align="llrrl")
    head = f"> **{md_escape(report.banner)}**\n\n" if report.banner else ""
    notes = "".join(f"\n- note: {md_escape(n)}" for n in report.notes)
    return (head + table + f"\n\nA = `{report.a}`, B = `{report.b}`; bold marks the better value where that is "
            "meaningful.\n" + (notes + "\n" if notes else ""))


def to_latex(report: CompareReport) -> str:
    """booktabs tabular, one rule between sections; the better value in bold; every row's note (vacuity
    flags included) in its own column, a mismatch banner above and the report's notes below the rows."""
    rows, starts, last = [], [], None
    for i, r in enumerate(report.rows):
        if r.section != last:
            starts.append(i)
        last = r.section
        ca, cb = _marked(r, lambda c: rf"\textbf{{{c}}}", lambda v: tex_escape(cell(v)))
        rows.append([tex_escape(r.section), tex_escape(r.quantity), ca, cb, tex_escape(r.note)])
    header = ["section", "quantity", tex_escape(report.labels[0]), tex_escape(report.labels[1]), "note"]
    lines = latex_table(rows, header, "llrrp{5cm}", escape=False, rules_before=starts).splitlines()

    def wide(text: str) -> str:  # one row across the five columns
        return rf"\multicolumn{{5}}{{p{{14cm}}}}{{{text}}} \\"

    if report.banner:  # right under the header rule
        at = lines.index(r"\midrule") + 1
        lines[at:at] = [wide(rf"\textbf{{{tex_escape(report.banner)}}}"), r"\midrule"]
    if report.notes:
        at = lines.index(r"\bottomrule")
        lines[at:at] = [r"\midrule"] + [wide(tex_escape(f"note: {n}")) for n in report.notes]
    return "\n".join(lines) + "\n"


def write_figures(report: CompareReport, raw: dict, directory: str | Path) -> list[Path]:
    """The pair's figures: singular values per layer, intruders against eps, bound against gap, and with the
    optional sections the Hessian density, landscape contours and the A -> B interpolation."""
    from . import figures as F  # matplotlib: imported only when figures are asked for (--figures)

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    methods = dict(zip(report.labels, (report.row("run", "method").a, report.row("run", "method").b)))
    paths: list[Path] = []
    sa, sb = raw["spectra"]
    paths += F.save(F.singular_values({report.labels[0]: sa, report.labels[1]: sb}, methods),
                    directory / "singular_values")
    ia, ib = raw.get("intruders", (None, None))
    if ia is not None and ib is not None:
        paths += F.save(F.intruders_vs_eps({report.labels[0]: ia, report.labels[1]: ib}, methods),
                        directory / "intruders_vs_eps")
    bound_row = report.row("bounds", "Table 1 MI bound (expected gap)")
    gap_row = next(r for r in report.rows if r.section == "fit" and r.quantity.startswith("0-1 gap"))
    pts = [{"method": methods[lab], "label": lab, "bound": bnd, "gap": gap}
           for lab, bnd, gap in zip(report.labels, (bound_row.a, bound_row.b), (gap_row.a, gap_row.b))
           if bnd is not None and gap is not None]
    if pts:
        # vacuous at 2 sigma, the largest possible 0-1 gap (Table 1 rows record it as loss_range)
        limits = [getattr(r.table1[0], "loss_range", 1.0) for r in raw.get("bounds", []) if r is not None]
        paths += F.save(F.bound_vs_gap(pts, bound_name="Table 1 MI bound (expected gap)",
                                       vacuous_at=max(limits, default=1.0)), directory / "bound_vs_gap")
    hs = raw.get("hessian")
    if hs and any(h is not None and h.density is not None for h in hs):
        paths += F.save(F.hessian_density({lab: h for lab, h in zip(report.labels, hs) if h is not None}, methods),
                        directory / "hessian_density")
    ls = raw.get("landscape")
    if ls:
        for lab, plane in zip(report.labels, ls["planes"]):
            if plane is not None:
                safe = "".join(ch if ch.isalnum() else "_" for ch in lab).strip("_")
                paths += F.save(F.landscape_contour(plane, f"{lab}: random plane"), directory / f"landscape_{safe}")
                paths += F.save(F.landscape_surface(plane, f"{lab}: loss surface"), directory / f"surface_{safe}")
        if "interpolation" in ls:
            paths += F.save(F.landscape_lines({"A -> B": ls["interpolation"]}, title="interpolation A -> B"),
                            directory / "interpolation")
    return paths
