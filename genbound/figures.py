"""Figures for papers: one colour per method (colour-blind safe), single-column width, vector PDF + PNG.

Every function takes result dataclasses (from genbound.landscape, genbound.hessian, genbound.spectra,
genbound.intruders, genbound.bounds) and returns a matplotlib Figure; :func:`save` writes it as PDF and
PNG atomically. Colours come from Paul Tol's "muted" scheme (distinguishable under the common colour-vision
deficiencies) plus grey and black, and every method also gets its own marker, so print in greyscale works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .atomic import atomic_file  # noqa: E402
from .methods import METHODS  # noqa: E402

COLUMN_WIDTH = 3.4  # inches: one column of a two-column paper
_TOL_MUTED = ["#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255",
              "#AA4499", "#777777", "#000000", "#EE7733", "#0077BB", "#EE3377"]
_MARKERS = ["o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p", "d", "8"]
# Methods registered later (beyond the palette) cycle through it.
METHOD_COLOURS = {name: _TOL_MUTED[i % len(_TOL_MUTED)] for i, name in enumerate(METHODS)}
METHOD_MARKERS = {name: _MARKERS[i % len(_MARKERS)] for i, name in enumerate(METHODS)}

STYLE = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
    "ytick.labelsize": 7, "lines.linewidth": 1.2, "lines.markersize": 3.5, "axes.spines.top": False,
    "axes.spines.right": False, "savefig.bbox": "tight", "savefig.dpi": 200, "pdf.fonttype": 42,
}


def colour(method: str | None, fallback: int = 0) -> str:
    """The method's colour; unknown labels (e.g. a peft adapter) cycle through the palette."""
    return METHOD_COLOURS.get(method or "", _TOL_MUTED[fallback % len(_TOL_MUTED)])


def marker(method: str | None, fallback: int = 0) -> str:
    return METHOD_MARKERS.get(method or "", _MARKERS[fallback % len(_MARKERS)])


def _figure(height: float = 2.4, width: float = COLUMN_WIDTH, **kw):
    with plt.rc_context(STYLE):
        return plt.subplots(figsize=(width, height), constrained_layout=True, **kw)


def save(fig, stem: str | Path, formats: Sequence[str] = ("pdf", "png")) -> list[Path]:
    """Write ``stem.pdf`` and ``stem.png`` atomically; returns the paths."""
    stem = Path(stem)
    out = []
    with plt.rc_context(STYLE):
        for fmt in formats:
            path = stem.with_suffix(f".{fmt}")
            with atomic_file(path) as tmp:
                fig.savefig(tmp, format=fmt)
            out.append(path)
    plt.close(fig)
    return out


# -- landscapes ----------------------------------------------------------------------------------------


def landscape_contour(result, title: str | None = None):
    """2-D slice as filled contours, the trained point marked, any projected path drawn."""
    fig, ax = _figure(2.8)
    with plt.rc_context(STYLE):
        x, y = (a.cpu().numpy() for a in result.axes)
        z = result.loss.cpu().numpy().T  # loss[i, j] is at (x_i, y_j)
        levels = np.linspace(z.min(), np.quantile(z, 0.95), 15)
        cs = ax.contourf(x, y, np.minimum(z, levels[-1]), levels=levels, cmap="viridis")
        ax.contour(x, y, z, levels=levels, colors="white", linewidths=0.3)
        fig.colorbar(cs, ax=ax, label="loss")
        ax.plot([0], [0], marker="*", color="#DDCC77", markersize=8, markeredgecolor="black", lw=0)
        if result.path is not None and result.path.shape[1] >= 2:
            p = result.path.cpu().numpy()
            ax.plot(p[:, 0], p[:, 1], "-o", color="white", markersize=2, lw=0.8)
            for label, (px, py) in zip(result.path_labels or [], p[:, :2]):
                ax.annotate(label, (px, py), fontsize=6, color="white")
        ax.set_xlabel(result.directions[0].label if hasattr(result.directions[0], "label") else "direction 1")
        ax.set_ylabel(result.directions[1].label if hasattr(result.directions[1], "label") else "direction 2")
        ax.set_title(title or f"loss landscape ({result.directions_kind})")
    return fig


def landscape_surface(result, title: str | None = None):
    """2-D slice as a 3-D surface."""
    with plt.rc_context(STYLE):
        fig = plt.figure(figsize=(COLUMN_WIDTH, 2.8))
        ax = fig.add_subplot(projection="3d")
        x, y = (a.cpu().numpy() for a in result.axes)
        X, Y = np.meshgrid(x, y, indexing="ij")
        Z = result.loss.cpu().numpy()
        ax.plot_surface(X, Y, Z, cmap="viridis", linewidth=0, antialiased=True)
        ax.set_xlabel("d1")
        ax.set_ylabel("d2")
        ax.set_zlabel("loss")
        ax.set_title(title or "loss surface")
    return fig


