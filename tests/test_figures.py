"""Every figure kind, rendered from real results, checked from its drawn artists the way a reviewer looks at it:
no two tick labels touch, a log axis only where the data spans more than a decade, plain numbers on narrow
ranges, integer ticks for counts, the vacuity line and method labels on bound plots, the layers named, and
A (t = 0) and B (t = 1) marked on interpolations.

The checks below are written against matplotlib's public artist API, independently of the helpers in
genbound.report.figures that try to keep these rules."""

from __future__ import annotations

import numpy as np
import pytest

from genbound.report import figures as F

# -- independent checks ----------------------------------------------------------------------------------------


def drawn_tick_labels(axis):
    lo, hi = sorted(axis.get_view_interval())
    tol = 1e-9 * max(abs(lo), abs(hi), 1.0)
    out = []
    for loc, lab in zip(axis.get_majorticklocs(), axis.get_majorticklabels()):
        if lo - tol <= loc <= hi + tol and lab.get_visible() and lab.get_text():
            out.append(lab)
    return out


def boxes_overlap(texts, renderer):
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(t, renderer) for t in texts]  # the text itself, not an annotation's arrow
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            if a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1:
                return texts[i].get_text(), texts[j].get_text()
    return None


def axis_data(ax, which: str) -> np.ndarray:
    """Every finite value the axes' lines and collections put on ``which``."""
    vals = []
    for line in ax.get_lines():
        vals.append(np.asarray(line.get_ydata() if which == "y" else line.get_xdata(), dtype=float).ravel())
    for coll in ax.collections:
        off = np.asarray(coll.get_offsets(), dtype=float)
        if off.size:
            vals.append(off[:, 1 if which == "y" else 0])
    v = np.concatenate(vals) if vals else np.array([])
    return v[np.isfinite(v)]


def check_reviewer_rules(fig) -> None:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        axes3d = hasattr(ax, "zaxis")
        for name in ("x", "y", "z") if axes3d else ("x", "y"):
            axis = getattr(ax, f"{name}axis")
            labels = drawn_tick_labels(axis)
            clash = boxes_overlap(labels, renderer)
            assert clash is None, f"tick labels {clash} overlap on the {name} axis of '{ax.get_title()}'"
            for lab in labels:
                assert "\\times" not in lab.get_text() and "×" not in lab.get_text(), lab.get_text()
            assert axis.get_offset_text().get_text() == "", "an offset hides the values"
            if axis.get_scale() == "log":
                v = axis_data(ax, name)
                v = v[v > 0]
                assert v.size and v.max() / v.min() > 10, f"log {name} axis over less than a decade: '{ax.get_title()}'"
                assert len(labels) >= 2, "a log axis needs at least two labelled ticks"
        texts = [t for t in ax.texts if t.get_visible() and t.get_text()]
        assert boxes_overlap(texts, renderer) is None, [t.get_text() for t in texts]


def all_text(fig) -> str:
    parts = [fig._suptitle.get_text() if fig._suptitle else ""]
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()] + [t.get_text() for t in ax.texts]
    return "\n".join(parts)


# -- real results from small checkpoints ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def results(ckpt_dir):
    from genbound.checkpoints.checkpoint import load_checkpoint
    from genbound.diagnostics.hessian import hessian_from_checkpoint
    from genbound.diagnostics.intruders import eps_sweep, intruders
    from genbound.diagnostics.landscape import landscape_from_checkpoints
    from genbound.diagnostics.spectra import spectra

    a, b, c = ckpt_dir("lora"), ckpt_dir("cla"), ckpt_dir("asym")
    out = {"paths": (a, b, c)}
    out["spectra"] = {}
    out["intruders"] = {}
    for label, path in (("lora", a), ("cla", b)):
        ck = load_checkpoint(path)
        out["spectra"][label] = spectra(ck.layer_updates(), progress=False)
        out["intruders"][label] = intruders(ck.base_weights(), ck.layer_updates(), k=10, eps=0.5,
                                            sweep=eps_sweep(10), progress=False)
    out["hessian"] = {lab: hessian_from_checkpoint(p, samples=64, top_k=1, trace=False, density=True,
                                                   progress=False) for lab, p in (("lora", a), ("cla", b))}
    out["plane"] = landscape_from_checkpoints([a], "random", grid=5, samples=64, progress=False)
    out["line"] = landscape_from_checkpoints([a], "random", dims=1, grid=5, samples=64, progress=False)
    out["interp"] = landscape_from_checkpoints([a, b], grid=5, samples=64, progress=False)
    out["interp_plane"] = landscape_from_checkpoints([a, b, c], grid=5, samples=64, progress=False)
    return out


