"""One report over many runs and seeds (``genbound report``): tables, paired comparisons, rank correlations.

Runs are genbound checkpoints and peft adapters, named by path, glob or a sweep folder (searched for
``genbound.json`` / ``adapter_config.json``). They are grouped by *setting* (backbone / dataset) and *method*
(with the hyperparameters that tell two groups of one method apart, when a setting holds several); the seeds of
a group are its replicates, and one seed twice in a group is refused.

Per run, the measures (:data:`MEASURES`) come from the checkpoint itself where it records them (fit, gap, parameter
counts) and from the modules that own the others, never recomputed here: the Table 1 and Theorem 1 bounds
(genbound.bounds, through genbound.report.compare's per-side bound function), the update spectra
(genbound.diagnostics.spectra) and intruder dimensions (genbound.diagnostics.intruders); on request the compression
bound, the top Hessian eigenvalue and trace (genbound.diagnostics.hessian) and the sharpness of a random slice
(genbound.diagnostics.landscape). One :class:`~genbound.sources.context.BuildCache` serves every run, so each backbone
is built and each dataset loaded once.

Statistics (genbound.core.stats), fixed in advance:

* per group and measure: the mean over seeds and the 95% Student-t interval mean +- t_{0.975, n-1} s / sqrt(n);
* paired comparisons: for each method against ``baseline`` in the same setting, the per-seed differences
  d_s = x(method, s) - x(baseline, s) over the seeds both have, their mean, t interval and two-sided paired t
  test p; the family of one (setting, measure) is Holm-corrected (Holm 1979) over its methods, and a difference
  is called *significant* when the Holm-adjusted p < 0.05;
* rank correlation: Kendall's tau-b between the per-group means of each measure and of the gap, per setting,
  with its two-sided p (Holm-corrected over the measures of the setting) and a seeded BCa bootstrap 95%
  interval (Efron 1987), each group's seeds resampled with replacement (genbound.core.stats.tau_interval).
"""

from __future__ import annotations

import base64
import glob
import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import GenboundError
from ..core.render import cell, latex_table, markdown_table, to_jsonable
from ..core.stats import holm, kendall_tau, paired_p, t_interval, tau_interval

# (key, title, section, heavy option or None). Order is the table's order.
MEASURES: list[tuple[str, str, str, str | None]] = [
    ("test_accuracy", "test accuracy", "fit", None),
    ("train_accuracy", "train accuracy", "fit", None),
    ("test_loss", "test loss", "fit", None),
    ("train_loss", "train loss", "fit", None),
    ("gap", "gap G = L_test - L_train", "fit", None),
    ("gap_01", "0-1 gap (train acc - test acc)", "fit", None),
    ("trainable", "trainable parameters", "parameters", None),
    ("data_dependent", "data-dependent parameters D", "parameters", None),
    ("table1", "Table 1 MI bound", "bounds", None),
    ("theorem1", "Theorem 1 bound", "bounds", None),
    ("compression", "compression bound (test error)", "bounds", "data_bounds"),
    ("spectral_norm", "overall ||dW||_2", "spectra", None),
    ("frobenius_norm", "overall ||dW||_F", "spectra", None),
    ("mean_stable_rank", "mean stable rank", "spectra", None),
    ("mean_effective_rank", "mean effective rank", "spectra", None),
    ("intruders", "intruder dimensions (total)", "intruders", None),
    ("hessian_top", "top Hessian eigenvalue", "hessian", "hessian"),
    ("hessian_trace", "Hessian trace (Hutch++)", "hessian", "hessian"),
    ("sharpness", "sharpness (max loss rise)", "landscape", "landscape"),
]
TITLES = {k: t for k, t, _, _ in MEASURES}
GAPS = ("gap", "gap_01")
PAIRED = ("test_accuracy", "gap", "gap_01")  # the measures compared against the baseline, paired by seed
ALPHA = 0.05
# Hyperparameters that may tell two groups of one method apart (seed never does: it is the replicate).
SETTING_KEYS = ("rank", "alpha", "chain", "steps", "epochs", "lr", "batch_size", "max_length", "split_seed",
                "warmup", "weight_decay", "targets", "exclude")
RUN_FILES = ("genbound.json", "adapter_config.json")


