"""From finished runs to the paper's tables, figures and the rank-correlation answer.

Input: one :class:`RunRecord` per (method, seed), holding what the checkpoint measured (losses, accuracies,
the empirical gaps) and the bounds computed for it. :func:`aggregate` gives per-method mean, standard
deviation (ddof = 1) and n over seeds; :func:`correlations` answers the paper's question, "does a bound order
the methods like their measured generalization gaps?", with Kendall's tau-b between the per-method mean
bound and the per-method mean gap (scipy.stats.kendalltau; Kendall 1938, tau-b for ties: Kendall 1945), and
an honest note where the answer cannot mean much (few methods, a bound that ties or is constant).

Quantities (genbound.training.train's definitions, docs/concepts.md, "Empirical generalization gap"):
gap = L_test - L_train of the
cross-entropy over the full splits in eval mode; gap_01 = train accuracy - test accuracy = test error -
train error. Bounds (genbound.bounds): ``mi`` Table 1's Xu-Raginsky bound sqrt(2 sigma^2 ln2 q D / N) for
the 0-1 loss (sigma = 1/2, q from the stored dtype) with the trained head counted in D; ``mi_paper`` the
same without the head (the paper's table); ``trainable`` the trained-parameter count of one link, the naive
count that Table 1 replaces by D; ``compression`` the Occam bound on the test error (Lotfi et al. 2022);
``theorem1`` Theorem 1's bound on the clipped cross-entropy gap (mlp only).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from genbound.core.atomic import write_json, write_text
from genbound.core.render import cell, latex_table, markdown_table, tex_escape
from genbound.methods.catalogue import METHODS, get_method
from genbound.report import figures as F

# key -> (Markdown label, LaTeX label)
MEASURED: dict[str, tuple[str, str]] = {
    "train_accuracy": ("train acc", "train acc."),
    "test_accuracy": ("test acc", "test acc."),
    "train_loss": ("train loss", "train loss"),
    "test_loss": ("test loss", "test loss"),
    "gap": ("gap (CE, test - train)", r"gap $L_{\mathrm{test}} - L_{\mathrm{train}}$"),
    "gap_01": ("0-1 gap (test err - train err)", r"0-1 gap"),
}
PARAMS: dict[str, tuple[str, str]] = {
    "trainable": ("trainable params", "trainable"),
    "data_dependent": ("data-dependent D", r"$D$"),
}
# key -> (label, what it bounds, which measured gap it is compared with first)
BOUNDS: dict[str, tuple[str, str, str]] = {
    "mi": ("Table 1 MI bound (head counted)", "expected 0-1 gap", "gap_01"),
    "mi_paper": ("Table 1 MI bound (paper: head not counted)", "expected 0-1 gap", "gap_01"),
    "trainable": ("trainable parameter count (one link; naive)", "nothing: a parameter count", "gap_01"),
    "compression": ("Occam compression bound", "test error (0-1), w.p. 1 - delta", "gap_01"),
    "theorem1": ("Theorem 1 (recursion)", "gap of the clipped cross-entropy, w.p. 1 - delta", "gap"),
}
GAPS = ("gap_01", "gap")
HEADLINE = ("mi", "gap_01")


@dataclass
class RunRecord:
    """One (method, seed) of a sweep: where it is, what happened, what it measured, its bounds."""

    method: str
    seed: int
    name: str
    path: str
    status: str  # "trained", "resumed", "skipped" (found finished), "failed", "missing", "locked"
    results: dict[str, float] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    bounds: dict[str, float | None] = field(default_factory=dict)
    vacuous: dict[str, bool] = field(default_factory=dict)
    train_seconds: float | None = None
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.status in ("trained", "resumed", "skipped")


@dataclass
class Stat:
    """Mean and sample standard deviation (ddof = 1; None for n < 2) of the finite values over seeds."""

    mean: float | None
    std: float | None
    n: int
    values: list[float] = field(default_factory=list)


def stat(values: Iterable[float | None]) -> Stat:
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return Stat(None, None, 0, [])
    mean = math.fsum(xs) / len(xs)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return Stat(mean, std, len(xs), xs)


@dataclass
class MethodRow:
    """One method's aggregate over its finished seeds; ``vacuous[b]`` is True when every seed's bound b is."""

    method: str
    title: str
    seeds: list[int]
    stats: dict[str, Stat]
    vacuous: dict[str, bool | None]
    missing_seeds: list[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.seeds)


def aggregate(records: Sequence[RunRecord], methods: Sequence[str] | None = None) -> list[MethodRow]:
    """Per-method statistics over seeds, one row per method in ``methods`` (catalogue order by default),
    also for a method with no finished run (its statistics are empty and its seeds listed as missing)."""
    names = list(methods) if methods else [m for m in METHODS if any(r.method == m for r in records)]
    rows = []
    for m in names:
        mine = [r for r in records if r.method == m]
        done = [r for r in mine if r.finished]
        stats: dict[str, Stat] = {}
        for key in MEASURED:
            stats[key] = stat(r.results.get(key) for r in done)
        for key in PARAMS:
            stats[f"params.{key}"] = stat(r.params.get(key) for r in done)
        bound_keys = sorted({k for r in done for k in r.bounds}, key=lambda k: list(BOUNDS).index(k)
                            if k in BOUNDS else len(BOUNDS))
        vac: dict[str, bool | None] = {}
        for key in bound_keys:
            stats[f"bound.{key}"] = stat(r.bounds.get(key) for r in done)
            flags = [r.vacuous[key] for r in done if key in r.vacuous]
            vac[key] = all(flags) if flags else None
        rows.append(MethodRow(m, get_method(m).title, sorted(r.seed for r in done), stats, vac,
                              sorted(r.seed for r in mine if not r.finished)))
    return rows


# -- rank correlation ------------------------------------------------------------------------------------


@dataclass
class Correlation:
    """Kendall's tau-b between a bound's per-method means and a measured gap's per-method means."""

    bound: str
    gap: str
    tau: float | None
    p_value: float | None
    n_methods: int
    methods: list[str]
    bound_means: list[float]
    gap_means: list[float]
    tied_bound_groups: list[list[str]]
    note: str = ""