METHODS = {"lora": "lora", "cla": "cla"}
# The CPU MiniLM sweep's Table 1 bounds and 0-1 gaps (docs/results/cpu-minilm.md): ties and near ties.
SWEEP = [("fft", 400.8, -0.006994), ("lora", 32.61, -0.01975), ("lora_plus", 32.61, -0.003094),
         ("asym", 23.21, -0.001122), ("cola", 56.24, -0.01913), ("rac", 39.85, -0.002732),
         ("cla", 23.21, 0.01451), ("rcla", 23.21, -0.002102), ("c3la", 39.85, -0.009654),
         ("rc3la", 39.85, -0.006141), ("paca", 23.21, -0.01097)]


def figure_kinds(r):
    """(kind, figure) for every figure genbound draws."""
    yield "singular_values", F.singular_values(r["spectra"], METHODS)
    yield "intruders_vs_eps", F.intruders_vs_eps(r["intruders"], METHODS)
    yield "bound_vs_gap (sweep)", F.bound_vs_gap([{"method": m, "label": m, "bound": b, "gap": g}
                                                   for m, b, g in SWEEP])
    yield "bound_vs_gap (narrow)", F.bound_vs_gap([{"method": "lora", "bound": 6.41, "gap": 0.01},
                                                    {"method": "cla", "bound": 6.45, "gap": -0.016}],
                                                   vacuous_at=None)
    yield "hessian_density", F.hessian_density(r["hessian"], METHODS)
    yield "landscape_contour", F.landscape_contour(r["plane"])
    yield "landscape_contour (interpolation plane)", F.landscape_contour(r["interp_plane"])
    yield "landscape_surface", F.landscape_surface(r["plane"])
    yield "landscape_lines", F.landscape_lines({"lora": r["line"]}, {"lora": "lora"})
    yield "landscape_lines (interpolation)", F.landscape_lines({"A -> B": r["interp"]})
    yield "accuracy_bars", F.accuracy_bars([{"method": m, "label": m, "train": 0.95 - i / 100, "test": 0.9}
                                            for i, (m, _, _) in enumerate(SWEEP)])


def test_every_figure_kind_keeps_the_reviewer_rules(results, tmp_path):
    kinds = []
    for kind, fig in figure_kinds(results):
        check_reviewer_rules(fig)
        paths = F.save(fig, tmp_path / kind.replace(" ", "_"))
        assert all(p.stat().st_size > 1000 for p in paths)
        kinds.append(kind.split(" ")[0])
    public = {n for n in dir(F) if n in {"singular_values", "intruders_vs_eps", "bound_vs_gap", "hessian_density",
                                          "landscape_contour", "landscape_surface", "landscape_lines",
                                          "accuracy_bars"}}
    assert public == set(kinds)


def test_narrow_ranges_are_linear_with_plain_numbers():
    fig = F.bound_vs_gap([{"method": "lora", "bound": 6.41, "gap": 0.01}, {"method": "cla", "bound": 6.45,
                                                                           "gap": -0.016}], vacuous_at=None)
    ax = fig.axes[0]
    assert ax.get_yscale() == "linear"
    fig.canvas.draw()
    texts = [t.get_text() for t in drawn_tick_labels(ax.yaxis)]
    assert texts and all(float(t.replace("\u2212", "-")) for t in texts)  # plain decimal numbers
    wide = F.bound_vs_gap([{"method": m, "bound": b, "gap": g} for m, b, g in SWEEP])
    assert wide.axes[0].get_yscale() == "log"  # 1 (vacuity line) to 400: more than two decades
    # log=True is a request, not an order: a narrow range stays linear
    forced = F.bound_vs_gap([{"method": "lora", "bound": 6.41, "gap": 0.0}, {"method": "cla", "bound": 6.45,
                                                                            "gap": 0.0}], log=True, vacuous_at=None)
    assert forced.axes[0].get_yscale() == "linear"


