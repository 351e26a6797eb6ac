"""genbound compare: every row equals what its module returns; JSON round-trips; figures; bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from genbound.checkpoints.checkpoint import load_checkpoint
from genbound.report.compare import CompareReport, better, compare, to_latex, to_markdown, to_text


@pytest.fixture(scope="module")
def pair(ckpt_dir, tmp_path_factory):
    a, b = ckpt_dir("lora"), ckpt_dir("cla")
    figs = tmp_path_factory.mktemp("figs")
    report = compare(a, b, hessian=True, landscape=True, samples=128, grid=5, figures=figs, progress=False)
    return a, b, report, figs


def test_rows_equal_the_underlying_modules(pair):
    from genbound.bounds.report import report_for_checkpoint
    from genbound.diagnostics.intruders import intruders
    from genbound.diagnostics.similarity import compare_updates
    from genbound.diagnostics.spectra import spectra

    a, b, report, _ = pair
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert report.row("run", "method").a == "lora" and report.row("run", "method").b == "cla"
    assert report.row("fit", "test accuracy").a == ca.meta.results["test_accuracy"]
    assert report.row("fit", "gap G = L_test - L_train").b == cb.meta.results["gap"]
    assert report.row("parameters", "data-dependent D").a == ca.meta.params["data_dependent"]
    ba = report_for_checkpoint(a, compression=True, progress=False)
    assert report.row("bounds", "Table 1 MI bound (expected gap)").a == ba.table1[0].value
    assert report.row("bounds", "compression bound (test error)").a == ba.compression.bound
    assert report.row("bounds", "Theorem 1 bound on G(W0 + dW)").a == ba.theorem1.bound
    sb = spectra(cb.layer_updates(), top_k=10, progress=False)
    assert report.row("spectra", "overall ||dW||_2").b == sb.overall.spectral_norm
    assert report.row("spectra", "fc2 stable rank").b == next(x for x in sb.layers if x.name == "fc2").stable_rank
    ia = intruders(ca.base_weights(), ca.layer_updates(), k=10, eps=0.5, progress=False)
    assert report.row("intruders", "total (k = 10, eps = 0.5)").a == ia.total
    sim = compare_updates(ca.layer_updates(), cb.layer_updates(), k=8)
    assert report.row("similarity", "mean subspace overlap of A's and B's dW").a == pytest.approx(sim.mean_overlap)
    assert report.row("hessian", "eigenvalue 1").a is not None
    barrier = report.row("landscape", "barrier on the line A -> B").a
    from genbound.diagnostics.landscape import landscape_from_checkpoints

    line = landscape_from_checkpoints([a, b], "interpolate", grid=5, span=1.0, samples=128, seed=0)
    assert line.axes[0][line.centre[0]] == 0 and line.axes[0][-1] == 1  # A at the centre, B at the last point
    segment = line.loss[line.centre[0]:]
    assert barrier == pytest.approx(float(segment.max() - max(segment[0], segment[-1])), abs=1e-9)
    assert barrier >= 0


def test_better_marks():
    assert better(1.0, 2.0, "lower") == "a" and better(1.0, 2.0, "higher") == "b"
    assert better(1.0, 1.0, "lower") == "=" and better(1.0, None, "lower") is None and better(1, 2, None) is None


def test_only_the_absolute_gap_is_marked(pair):
    """A signed gap has no better direction (G = -0.06 is not better than 0.02); |G| is marked."""
    _, _, report, _ = pair
    signed = report.row("fit", "gap G = L_test - L_train")
    assert signed.better is None and "not marked" in signed.note
    assert report.row("fit", "0-1 gap (train acc - test acc)").better is None
    absolute = report.row("fit", "|G| (closer to 0: generalizes better)")
    assert absolute.a == abs(signed.a) and absolute.b == abs(signed.b)
    assert absolute.better == better(abs(signed.a), abs(signed.b), "lower") and absolute.better is not None


def test_vacuous_bounds_are_not_marked(pair):
    """Two vacuous bounds say nothing about which model generalizes better: no mark, and the note says so."""
    _, _, report, _ = pair
    row = report.row("bounds", "Table 1 MI bound (expected gap)")
    assert row.a >= 1 and row.b >= 1  # the mlp pair's Table 1 bounds are vacuous
    assert row.better is None and row.note.startswith("vacuous / vacuous") and "not marked" in row.note


def test_different_layer_sets_give_the_union_with_absent(ckpt_dir):
    """B adapts fc1 only: fc2's rows are there with 'absent' on B's side, and the totals say the layer sets
    differ instead of marking a winner."""
    from genbound.report.compare import ABSENT

    report = compare(ckpt_dir("lora"), ckpt_dir("cla", targets=("fc1",)), progress=False)
    row = report.row("spectra", "fc2 ||dW||_2")
    assert row.a > 0 and row.b == ABSENT and row.better is None and "only A" in row.note
    assert report.row("intruders", "fc2 count").b == ABSENT
    assert report.row("spectra", "fc1 ||dW||_2").b > 0
    total = report.row("intruders", "total (k = 10, eps = 0.5)")
    assert total.better is None and "layer sets differ" in total.note
    assert "layer sets differ" in report.row("spectra", "overall ||dW||_2").note
    names = [r.quantity for r in report.rows if r.section == "spectra" and r.quantity.endswith("||dW||_2")]
    assert names == ["overall ||dW||_2", "fc1 ||dW||_2", "fc2 ||dW||_2"]
    # swapped: A lacks the layer
    swapped = compare(ckpt_dir("cla", targets=("fc1",)), ckpt_dir("lora"), progress=False)
    assert swapped.row("spectra", "fc2 ||dW||_2").a == ABSENT and "only B" in swapped.row(
        "spectra", "fc2 ||dW||_2").note


def test_theorem_notes_in_a_then_b_order():
    from genbound.report.compare import _pair_note

    assert _pair_note("zeta", "alpha") == "A: zeta; B: alpha"  # not sorted
    assert _pair_note("same", "same") == "same"
    assert _pair_note("", "only b") == "B: only b"


def test_mismatch_rule():
    from types import SimpleNamespace as NS

    from genbound.report.compare import mismatch

    def ck(backbone, dataset, fingerprint="f"):
        return NS(meta=NS(backbone=backbone, dataset=dataset, fingerprint=fingerprint))

    assert mismatch(ck("mlp", "digits"), ck("mlp", "digits")) is None
    assert "different backbones" in mismatch(ck("mlp", "digits"), ck("minilm", "digits", "g"))
    assert "different datasets" in mismatch(ck("minilm", "bbc"), ck("minilm", "other"))
    assert mismatch(ck("mlp", "digits"), ck("mlp", None, None)) is None  # a peft adapter records no dataset


def test_every_format_keeps_notes_flags_and_banner(pair):
    _, _, report, _ = pair
    report = CompareReport.from_dict(report.to_dict())
    report.notes = ["a report note"]
    report.banner = "MISMATCH: different backbones (x vs y)."
    row_notes = [r.note for r in report.rows if r.note]
    for text in (to_text(report), to_markdown(report), to_latex(report)):
        assert "a report note" in text and "MISMATCH" in text
        assert "vacuous / vacuous" in text
        flat = text.replace("\\_", "_").replace("\\", "").replace("\\|", "|")
        for note in row_notes:
            assert note.split(" ")[0] in flat
    tex = to_latex(report)
    assert tex.count("vacuous") >= sum(r.note.count("vacuous") for r in report.rows)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["banner"].startswith("MISMATCH") and data["notes"] == ["a report note"]


def test_every_section_present(pair):
    sections = {r.section for r in pair[2].rows}
    assert sections == {"run", "parameters", "fit", "bounds", "spectra", "intruders", "similarity", "hessian",
                        "landscape"}


def test_json_round_trips(pair):
    report = pair[2]
    text = json.dumps(report.to_dict(), allow_nan=False)
    again = CompareReport.from_dict(json.loads(text))
    assert again.to_dict() == json.loads(text)
    assert again.rows == [type(r)(**json.loads(json.dumps(r.__dict__))) for r in report.rows]


def test_text_markdown_latex(pair):
    report = pair[2]
    assert "test accuracy" in to_text(report)
    md = to_markdown(report)
    assert md.count("\n|") >= len(report.rows)
    tex = to_latex(report)
    assert r"\toprule" in tex and r"\bottomrule" in tex and tex.count(r"\\") >= len(report.rows)
    assert "vacuous" in tex and "note" in tex.splitlines()[2]  # the notes column, vacuity flags included


def test_figures_written_and_non_empty(pair):
    _, _, report, figs = pair
    names = {p.name for p in figs.iterdir()}
    for stem in ("singular_values", "intruders_vs_eps", "bound_vs_gap", "hessian_density", "interpolation",
                 "landscape_lora", "surface_cla"):
        for ext in ("pdf", "png"):
            assert f"{stem}.{ext}" in names
            assert (figs / f"{stem}.{ext}").stat().st_size > 1000
    assert len(report.figures) == len(names)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "genbound.cli", *args], capture_output=True, text=True, timeout=600)


def test_cli_json_and_bad_paths(ckpt_dir, tmp_path):
    a, b = ckpt_dir("lora"), ckpt_dir("asym")
    proc = run_cli("compare", str(a), str(b), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["labels"] == ["lora", "asym"]
    bad = run_cli("compare", str(a), str(tmp_path / "nothing"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_cli_out_is_checked_before_any_work(ckpt_dir, tmp_path):
    a, b = ckpt_dir("lora"), ckpt_dir("cla")
    for out, words in ((tmp_path / "c.xyz", "unknown format"), (tmp_path / "no" / "such" / "c.md", "does not exist"),
                       (tmp_path / "c", "unknown format")):
        proc = run_cli("compare", str(a), str(b), "--out", str(out))
        assert proc.returncode == 2 and words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no folder created
    ok = run_cli("compare", str(a), str(b), "--out", str(tmp_path / "c.tex"), "--no-progress")
    assert ok.returncode == 0 and "vacuous" in (tmp_path / "c.tex").read_text()


@pytest.mark.slow
def test_different_backbones_are_refused_unless_allowed(ckpt_dir, tmp_path):
    """An mlp checkpoint against a MiniLM one: exit 2 with one line; with --allow-mismatch every output carries
    the banner, nothing is marked, the rows that need one backbone say why they are empty, the rest is filled."""
    from genbound.core.errors import GenboundError
    from genbound.training.train import TrainConfig, train

    mini = train(TrainConfig(method="cla", backbone="minilm", rank=2, alpha=4, steps=1, batch_size=4, max_length=8,
                             eval_batch_size=512, progress=False), tmp_path / "mini").path
    with pytest.raises(GenboundError, match="different backbones .* --allow-mismatch"):
        compare(ckpt_dir("lora"), mini, progress=False)
    proc = run_cli("compare", str(ckpt_dir("lora")), str(mini))
    assert proc.returncode == 2 and "different backbones" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    report = compare(ckpt_dir("lora"), mini, landscape=False, progress=False, allow_mismatch=True)
    assert report.banner.startswith("MISMATCH") and all(r.better is None for r in report.rows)
    for text in (to_text(report), to_markdown(report), to_latex(report), json.dumps(report.to_dict())):
        assert "MISMATCH" in text
    sim = report.row("similarity", "mean subspace overlap of A's and B's dW")
    assert sim.a is None and "different backbones" in sim.note
    assert report.row("fit", "test accuracy").b is not None
    assert report.row("spectra", "overall ||dW||_2").b is not None
    assert report.row("bounds", "Table 1 MI bound (expected gap)").b is not None
    cli = run_cli("compare", str(ckpt_dir("lora")), str(mini), "--allow-mismatch", "--latex")
    assert cli.returncode == 0 and "MISMATCH" in cli.stdout


def test_peft_adapter_against_genbound_checkpoint(ckpt_dir, tmp_path):
    """A peft LoRA adapter on the mlp backbone compares with a genbound checkpoint; its Table 1 bound uses D from
    its own per-layer ranks and the N given."""
    import math

    import torch
    from peft import LoraConfig, get_peft_model

    from genbound.models.backbones import get_backbone

    base = get_backbone("mlp").build(5, seed=0)
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["fc1", "fc2"],
                                                 rank_pattern={"fc2": 3}))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    peft_model.save_pretrained(tmp_path / "adapter")
    report = compare(ckpt_dir("lora"), tmp_path / "adapter", n_train=628, progress=False)
    d = 2 * (64 + 128) + 3 * (128 + 128)
    assert report.row("parameters", "data-dependent D").b == d
    expected = math.sqrt(2 * 0.25 * math.log(2) * 32 * d / 628)
    assert report.row("bounds", "Table 1 MI bound (expected gap)").b == pytest.approx(expected, rel=1e-12)
    assert report.row("fit", "test accuracy").b is None
    assert report.row("spectra", "fc2 ||dW||_2").b > 0
