"""Training what is missing and reading every finished run, with its cached measures and the f-CMI runs: the loading
every claim shares."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from genbound.bounds.fcmi import SupersampleRuns, fcmi_bound
from genbound.checkpoints.checkpoint import load_meta
from genbound.core.errors import GenboundError

from .. import fcmi as FC
from .. import sweep as S
from ..certificates import certify_run
from ..executors import LocalExecutor
from ..sweep import read_cache
from .cells import Cell, ClaimsPreset, cell_specs, resolve_cell
from .common import Gathered, Run, _num
from .measures import CERT_SETTINGS, MEASURES, cached_run_measures, certificate_specs


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
