"""analysis.claims: one command writes the whole report; a second invocation trains nothing; the report's
tables equal independent computations from the run files; the statistics on exact small cases."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the analysis package lives at the repository root, beside genbound
    sys.path.insert(0, str(ROOT))

from analysis import claims as C  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The tiny preset through the command line, then the same command again with training forbidden."""
    out = tmp_path_factory.mktemp("claims")
    doc = out / "docs" / "results" / "paper-claims.md"
    assert C.main(["--preset", "tiny", "--out", str(out), "--doc", str(doc), "--no-progress", "--json"]) == 0
    first = json.loads((out / "claims.json").read_text())
    return out, doc, first


def _forbid(*_a, **_k):
    raise AssertionError("a finished run was trained or measured again")


def test_one_command_writes_the_whole_report(report):
    out, doc, first = report
    text = doc.read_text()
    for heading in ("## What ran", "## Claim (a)", "## Claim (b)", "## Claim (c)", "## LaTeX tables"):
        assert heading in text
    assert "python -m analysis.claims --preset tiny" in text
    for k in "abc":
        tex = (out / f"claims_{k}.tex").read_text()
        assert "\\begin{tabular}" in tex and "\\toprule" in tex
    images = doc.parent.parent / "images"
    for k in "ac":
        assert (images / f"paper_claims_{k}.png").stat().st_size > 0
        assert f"../images/paper_claims_{k}.png" in text
        assert (out / "figures" / f"claims_{k}.png").is_file()
    assert (out / "paper-claims.md").read_text().count("figures/claims_a.png") == 1
    # every (method, seed) of the tiny grid finished and is in the report
    assert first["trained"] > 0
    assert len(first["runs"]) == 33
    measured = {k for r in first["runs"] for k, v in r["measures"].items() if v is not None}
    assert measured >= {"mi", "certificate", "pac_bayes", "hessian_top", "hessian_trace", "sharpness", "intruders",
                        "stable_rank", "trainable"}
    assert set(first["fcmi"]["mlp-digits"]) == set(C.PRIORITY)
    assert {t["measure"] for t in first["claim_c"]} == set(C.MEASURES)


def test_second_invocation_trains_nothing_and_rebuilds_the_same_tables(report, monkeypatch):
    out, doc, first = report
    import analysis.certificates
    import analysis.fcmi
    import analysis.runs
    import genbound.bounds.certificate
    import genbound.training.train

    # analysis imports train and certify at its modules' tops: forbid them where they are called from too
    for module in (genbound.training.train, analysis.runs, analysis.fcmi):
        monkeypatch.setattr(module, "train", _forbid)
    monkeypatch.setattr(analysis.fcmi, "run_one", _forbid)
    for module in (genbound.bounds.certificate, analysis.certificates):
        monkeypatch.setattr(module, "certify", _forbid)
    import analysis.claims.measures

    monkeypatch.setattr(analysis.claims.measures, "run_measures", _forbid)  # where it is called from
    before = doc.read_text()
    assert C.main(["--preset", "tiny", "--out", str(out), "--doc", str(doc), "--no-progress", "--json"]) == 0
    second = json.loads((out / "claims.json").read_text())
    assert second["trained"] == 0
    for k in ("claim_a", "claim_b", "claim_c", "runs", "fcmi"):
        assert second[k] == first[k]

    def tables(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("|")]

    assert tables(doc.read_text()) == tables(before)


def _runs(out: Path) -> dict[tuple[str, int], dict]:
    found = {}
    for meta in (out / "mlp-digits" / "runs").glob("*/genbound.json"):
        m = json.loads(meta.read_text())
        found[(m["method"], m["seed"])] = m
    return found


def _holm_rejects(ps: dict[str, float], alpha: float) -> set[str]:
    """Holm's step-down procedure as its definition states it: reject in ascending order while p_(i) <= alpha /
    (m - i + 1), stop at the first that is not."""
    out = set()
    for i, (name, p) in enumerate(sorted(ps.items(), key=lambda kv: kv[1])):
        if p > alpha / (len(ps) - i):
            break
        out.add(name)
    return out