def _tie_groups(methods: Sequence[str], values: Sequence[float], rel: float = 1e-12) -> list[list[str]]:
    groups: dict[float, list[str]] = {}
    for m, v in zip(methods, values):
        key = next((k for k in groups if abs(k - v) <= rel * max(abs(k), abs(v), 1e-300)), v)
        groups.setdefault(key, []).append(m)
    return [g for g in groups.values() if len(g) > 1]


def kendall(bound: dict[str, float | None], gap: dict[str, float | None], bound_name: str = "bound",
            gap_name: str = "gap") -> Correlation:
    """tau-b (scipy.stats.kendalltau, two-sided p) over the methods that have both a finite bound and gap.

    tau > 0: the methods the bound ranks higher tend to have the larger measured gaps (the bound orders
    them rightly); tau = 1 means the same order. Tied values (methods with equal D get equal Table 1 bounds)
    are handled by tau-b; scipy then uses the normal approximation for p instead of the exact distribution.
    """
    from scipy.stats import kendalltau

    methods = [m for m in bound if m in gap and _finite(bound[m]) and _finite(gap[m])]
    x = [float(bound[m]) for m in methods]
    y = [float(gap[m]) for m in methods]
    n = len(methods)
    ties = _tie_groups(methods, x)
    notes = []
    tau = p = None
    if n < 2:
        notes.append(f"only {n} method(s) with a value: no ordering to compare")
    elif len(set(x)) == 1:
        notes.append("the bound is the same for every method, so it orders nothing: tau is undefined")
    elif len(set(y)) == 1:
        notes.append("the measured gap is the same for every method: tau is undefined")
    else:
        res = kendalltau(x, y)
        tau = _clean(res.statistic)
        p = _clean(res.pvalue)
        if n < 5:
            notes.append(f"only {n} methods: too few to conclude anything (under the exact test even a perfect "
                         f"ordering of {n} has two-sided p = {2 / math.factorial(n):.3g})")
        elif n < 10:
            notes.append(f"{n} methods: a small sample, read tau as indicative")
    if ties and tau is not None:
        notes.append(f"the bound ties within {len(ties)} group(s) ("
                     + "; ".join(", ".join(g) for g in ties)
                     + "): tau-b corrects for ties and p uses the normal approximation")
    return Correlation(bound_name, gap_name, tau, p, n, methods, x, y, ties, "; ".join(notes))


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))


