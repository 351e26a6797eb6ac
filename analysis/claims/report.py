"""The claims report: tables (Markdown and LaTeX), verdicts, figures and the summary, built from the gathered runs."""

from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from genbound.checkpoints.checkpoint import load_meta
from genbound.core.render import latex_table, markdown_table, tex_escape
from genbound.report import figures as F

from .cells import ClaimsPreset, resolve_cell
from .common import BASELINE, COMPETITIVE_MARGIN, NOISE_PAIR, Gathered, Run
from .competitive import ALPHA_A, Paired, paired_differences
from .measures import INFORMATION_THEORETIC, MEASURES
from .ordering import BOOTSTRAP, BOOTSTRAP_SEED, Tau, taus
from .savings import Cost, costs, verdict_b

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
              "- Measures not computed, by cell (their budget on this preset; see analysis/claims/cells.py): "
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