def test_paired_difference_equals_an_independent_computation(report):
    out, doc, first = report
    runs = _runs(out)
    pairs = {"cla": "asym", "rcla": "asym", "paca": "asym", "c3la": "rac", "rc3la": "rac"}
    d = {v: [100 * (runs[(v, s)]["results"]["test_accuracy"] - runs[(b, s)]["results"]["test_accuracy"])
             for s in (0, 1, 2)] for v, b in pairs.items()}
    # one-sided t test of mean <= -1 per variant, Holm over the five at 0.025
    ps = {v: float(stats.ttest_1samp(x, -1.0, alternative="greater").pvalue) if np.std(x) > 0
          else (0.0 if np.mean(x) > -1 else 1.0) for v, x in d.items()}
    rejected = _holm_rejects(ps, 0.025)
    for variant, baseline in (("cla", "asym"), ("rc3la", "rac")):
        lo, hi = stats.t.interval(0.95, 2, loc=np.mean(d[variant]), scale=stats.sem(d[variant]))
        row = next(p for p in first["claim_a"] if p["cell"] == "mlp-digits" and p["variant"] == variant)
        assert row["baseline"] == baseline
        assert row["differences"] == pytest.approx(d[variant], abs=1e-9)
        assert (row["mean"], row["low"], row["high"]) == pytest.approx((np.mean(d[variant]), lo, hi), abs=1e-9)
        expected = "competitive" if variant in rejected else "worse" if hi < -1 else "not shown"
        assert row["verdict"] == expected
        line = next(x for x in doc.read_text().splitlines() if x.startswith(f"| mlp-digits | {variant} vs "))
        assert f"{np.mean(d[variant]):+.3g}" in line and expected in line
    # the pooled rows are on cell means (one cell here: n = 1, no interval)
    pooled = next(p for p in first["claim_a"] if p["cell"] == "pooled" and p["variant"] == "cla")
    assert pooled["n"] == 1 and pooled["differences"] == pytest.approx([np.mean(d["cla"])])
    assert pooled["unit"] == "cell means" and "cell means" in doc.read_text()


def test_kendall_tau_equals_an_independent_computation(report):
    out, doc, first = report
    runs = _runs(out)
    methods = sorted({m for m, _ in runs})
    gap = [np.mean([runs[(m, s)]["results"]["gap_01"] for s in (0, 1, 2)]) for m in methods]
    count = [np.mean([runs[(m, s)]["params"]["trainable"] for s in (0, 1, 2)]) for m in methods]
    tau, p = stats.kendalltau(count, gap)
    row = next(t for t in first["claim_c"] if t["measure"] == "trainable")
    assert (row["tau"], row["p_value"]) == pytest.approx((tau, p), abs=1e-12)
    assert row["n_methods"] == len(methods) == 11
    assert row["low"] <= row["high"]
    # f-CMI: one value per method, straight from the supersample runs' cached predictions
    fc = first["fcmi"]["mlp-digits"]
    tau_f, _ = stats.kendalltau([fc[m] for m in methods], gap)
    row_f = next(t for t in first["claim_c"] if t["measure"] == "fcmi")
    assert row_f["tau"] == pytest.approx(tau_f, abs=1e-12)


def test_t_interval_exact_small_case():
    mean, lo, hi = C.t_interval([1.0, 2.0, 3.0])
    t2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # t_{0.975} with 2 degrees of freedom: (2p - 1) / sqrt(2p(1 - p))
    half = t2 * 1.0 / math.sqrt(3)  # t s / sqrt(n), s = 1
    assert (mean, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half), rel=1e-12)
    assert C.t_interval([0.5]) == (0.5, None, None)
    assert C.t_interval([]) == (None, None, None)
    assert C.verdict_a(-0.99, 2.0, 3) == "competitive"
    assert C.verdict_a(-1.0, 2.0, 3) == "not shown"  # the lower end must lie strictly above -1
    assert C.verdict_a(-3.0, -1.01, 3) == "worse"
    assert C.verdict_a(None, None, 1).startswith("no interval")


def _run(cell: str, method: str, seed: int, acc: float = 0.9, gap: float = 0.0, t: float = 1.0, mem: int = 100,
         **measures) -> C.Run:
    return C.Run(cell, method, seed, "", acc, gap, gap, t, mem, "test", dict(measures))


def test_cost_ratios_and_noise_floor():
    runs = []
    for s, (tl, tp) in enumerate([(1.0, 1.02), (1.0, 0.99), (1.0, 1.0)]):
        runs += [_run("x", "lora", s, t=tl, mem=1000), _run("x", "lora_plus", s, t=tp, mem=1000),
                 _run("x", "asym", s, t=1.0, mem=1000), _run("x", "cla", s, t=0.9, mem=990)]
    cs = {(c.method, c.against): c for c in C.costs(runs)}
    noise = cs[("lora_plus", "lora")]
    assert noise.time_floor == pytest.approx(0.02)  # the largest per-seed deviation
    assert noise.memory_floor == 0.0
    cla = cs[("cla", "asym")]
    assert cla.time_ratio == pytest.approx(0.9) and cla.memory_ratio == pytest.approx(0.99)
    assert C.verdict_b(cla, noise, "time") == "saves 10.0%"
    assert C.verdict_b(cla, noise, "memory") == "saves 1.0%"
    near = C.Cost("x", "paca", "asym", 0.985, 1.0, 3)
    assert C.verdict_b(near, noise, "time") == "within noise"
    assert C.verdict_b(cla, None, "time").startswith("no noise measure")


