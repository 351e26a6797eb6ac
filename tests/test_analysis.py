"""The analysis sweep: resumable over restarts, safe between processes, complete tables, and a Kendall tau
that equals an independent computation."""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import kendalltau

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the analysis package lives at the repository root, beside genbound
    sys.path.insert(0, str(ROOT))

from analysis import locks, runs, sweep  # noqa: E402
from analysis import tables as T  # noqa: E402
from analysis.presets import PRESETS, get_preset, train_config  # noqa: E402
from genbound.core.errors import GenboundError  # noqa: E402
from genbound.methods.catalogue import METHODS  # noqa: E402

STEPS = 12  # a few seconds per mlp run


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A two-method sweep, then one run deleted (as if the sweep had been interrupted before it) and the
    sweep run again."""
    out = tmp_path_factory.mktemp("sweep")
    first = sweep.run_sweep("mlp", [0], out, methods=["lora", "cla"], device="cpu", steps=STEPS, progress=False)
    kept = out / "runs" / "cla-s0"
    stamps = {p.name: p.stat().st_mtime_ns for p in kept.iterdir()}
    shutil.rmtree(out / "runs" / "lora-s0")
    second = sweep.run_sweep("mlp", [0], out, methods=["lora", "cla"], device="cpu", steps=STEPS, progress=False)
    return out, first, second, stamps


def test_restart_trains_only_what_is_missing(swept):
    out, first, second, stamps = swept
    assert {r.name: r.status for r in first.records} == {"lora-s0": "trained", "cla-s0": "trained"}
    assert {r.name: r.status for r in second.records} == {"lora-s0": "trained", "cla-s0": "skipped"}
    kept = out / "runs" / "cla-s0"
    assert {p.name: p.stat().st_mtime_ns for p in kept.iterdir()} == stamps  # not rewritten
    # The retrained run is the same computation as the first time (same seed, same config).
    a = next(r for r in first.records if r.method == "lora")
    b = next(r for r in second.records if r.method == "lora")
    assert b.results == pytest.approx(a.results, rel=1e-6)
    assert not list((out / "runs").glob(".*.lock")), "locks are released"
    assert not list((out / "runs").glob(".*.state")), "no training state left behind"


def test_tables_are_complete_and_written(swept):
    out, _, second, _ = swept
    md = (out / "tables.md").read_text()
    for m in ("lora", "cla"):
        assert f"(`{m}`)" in md
    for name in ("results.tex", "bounds.tex", "kendall.tex"):
        tex = (out / name).read_text()
        assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
        if name != "kendall.tex":
            assert "LoRA" in tex and "cLA" in tex
    for stem in ("accuracy", "bound_vs_gap_mi", "bound_vs_gap_mi_paper"):
        for ext in ("pdf", "png"):
            assert (out / "figures" / f"{stem}.{ext}").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["method"] for r in summary["per_method"]] == ["lora", "cla"]
    assert summary["kendall_tau"]["n_methods"] == 2
    assert "Kendall tau-b" in (out / "summary.md").read_text()
    # Every number in the table is what the checkpoint recorded.
    from genbound.checkpoints.checkpoint import load_meta

    for row in second.rows:
        meta = load_meta(out / "runs" / f"{row.method}-s0")
        assert row.stats["test_accuracy"].mean == meta.results["test_accuracy"]
        assert row.stats["gap"].mean == pytest.approx(meta.results["test_loss"] - meta.results["train_loss"])
        assert row.stats["params.data_dependent"].mean == meta.params["data_dependent"]


def test_bounds_equal_the_bounds_module(swept):
    out, _, second, _ = swept
    from genbound.bounds.mi import method_bound
    from genbound.bounds.report import config_from_meta
    from genbound.checkpoints.checkpoint import load_meta

    for rec in second.records:
        meta = load_meta(rec.path)
        cfg = config_from_meta(meta)
        assert rec.bounds["mi"] == method_bound(meta.method, cfg, include_head=True).value
        assert rec.bounds["mi_paper"] == method_bound(meta.method, cfg, include_head=False).value
        assert rec.vacuous["mi"] == (rec.bounds["mi"] >= 1.0)
    # lora trains A too, so its D and bound exceed cla's.
    by = {r.method: r for r in second.records}
    assert by["lora"].bounds["mi"] > by["cla"].bounds["mi"]


def test_changed_configuration_is_refused_not_silently_mixed(swept):
    out, *_ = swept
    with pytest.raises(GenboundError, match="steps"):
        sweep.run_sweep("mlp", [0], out, methods=["cla"], device="cpu", steps=STEPS + 1, progress=False)


def test_tables_only_and_cli_json(swept, capsys):
    out, *_ = swept
    code = sweep.main(["--preset", "mlp", "--seeds", "0", "--methods", "lora", "cla", "--steps", str(STEPS),
                       "--out", str(out), "--tables-only", "--json", "--no-progress", "--device", "cpu",
                       "--no-figures"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["status"] for r in data["runs"]} == {"lora-s0": "skipped", "cla-s0": "skipped"}
    assert data["kendall_tau"]["bound"] == "mi"
    # A run that does not exist is reported missing, its method still has a row.
    code = sweep.main(["--preset", "mlp", "--seeds", "0", "--methods", "lora", "asym", "--steps", str(STEPS),
                       "--out", str(out), "--tables-only", "--json", "--no-progress", "--device", "cpu",
                       "--no-figures"])
    data = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["status"] for r in data["runs"]} == {"lora-s0": "skipped", "asym-s0": "missing"}
    assert [r["method"] for r in data["per_method"]] == ["lora", "asym"]
    assert "missing" in (out / "tables.md").read_text()


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert sweep.main(["--preset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert sweep.main(["--preset", "mlp", "--methods", "lora", "lora", "--out", str(tmp_path / "x")]) == 2
    assert sweep.main(["--preset", "mlp", "--methods", "no_such_method", "--out", str(tmp_path / "x")]) == 2
    assert "unknown method" in capsys.readouterr().err


# -- presets ---------------------------------------------------------------------------------------------


def test_presets_give_valid_configs_for_every_method():
    for preset in PRESETS.values():
        for m, spec in METHODS.items():
            cfg = train_config(preset, m, seed=3)
            assert cfg.seed == 3 and cfg.method == m
            assert cfg.chain == (preset.chain if spec.chained else 1)
            assert cfg.lr == (preset.lr_full if m == "fft" else preset.lr)
    paper = get_preset("paper-minilm")
    assert (paper.backbone, paper.dataset, paper.rank, paper.alpha, paper.chain) == ("minilm", "bbc", 16, 32.0, 3)


# -- locks -----------------------------------------------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lock_exclusive_and_stale_takeover(tmp_path):
    lock = tmp_path / ".run.lock"
    assert locks.try_acquire(lock)
    assert not locks.try_acquire(lock), "held by a live process (this one)"
    locks.release(lock)
    assert not lock.exists()
    # A dead owner's lock is taken over.
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "start": "1"}))
    assert locks.try_acquire(lock)
    assert locks.read_owner(lock)["pid"] == os.getpid()
    locks.release(lock)
    # A live pid whose start time differs was reused by another process: stale.
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "start": "-1"}))
    assert locks.try_acquire(lock)
    locks.release(lock)
    # Another host's lock without a heartbeat cannot be judged: never taken over, and said so with its owner
    # and the way to take over (instead of waiting for it forever, silently).
    record = json.dumps({"host": socket.gethostname() + "-elsewhere", "pid": 1, "start": "1"})
    lock.write_text(record)
    with pytest.raises(GenboundError, match="pid 1 on host .*no heartbeat.*delete"):
        locks.try_acquire(lock)
    assert lock.read_text() == record
    # An unreadable record is stale once it is old (a live owner writes its record right after creating).
    lock.write_text("garbage")
    assert not locks.try_acquire(lock)
    old = time.time() - 60
    os.utime(lock, (old, old))
    assert locks.try_acquire(lock)
    locks.release(lock)


def _worker(specs, log, queue):
    def fake_train(spec, splits, overwrite):
        marker = spec.path.with_suffix(".done")
        if marker.exists():
            return "skipped"
        with open(log, "a") as fh:
            fh.write(f"{spec.name} {os.getpid()}\n")
        time.sleep(0.3)
        marker.write_text("x")
        return "trained"

    runs._train_one = fake_train
    queue.put(sweep.train_runs(specs, poll=0.05, progress=False))


def test_two_processes_share_a_sweep_without_clobbering(tmp_path):
    specs = sweep.plan(get_preset("mlp"), ["lora", "cla", "asym", "rcla"], [0, 1], tmp_path)
    (tmp_path / "runs").mkdir()
    log = tmp_path / "log.txt"
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(specs, log, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    lines = log.read_text().split()
    trained = lines[0::2]
    assert sorted(trained) == sorted(s.name for s in specs), "every run trained exactly once"
    assert len(set(lines[1::2])) == 2, "both processes did work"
    statuses = [st for r in results for st in r.values()]
    assert statuses.count("trained") == len(specs) and statuses.count("skipped") == len(specs)
    assert not list((tmp_path / "runs").glob(".*.lock"))


# -- statistics and Kendall tau ------------------------------------------------------------------------


def _records(bounds: dict[str, list[float]], gaps: dict[str, list[float]]) -> list[T.RunRecord]:
    recs = []
    for m in bounds:
        for seed, (b, g) in enumerate(zip(bounds[m], gaps[m])):
            recs.append(T.RunRecord(m, seed, f"{m}-s{seed}", "", "skipped",
                                    results={"gap_01": g, "gap": 2 * g, "test_accuracy": 0.9, "train_accuracy": 0.9},
                                    params={"trainable": 10, "data_dependent": 10}, bounds={"mi": b},
                                    vacuous={"mi": b >= 1}))
    return recs


def _tau_b(x, y) -> float:
    """Kendall's tau-b by counting pairs (Kendall 1945): (C - D) / sqrt((n0 - n1)(n0 - n2))."""
    c = d = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if sx == 0 and sy == 0:
            continue
        if sx == 0:
            tx += 1
        elif sy == 0:
            ty += 1
        elif sx == sy:
            c += 1
        else:
            d += 1
    return (c - d) / math.sqrt((c + d + tx) * (c + d + ty))