def _clean(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def correlations(rows: Sequence[MethodRow]) -> list[Correlation]:
    """tau-b of every bound present against both measured gaps (0-1 gap first)."""
    keys = [k for k in BOUNDS if any(f"bound.{k}" in r.stats for r in rows)]
    out = []
    for b in keys:
        means = {r.method: r.stats[f"bound.{b}"].mean for r in rows if f"bound.{b}" in r.stats}
        for g in GAPS:
            gaps = {r.method: r.stats[g].mean for r in rows}
            out.append(kendall(means, gaps, b, g))
    return out


# -- formatting ----------------------------------------------------------------------------------------


def _num(v: float | None, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if v == int(v) and abs(v) >= 1000:
        return cell(int(v))
    return cell(float(v), digits)


def _pm(s: Stat | None, latex: bool = False, mark: str = "") -> str:
    """mean ± std (std omitted for a single seed); LaTeX in math mode with ``mark`` appended inside."""
    if s is None or s.mean is None:
        return "--" if latex else "missing"
    if latex:
        body = _num(s.mean) + ("" if s.std is None else f" \\pm {_num(s.std, 2)}")
        return f"${body}{mark}$".replace(",", "{,}")
    return _num(s.mean) + ("" if s.std is None else f" ± {_num(s.std, 2)}")


def _md_table(header: list[str], body: list[list[str]]) -> str:
    return markdown_table(body, header, align=["l"] * len(header))


def _tex_table(colspec: str, header: list[str], body: list[list[str]], caption: str, label: str) -> str:
    """A booktabs table float; header and body are LaTeX already (math mode in the cells)."""
    return latex_table(body, header, colspec, escape=False, caption=caption, label=label, float_env=True, small=True)


def _n_cell(row: MethodRow) -> str:
    return str(row.n) + (f" (missing seeds {', '.join(map(str, row.missing_seeds))})" if row.missing_seeds else "")


def results_table(rows: Sequence[MethodRow], latex: bool = False) -> str:
    """Accuracy, loss and the empirical gaps per method: mean ± std over seeds, and n."""
    keys = list(MEASURED)
    if latex:
        header = ["Method", "$n$"] + [MEASURED[k][1] for k in keys]
        body = [[tex_escape(r.title), str(r.n)] + [_pm(r.stats[k], True) for k in keys] for r in rows]
        return _tex_table("l" + "r" * (len(header) - 1), header, body,
                          "Accuracy and empirical generalization gap per method (mean $\\pm$ standard deviation "
                          "over seeds; $n$ seeds). Gap: test minus train cross-entropy; 0-1 gap: test minus "
                          "train error.", "tab:results")
    header = ["Method", "n"] + [MEASURED[k][0] for k in keys]
    body = [[f"{r.title} (`{r.method}`)", _n_cell(r)] + [_pm(r.stats[k]) for k in keys] for r in rows]
    return _md_table(header, body)


def bounds_table(rows: Sequence[MethodRow], latex: bool = False) -> str:
    """Parameter counts, every bound computed (mean ± std over seeds, vacuity) and the measured 0-1 gap."""
    bkeys = [k for k in BOUNDS if k != "trainable" and any(f"bound.{k}" in r.stats for r in rows)]
    pkeys = list(PARAMS)

    def vac(r: MethodRow, k: str) -> str:
        v = r.vacuous.get(k)
        return "" if v is None else (" (vacuous)" if v else "")

    if latex:
        header = ["Method"] + [PARAMS[k][1] for k in pkeys] + [tex_escape(BOUNDS[k][0]) for k in bkeys] + [
            "0-1 gap"]
        body = [[tex_escape(r.title)] + [_pm(r.stats[f"params.{k}"], True) for k in pkeys]
                + [_pm(r.stats.get(f"bound.{k}"), True, "^\\dagger" if r.vacuous.get(k) else "") for k in bkeys]
                + [_pm(r.stats["gap_01"], True)] for r in rows]
        return _tex_table("l" + "r" * (len(header) - 1), header, body,
                          "Data-dependent parameters $D$ and generalization bounds per method (mean $\\pm$ "
                          "standard deviation over seeds). $^\\dagger$: vacuous (at least the largest possible "
                          "value).", "tab:bounds")
    header = ["Method"] + [PARAMS[k][0] for k in pkeys] + [BOUNDS[k][0] for k in bkeys] + ["measured 0-1 gap"]
    body = [[f"{r.title} (`{r.method}`)"] + [_pm(r.stats[f"params.{k}"]) for k in pkeys]
            + [_pm(r.stats.get(f"bound.{k}")) + vac(r, k) for k in bkeys] + [_pm(r.stats["gap_01"])] for r in rows]
    return _md_table(header, body)


def correlation_table(corrs: Sequence[Correlation], latex: bool = False) -> str:
    if latex:
        header = ["Bound", "measured gap", r"Kendall $\tau_b$", "$p$", "methods"]
        body = [[tex_escape(BOUNDS.get(c.bound, (c.bound,))[0]), tex_escape(MEASURED[c.gap][0]),
                 "--" if c.tau is None else f"${c.tau:.3f}$", "--" if c.p_value is None else f"${c.p_value:.3g}$",
                 str(c.n_methods)] for c in corrs]
        return _tex_table("llrrr", header, body, "Rank correlation between each bound's ordering of the methods "
                          "and the measured gaps (per-method means over seeds).", "tab:kendall")
    header = ["bound", "measured gap", "Kendall tau-b", "p (two-sided)", "methods", "note"]
    body = [[BOUNDS.get(c.bound, (c.bound,))[0], MEASURED[c.gap][0], "n/a" if c.tau is None else f"{c.tau:.3f}",
             "n/a" if c.p_value is None else f"{c.p_value:.3g}", str(c.n_methods), c.note] for c in corrs]
    return _md_table(header, body)


# -- figures ----------------------------------------------------------------------------------------------


def bound_points(rows: Sequence[MethodRow], bound: str, gap: str = "gap_01") -> list[dict]:
    """Points for genbound.report.figures.bound_vs_gap: per-method mean bound and gap, std as error bars."""
    pts = []
    for r in rows:
        b, g = r.stats.get(f"bound.{bound}"), r.stats[gap]
        if b is None or b.mean is None or g.mean is None:
            continue
        pts.append({"method": r.method, "label": r.title, "bound": b.mean, "gap": g.mean,
                    "gap_err": g.std, "bound_err": b.std or None})
    return pts


def accuracy_figure(rows: Sequence[MethodRow]):
    """Train and test accuracy per method, mean over seeds with the std as error bars (genbound.report.figures)."""
    rows = [r for r in rows if r.stats["test_accuracy"].mean is not None]
    bars = [{"method": r.method, "label": r.title, "train": r.stats["train_accuracy"].mean,
             "train_err": r.stats["train_accuracy"].std, "test": r.stats["test_accuracy"].mean,
             "test_err": r.stats["test_accuracy"].std} for r in rows]
    n = sorted({r.n for r in rows})
    seeds = "/".join(map(str, n)) + (" seed" if n == [1] else " seeds")
    return F.accuracy_bars(bars, title=f"Accuracy per method (mean ± std over {seeds})")


def write_figures(rows: Sequence[MethodRow], directory: str | Path) -> list[Path]:
    """bound_vs_gap_<bound>.{pdf,png} for every bound present, and accuracy.{pdf,png}."""
    directory = Path(directory)
    paths: list[Path] = []
    for b, (label, _what, gap) in BOUNDS.items():
        if b == "trainable":
            continue
        pts = bound_points(rows, b, gap)
        if len(pts) >= 1:
            # Table 1 bounds the expected 0-1 gap: vacuous at 2 sigma = 1; the compression and Theorem 1
            # bounds have other limits (chance error, the clipped loss range) that the sweep does not record
            vacuous_at = 1.0 if b in ("mi", "mi_paper") else None
            fig = F.bound_vs_gap(pts, bound_name=label, vacuous_at=vacuous_at)
            fig.axes[0].set_xlabel(MEASURED[gap][0] + " (mean ± std over seeds)")
            paths += F.save(fig, directory / f"bound_vs_gap_{b}")
    if any(r.stats["test_accuracy"].mean is not None for r in rows):
        paths += F.save(accuracy_figure(rows), directory / "accuracy")
    return paths


# -- the summary -----------------------------------------------------------------------------------------


def headline(corrs: Sequence[Correlation], rows: Sequence[MethodRow]) -> str:
    """The paper's question answered in one sentence, from the Table 1 bound against the 0-1 gap."""
    c = next((c for c in corrs if (c.bound, c.gap) == HEADLINE), None)
    if c is None:
        return "no Table 1 bound was computed, so the paper's question is not answered here"
    seeds = sorted({r.n for r in rows if r.n})
    seeds_text = ("/".join(map(str, seeds)) or "0") + (" seed" if seeds == [1] else " seeds")
    if c.tau is None:
        return (f"Kendall tau-b between the Table 1 MI bound and the measured 0-1 gap over {c.n_methods} methods "
                f"(means over {seeds_text}) is undefined: {c.note}")
    verdict = ("the bound orders the methods like their measured gaps" if c.tau > 0 and c.p_value is not None
               and c.p_value < 0.05 else
               "the bound orders the methods against their measured gaps" if c.tau < 0 and c.p_value is not None
               and c.p_value < 0.05 else "no significant agreement between the bound's ordering and the gaps")
    return (f"Kendall tau-b between the Table 1 MI bound (head counted) and the measured 0-1 gap over "
            f"{c.n_methods} methods (means over {seeds_text}): tau = {c.tau:.3f}, p = {c.p_value:.3g}: "
            f"{verdict}" + (f" ({c.note})" if c.note else ""))


def summary_markdown(title: str, context: list[str], rows: Sequence[MethodRow], corrs: Sequence[Correlation],
                     notes: Sequence[str]) -> str:
    parts = [f"# {title}", "", *[f"- {c}" for c in context], "", "## The answer", "", headline(corrs, rows), "",
             "## Accuracy and empirical gap", "", results_table(rows), "",
             "## Bounds", "", bounds_table(rows), "",
             "## Rank correlation: does a bound order the methods like the measured gaps?", "",
             correlation_table(corrs), "",
             "tau-b > 0 means the methods with larger bounds have the larger measured gaps. Means over seeds; "
             "p-values from scipy.stats.kendalltau (exact without ties, normal approximation with ties). The two "
             "Table 1 rows order the methods exactly as D does (the head adds a constant), so their tau agree."]
    if notes:
        parts += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    return "\n".join(parts) + "\n"


def summary_dict(rows: Sequence[MethodRow], corrs: Sequence[Correlation]) -> dict[str, Any]:
    def row_dict(r: MethodRow) -> dict[str, Any]:
        return {"method": r.method, "title": r.title, "n": r.n, "seeds": r.seeds, "missing_seeds": r.missing_seeds,
                "vacuous": r.vacuous,
                "stats": {k: {"mean": s.mean, "std": s.std, "n": s.n, "values": s.values} for k, s in r.stats.items()}}

    head = next((c for c in corrs if (c.bound, c.gap) == HEADLINE), None)
    return {"headline": headline(corrs, rows),
            "kendall_tau": None if head is None else {"bound": head.bound, "gap": head.gap, "tau": head.tau,
                                                      "p_value": head.p_value, "n_methods": head.n_methods,
                                                      "note": head.note},
            "per_method": [row_dict(r) for r in rows], "correlations": [asdict(c) for c in corrs],
            "bounds": {k: {"label": v[0], "bounds": v[1]} for k, v in BOUNDS.items()}}


def write_tables(rows: Sequence[MethodRow], corrs: Sequence[Correlation], directory: str | Path) -> list[Path]:
    """tables.md (all three tables) and results.tex, bounds.tex, kendall.tex (booktabs), atomically."""
    directory = Path(directory)
    md = "\n\n".join(["## Accuracy and empirical gap", results_table(rows), "## Bounds", bounds_table(rows),
                      "## Rank correlation (Kendall tau-b)", correlation_table(corrs)]) + "\n"
    return [write_text(directory / "tables.md", md),
            write_text(directory / "results.tex", results_table(rows, latex=True)),
            write_text(directory / "bounds.tex", bounds_table(rows, latex=True)),
            write_text(directory / "kendall.tex", correlation_table(corrs, latex=True))]


__all__ = ["BOUNDS", "MEASURED", "Correlation", "MethodRow", "RunRecord", "Stat", "aggregate", "bound_points",
           "bounds_table", "correlation_table", "correlations", "headline", "kendall", "results_table", "stat",
           "summary_dict", "summary_markdown", "write_figures", "write_json", "write_tables"]