def test_tau_perfect_order_and_seeded_bootstrap():
    runs = []
    for i, m in enumerate(["lora", "asym", "cla", "rcla", "paca"]):
        for s in range(3):
            runs.append(_run("x", m, s, gap=0.01 * i + 0.001 * s, stable_rank=float(i) + 0.1 * s,
                             intruders=float(4 - i)))
    ts = {t.measure: t for t in C.taus(runs, {}, bootstrap=200, seed=3)}
    assert ts["stable_rank"].tau == pytest.approx(1.0) and ts["stable_rank"].low == pytest.approx(1.0)
    assert ts["stable_rank"].predicts is True  # 5 methods: exact p = 2 / 5! = 0.0167 < 0.05
    assert ts["intruders"].tau == pytest.approx(-1.0)
    again = {t.measure: t for t in C.taus(runs, {}, bootstrap=200, seed=3)}
    assert (again["stable_rank"].low, again["stable_rank"].high) == (ts["stable_rank"].low, ts["stable_rank"].high)


def test_bad_preset_exits_2(tmp_path, capsys):
    assert C.main(["--preset", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "unknown claims preset" in capsys.readouterr().err


def test_claims_trains_a_missing_run_on_the_chosen_executor(report, tmp_path, capsys):
    """--executor reaches the runs: a run deleted from a finished report is trained again by submitit's
    in-process debug executor, to the same tensors, and the paired differences and taus come out the same."""
    pytest.importorskip("submitit")
    import shutil

    src, _, first = report
    out = tmp_path / "claims"
    shutil.copytree(src, out)
    run = out / "mlp-digits" / "runs" / "lora-s1"
    tensors = (run / "tensors.safetensors").read_bytes()
    shutil.rmtree(run)
    for cached in (out / "mlp-digits" / "derived").glob("lora-s1.*"):
        cached.unlink()
    args = ["--preset", "tiny", "--out", str(out), "--no-progress", "--json"]
    assert C.main([*args, "--executor", "submitit", "--submitit-cluster", "debug",
                   "--submitit-folder", str(tmp_path / "logs")]) == 0
    second = json.loads((out / "claims.json").read_text())
    assert second["trained"] == 1
    assert (run / "tensors.safetensors").read_bytes() == tensors
    assert any((tmp_path / "logs").iterdir()), "the run went through submitit"
    assert second["claim_a"] == first["claim_a"] and second["claim_c"] == first["claim_c"]
    # An option of another executor is refused before any work: one line, exit 2.
    capsys.readouterr()
    assert C.main([*args, "--address", "auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--address applies to --executor ray only" in err


def _two_cells() -> C.ClaimsPreset:
    quick = C.Measures(hessian_samples=None, landscape_samples=None, pac_bayes=False)
    return C.ClaimsPreset("two", "two mlp cells (the tests)", (
        C.Cell("mlp-a", C._mlp(5), quick, seeds=(0, 1)), C.Cell("mlp-b", C._mlp(5), quick, seeds=(0, 1))),
        methods=("asym", "cla", "lora", "lora_plus"))


def test_cells_trains_only_the_named_cells_and_writes_no_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(C.CLAIMS_PRESETS, "two", _two_cells())
    out = tmp_path / "claims"
    args = ["--preset", "two", "--out", str(out), "--no-progress", "--json"]
    assert C.main([*args, "--cells", "mlp-b"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["cells"] == ["mlp-b"] and res["trained"] == 8 and res["finished"] == {"mlp-b": 8}
    assert len(list((out / "mlp-b" / "runs").glob("*/genbound.json"))) == 8
    assert not (out / "mlp-a").exists() and not (out / "paper-claims.md").exists()
    for bad, needle in ((["--cells", "nope"], "has no cell nope; choose from mlp-a, mlp-b"),
                        (["--cells", "mlp-a", "--report-only"], "drop --report-only")):
        assert C.main([*args, *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and needle in err
    assert not (out / "mlp-a").exists()
    assert C.main(args) == 0  # the whole preset: only mlp-a is left to train; the report covers both cells
    full = json.loads((out / "claims.json").read_text())
    assert full["trained"] == 8 and len(full["runs"]) == 16
    rows = {(p["cell"], p["variant"]): p for p in full["claim_a"]}
    assert set(rows) == {("mlp-a", "cla"), ("mlp-b", "cla"), ("pooled", "cla")}
    assert rows[("pooled", "cla")]["differences"] == pytest.approx(  # the pooled rows are on cell means
        [np.mean(rows[("mlp-a", "cla")]["differences"]), np.mean(rows[("mlp-b", "cla")]["differences"])])


def test_two_backbones_stay_apart_per_cell_and_pool_together():
    runs = []
    for cell, shift in (("minilm-bbc", 0.0), ("l3-bbc", -0.02)):
        for s in range(3):
            runs += [_run(cell, "asym", s, acc=0.9), _run(cell, "cla", s, acc=0.9 + shift + 0.001 * s)]
    pairs = {(p.cell, p.variant): p for p in C.paired_differences(runs)}
    assert pairs[("minilm-bbc", "cla")].differences == pytest.approx([0.0, 0.1, 0.2])
    assert pairs[("l3-bbc", "cla")].differences == pytest.approx([-2.0, -1.9, -1.8])
    assert pairs[("pooled", "cla")].n == 2  # on cell means: one per cell, t with 1 df
    assert pairs[("pooled", "cla")].differences == pytest.approx([0.1, -1.9])
    header, body = C.table_a(list(pairs.values()))
    assert [row[0] for row in body] == ["minilm-bbc", "l3-bbc", "pooled"]


def test_presets_have_two_backbones_with_the_same_budgets():
    for name in ("cpu", "paper"):
        preset = C.get_claims_preset(name)
        C.check_cells(preset)
        cells = {c.name: c for c in preset.cells}
        assert {c.preset.backbone for c in preset.cells} == {"mlp", "minilm", "paraphrase-minilm-l3"}
        for task in ("bbc", "tweets"):
            a, b = cells[f"minilm-{task}"], cells[f"l3-{task}"]
            same = {k: v for k, v in a.preset.to_dict().items() if k not in ("name", "description", "backbone")}
            assert same == {k: v for k, v in b.preset.to_dict().items()
                            if k not in ("name", "description", "backbone")}
            assert (a.measures, a.seeds, a.data) == (b.measures, b.seeds, b.data)
        assert not any("is not in the presets" in n for n in preset.notes)
    twice = C.ClaimsPreset("x", "x", (C.Cell("a", C._mlp(1), C.Measures()), C.Cell("a", C._mlp(1), C.Measures())))
    with pytest.raises(C.GenboundError, match="names cell.s. a twice"):
        C.check_cells(twice)


def test_seed_spread_is_the_slowest_over_the_fastest_seed_of_one_method():
    """Claim (b)'s load check: per cell, the largest slowest / fastest seed ratio of one method's step time."""
    from analysis.claims import Run, seed_spread

    def run(cell, method, seed, t):
        return Run(cell, method, seed, "", 0.9, 0.0, 0.0, t, 1, "cpu", {})

    runs = [run("a", "lora", 0, 1.0), run("a", "lora", 1, 3.0), run("a", "cla", 0, 2.0), run("a", "cla", 1, 2.5),
            run("b", "lora", 0, 1.0), run("b", "lora", 1, None), run("b", "cla", 0, 4.0)]
    spread = seed_spread(runs)
    assert spread["a"] == (3.0, "lora")
    assert "b" not in spread  # one timed seed per method: no spread to measure


def test_holm_adjusted_p_values_by_hand():
    assert C.holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert C.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    # the adjusted p is below alpha exactly for the hypotheses the step-down procedure rejects
    rng = np.random.default_rng(0)
    for _ in range(200):
        ps = rng.uniform(0, 0.1, 5).tolist()
        adj = C.holm(ps)
        assert {i for i, p in enumerate(adj) if p <= 0.025} == _holm_rejects(dict(enumerate(ps)), 0.025)


def test_every_reported_tau_lies_inside_its_bootstrap_interval(report):
    _, doc, first = report
    rows = [t for t in first["claim_c"] if t["tau"] is not None and t["low"] is not None]
    assert rows
    for t in rows:
        assert t["low"] <= t["tau"] <= t["high"], t
    # and on data built to push the bootstrap distribution to one side of the estimate: 5 methods whose means
    # order perfectly but whose seeds overlap, so most resamples break ties the other way
    rng = np.random.default_rng(1)
    for trial in range(5):
        runs = []
        for i, m in enumerate(["lora", "asym", "cla", "rcla", "paca", "rac", "cola"]):
            for s in range(3):
                runs.append(_run("x", m, s, gap=0.01 * i + rng.normal(0, 0.03), stable_rank=float(rng.normal()),
                                 intruders=float(i + rng.normal(0, 5))))
        for t in C.taus(runs, {}, bootstrap=300, seed=trial):
            if t.tau is not None and t.low is not None:
                assert t.low <= t.tau <= t.high
                assert t.interval_method in ("BCa", "BCa widened to the estimate")