@dataclass
class ReportOptions:
    """What to compute beyond what the checkpoints record (the heavy measures are opt-in)."""

    baseline: str | None = None
    gap: str = "gap"
    top_k: int = 10
    eps: float = 0.5
    data_bounds: bool = False
    hessian: bool = False
    landscape: bool = False
    samples: int = 256
    grid: int = 11
    seed: int = 0
    bootstrap: int = 1000
    n_train: int | None = None
    backbone: str | None = None
    figures: bool = True


@dataclass
class RunRecord:
    path: str
    kind: str  # "genbound" or "peft"
    method: str
    setting: str
    seed: int | None
    hyper: dict[str, Any]
    values: dict[str, float | None]
    group: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class Summary:
    setting: str
    group: str
    method: str
    measure: str
    n: int
    mean: float | None
    low: float | None
    high: float | None
    values: list[float]


@dataclass
class PairedRow:
    setting: str
    measure: str
    group: str
    baseline: str
    seeds: list[int]
    differences: list[float]
    mean: float | None
    low: float | None
    high: float | None
    p_value: float | None
    p_holm: float | None = None
    significant: bool = False


@dataclass
class TauRow:
    setting: str
    measure: str
    n_groups: int
    tau: float | None
    p_value: float | None
    low: float | None
    high: float | None
    interval: str
    p_holm: float | None = None


@dataclass
class SweepReport:
    runs: list[RunRecord]
    summaries: list[Summary]
    paired: list[PairedRow]
    taus: list[TauRow]
    measures: list[str]
    options: dict[str, Any]
    rules: list[str]
    notes: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return to_jsonable(self)


# -- finding and grouping runs ---------------------------------------------------------------------------


def _is_run(p: Path) -> bool:
    return p.is_dir() and any((p / f).is_file() for f in RUN_FILES)


def discover(items: Sequence[str]) -> list[Path]:
    """The run folders named by ``items``: a run folder itself, a glob, or a folder searched recursively for
    runs (a sweep). Temporary folders genbound leaves while writing (``.name.*.tmp``) are skipped."""
    found: list[Path] = []
    for item in items:
        paths = [Path(p) for p in sorted(glob.glob(item))] if glob.has_magic(item) else [Path(item)]
        if not paths:
            raise GenboundError(f"{item}: the pattern matches nothing; name checkpoint folders, a glob or a sweep "
                                "folder")
        for p in paths:
            if not p.exists():
                raise GenboundError(f"{item} does not exist; name checkpoint folders, a glob or a sweep folder")
            if _is_run(p):
                found.append(p)
            elif p.is_dir():
                inner = sorted({Path(root) for root, dirs, files in os.walk(p)
                                if any(f in files for f in RUN_FILES) and not Path(root).name.startswith(".")})
                if not inner and not glob.has_magic(item):
                    raise GenboundError(f"{item} holds no genbound checkpoint or peft adapter (no genbound.json or "
                                        "adapter_config.json below it)")
                found += inner
            elif not glob.has_magic(item):
                raise GenboundError(f"{item} is a file, not a checkpoint folder; name the folder that holds "
                                    "genbound.json or adapter_config.json")
    unique = list(dict.fromkeys(Path(os.path.realpath(p)) for p in found))
    if not unique:
        raise GenboundError("no runs found; name checkpoint folders, a glob or a sweep folder")
    return unique


def _hyper(src) -> dict[str, Any]:
    hp = dict(getattr(src.meta, "hyperparameters", None) or {})
    out = {k: hp.get(k, getattr(src.meta, k, None)) for k in SETTING_KEYS}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in out.items()}


def assign_groups(runs: list[RunRecord]) -> None:
    """A group is (setting, method, hyperparameters); its label is the method, plus the hyperparameters that
    differ between groups of that method in the setting. One seed twice in a group is refused."""
    by: dict[tuple[str, str], list[RunRecord]] = {}
    for r in runs:
        by.setdefault((r.setting, r.method), []).append(r)
    for rs in by.values():
        varying = [k for k in SETTING_KEYS if len({repr(r.hyper.get(k)) for r in rs}) > 1]
        for r in rs:
            r.group = r.method + ("" if not varying else
                                  " (" + ", ".join(f"{k}={r.hyper.get(k)}" for k in varying) + ")")
    seen: dict[tuple[str, str, Any], str] = {}
    for r in runs:
        if r.seed is None:
            continue  # a peft adapter records no seed: a replicate of its own, never paired
        key = (r.setting, r.group, r.seed)
        if key in seen:
            raise GenboundError(f"{seen[key]} and {r.path} are the same run ({r.group} on {r.setting}, seed "
                                f"{r.seed}); pass only one of them")
        seen[key] = r.path