def landscape_lines(results: Mapping[str, object], methods: Mapping[str, str] | None = None, title: str = ""):
    """1-D slices (random lines or interpolations), one curve per label."""
    fig, ax = _figure()
    methods = methods or {}
    with plt.rc_context(STYLE):
        for i, (label, res) in enumerate(results.items()):
            m = methods.get(label)
            ax.plot(res.axes[0].cpu().numpy(), res.loss.cpu().numpy(), color=colour(m, i), marker=marker(m, i),
                    markevery=max(1, len(res.axes[0]) // 8), label=label)
        ax.set_xlabel("step along direction")
        ax.set_ylabel("loss")
        ax.set_title(title or "1-D loss slices")
        ax.legend(frameon=False)
    return fig


# -- Hessian ---------------------------------------------------------------------------------------------


def hessian_density(reports: Mapping[str, object], methods: Mapping[str, str] | None = None):
    """SLQ spectral densities (log scale), one curve per label."""
    fig, ax = _figure()
    methods = methods or {}
    with plt.rc_context(STYLE):
        for i, (label, rep) in enumerate(reports.items()):
            d = rep.density
            if d is None:
                continue
            m = methods.get(label)
            ax.semilogy(d.grid, np.maximum(np.asarray(d.curve), 1e-12), color=colour(m, i), label=label)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density")
        ax.set_title("Hessian spectral density (SLQ)")
        ax.legend(frameon=False)
    return fig


# -- weight updates ----------------------------------------------------------------------------------------


def singular_values(reports: Mapping[str, object], methods: Mapping[str, str] | None = None, max_layers: int = 4):
    """Singular values of dW per layer (first ``max_layers`` layers), one panel per layer."""
    methods = methods or {}
    first = next(iter(reports.values()))
    names = [lay.name for lay in first.layers][:max_layers]
    fig, axes = _figure(1.5 * ((len(names) + 1) // 2) + 0.5, ncols=2, nrows=(len(names) + 1) // 2, squeeze=False)
    with plt.rc_context(STYLE):
        for ax, name in zip(axes.flat, names):
            for i, (label, rep) in enumerate(reports.items()):
                lay = next((x for x in rep.layers if x.name == name), None)
                if lay is None:
                    continue
                s = np.asarray(lay.singular_values)
                s = s[s > 1e-8 * s.max()] if s.size and s.max() > 0 else s  # numerically zero: not drawn
                m = methods.get(label)
                ax.semilogy(np.arange(1, len(s) + 1), np.maximum(s, 1e-12), color=colour(m, i), marker=marker(m, i),
                            markevery=max(1, len(s) // 6), label=label)
            ax.set_title(name.replace("backbone.encoder.", "").replace(".attention.self", ""), fontsize=7)
            ax.set_xlabel("index")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        axes.flat[0].set_ylabel("singular value of dW")
        axes.flat[0].legend(frameon=False)
    return fig


def intruders_vs_eps(reports: Mapping[str, object], methods: Mapping[str, str] | None = None):
    """Total intruder dimensions against the threshold eps."""
    fig, ax = _figure()
    methods = methods or {}
    with plt.rc_context(STYLE):
        for i, (label, rep) in enumerate(reports.items()):
            eps = sorted(float(e) for e in rep.total_by_eps)
            counts = [rep.total_by_eps[k] for k in sorted(rep.total_by_eps, key=float)]
            m = methods.get(label)
            ax.plot(eps, counts, color=colour(m, i), marker=marker(m, i), label=label)
        ax.set_xlabel(r"threshold $\epsilon$")
        ax.set_ylabel("intruder dimensions (sum over layers)")
        ax.set_title("Intruder dimensions")
        ax.legend(frameon=False)
    return fig


# -- bounds ----------------------------------------------------------------------------------------------


def bound_vs_gap(points: Sequence[dict], bound_name: str = "Table 1 bound", log: bool = True):
    """Each method's bound against its measured gap; ``points`` are dicts with method, bound, gap
    (and optional gap_err for error bars over seeds)."""
    fig, ax = _figure(2.6)
    with plt.rc_context(STYLE):
        for i, p in enumerate(points):
            m = p["method"]
            ax.errorbar(p["gap"], p["bound"], xerr=p.get("gap_err"), yerr=p.get("bound_err"), fmt=marker(m, i),
                        color=colour(m, i), label=p.get("label", m), capsize=2)
        if log and all(p["bound"] > 0 for p in points):
            ax.set_yscale("log")
        ax.set_xlabel("measured gap (test - train)")
        ax.set_ylabel(bound_name)
        ax.set_title("Bound against measured generalization gap")
        ax.legend(frameon=False, ncol=2, fontsize=6)
    return fig
