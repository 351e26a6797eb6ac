"""Bounds for a configuration or a set of checkpoints, as dataclasses and as the paper's Table 1.

:func:`report_for_config` evaluates Table 1 (every method, or those asked for) from a bare description;
:func:`report_for_checkpoint` reads a checkpoint's metadata for the same table, adds Theorem 1 (or says
why it does not apply), and optionally the compression and PAC-Bayes bounds on the real model.
:func:`to_markdown` and :func:`to_latex` (booktabs) write Table 1's layout: variant, chaining, the bound as
a formula, and its value, plus the vacuity of every row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.device import where
from ..core.errors import GenboundError
from ..core.render import latex_table, markdown_table, tex_escape, text_table
from ..diagnostics.evaluate import skipped_final_eval, source_results
from ..methods.catalogue import get_method
from ..models.layout import model_layout
from ..models.precision import dtype_name
from ..sources.context import context_for
from .architecture import describe
from .common import bits_for_dtype, sigma_for_loss
from .mi import BoundConfig, MIBound, method_bound, table1
from .occam import compression_bound
from .pacbayes import pac_bayes_bound
from .theorem1 import CROSS_ENTROPY_LIPSCHITZ, Theorem1Result, chain_from_linears, input_norm_bound, theorem1
from .transformer import MLP_CHAIN


@dataclass
class BoundsReport:
    """Every bound computed for one configuration or one checkpoint."""

    source: str
    kind: str  # "config" or "checkpoint"
    config: BoundConfig
    include_head: bool
    table1: list[MIBound]
    theorem1: Theorem1Result | None = None
    compression: object | None = None  # CompressionBound
    pac_bayes: object | None = None  # PacBayesBound
    empirical: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    units: dict = field(default_factory=dict)  # what N, the bounded loss and the measured gap count


def report_for_config(cfg: BoundConfig, methods: list[str] | None = None, include_head: bool = True) -> BoundsReport:
    """Table 1 for a bare configuration (layer shapes, r, k, q, sigma, N, head)."""
    rows = table1(cfg, methods, include_head)
    notes = ["Table 1 bounds the expected gap (Xu & Raginsky 2017); a value >= 2 sigma is vacuous"]
    if not include_head:
        notes.append("the trained head is not counted (the paper's convention); --head counts it")
    return BoundsReport(cfg.name, "config", cfg, include_head, rows, notes=notes)


def config_from_meta(meta, *, q: float | None = None, sigma: float | None = None, loss: str = "01",
                     clip: float | None = None, n: int | None = None, total: int | None = None,
                     source: str = "checkpoint") -> BoundConfig:
    """Table 1's inputs from a checkpoint's metadata; explicit values win. Missing metadata is a one-line
    error naming the quantity and the option that supplies it."""
    layers = getattr(meta, "layers", None)
    if not layers:
        raise GenboundError(f"{source} records no adapted layer shapes; pass --layers OUTxIN*COUNT with --config")
    rank = getattr(meta, "rank", None)
    if not rank:
        raise GenboundError(f"{source} records no rank; pass --rank")
    sources: dict[str, str] = {"layers": "checkpoint", "rank": "checkpoint", "chain": "checkpoint"}
    if n is None:
        n = getattr(meta, "n_train", None)
        if not n or n <= 0:
            raise GenboundError(f"{source} records no number of training examples N; pass --n")
        sources["n_train"] = "checkpoint"
    else:
        sources["n_train"] = "command line"
    if q is None:
        dtype = getattr(meta, "dtype", None)
        if not dtype:
            raise GenboundError(f"{source} records no storage dtype for q; pass --q BITS")
        q = bits_for_dtype(dtype)
        sources["q"] = f"stored dtype {dtype}"
    else:
        sources["q"] = "command line"
    loss_name = "0-1 loss"
    if sigma is None:
        sigma = sigma_for_loss(loss, clip)
        loss_name = "0-1 loss" if loss in ("01", "0-1") else f"cross-entropy clipped at {clip:g}"
        sources["sigma"] = f"{loss_name}: (b - a) / 2"
    else:
        sources["sigma"] = "command line"
    params = getattr(meta, "params", None) or {}
    head = params.get("head")
    if head is None:
        num_labels, h_in = getattr(meta, "num_labels", None), getattr(meta, "head_in_features", None)
        if not num_labels or not h_in:
            raise GenboundError(f"{source} records no head size; pass --head PARAMS or --no-head")
        head = num_labels * (h_in + 1)
    if total is None:
        total = params.get("total")
    cfg = BoundConfig(
        layers=[(li.out_features, li.in_features) for li in layers],
        rank=int(rank), n_train=int(n), chain=int(getattr(meta, "chain", 1) or 1), q=float(q), sigma=float(sigma),
        head=int(head), total=None if total is None else int(total), name=source, loss=loss_name,
    )
    cfg.sources = {**sources, "head": "checkpoint", "total": "checkpoint"}
    return cfg.validate()


def _mlp_theorem1(ckpt, splits, *, input_bound, loss_lipschitz, clip, delta, mi_gap, form, device):
    initial = ckpt.initial_model(device)
    trained = ckpt.build_model(device, merged=True)
    names = ["fc1", "fc2", "head"]
    updates = {k: v for k, v in ckpt.layer_updates().items() if k in names}
    layers = chain_from_linears([initial.get_submodule(n) for n in names], [trained.get_submodule(n) for n in names],
                                ["relu", "relu", "identity"], names, updates)
    measured, assumed = {}, {}
    if input_bound is None:
        input_bound = input_norm_bound(splits.train.features["x"])
        measured["C"] = f"{input_bound:.4g} = max ||x|| over the training set (assumed to hold on the population)"
    else:
        assumed["C"] = f"{input_bound:g} (given)"
    assumed["loss"] = f"cross-entropy clipped at M = {clip:g} (range [0, M], Lipschitz {loss_lipschitz:.4g})"
    assumed["delta"] = f"{delta:g} (Hoeffding on G(W0))"
    # The initial network's measured gap of the clipped loss, for comparison with its Hoeffding bound.
    with torch.no_grad():
        def clipped(model, data):
            x = data.features["x"].to(device)
            ce = torch.nn.functional.cross_entropy(model(x), data.labels.to(device), reduction="none")
            return float(ce.clamp(max=clip).mean())
        gap0 = clipped(initial, splits.test) - clipped(initial, splits.train)
    measured["G(W0) (test - train, clipped CE)"] = gap0
    for lay in layers:
        measured[f"{lay.name}: ||W0||, ||dW||, ||s(0)||, ||dbeta||"] = (
            f"{lay.w0_norm:.4g}, {lay.dw_norm:.4g}, {lay.offset:.4g}, {lay.bias_shift:.4g}")
    return theorem1(layers, input_bound, ckpt.meta.n_train, loss_lipschitz, clip, delta, mi_gap, form, gap0,
                    assumed, measured, MLP_CHAIN)


def report_for_checkpoint(path, *, include_head: bool = True, q: float | None = None, sigma: float | None = None,
                          loss: str = "01", clip: float | None = None, n: int | None = None, total: int | None = None,
                          delta: float = 0.05, input_bound: float | None = None,
                          loss_lipschitz: float = CROSS_ENTROPY_LIPSCHITZ, theorem_form: str = "recursion",
                          theorem: bool = True, compression: bool = True, pac_bayes: bool = False,
                          pb_samples: int = 20, seed: int = 0, device: torch.device | None = None,
                          progress: bool | None = None, base_dtype: torch.dtype | str | None = None) -> BoundsReport:
    """All bounds for one checkpoint (a directory, a :class:`~genbound.checkpoints.checkpoint.Checkpoint` already
    loaded, or a run context, genbound.sources.context): its Table 1 row, Theorem 1 (mlp) or why not (transformer),
    and the compression (default) and PAC-Bayes (``pac_bayes=True``) bounds on the real model. ``base_dtype``:
    the frozen base's precision for the data-dependent bounds' forwards (genbound.models.precision; a given
    context keeps its own), recorded in ``empirical``."""
    device = where(device)  # a checkpoint is read onto the CPU
    ckpt = context_for(path, device, dtype=base_dtype)  # built once: the models, W0 and the data the bounds below share
    path = path if isinstance(path, (str, Path)) else ckpt.path  # a loaded checkpoint names its directory
    # A peft source: N and the fit come from its data; a run trained with --no-final-eval: its fit is measured.
    if (hasattr(ckpt, "results") and callable(ckpt.results)) or skipped_final_eval(ckpt.meta):
        ckpt.load_splits()
        source_results(ckpt, device)
    meta = ckpt.meta
    cfg = config_from_meta(meta, q=q, sigma=sigma, loss=loss, clip=clip, n=n, total=total, source=str(path))
    row = method_bound(get_method(meta.method), cfg, include_head)
    results = dict(getattr(meta, "results", {}) or {})
    results["base_dtype"] = dtype_name(ckpt.dtype)
    report = BoundsReport(str(path), "checkpoint", cfg, include_head, [row], empirical=results)
    if "gap_01" in results:
        report.notes.append(f"measured 0-1 gap (test - train) {results['gap_01']:.4g} vs Table 1 bound "
                            f"{row.value:.4g}" if row.value is not None else "")
    # Theorem 1 needs data only where it applies (the mlp chain); for a transformer it is a statement.
    need_data = (theorem and meta.backbone == "mlp") or compression or pac_bayes
    splits = ckpt.load_splits() if need_data else None
    num_labels = int(meta.num_labels)
    chance = 1.0 - 1.0 / num_labels
    m_clip = clip if clip is not None else 2.0 * math.log(num_labels)
    if theorem:
        backbone = ckpt.load_backbone()
        if backbone.kind == "mlp":
            report.theorem1 = _mlp_theorem1(ckpt, splits, input_bound=input_bound, loss_lipschitz=loss_lipschitz,
                                            clip=m_clip, delta=delta, mi_gap=None, form=theorem_form, device=device)
            report.theorem1.assumed["G(dW) branch"] = ("not evaluated: Table 1 bounds an expectation of the 0-1 "
                                                      "loss, not G(dW) of the clipped loss")
        else:  # why not, said of this model (its config.json) and its adapted layers
            chain, reasons = describe(backbone.folder, [li.name for li in meta.layers], backbone.task,
                                      config=model_layout(backbone).config)
            report.theorem1 = Theorem1Result(
                applicable=False, form=theorem_form, layers=[], input_bound=None, loss_lipschitz=None,
                n_train=meta.n_train, delta=delta, loss_range=m_clip, verdict="not applicable",
                reasons=reasons, chain_of_maps=chain)
    if compression or pac_bayes:
        hyp = ckpt.hypothesis(device)
        if compression:
            report.compression = compression_bound(hyp, splits.train, delta, device=device, progress=progress,
                                                   chance_error=chance)
        if pac_bayes:
            report.pac_bayes = pac_bayes_bound(hyp, splits.train, delta, mc_samples=pb_samples, seed=seed,
                                               device=device, progress=progress, chance_error=chance)
    if (getattr(meta, "hyperparameters", None) or {}).get("task") == "causal-lm":
        report.units = {"N": "sequences (the i.i.d. samples)",
                        "bounded_0_1_loss": "each sequence's next-token error rate, averaged over sequences",
                        "measured_gap": "per target token (token-level means of train and test loss / accuracy)"}
        report.notes.append(f"causal LM: N = {cfg.n_train} counts training sequences, the i.i.d. samples; the "
                            "0-1 loss the bounds cover is each sequence's next-token error rate (in [0, 1]) "
                            "averaged over sequences, while the measured losses and gap are means over target "
                            "tokens")
    else:
        report.units = {"N": "examples (one labelled sequence or image each)", "bounded_0_1_loss": "per example",
                        "measured_gap": "per example"}
    report.notes = [x for x in report.notes if x]
    return report


# --------------------------------------------------------------------------------------------------
# Exports: the paper's Table 1 layout.


def _fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    if not math.isfinite(v):
        return "inf"
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"


def _table1_rows(reports: list[BoundsReport], latex: bool) -> tuple[list[str], list[list[str]], list[int]]:
    """Table 1's header and rows for ``reports`` (a checkpoint column when any is a checkpoint) and the rows
    that start a new group (chained or not, factor kind) where the LaTeX table draws a rule."""
    ckpt = any(r.kind == "checkpoint" for r in reports)
    if latex:
        head = [r"Variant", r"Chaining?", r"$\mathcal{G}(\mathbf{W}_0 + \Delta\mathbf{W}) \le \Phi_{\mathbf{W}_0} +$",
                r"$D$", r"value of the root", r"vacuous?"]
    else:
        head = ["Variant", "Chaining?", r"$\mathcal{G}(W_0 + \Delta W) \le \Phi_{W_0} +$", "D", "value of the root",
                "vacuous?"]
    if ckpt:
        head = ["checkpoint"] + head + ([] if latex else ["measured 0-1 gap"])
    rows, starts, prev = [], [], None
    for rep in reports:
        for row in rep.table1:
            group = (row.chained, type(get_method(row.method).factor))
            if prev is not None and group != prev and not ckpt:
                starts.append(len(rows))
            prev = group
            if latex:
                cells = [tex_escape(row.title), r"\checkmark" if row.chained else r"$\times$", f"${row.symbolic}$",
                         f"{row.data_dependent_params:,}".replace(",", "{,}"), _fmt(row.value),
                         "yes" if row.vacuous else "no"]
                if ckpt:
                    cells = [r"\texttt{" + tex_escape(rep.source) + "}"] + cells
            else:
                cells = [row.title, "yes" if row.chained else "no", f"${row.symbolic}$", str(row.data_dependent_params),
                         _fmt(row.value), ("yes" if row.vacuous else "no") + f" (>= {row.loss_range:g})"]
                if ckpt:
                    cells = [rep.source] + cells + [_fmt(rep.empirical.get("gap_01"))]
            rows.append(cells)
    return head, rows, starts


def to_markdown(reports: list[BoundsReport]) -> str:
    """Table 1 (Markdown): variant, chaining, the bound as printed in the paper's layout, D, value, vacuity."""
    head, rows, _ = _table1_rows(reports, latex=False)
    lines = [markdown_table(rows, head, align=["l"] * (len(head)))]
    cfg = reports[0].config if reports else None
    if cfg is not None:
        lines.append("")
        lines.append(f"q = {cfg.q:g}, sigma = {cfg.sigma:g}, N = {cfg.n_train}, r = {cfg.rank}, k = {cfg.chain}, "
                     f"layers {cfg.layer_spec}; head {'counted' if reports[0].include_head else 'not counted'}. "
                     "Bounds on the expected gap; a gap of a loss in [a, b] is at most b - a = 2 sigma.")
    return "\n".join(lines) + "\n"


