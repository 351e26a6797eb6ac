"""genbound report over tiny mlp checkpoints (two methods x seeds 0, 1, 2): the table's means are the recorded
values' means, Holm is its step-down definition, the HTML is self-contained and parses, the LaTeX has booktabs
rules, and the output folder policy holds."""

from __future__ import annotations

import itertools
import json
import math
from html.parser import HTMLParser

import pytest

from genbound.checkpoints.checkpoint import load_checkpoint
from genbound.cli import main
from genbound.core.stats import holm
from genbound.report.runs import ReportOptions, build_report, write_report

SEEDS = (0, 1, 2)
METHODS = ("lora", "asym")


@pytest.fixture(scope="module")
def sweep(ckpt_dir):
    return {(m, s): ckpt_dir(m, seed=s, steps=20) for m in METHODS for s in SEEDS}


@pytest.fixture(scope="module")
def report(sweep):
    return build_report([str(p) for p in sweep.values()], ReportOptions(baseline="lora", bootstrap=200),
                        progress=False)


def test_means_equal_recorded_means(sweep, report):
    for m in METHODS:
        recorded = [load_checkpoint(sweep[(m, s)]).meta.results for s in SEEDS]
        for key in ("test_accuracy", "train_accuracy", "gap", "gap_01", "test_loss"):
            row = next(x for x in report.summaries if x.group == m and x.measure == key)
            want = math.fsum(r[key] for r in recorded) / len(SEEDS)
            assert row.n == 3 and row.mean == pytest.approx(want, rel=1e-12, abs=1e-15)
            assert row.low < row.mean < row.high


def test_paired_differences_are_per_seed(sweep, report):
    row = next(r for r in report.paired if r.measure == "test_accuracy" and r.group == "asym")
    acc = {k: load_checkpoint(p).meta.results["test_accuracy"] for k, p in sweep.items()}
    assert row.seeds == list(SEEDS) and row.baseline == "lora"
    assert row.differences == pytest.approx([acc[("asym", s)] - acc[("lora", s)] for s in SEEDS])


def test_holm_is_its_step_down_definition():
    ps = [0.01, 0.04, 0.03, None, 0.2, 0.005]
    got = holm(ps)
    present = [i for i, p in enumerate(ps) if p is not None]
    m = len(present)
    # Definition: adj(p_(i)) = max_{j <= i} min(1, (m - j + 1) p_(j)) over the ascending order.
    order = sorted(present, key=lambda i: ps[i])
    for rank, i in enumerate(order):
        want = max(min(1.0, (m - j) * ps[order[j]]) for j in range(rank + 1))
        assert got[i] == pytest.approx(want)
    assert got[3] is None
    # Brute force on the rejection rule: at level a, Holm rejects p_(1..k) for the largest k with
    # p_(j) <= a / (m - j + 1) for all j <= k; the adjusted p is <= a exactly for those.
    for a in (0.01, 0.02, 0.05, 0.1):
        k = next((j for j in range(m) if ps[order[j]] > a / (m - j)), m)
        assert {i for i in present if got[i] <= a} == set(order[:k])
    for ps in itertools.product([0.001, 0.02, 0.5], repeat=3):
        adj = holm(list(ps))
        assert all(a >= p for a, p in zip(adj, ps)) and all(a <= 1 for a in adj)


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.imgs, self.tables = [], [], 0

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs))
        if tag == "table":
            self.tables += 1


def test_outputs_and_html_self_contained(sweep, report, tmp_path):
    out = write_report(report, tmp_path / "rep")
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page
    p = _Collect()
    p.feed(page)
    p.close()
    assert p.tables >= 4 and p.imgs and all(i["src"].startswith("data:image/png;base64,") for i in p.imgs)
    for path in sweep.values():
        assert str(path.resolve()) in page  # every run is listed
    tex = (out / "report.tex").read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in tex
    data = json.loads((out / "report.json").read_text())
    assert data["format"] == "genbound-report" and len(data["runs"]) == 6
    assert "Holm" in (out / "report.md").read_text()


def test_cli_policy_and_errors(sweep, tmp_path, capsys):
    root = sweep[("lora", 0)].parent
    out = tmp_path / "r"
    args = ["report", str(root / "*-seed[0-2]-steps20"), "--out", str(out), "--baseline", "lora", "--bootstrap", "0",
            "--no-figures", "--no-progress"]
    assert main(args + ["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["out"] == str(out) and {r["group"] for r in data["runs"]} >= set(METHODS)
    assert main(args) == 2  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    (out / "mine.txt").write_text("keep")
    assert main(args + ["--overwrite"]) == 2 and (out / "mine.txt").exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mine.txt" in err
    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert main(["report", str(sweep[("lora", 0)]), "--out", str(tmp_path / "y"), "--baseline", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_peft_adapter_is_a_run(sweep, tmp_path):
    """A peft adapter (genbound export) joins the report: no fit recorded, D from its ranks, Table 1 with --n."""
    from genbound.sources.export import export_peft

    peft_dir, other = tmp_path / "peft", tmp_path / "peft-s1"
    export_peft(sweep[("lora", 0)], peft_dir)
    export_peft(sweep[("lora", 1)], other)  # two adapters with no recorded seed: both kept, neither paired
    rep = build_report([str(sweep[("lora", 0)]), str(peft_dir), str(other)],
                       ReportOptions(baseline="lora", bootstrap=0, n_train=628), progress=False)
    (genbound_run, peft_run, _) = sorted(rep.runs, key=lambda r: (r.kind, r.path))
    assert len(rep.runs) == 3 and peft_run.seed is None
    assert peft_run.kind == "peft" and peft_run.values["test_accuracy"] is None
    assert peft_run.values["data_dependent"] == genbound_run.values["data_dependent"]
    assert peft_run.values["table1"] is not None
    assert peft_run.values["spectral_norm"] == pytest.approx(genbound_run.values["spectral_norm"], rel=1e-5)


def test_heavy_measures_are_opt_in(sweep):
    """--hessian / --landscape add their measures (the same numbers genbound hessian gives); without them the
    report holds neither."""
    from genbound.diagnostics.hessian import hessian_from_checkpoint

    runs = [str(sweep[("lora", 0)]), str(sweep[("asym", 0)])]
    rep = build_report(runs, ReportOptions(baseline="lora", bootstrap=0, hessian=True, landscape=True, samples=64,
                                           grid=5, figures=False), progress=False)
    assert {"hessian_top", "hessian_trace", "sharpness"} <= set(rep.measures)
    for r in rep.runs:
        want = hessian_from_checkpoint(r.path, samples=64, seed=0, top_k=1, trace=False).eigen.top[0]
        assert r.values["hessian_top"] == pytest.approx(float(want), rel=1e-3)
        assert r.values["sharpness"] is not None
    assert not {"hessian_top", "sharpness"} & set(build_report(runs, ReportOptions(bootstrap=0),
                                                               progress=False).measures)