def test_bound_plot_has_vacuity_line_and_method_labels():
    fig = F.bound_vs_gap([{"method": m, "label": m, "bound": b, "gap": g} for m, b, g in SWEEP])
    ax = fig.axes[0]
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert any(np.allclose(ln.get_ydata(), 1.0) for ln in dashed)
    text = all_text(fig)
    assert "vacuous" in text
    labels = {t.get_text() for t in ax.texts}
    assert {m for m, _, _ in SWEEP} <= labels


def test_counts_get_integer_ticks(results):
    fig = F.intruders_vs_eps(results["intruders"], METHODS)
    fig.canvas.draw()
    locs = [t for t in fig.axes[0].get_yticks() if fig.axes[0].get_ylim()[0] <= t <= fig.axes[0].get_ylim()[1]]
    assert locs and all(float(t).is_integer() for t in locs)


def test_figures_say_which_layers_they_show(results):
    spec = results["spectra"]
    n = len(spec["lora"].layers)
    assert "all 2 adapted layers" in all_text(F.singular_values(spec, METHODS)) and n == 2
    one = F.singular_values(spec, METHODS, max_layers=1)
    assert "1 of 2 adapted layers" in all_text(one)
    assert "summed over all 2 adapted layers" in all_text(F.intruders_vs_eps(results["intruders"], METHODS))
    assert "adapted layers" in all_text(F.landscape_contour(results["plane"]))
    assert "trained tensors" in all_text(F.hessian_density(results["hessian"], METHODS))


def test_singular_values_over_the_union_of_layers(results):
    """A report that lacks a layer still gets the panel, which says whose layer is absent."""
    import copy

    spec = {k: copy.deepcopy(v) for k, v in results["spectra"].items()}
    spec["cla"].layers = spec["cla"].layers[:1]
    fig = F.singular_values(spec, METHODS)
    text = all_text(fig)
    assert "all 2 adapted layers" in text and "absent in cla" in text


def test_interpolation_marks_a_and_b(results):
    fig = F.landscape_lines({"A -> B": results["interp"]})
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    assert lo <= 0.0 and hi >= 1.0
    marks = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 2 and np.allclose(ln.get_xdata(), ln.get_xdata()[0])]
    assert sorted(float(m.get_xdata()[0]) for m in marks) == [0.0, 1.0]
    texts = [t.get_text() for t in ax.texts]
    assert any(t.startswith("A: ") for t in texts) and any(t.startswith("B: ") for t in texts)
    plane = F.landscape_contour(results["interp_plane"])
    texts = [t.get_text() for t in plane.axes[0].texts]
    assert [t[:2] for t in texts] == ["A:", "B:", "C:"]


def test_the_checks_catch_what_they_guard_against():
    """The independent checks fail on a figure that breaks the rules (so the test above can fail)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0, 1.0))
    ax.plot([1.0, 2.0], [1.0, 2.0])
    ax.set_yscale("log")  # less than a decade
    with pytest.raises(AssertionError, match="decade"):
        check_reviewer_rules(fig)
    fig, ax = plt.subplots(figsize=(1.0, 1.0))
    ax.plot([0.0, 1.0], [0.0, 1.0])
    ax.set_xticks(np.linspace(0, 1, 30))  # thirty labels in one inch
    with pytest.raises(AssertionError, match="overlap"):
        check_reviewer_rules(fig)
    plt.close("all")


def test_intervals_draw_an_interval_that_misses_its_estimate():
    """A percentile bootstrap interval of Kendall's tau need not contain the tau of the means (analysis.claims):
    the forest plot draws it as given instead of failing on a negative error bar."""
    from genbound.report.figures import intervals

    rows = [{"label": "outside", "value": 0.5, "low": -0.2, "high": 0.3},
            {"label": "inside", "value": 0.1, "low": -0.1, "high": 0.4, "method": "lora"},
            {"label": "point", "value": -0.3, "low": None, "high": None}]
    fig = intervals(rows, "tau", "t", xlim=(-1.05, 1.05))
    lines = [list(line.get_xdata()) for line in fig.axes[0].lines]
    assert [-0.2, 0.3] in lines and [-0.1, 0.4] in lines and [0.5] in lines and [-0.3] in lines