def test_kendall_on_constructed_sweep_equals_scipy_and_pair_counting():
    rng = np.random.default_rng(0)
    methods = list(METHODS)
    bounds = {m: [float(v)] * 3 for m, v in zip(methods, rng.uniform(0.1, 5, len(methods)))}
    bounds["cla"] = bounds["rcla"] = bounds["asym"]  # equal D: ties, as in Table 1
    gaps = {m: list(rng.normal(0.02 * i, 0.01, 3)) for i, m in enumerate(methods)}
    rows = T.aggregate(_records(bounds, gaps), methods)
    corr = next(c for c in T.correlations(rows) if (c.bound, c.gap) == ("mi", "gap_01"))
    x = [bounds[m][0] for m in methods]
    y = [float(np.mean(gaps[m])) for m in methods]
    ref = kendalltau(x, y)
    assert corr.methods == methods
    assert corr.tau == pytest.approx(ref.statistic, abs=1e-12)
    assert corr.p_value == pytest.approx(ref.pvalue, abs=1e-12)
    assert corr.tau == pytest.approx(_tau_b(x, y), abs=1e-12)
    assert any(set(g) == {"asym", "cla", "rcla"} for g in corr.tied_bound_groups)
    assert "ties" in corr.note
    # Means, std (ddof = 1) and n are numpy's.
    row = rows[methods.index("lora")]
    assert row.stats["gap_01"].mean == pytest.approx(np.mean(gaps["lora"]))
    assert row.stats["gap_01"].std == pytest.approx(np.std(gaps["lora"], ddof=1))
    assert row.stats["gap_01"].n == 3