# -- measuring one run -----------------------------------------------------------------------------------


def _finite(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def measure_run(path: Path, opts: ReportOptions, device, cache, progress: bool | None) -> RunRecord:
    """One run's record: recorded fit and parameter counts, the bounds, spectra and intruders, and the heavy
    measures asked for. A measure that cannot be computed for this run (a peft adapter without data) stays
    None with a note saying why."""
    from ..diagnostics.evaluate import skipped_final_eval, source_results
    from ..diagnostics.intruders import intruders
    from ..diagnostics.spectra import spectra
    from ..sources.context import RunContext
    from ..sources.source import is_full
    from .compare import Pair, _bound_value, _bounds, _load, _theorem_value

    src = _load(path, opts.backbone)
    full = is_full(src)
    ck = RunContext(src, device, cache) if full else src
    meta = ck.meta
    kind = "genbound" if full else "peft"
    values: dict[str, float | None] = {k: None for k, *_ in MEASURES}
    notes: list[str] = []
    if full and skipped_final_eval(meta):  # trained with --no-final-eval: the fit is measured here
        source_results(ck, device)
        notes.append("trained with --no-final-eval: fit and gap measured by the report")
    results = dict(getattr(meta, "results", None) or {})
    for k in ("test_accuracy", "train_accuracy", "test_loss", "train_loss", "gap", "gap_01"):
        values[k] = _finite(results.get(k))
    if not results:
        notes.append("records no fit (a peft adapter): fit and gap are empty")
    params = dict(getattr(meta, "params", None) or {})
    values["trainable"] = _finite(params.get("trainable"))
    values["data_dependent"] = _finite(params.get("data_dependent"))
    pair = Pair(str(path), str(path), device, top_k=opts.top_k, eps=opts.eps, data_bounds=opts.data_bounds,
                samples=opts.samples, grid=opts.grid, seed=opts.seed, n_train=opts.n_train, progress=False)
    try:
        b = _bounds(ck, str(path), pair)
        if b is not None:
            values["table1"] = _finite(b.table1[0].value) if b.table1 else None
            values["theorem1"] = _finite(_theorem_value(b.theorem1))
            if opts.data_bounds:
                values["compression"] = _finite(_bound_value(b.compression))
    except GenboundError as exc:
        notes.append(f"bounds skipped: {exc}")
    notes += pair.notes
    try:
        updates = ck.layer_updates()
        sp = spectra(updates, top_k=opts.top_k, device=device, progress=False)
        for k in ("spectral_norm", "frobenius_norm", "mean_stable_rank", "mean_effective_rank"):
            values[k] = _finite(getattr(sp.overall, k))
        ir = intruders(ck.base_weights(), updates, k=opts.top_k, eps=opts.eps, device=device, progress=False)
        values["intruders"] = float(ir.total)
    except GenboundError as exc:
        notes.append(f"spectra / intruders skipped: {exc}")
    if (opts.hessian or opts.landscape) and not full:
        notes.append("Hessian and landscape need the training data; a peft adapter records none")
    if opts.hessian and full:
        from ..diagnostics.hessian import hessian_from_checkpoint

        rep = hessian_from_checkpoint(ck, samples=opts.samples, device=device, seed=opts.seed, top_k=1, trace=True,
                                      density=False, progress=False)
        values["hessian_top"] = _finite(rep.eigen.top[0]) if rep.eigen is not None and rep.eigen.top else None
        values["hessian_trace"] = _finite(rep.trace.estimate) if rep.trace is not None else None
    if opts.landscape and full:
        from ..diagnostics.landscape import landscape_from_checkpoints

        land = landscape_from_checkpoints([ck], "random", grid=opts.grid, samples=opts.samples, seed=opts.seed,
                                          device=device, progress=False)
        s = land.summary
        values["sharpness"] = _finite(s.sharpness[-1].max_rise) if s.sharpness else None
    backbone = getattr(meta, "backbone", None) or "unknown backbone"
    setting = f"{backbone} / {getattr(meta, 'dataset', None) or 'unknown data'}"
    seed = getattr(meta, "seed", None)
    return RunRecord(str(path), kind, str(meta.method), setting, None if seed is None else int(seed), _hyper(ck),
                     values, notes=notes)


# -- statistics ------------------------------------------------------------------------------------------


def summarize(runs: list[RunRecord], measures: Sequence[str]) -> list[Summary]:
    """Mean and 95% t interval over the seeds of each group, per measure."""
    out = []
    for setting in dict.fromkeys(r.setting for r in runs):
        for group in dict.fromkeys(r.group for r in runs if r.setting == setting):
            rs = [r for r in runs if r.setting == setting and r.group == group]
            for m in measures:
                xs = [r.values[m] for r in rs if r.values.get(m) is not None]
                mean, lo, hi = t_interval(xs)
                out.append(Summary(setting, group, rs[0].method, m, len(xs), mean, lo, hi, xs))
    return out


def _baseline_group(runs: list[RunRecord], setting: str, baseline: str) -> str | None:
    groups = list(dict.fromkeys(r.group for r in runs if r.setting == setting))
    if baseline in groups:
        return baseline
    hits = [g for g in groups if next(r.method for r in runs if r.group == g and r.setting == setting) == baseline]
    if len(hits) > 1:
        raise GenboundError(f"--baseline {baseline} names {len(hits)} groups on {setting} ({'; '.join(hits)}); "
                            "pass one of these labels")
    return hits[0] if hits else None


def paired_comparisons(runs: list[RunRecord], baseline: str, measures: Sequence[str] = PAIRED) -> list[PairedRow]:
    """Each group against the baseline group of its setting, paired by seed; Holm over the groups of one
    (setting, measure)."""
    out: list[PairedRow] = []
    for setting in dict.fromkeys(r.setting for r in runs):
        base = _baseline_group(runs, setting, baseline)
        if base is None:
            continue
        mine = [r for r in runs if r.setting == setting]
        for m in measures:
            family = []
            by = {(r.group, r.seed): r.values.get(m) for r in mine if r.seed is not None}
            for g in dict.fromkeys(r.group for r in mine):
                if g == base:
                    continue
                seeds = sorted(s for (gg, s), v in by.items() if gg == g and v is not None
                               and by.get((base, s)) is not None)
                d = [by[(g, s)] - by[(base, s)] for s in seeds]
                if not d:
                    continue
                mean, lo, hi = t_interval(d)
                family.append(PairedRow(setting, m, g, base, seeds, d, mean, lo, hi, paired_p(d)))
            for row, p in zip(family, holm([r.p_value for r in family])):
                row.p_holm = p
                row.significant = p is not None and p < ALPHA
            out += family
    return out


def rank_correlations(runs: list[RunRecord], measures: Sequence[str], gap: str, bootstrap: int,
                      seed: int) -> list[TauRow]:
    """Kendall tau-b between the per-group means of each measure and of ``gap``, per setting, with a BCa
    interval over seed resamples and Holm over the measures of the setting."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out: list[TauRow] = []
    for setting in dict.fromkeys(r.setting for r in runs):
        mine = [r for r in runs if r.setting == setting]
        fam = []
        for m in measures:
            if m in GAPS:
                continue
            per: dict[str, list[tuple[float, float]]] = {}
            for r in mine:
                g, v = r.values.get(gap), r.values.get(m)
                if g is not None and v is not None:
                    per.setdefault(r.group, []).append((g, v))
            if len(per) < 2:
                continue
            gm = [float(np.mean([g for g, _ in xs])) for xs in per.values()]
            vm = [float(np.mean([v for _, v in xs])) for xs in per.values()]
            tau, p = kendall_tau(vm, gm)
            lo = hi = None
            how = "no tau (fewer than 2 distinct values)" if tau is None else "none"
            if tau is not None and bootstrap:
                lo, hi, how = tau_interval(per, tau, bootstrap, int(rng.integers(0, 2 ** 31)))
            fam.append(TauRow(setting, m, len(per), tau, p, lo, hi, how))
        for row, p in zip(fam, holm([r.p_value for r in fam])):
            row.p_holm = p
        out += fam
    return out


RULES = [
    "Groups: runs of one backbone / dataset (setting) and method (with the hyperparameters that separate groups "
    "of one method); seeds are the replicates.",
    "Table: the mean over seeds and the 95% Student-t interval mean +- t_{0.975,n-1} s/sqrt(n) (no interval for "
    "one seed).",
    "Paired comparisons: per-seed differences against the baseline over the seeds both have; two-sided paired t "
    "test; Holm's step-down correction over the methods of each (setting, measure); significant when the "
    f"Holm-adjusted p < {ALPHA}.",
    "Rank correlation: Kendall's tau-b between per-group means of each measure and of the gap, per setting; "
    "two-sided p Holm-corrected over the measures of the setting; BCa bootstrap 95% interval with each group's "
    "seeds resampled (widened to the estimate where it excludes it, and marked).",
]


def build_report(items: Sequence[str], opts: ReportOptions, device=None, progress: bool | None = None
                 ) -> SweepReport:
    """Measure every run named by ``items`` and compute the tables (module docstring)."""
    from ..core.device import where
    from ..core.progress import bar
    from ..sources.context import BuildCache

    if opts.gap not in GAPS:
        raise GenboundError(f"--gap {opts.gap}: choose one of {', '.join(GAPS)}")
    device = where(device)
    paths = discover(items)
    cache = BuildCache()
    runs = []
    for p in bar(paths, progress=progress, desc="measuring runs", unit="run"):
        runs.append(measure_run(p, opts, device, cache, progress))
    assign_groups(runs)
    measures = [k for k, _, _, heavy in MEASURES
                if (heavy is None or getattr(opts, heavy)) and any(r.values.get(k) is not None for r in runs)]
    notes = []
    if opts.baseline is None:
        opts.baseline = runs[0].method
        notes.append(f"no --baseline given: the first run's method, {opts.baseline}, is the baseline")
    if not any(opts.baseline in (r.group, r.method) for r in runs):
        raise GenboundError(f"--baseline {opts.baseline} is none of the runs' methods "
                            f"({', '.join(dict.fromkeys(r.method for r in runs))}); choose one of them")
    paired = paired_comparisons(runs, opts.baseline, [m for m in PAIRED if m in measures])
    taus = rank_correlations(runs, measures, opts.gap, opts.bootstrap, opts.seed)
    for r in runs:
        notes += [n if n.startswith(r.path) else f"{r.path}: {n}" for n in r.notes]
    return SweepReport(runs, summarize(runs, measures), paired, taus, measures, to_jsonable(opts), list(RULES),
                       notes)


# -- rendering -------------------------------------------------------------------------------------------


def _iv(lo: float | None, hi: float | None) -> str:
    return "-" if lo is None or hi is None else f"[{cell(lo)}, {cell(hi)}]"


def _settings(rep: SweepReport) -> list[str]:
    return list(dict.fromkeys(s.setting for s in rep.summaries))


def table_rows(rep: SweepReport, setting: str) -> tuple[list[str], list[list[Any]]]:
    """One row per measure, one column per group: "mean [low, high] (n)"."""
    groups = list(dict.fromkeys(s.group for s in rep.summaries if s.setting == setting))
    by = {(s.group, s.measure): s for s in rep.summaries if s.setting == setting}
    rows = []
    for m in rep.measures:
        row: list[Any] = [TITLES[m]]
        for g in groups:
            s = by.get((g, m))
            row.append("-" if s is None or s.mean is None else f"{cell(s.mean)} {_iv(s.low, s.high)} (n={s.n})")
        rows.append(row)
    return ["measure"] + groups, rows


def paired_rows(rep: SweepReport, setting: str) -> tuple[list[str], list[list[Any]]]:
    header = ["measure", "method", "baseline", "seeds", "mean difference", "95% interval", "p", "p (Holm)",
              "significant"]
    rows = [[TITLES[r.measure], r.group, r.baseline, len(r.seeds), r.mean, _iv(r.low, r.high), r.p_value, r.p_holm,
             "yes" if r.significant else "no"] for r in rep.paired if r.setting == setting]
    return header, rows


def tau_rows(rep: SweepReport, setting: str) -> tuple[list[str], list[list[Any]]]:
    header = ["measure", "groups", "Kendall tau", "95% interval", "interval", "p", "p (Holm)"]
    rows = [[TITLES[t.measure], t.n_groups, t.tau, _iv(t.low, t.high), t.interval, t.p_value, t.p_holm]
            for t in rep.taus if t.setting == setting]
    return header, rows


def run_rows(rep: SweepReport) -> tuple[list[str], list[list[Any]]]:
    return (["run", "kind", "setting", "group", "seed"],
            [[r.path, r.kind, r.setting, r.group, r.seed] for r in rep.runs])


def _sections(rep: SweepReport):
    yield "Runs", None, run_rows(rep)
    for s in _settings(rep):
        yield f"Measures on {s} (mean [95% t interval] (n seeds))", s, table_rows(rep, s)
        h, rows = paired_rows(rep, s)
        if rows:
            yield f"Paired comparisons on {s} against {rep.options.get('baseline')} (Holm)", s, (h, rows)
        h, rows = tau_rows(rep, s)
        if rows:
            yield f"Rank correlation with the {TITLES[rep.options.get('gap', 'gap')]} on {s}", s, (h, rows)


def to_markdown(rep: SweepReport) -> str:
    out = ["# genbound report", "", f"{len(rep.runs)} runs.", "", "## Rules", ""]
    out += [f"- {r}" for r in rep.rules] + [""]
    for title, _, (header, rows) in _sections(rep):
        out += [f"## {title}", "", markdown_table(rows, header).rstrip("\n"), ""]
    if rep.figures:
        out += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in rep.figures if f.endswith(".png")] + [""]
    if rep.notes:
        out += ["## Notes", ""] + [f"- {n}" for n in rep.notes] + [""]
    return "\n".join(out)


def to_latex(rep: SweepReport) -> str:
    out = ["% genbound report: booktabs tables (\\usepackage{booktabs})"]
    for title, _, (header, rows) in _sections(rep):
        out += [f"% {title}", latex_table(rows, header, caption=title, float_env=True, small=True)]
    return "\n".join(out)


_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th, i) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
    var idx = Array.prototype.indexOf.call(th.parentNode.children, th);
    rows.sort(function (a, b) {
      var x = a.cells[idx].dataset.v, y = b.cells[idx].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y);
      if (!isNaN(nx) && !isNaN(ny)) return dir * (nx - ny);
      return dir * String(x).localeCompare(String(y));
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _sort_key(v: Any) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return repr(float(v))
    if isinstance(v, str):
        head = v.split(" ", 1)[0]
        try:
            return repr(float(head.replace(",", "")))
        except ValueError:
            return v
    return ""


def _html_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ['<table class="sortable"><thead><tr>']
    out += [f"<th>{html.escape(h)}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for r in rows:
        out.append("<tr>" + "".join(f'<td data-v="{html.escape(_sort_key(v))}">{html.escape(cell(v))}</td>'
                                    for v in r) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def to_html(rep: SweepReport, images: dict[str, bytes] | None = None) -> str:
    """One self-contained page: sortable tables (inline script), figures as base64 PNG data URIs; no external
    reference of any kind, so it opens offline and can be mailed."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>genbound report</title>',
             "<style>body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;"
             "margin:1em 0}th,td{border-bottom:1px solid #ccc;padding:2px 8px;font-size:90%;text-align:left}"
             "th{cursor:pointer;background:#f4f4f4}img{max-width:48%;margin:4px}</style></head><body>",
             "<h1>genbound report</h1>", f"<p>{len(rep.runs)} runs. Click a column header to sort.</p>",
             "<h2>Rules</h2><ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in rep.rules) + "</ul>"]
    for title, _, (header, rows) in _sections(rep):
        parts += [f"<h2>{html.escape(title)}</h2>", _html_table(header, rows)]
    if images:
        parts.append("<h2>Figures</h2>")
        for name, data in images.items():
            b64 = base64.b64encode(data).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{b64}">'
                         f"<figcaption>{html.escape(name)}</figcaption></figure>")
    if rep.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in rep.notes) + "</ul>")
    parts += [f"<script>{_SORT_JS}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower() or "setting"


def write_figures(rep: SweepReport, directory: Path) -> dict[str, bytes]:
    """Per setting: Table 1 bound against the gap (means with t intervals), accuracy per group, and the rank
    correlations as a forest plot; PDF and PNG under ``directory``. Returns {file name: PNG bytes}."""
    from . import figures as fg

    images: dict[str, bytes] = {}
    directory.mkdir(parents=True, exist_ok=True)
    gap = rep.options.get("gap", "gap")

    def half(s: Summary | None) -> float | None:
        return None if s is None or s.high is None else (s.high - s.low) / 2

    for setting in _settings(rep):
        by = {(s.group, s.measure): s for s in rep.summaries if s.setting == setting}
        groups = list(dict.fromkeys(s.group for s in rep.summaries if s.setting == setting))
        method = {s.group: s.method for s in rep.summaries if s.setting == setting}
        figs = []
        pts = [dict(method=method[g], label=g, gap=by[(g, gap)].mean, bound=by[(g, "table1")].mean,
                    gap_err=half(by[(g, gap)]), bound_err=half(by[(g, "table1")])) for g in groups
               if (g, gap) in by and (g, "table1") in by and by[(g, gap)].mean is not None
               and by[(g, "table1")].mean is not None]
        if pts:
            figs.append(("bound-vs-gap", fg.bound_vs_gap(pts, "Table 1 bound (mean over seeds)")))
        acc = [dict(method=method[g], label=g, train=by[(g, "train_accuracy")].mean, test=by[(g, "test_accuracy")].mean,
                    train_err=half(by[(g, "train_accuracy")]), test_err=half(by[(g, "test_accuracy")]))
               for g in groups if (g, "test_accuracy") in by and (g, "train_accuracy") in by
               and by[(g, "test_accuracy")].mean is not None and by[(g, "train_accuracy")].mean is not None]
        if acc:
            figs.append(("accuracy", fg.accuracy_bars(acc, f"Accuracy per method, {setting}")))
        taus = [dict(label=TITLES[t.measure], value=t.tau, low=t.low, high=t.high) for t in rep.taus
                if t.setting == setting and t.tau is not None]
        if taus:
            figs.append(("kendall-tau", fg.intervals(taus, f"Kendall tau with the {TITLES[gap]}",
                                                     f"Rank correlation with the gap, {setting}", xlim=(-1.05, 1.05))))
        for name, fig in figs:
            stem = directory / f"{_slug(setting)}-{name}"
            for path in fg.save(fig, stem, ("pdf", "png")):
                rel = f"{directory.name}/{path.name}"
                rep.figures.append(rel)
                if path.suffix == ".png":
                    images[path.name] = path.read_bytes()
    return images


# -- the output folder -----------------------------------------------------------------------------------

REPORT_FORMAT = "genbound-report"
REPORT_FILES = frozenset({"report.md", "report.tex", "report.json", "report.html"})


def _is_report(path: Path) -> bool:
    """A folder ``genbound report`` wrote: its report.json carries format "genbound-report"."""
    import json

    f = path / "report.json"
    try:
        if not f.is_file() or f.stat().st_size > 2**28:
            return False
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == REPORT_FORMAT


def report_kind():
    """The output policy of genbound.core.output for a report folder: --overwrite replaces only a folder holding
    the four report files and figures/, with a report.json genbound wrote."""
    from ..core.output import OutputKind

    return OutputKind("a genbound report", "--out", REPORT_FILES, _is_report, frozenset({"figures"}))


def report_dict(rep: SweepReport) -> dict:
    """The report as JSON; ``source`` names the runs read (as every command's JSON does)."""
    return {"format": REPORT_FORMAT, "source": [r.path for r in rep.runs], **rep.to_dict()}


def write_report(rep: SweepReport, out: str | os.PathLike, overwrite: bool = False, figures: bool = True,
                 sources: Sequence[str] = ()) -> Path:
    """Write report.md, report.tex, report.json, report.html (and figures/) into ``out``, atomically as one
    folder, under genbound.core.output's policy for what may be replaced."""
    from ..core.atomic import atomic_directory, write_json, write_text
    from ..core.output import check_replaceable, check_writable, replaceable, resolve_out, run_lock

    kind = report_kind()
    out = resolve_out(out)
    check_writable(out)
    with run_lock(out):  # one writer per output folder, as for train and export
        check_replaceable(out, overwrite, kind, sources)
        try:
            with atomic_directory(out, overwrite, may_replace=replaceable(kind)) as tmp:
                images = write_figures(rep, tmp / "figures") if figures else {}
                write_text(tmp / "report.md", to_markdown(rep))
                write_text(tmp / "report.tex", to_latex(rep))
                write_json(tmp / "report.json", report_dict(rep))
                write_text(tmp / "report.html", to_html(rep, images))
        except FileExistsError:
            raise GenboundError(f"{out} was filled by someone else meanwhile; choose another --out") from None
    return out
