"""Figures for papers: one colour per method (colour-blind safe), single-column width, vector PDF + PNG.

Every function takes result dataclasses (from genbound.diagnostics.landscape, genbound.diagnostics.hessian,
genbound.diagnostics.spectra,
genbound.diagnostics.intruders, genbound.bounds) and returns a matplotlib Figure; :func:`save` writes it as PDF and
PNG atomically. Colours come from Paul Tol's "muted" scheme (distinguishable under the common colour-vision
deficiencies) plus grey and black, and every method also gets its own marker, so print in greyscale works.

Rules every figure keeps (tests/test_figures.py checks them from the drawn artists):

* an axis is logarithmic only when the data on it spans more than a decade (max / min > 10); a narrower
  range is linear with plain numbers (no offset, no 6.4x10^0), and log axes label decades in plain numbers
  too (0.1, 1, 10) and never label minor ticks;
* tick labels never overlap: :func:`_declutter` thins the ticks of any axis whose labels touch;
* counts get integer ticks;
* a bound plot draws the line where the bound becomes vacuous;
* every figure says which layers it shows (a subset of the adapted layers is named as such), and an
  interpolation marks A (t = 0) and B (t = 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

from ..core.errors import GenboundError

matplotlib.use("Agg")  # files only: no display, no GUI toolkit
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402
import numpy as np  # noqa: E402

from ..core.atomic import atomic_file  # noqa: E402
from ..methods.catalogue import METHODS  # noqa: E402

COLUMN_WIDTH = 3.4  # inches: one column of a two-column paper
_TOL_MUTED = ["#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255",
              "#AA4499", "#777777", "#000000", "#EE7733", "#0077BB", "#EE3377"]
_MARKERS = ["o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p", "d", "8"]
# Methods registered later (beyond the palette) cycle through it.
METHOD_COLOURS = {name: _TOL_MUTED[i % len(_TOL_MUTED)] for i, name in enumerate(METHODS)}
METHOD_MARKERS = {name: _MARKERS[i % len(_MARKERS)] for i, name in enumerate(METHODS)}
DECADE = 10.0  # a log axis needs data spanning more than this ratio

STYLE = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
    "ytick.labelsize": 7, "lines.linewidth": 1.2, "lines.markersize": 3.5, "axes.spines.top": False,
    "axes.spines.right": False, "savefig.bbox": "tight", "savefig.dpi": 200, "pdf.fonttype": 42,
    "axes.formatter.useoffset": False, "axes.formatter.limits": (-3, 4),
}


def colour(method: str | None, fallback: int = 0) -> str:
    """The method's colour; unknown labels (e.g. a peft adapter) cycle through the palette."""
    return METHOD_COLOURS.get(method or "", _TOL_MUTED[fallback % len(_TOL_MUTED)])


def marker(method: str | None, fallback: int = 0) -> str:
    return METHOD_MARKERS.get(method or "", _MARKERS[fallback % len(_MARKERS)])


def short_layer(name: str) -> str:
    """A layer name short enough for a panel title: backbone.encoder.layer.0.attention.self.query -> L0.query."""
    return (name.replace("backbone.encoder.layer.", "L").replace(".attention.self.", ".")
            .replace("backbone.", "").replace("base_model.model.", ""))


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


# -- axis rules ----------------------------------------------------------------------------------------------


def spans_decade(values) -> bool:
    """True when every finite value is positive and max / min > 10: the only case that earns a log axis."""
    v = np.asarray([x for x in np.ravel(np.asarray(values, dtype=float)) if np.isfinite(x)])
    if v.size < 2 or (v <= 0).any():
        return False
    return float(v.max() / v.min()) > DECADE


def _log_label(v: float, _pos=None) -> str:
    """Plain numbers on a log axis (0.01, 1, 300) where they are short; powers of ten beyond."""
    if v <= 0 or not math.isfinite(v):
        return ""
    if 1e-3 <= v < 1e4:
        return f"{v:g}"
    e = math.log10(v)
    if abs(e - round(e)) < 1e-9:
        return f"$10^{{{int(round(e))}}}$"
    return f"{v:.0e}"