def test_kendall_perfect_orders_and_degenerate_cases():
    up = T.kendall({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0, "f": 6.0},
                   {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4, "e": 0.5, "f": 0.6})
    assert up.tau == pytest.approx(1.0) and up.p_value == pytest.approx(2 / math.factorial(6))
    down = T.kendall({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.3, "b": 0.2, "c": 0.1})
    assert down.tau == pytest.approx(-1.0) and "too few" in down.note
    const = T.kendall({"a": 2.0, "b": 2.0, "c": 2.0}, {"a": 0.3, "b": 0.2, "c": 0.1})
    assert const.tau is None and const.p_value is None and "same for every method" in const.note
    one = T.kendall({"a": 2.0, "b": None}, {"a": 0.3, "b": 0.2})
    assert one.tau is None and one.n_methods == 1
    rows = T.aggregate(_records({"lora": [2.0], "cla": [2.0]}, {"lora": [0.1], "cla": [0.2]}), ["lora", "cla"])
    assert "undefined" in T.headline(T.correlations(rows), rows)


def test_every_method_has_a_row_even_without_runs():
    recs = _records({"lora": [1.0, 1.0]}, {"lora": [0.1, 0.3]})
    rows = T.aggregate(recs, list(METHODS))
    assert [r.method for r in rows] == list(METHODS)
    md = T.results_table(rows)
    for spec in METHODS.values():
        assert f"(`{spec.name}`)" in md
    assert md.count("missing") >= len(METHODS) - 1
    tex = T.bounds_table(rows, latex=True)
    assert tex.count(r"\\") == len(METHODS) + 1  # header + one line per method
    single = T.aggregate(_records({"lora": [1.0]}, {"lora": [0.1]}), ["lora"])[0]
    assert single.stats["gap_01"].std is None  # no spread from one seed


def test_optional_bounds_equal_the_report(swept):
    out, *_ = swept
    from genbound.bounds.report import report_for_checkpoint

    path = out / "runs" / "cla-s0"
    values, vacuous = sweep.checkpoint_bounds(path, compression=True, theorem1=True)
    rep = report_for_checkpoint(path, theorem=True, compression=True, progress=False)
    assert values["compression"] == rep.compression.bound and vacuous["compression"] == rep.compression.vacuous
    assert values["theorem1"] == rep.theorem1.bound and vacuous["theorem1"] == rep.theorem1.vacuous
    assert values["mi"] == rep.table1[0].value