def to_latex(reports: list[BoundsReport]) -> str:
    """Table 1 (LaTeX, booktabs): symbolic and numeric columns."""
    ckpt = any(r.kind == "checkpoint" for r in reports)
    head, rows, starts = _table1_rows(reports, latex=True)
    cfg = reports[0].config if reports else None
    caption = ""
    if cfg is not None:
        caption = (rf"Mutual-information bounds on the expected generalization gap; $q = {cfg.q:g}$, "
                   rf"$\sigma = {cfg.sigma:g}$, $N = {cfg.n_train}$, $r = {cfg.rank}$, $k = {cfg.chain}$; the "
                   rf"head is {'counted' if reports[0].include_head else 'not counted'}. A value $\ge 2\sigma$ "
                   "is vacuous.")
    return latex_table(rows, head, "l" + ("l" if ckpt else "") + "cccr" + "c", escape=False, rules_before=starts,
                       caption=caption, float_env=True)


def format_text(report: BoundsReport) -> str:
    """A plain-text rendering for the terminal."""

    cfg = report.config
    parts = [f"{report.kind} {report.source}: layers {cfg.layer_spec}, r = {cfg.rank}, k = {cfg.chain}, "
             f"q = {cfg.q:g}, sigma = {cfg.sigma:g}, N = {cfg.n_train}, head "
             f"{'counted (' + str(cfg.head) + ' params)' if report.include_head else 'not counted'}"]
    rows = [[r.method, r.title, "yes" if r.chained else "no", r.data_dependent_params, r.value,
             "VACUOUS" if r.vacuous else "non-vacuous", r.note] for r in report.table1]
    parts.append("Table 1 (mutual information, expected gap, limit 2 sigma = "
                 f"{2 * cfg.sigma:g}):\n" + text_table(rows, ["method", "paper", "chained", "D", "bound",
                                                             "vacuity", "note"]))
    t = report.theorem1
    if t is not None:
        if not t.applicable:
            parts.append("Theorem 1: not applicable to this architecture.\n  chain of maps: " + t.chain_of_maps +
                         "\n" + "\n".join(f"  - {r}" for r in t.reasons))
        else:
            lrows = [[lay.name, f"{lay.out_features}x{lay.in_features}", lay.w0_norm, lay.dw_norm, lay.activation,
                      lay.lipschitz, lay.offset, lay.bias_shift] for lay in t.layers]
            parts.append(
                f"Theorem 1 ({t.form}; C = {t.input_bound:.4g}, loss Lipschitz = {t.loss_lipschitz:.4g}, "
                f"clipped-loss range {t.loss_range:.4g}):\n"
                + text_table(lrows, ["layer", "shape", "||W0||", "||dW||", "act", "lip", "||s(0)||", "||dbeta||"])
                + f"\n  Phi_dW = {_fmt(t.phi_dw)}, Phi_W0 = {_fmt(t.phi_w0)}, Hoeffding G(W0) <= "
                f"{_fmt(t.hoeffding_w0)} (measured G(W0) = {_fmt(t.measured_gap_w0)})"
                f"\n  G(W0 + dW) <= {_fmt(t.bound)}: {t.verdict}")
    c = report.compression
    if c is not None:
        parts.append(
            f"Compression (Occam) bound: {c.kind} quantizer, {c.levels} levels, {c.n_params} coded parameters, "
            f"K = {c.total_bits:.0f} bits (a prefix-free message, decoded back); train error of the quantized model "
            f"{c.train_error_quantized:.4g} "
            f"(unquantized {c.train_error_original:.4g}), N = {c.n_train}, delta = {c.delta:g}\n"
            f"  test error <= {c.bound:.4g}: {c.verdict}")
    p = report.pac_bayes
    if p is not None:
        parts.append(
            f"PAC-Bayes bound (prior at initialization): d = {p.d}, s = {p.s:.3g}, lambda = {p.prior_variance:.3g}, "
            f"KL = {p.kl:.4g}, posterior train error {p.mc_error:.4g} (<= {p.mc_error_upper:.4g} after the "
            f"Monte Carlo correction, {p.mc_samples} samples, seed {p.seed})\n"
            f"  error of the stochastic classifier <= {p.bound:.4g}: {p.verdict}")
    if report.empirical:
        e = report.empirical
        parts.append("measured: " + ", ".join(f"{k} {_fmt(v) if isinstance(v, float) else v}" for k, v in e.items()))
    parts += [f"note: {n}" for n in report.notes]
    return "\n".join(parts)