def _set_scale(ax, which: str, values, integer: bool = False) -> bool:
    """Log scale on ``which`` ("x" / "y") only when ``values`` span more than a decade, else linear with
    plain numbers; integer ticks for counts. Returns True for log."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    log = spans_decade(values)
    (ax.set_xscale if which == "x" else ax.set_yscale)("log" if log else "linear")
    if log:
        v = np.asarray(values, dtype=float)
        decades = math.log10(float(np.nanmax(v) / np.nanmin(v)))
        # 1-2-5 ticks on a short log range; decades only on a long one (LogLocator drops 1-2-5 ticks when
        # it has to skip decades)
        axis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades < 2.5 else (1.0,)))
        axis.set_major_formatter(mticker.FuncFormatter(_log_label))
        axis.set_minor_locator(mticker.LogLocator(base=10, subs=tuple(range(2, 10))))
        axis.set_minor_formatter(mticker.NullFormatter())
    else:
        axis.set_major_locator(mticker.MaxNLocator(nbins=6, integer=integer, steps=[1, 2, 2.5, 5, 10]))
        fmt = mticker.ScalarFormatter(useOffset=False)
        fmt.set_powerlimits((-3, 4))
        axis.set_major_formatter(fmt)
    return log


def _visible_tick_labels(axis) -> list:
    """The major tick labels actually drawn: inside the view interval, visible and non-empty."""
    lo, hi = sorted(axis.get_view_interval())
    tol = 1e-9 * max(abs(lo), abs(hi), 1e-300)
    out = []
    for tick in axis.get_major_ticks():
        loc = tick.get_loc()
        if loc is None or not (lo - tol <= loc <= hi + tol):
            continue
        for lab in (tick.label1, tick.label2):
            if lab.get_visible() and lab.get_text():
                out.append(lab)
    return out


def tick_labels_overlap(axis, renderer, pad: float = 1.0) -> bool:
    """True when two drawn tick labels of ``axis`` touch (window extents, ``pad`` pixels of air)."""
    boxes = [t.get_window_extent(renderer).expanded(1.0, 1.0).padded(pad / 2) for t in _visible_tick_labels(axis)]
    return any(boxes[i].overlaps(boxes[j]) for i in range(len(boxes)) for j in range(i + 1, len(boxes)))


def _declutter(fig, rounds: int = 6):
    """Thin the ticks of every axis whose labels touch, until they do not (or two ticks remain)."""
    with plt.rc_context(STYLE):
        for _ in range(rounds):
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()
            crowded = False
            for ax in fig.axes:
                for axis in (ax.xaxis, ax.yaxis):
                    if not tick_labels_overlap(axis, renderer):
                        continue
                    crowded = True
                    loc = axis.get_major_locator()
                    if isinstance(loc, mticker.LogLocator):
                        subs = getattr(loc, "_subs", None)
                        if subs is not None and np.size(subs) > 1:
                            axis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0,)))
                        else:
                            axis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0,), numticks=3))
                    else:
                        n = len(_visible_tick_labels(axis))
                        integer = bool(getattr(loc, "_integer", False))
                        axis.set_major_locator(mticker.MaxNLocator(nbins=max(1, n - 2), integer=integer,
                                                                   steps=[1, 2, 2.5, 5, 10]))
            if not crowded:
                break
    return fig


def _layer_caption(shown: Sequence[str], total: int) -> str:
    if len(shown) == total:
        return f"all {total} adapted layer{'s' if total != 1 else ''}"
    return f"{len(shown)} of {total} adapted layers"


# -- landscapes ----------------------------------------------------------------------------------------


def _space_caption(result) -> str:
    """Which weights the slice moves: the space and, from the source, the layers."""
    space = getattr(result, "space", None) or "dw"
    what = {"dw": "the updates dW of all adapted layers", "factors": "the adapter factors of all adapted layers",
            "all": "all trained parameters"}.get(space, f"space {space}")
    return f"moves {what}"


def landscape_contour(result, title: str | None = None):
    """2-D slice as filled contours, the trained point marked, any projected path drawn (for an interpolation
    plane the checkpoints A, B, C are the path)."""
    fig, ax = _figure(2.9)
    with plt.rc_context(STYLE):
        x, y = (a.cpu().numpy() for a in result.axes)
        z = result.loss.cpu().numpy().T  # loss[i, j] is at (x_i, y_j)
        levels = np.linspace(z.min(), np.quantile(z, 0.95), 15)
        if levels[-1] <= levels[0]:
            levels = np.linspace(z.min(), z.min() + 1e-9 + abs(z.min()) * 1e-6, 15)
        cs = ax.contourf(x, y, np.minimum(z, levels[-1]), levels=levels, cmap="viridis")
        ax.contour(x, y, z, levels=levels, colors="white", linewidths=0.3)
        cbar = fig.colorbar(cs, ax=ax, label="loss")
        cbar.ax.yaxis.set_major_locator(mticker.MaxNLocator(nbins=5))
        ax.plot([0], [0], marker="*", color="#DDCC77", markersize=8, markeredgecolor="black", lw=0)
        if result.path is not None and result.path.shape[1] >= 2:
            from matplotlib import patheffects

            p = result.path.cpu().numpy()
            interp = result.directions_kind == "interpolate"
            # an interpolation's points are separate checkpoints (no path between them); a trajectory is a path
            ax.plot(p[:, 0], p[:, 1], "o" if interp else "-o", color="white", markersize=3 if interp else 2,
                    markeredgecolor="black", markeredgewidth=0.4, lw=0.8)
            xmax, ymax = float(np.max(np.abs(x))), float(np.max(np.abs(y)))
            labels = list(result.path_labels or [])
            if interp:
                labels = [f"{tag}: {name}" for tag, name in zip("ABC", labels)]
            for label, (px, py) in zip(labels, p[:, :2]):
                right, top = px > 0.5 * xmax, py > 0.5 * ymax  # keep the label inside the axes
                ax.annotate(label, (px, py), xytext=(-3 if right else 3, -3 if top else 3),
                            textcoords="offset points", ha="right" if right else "left",
                            va="top" if top else "bottom", fontsize=6, color="black",
                            path_effects=[patheffects.withStroke(linewidth=1.5, foreground="white")])
        for which in ("x", "y"):
            _set_scale(ax, which, [0.0])  # linear, plain numbers
        ax.set_xlabel(_direction_label(result, 0))
        ax.set_ylabel(_direction_label(result, 1))
        ax.set_title((title or f"loss landscape ({result.directions_kind})") + f"\n{_space_caption(result)}",
                     fontsize=7)
    return _declutter(fig)


def _direction_label(result, i: int) -> str:
    d = result.directions[i]
    if result.directions_kind == "interpolate" and getattr(d, "source", None):
        return f"t towards {d.source}"
    if result.directions_kind == "pca" and getattr(d, "explained_variance", None) is not None:
        return f"PC{i + 1} ({100 * d.explained_variance:.0f}% of variance)"
    return getattr(d, "label", None) or f"direction {i + 1}"


def landscape_surface(result, title: str | None = None):
    """2-D slice as a 3-D surface."""
    with plt.rc_context(STYLE):
        fig = plt.figure(figsize=(COLUMN_WIDTH, 3.0))
        ax = fig.add_subplot(projection="3d")
        x, y = (a.cpu().numpy() for a in result.axes)
        X, Y = np.meshgrid(x, y, indexing="ij")
        Z = result.loss.cpu().numpy()
        ax.plot_surface(X, Y, Z, cmap="viridis", linewidth=0, antialiased=True)
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
            axis.set_major_locator(mticker.MaxNLocator(nbins=4))
            fmt = mticker.ScalarFormatter(useOffset=False)
            fmt.set_powerlimits((-3, 4))
            axis.set_major_formatter(fmt)
        ax.set_xlabel("d1")
        ax.set_ylabel("d2")
        ax.set_zlabel("loss")
        ax.set_title((title or "loss surface") + f"\n{_space_caption(result)}", fontsize=7)
    return _declutter(fig)


def landscape_lines(results: Mapping[str, object], methods: Mapping[str, str] | None = None, title: str = ""):
    """1-D slices (random lines or interpolations), one curve per label. On an interpolation the axis is t,
    with A at t = 0 and B at t = 1 marked; the x range always includes both."""
    fig, ax = _figure()
    methods = methods or {}
    interp = [r for r in results.values() if getattr(r, "directions_kind", None) == "interpolate"]
    with plt.rc_context(STYLE):
        losses = []
        for i, (label, res) in enumerate(results.items()):
            m = methods.get(label)
            loss = res.loss.cpu().numpy()
            losses.append(loss)
            ax.plot(res.axes[0].cpu().numpy(), loss, color=colour(m, i), marker=marker(m, i),
                    markevery=max(1, len(res.axes[0]) // 8), label=label)
        _set_scale(ax, "y", np.concatenate(losses) if losses else [1.0])
        _set_scale(ax, "x", [0.0])
        if interp:
            res = interp[0]
            names = list(res.path_labels or ["A", "B"])[:2]
            lo, hi = ax.get_xlim()
            ax.set_xlim(min(lo, -0.05), max(hi, 1.05))
            for t, name, tag in ((0.0, names[0], "A"), (1.0, names[1] if len(names) > 1 else "B", "B")):
                ax.axvline(t, color="grey", lw=0.6, ls=":")
                ax.annotate(f"{tag}: {name}", (t, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -2),
                            textcoords="offset points", ha="left", va="top", fontsize=6, color="#444444")
            ax.set_xlabel("t (A at t = 0, B at t = 1; outside [0, 1]: extrapolation)")
        else:
            ax.set_xlabel("step along direction")
        ax.set_ylabel("loss")
        first = next(iter(results.values()), None)
        caption = _space_caption(first) if first is not None else ""
        ax.set_title((title or "1-D loss slices") + (f"\n{caption}" if caption else ""), fontsize=7)
        if len(results) > 1:
            ax.legend(frameon=False)
    return _declutter(fig)


# -- Hessian ---------------------------------------------------------------------------------------------


def hessian_density(reports: Mapping[str, object], methods: Mapping[str, str] | None = None):
    """SLQ spectral densities, one curve per label (log density axis: it spans many decades)."""
    fig, ax = _figure()
    methods = methods or {}
    with plt.rc_context(STYLE):
        curves, dims = [], []
        for i, (label, rep) in enumerate(reports.items()):
            d = rep.density
            if d is None:
                continue
            m = methods.get(label)
            c = np.asarray(d.curve, dtype=float)
            c = np.maximum(c, 1e-6 * c.max()) if c.size and c.max() > 0 else c  # six decades below the peak
            curves.append(c)
            ax.plot(d.grid, c, color=colour(m, i), label=label)
            dims.append(f"{label}: {len(rep.params)} trained tensors, {rep.dim:,} parameters, "
                        f"{rep.n_examples} examples")
        _set_scale(ax, "y", np.concatenate(curves) if curves else [1.0])
        _set_scale(ax, "x", [0.0])
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density")
        ax.set_title("Hessian spectral density (SLQ)\n" + "\n".join(dims), fontsize=6)
        ax.legend(frameon=False)
    return _declutter(fig)


# -- weight updates ----------------------------------------------------------------------------------------


def singular_values(reports: Mapping[str, object], methods: Mapping[str, str] | None = None,
                    max_layers: int | None = 4, layers: Sequence[str] | None = None):
    """Singular values of dW, one panel per layer, for ``layers`` (default: the first ``max_layers`` of the
    union of the reports' layers; None for all). The figure title says how many of the adapted layers are
    shown, and a panel whose layer one report lacks says so. Each panel is log-scaled only when its values
    span more than a decade."""
    methods = methods or {}
    union: list[str] = []
    for rep in reports.values():
        union += [lay.name for lay in rep.layers if lay.name not in union]
    if layers is None:
        names = union if max_layers is None else union[:max_layers]
    else:
        missing = [n for n in layers if n not in union]
        if missing:
            raise GenboundError(f"no layer '{missing[0]}' in these reports; choose from {', '.join(union)}")
        names = list(layers)
    rows = (len(names) + 1) // 2
    fig, axes = _figure(1.55 * rows + 0.7, ncols=2, nrows=rows, squeeze=False)
    with plt.rc_context(STYLE):
        for ax, name in zip(axes.flat, names):
            values, absent = [], []
            for i, (label, rep) in enumerate(reports.items()):
                lay = next((x for x in rep.layers if x.name == name), None)
                if lay is None:
                    absent.append(label)
                    continue
                s = np.asarray(lay.singular_values, dtype=float)
                s = s[s > 1e-8 * s.max()] if s.size and s.max() > 0 else s[:0]  # numerically zero: not drawn
                values.append(s)
                m = methods.get(label)
                ax.plot(np.arange(1, len(s) + 1), s, color=colour(m, i), marker=marker(m, i),
                        markevery=max(1, len(s) // 6), label=label)
            _set_scale(ax, "y", np.concatenate(values) if values else [1.0])
            _set_scale(ax, "x", [1.0], integer=True)
            title = short_layer(name) + (f" (absent in {', '.join(absent)})" if absent else "")
            ax.set_title(title, fontsize=7)
            ax.set_xlabel("index")
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        for r in range(rows):
            axes[r, 0].set_ylabel("singular value")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, [str(x) for x in labels], loc="outside lower center", ncol=max(1, len(labels)),
                   frameon=False)
        fig.suptitle(f"Singular values of dW: {_layer_caption(names, len(union))}", fontsize=8)
    return _declutter(fig)


def intruders_vs_eps(reports: Mapping[str, object], methods: Mapping[str, str] | None = None):
    """Total intruder dimensions (a count: integer ticks) against the threshold eps, summed over each
    report's layers (the title says how many)."""
    fig, ax = _figure()
    methods = methods or {}
    with plt.rc_context(STYLE):
        top = 0
        for i, (label, rep) in enumerate(reports.items()):
            keys = sorted(rep.total_by_eps, key=float)
            eps = [float(k) for k in keys]
            counts = [rep.total_by_eps[k] for k in keys]
            top = max([top, *counts])
            m = methods.get(label)
            ax.plot(eps, counts, color=colour(m, i), marker=marker(m, i), label=label)
        _set_scale(ax, "y", [0.0], integer=True)
        _set_scale(ax, "x", [0.0])
        ax.set_ylim(-0.05 * max(top, 1), max(top, 1) * 1.08)
        ax.set_xlabel(r"threshold $\epsilon$")
        ax.set_ylabel("intruder dimensions")
        layers = sorted({len(rep.layers) for rep in reports.values()})
        over = (f"all {layers[0]} adapted layers" if len(layers) == 1
                else "all adapted layers (" + ", ".join(f"{lab}: {len(r.layers)}" for lab, r in reports.items()) + ")")
        ax.set_title(f"Intruder dimensions, summed over {over}", fontsize=7)
        ax.legend(frameon=False)
    return _declutter(fig)


# -- bounds ----------------------------------------------------------------------------------------------


def bound_vs_gap(points: Sequence[dict], bound_name: str = "Table 1 bound", log: bool | None = None,
                 vacuous_at: float | None = 1.0, vacuous_what: str = "the largest possible 0-1 gap"):
    """Each method's bound against its measured gap; ``points`` are dicts with method, bound, gap (and
    optional label, gap_err and bound_err for error bars over seeds). Each point carries its label. The dashed
    line at ``vacuous_at`` marks where the bound becomes vacuous (default 1 = 2 sigma, the largest possible
    0-1 gap). The bound axis is logarithmic when the bounds and the line span more than a decade; ``log=False``
    forces linear, ``log=True`` asks for log but is still refused on a narrower range."""
    fig, ax = _figure(2.7)
    with plt.rc_context(STYLE):
        for i, p in enumerate(points):
            m = p["method"]
            ax.errorbar(p["gap"], p["bound"], xerr=p.get("gap_err"), yerr=p.get("bound_err"), fmt=marker(m, i),
                        color=colour(m, i), capsize=2)
        ys = [p["bound"] for p in points] + ([vacuous_at] if vacuous_at is not None else [])
        if log is False:
            ys = [0.0]
        _set_scale(ax, "y", ys)
        _set_scale(ax, "x", [0.0])
        if vacuous_at is not None:
            ax.axhline(vacuous_at, color="#777777", lw=0.8, ls="--", zorder=0)
            ax.annotate(f"vacuous at or above {vacuous_at:g} ({vacuous_what})", (1.0, vacuous_at),
                        xycoords=("axes fraction", "data"), xytext=(-2, 2), textcoords="offset points",
                        ha="right", va="bottom", fontsize=6, color="#555555")
        ax.axvline(0.0, color="#BBBBBB", lw=0.5, zorder=0)
        xs = [p["gap"] for p in points]
        if xs:
            lo, hi = min(xs + [0.0]), max(xs + [0.0])
            pad = 0.25 * (hi - lo or 1e-3)
            ax.set_xlim(lo - pad, hi + pad)
        ax.set_xlabel("measured gap (test - train)")
        ax.set_ylabel(bound_name)
        ax.set_title("Bound against measured generalization gap")
    _declutter(fig)
    _label_points(fig, ax, points)
    return fig


def _label_points(fig, ax, points: Sequence[dict]) -> None:
    """Put each point's label next to it where it overlaps no other label and stays inside the axes, trying
    right, left, then further up and down (with a thin leader line)."""
    candidates = [(5, -3, "left"), (-5, -3, "right")]
    for dy in (8, -12, 16, -20, 24, -28, 32, -36, 40, -44):
        candidates += [(6, dy, "left"), (-6, dy, "right")]
    with plt.rc_context(STYLE):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        axbox = ax.get_window_extent(renderer)
        from matplotlib.transforms import Bbox

        r = 4.0 * fig.dpi / 72.0  # a marker's half width in pixels, with a little air
        placed = [Bbox.from_extents(x - r, y - r, x + r, y + r)
                  for x, y in ax.transData.transform([(p["gap"], p["bound"]) for p in points])]
        order = sorted(range(len(points)), key=lambda k: (points[k]["bound"], points[k]["gap"]))
        for k in order:
            p = points[k]
            text = str(p.get("label", p["method"]))
            best = None
            for dx, dy, ha in candidates:
                ann = ax.annotate(text, (p["gap"], p["bound"]), xytext=(dx, dy), textcoords="offset points",
                                  ha=ha, va="bottom", fontsize=6, color=colour(p["method"], k))
                box = ann.get_window_extent(renderer).padded(1.0)  # the text alone, before any leader line
                ann.remove()
                inside = axbox.x0 <= box.x0 and box.x1 <= axbox.x1 and axbox.y0 <= box.y0 and box.y1 <= axbox.y1
                score = (sum(box.overlaps(b) for b in placed), not inside)
                if best is None or score < best[0]:
                    best = (score, (dx, dy, ha), box)
                if score == (0, False):
                    break
            dx, dy, ha = best[1]
            ax.annotate(text, (p["gap"], p["bound"]), xytext=(dx, dy), textcoords="offset points", ha=ha,
                        va="bottom", fontsize=6, color=colour(p["method"], k),
                        arrowprops=dict(arrowstyle="-", lw=0.4, color="#999999", shrinkA=0, shrinkB=3)
                        if abs(dy) > 4 else None)
            placed.append(best[2])


def accuracy_bars(rows: Sequence[dict], title: str = "Accuracy per method"):
    """Train and test accuracy per method as horizontal bars (method names read without rotation); ``rows``
    are dicts with method, label, train, test and optional train_err, test_err."""
    rows = list(rows)
    fig, ax = _figure(0.9 + 0.22 * len(rows))
    with plt.rc_context(STYLE):
        y = np.arange(len(rows))[::-1]
        colours = [colour(r["method"], i) for i, r in enumerate(rows)]
        def err(key):  # error bars only where there is a spread (n >= 2 seeds)
            e = [r.get(key) or 0.0 for r in rows]
            return e if any(e) else None

        ax.barh(y + 0.2, [r["train"] for r in rows], 0.4, xerr=err("train_err"), capsize=1.5, color=colours,
                alpha=0.4, edgecolor=colours, hatch="///", label="train")
        ax.barh(y - 0.2, [r["test"] for r in rows], 0.4, xerr=err("test_err"), capsize=1.5, color=colours,
                label="test")
        ax.set_yticks(y, [r["label"] for r in rows])
        lo = min([r["test"] for r in rows] + [r["train"] for r in rows]) if rows else 0.0
        _set_scale(ax, "x", [0.0])
        ax.set_xlim(max(0.0, lo - 0.1), 1.0)
        ax.set_xlabel("accuracy")
        ax.set_title(title, fontsize=7)
        fig.legend(*ax.get_legend_handles_labels(), frameon=False, ncol=2, loc="outside lower center")
    return _declutter(fig)


def certified_vs_measured(points: Sequence[dict], chance: float | None = None):
    """Each method's certified test error against its measured test error (``points``: dicts with method,
    certified, measured); the diagonal (a certificate can only lie above it) and the chance line."""
    fig, ax = _figure(2.8)
    with plt.rc_context(STYLE):
        top = max([1.0 if chance is None else chance + 0.05, *(p["certified"] for p in points)])
        ax.plot([0, top], [0, top], color="#bbbbbb", lw=0.8, ls=":", label="certified = measured")
        if chance is not None:
            ax.axhline(chance, color="black", lw=0.8, ls="--", label=f"chance ({chance:.2f})")
        for i, p in enumerate(points):
            m = p["method"]
            ax.plot(p["measured"], p["certified"], marker(m, i), color=colour(m, i), label=p.get("label", m),
                    markersize=5)
        ax.set_xlim(0, max(0.3, max((p["measured"] for p in points), default=0) * 1.2))
        ax.set_ylim(0, top)
        ax.set_xlabel("measured test error (decoded model)")
        ax.set_ylabel("certified test error")
        ax.set_title("Compression certificates per method")
        ax.legend(frameon=False, ncol=2, fontsize=6, loc="lower right")
    return fig


def intervals(rows: Sequence[dict], xlabel: str, title: str, reference: float | None = None,
              reference_label: str = "", zero: bool = True, xlim: tuple[float, float] | None = None):
    """A forest plot: one row per estimate with its interval (``rows``: dicts with label, value, low, high and
    optional method for the colour and marker); a dashed line at ``reference`` (e.g. a pre-registered margin)
    and a thin one at 0; ``xlim`` fixes the axis (e.g. [-1, 1] for a rank correlation). A row without an
    interval is drawn as a point. The interval is drawn from low to high as given, also where it does not contain
    the estimate (a percentile bootstrap interval of Kendall's tau need not contain the tau of the means). Two
    columns wide: the row labels are long."""
    rows = list(rows)
    fig, ax = _figure(0.8 + 0.2 * len(rows), width=2 * COLUMN_WIDTH)
    with plt.rc_context(STYLE):
        y = np.arange(len(rows))[::-1]
        for i, (yy, r) in enumerate(zip(y, rows)):
            m = r.get("method")
            lo, hi = r.get("low"), r.get("high")
            if lo is not None and hi is not None:
                ax.plot([lo, hi], [yy, yy], color=colour(m, i), lw=0.8, marker="|", markersize=4)
            ax.plot([r["value"]], [yy], marker(m, i), color=colour(m, i), markersize=4)
        ax.set_yticks(y, [r["label"] for r in rows])
        _set_scale(ax, "x", [0.0])
        if zero:
            ax.axvline(0.0, color="#BBBBBB", lw=0.5, zorder=0)
        if reference is not None:
            ax.axvline(reference, color="#777777", lw=0.8, ls="--", zorder=0)
            ax.annotate(reference_label, (reference, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -8),
                        textcoords="offset points", fontsize=6, color="#555555")
        if xlim is not None:
            ax.set_xlim(*xlim)
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=7)
    return _declutter(fig)
