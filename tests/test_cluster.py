"""Sweeps on a cluster engine (analysis.executors): a Ray local cluster and submitit's local executor train the
same checkpoints, byte for byte, as the local runner, give the same tables and Kendall tau, and a run whose
worker is killed (holding its lock, leaving a half-written temporary) is retried and completes."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the analysis package lives at the repository root, beside genbound
    sys.path.insert(0, str(ROOT))

from analysis import executors, locks, sweep  # noqa: E402
from genbound.checkpoints.checkpoint import META_FILE, TENSOR_FILE  # noqa: E402
from genbound.core.errors import GenboundError  # noqa: E402

STEPS = 12
METHODS = ["lora", "cla"]
KILLED = "cla"  # the method whose first attempt dies
# Workers import this module (for crash_once) and the analysis package: both directories on their path.
WORKER_PATH = os.pathsep.join([str(ROOT), str(Path(__file__).resolve().parent)]
                              + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))


def crash_once(spec, overwrite, poll, wait_timeout):
    """analysis.sweep.run_one, except that the first attempt of KILLED claims the run's lock, leaves a
    half-written checkpoint temporary beside it (as a writer killed mid-write would) and kills its own
    process without cleaning up: the engine sees a dead worker and must retry, and the retry must take over
    the dead lock and never read the half-written files."""
    marker = spec.path.parent / f"{spec.name}.attempts"
    marker.parent.mkdir(parents=True, exist_ok=True)
    attempts = int(marker.read_text()) if marker.exists() else 0
    marker.write_text(str(attempts + 1))
    if spec.method == KILLED and attempts == 0:
        assert locks.try_acquire(spec.lock)
        tmp = spec.path.parent / f".{spec.name}.{os.getpid()}-deadbeef.tmp"
        tmp.mkdir()
        (tmp / TENSOR_FILE).write_bytes(b"half a safetensors file")
        os._exit(3)
    return sweep.run_one(spec, overwrite, poll, wait_timeout)


def _sweep(out: Path, executor=None):
    return sweep.run_sweep("mlp", [0], out, methods=METHODS, device="cpu", steps=STEPS, progress=False,
                           figures=False, executor=executor)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    return out, _sweep(out)


def _assert_same_sweep(local, other) -> None:
    (a_out, a), (b_out, b) = local, other
    for m in METHODS:
        ra, rb = a_out / "runs" / f"{m}-s0", b_out / "runs" / f"{m}-s0"
        # The trained tensors, byte for byte (genbound.json also holds the wall-clock training time).
        assert (ra / TENSOR_FILE).read_bytes() == (rb / TENSOR_FILE).read_bytes(), m
        ma, mb = json.loads((ra / META_FILE).read_text()), json.loads((rb / META_FILE).read_text())
        for key in ("method", "hyperparameters", "params", "results", "seed"):
            assert ma.get(key) == mb.get(key), (m, key)
    # The same tables, rows and Kendall tau whichever executor trained the runs.
    assert (a_out / "tables.md").read_text() == (b_out / "tables.md").read_text()
    assert (a_out / "kendall.tex").read_text() == (b_out / "kendall.tex").read_text()
    da, db = a.to_dict(), b.to_dict()
    for key in ("headline", "kendall_tau", "per_method", "correlations"):
        assert da[key] == db[key], key
    assert {r.name: r.bounds for r in a.records} == {r.name: r.bounds for r in b.records}
    assert not list((b_out / "runs").glob(".*.tmp")), "the dead attempt's temporary was cleaned up"
    assert not list((b_out / "runs").glob(".*.sweep.lock")), "locks are released"


def test_ray_sweep_equals_local_and_retries_a_killed_worker(local_sweep, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # 2 CPUs, a small object store (the runs pass only their specs and statuses), nothing on the network.
    ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False, log_to_driver=False,
             configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": WORKER_PATH, "OMP_NUM_THREADS": "1"}})
    try:
        out = tmp_path / "ray"
        result = _sweep(out, executors.RayExecutor(cpus_per_run=1, max_retries=2, fn=crash_once))
        assert {r.name: r.status for r in result.records} == {f"{m}-s0": "trained" for m in METHODS}
        assert (out / "runs" / f"{KILLED}-s0.attempts").read_text() == "2", "killed once, retried once"
        assert (out / "runs" / "lora-s0.attempts").read_text() == "1"
        _assert_same_sweep(local_sweep, (out, result))
        # Resuming from the same directory: everything is finished, nothing is submitted again.
        again = _sweep(out, executors.RayExecutor(fn=crash_once))
        assert {r.status for r in again.records} == {"skipped"}
        assert (out / "runs" / "lora-s0.attempts").read_text() == "1"
        # A run whose worker dies on every attempt is reported as failed after max_retries, not hung.
        spec = sweep.plan(result.preset, [KILLED], [0], tmp_path / "ray-fail", "cpu")[0]
        status = executors.RayExecutor(max_retries=0, fn=crash_once).run([spec])
        assert (spec.path.parent / f"{spec.name}.attempts").read_text() == "1"
        assert status[spec.name].startswith("failed: ") and "died" in status[spec.name].lower(), status
    finally:
        ray.shutdown()


def test_submitit_local_sweep_equals_local_and_resubmits_a_killed_job(local_sweep, tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    from submitit.core import core

    monkeypatch.setenv("PYTHONPATH", WORKER_PATH)
    # submitit waits up to 15 s for the result file of a job that ended without one (slow shared filesystems);
    # here the filesystem is local.
    monkeypatch.setattr(core.Job, "_results_timeout_s", 1)
    out = tmp_path / "submitit"
    ex = executors.SubmititExecutor(folder=tmp_path / "submitit-logs", cluster="local", time_min=10,
                                    max_retries=1, poll_s=0.5, fn=crash_once)
    assert isinstance(ex.executor(), submitit.AutoExecutor)
    result = _sweep(out, ex)
    assert {r.name: r.status for r in result.records} == {f"{m}-s0": "trained" for m in METHODS}
    assert (out / "runs" / f"{KILLED}-s0.attempts").read_text() == "2", "killed once, resubmitted once"
    _assert_same_sweep(local_sweep, (out, result))


def test_cli_executor_options_and_missing_package(local_sweep, tmp_path, monkeypatch, capsys):
    out, _ = local_sweep
    base = ["--preset", "mlp", "--seeds", "0", "--methods", *METHODS, "--steps", str(STEPS), "--no-figures",
            "--no-progress"]
    # A finished sweep through a cluster executor: nothing to submit (the engine is never started).
    assert sweep.main([*base, "--out", str(out), "--executor", "ray", "--cpus-per-run", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {r["status"] for r in data["runs"]} == {"skipped"}
    # Options of another executor, bad values, and a missing engine package: one line, exit 2.
    bad = [["--executor", "local", "--address", "auto"], ["--executor", "ray", "--partition", "gpu"],
           ["--executor", "local", "--gpus-per-run", "1"], ["--executor", "ray", "--cpus-per-run", "0"],
           ["--executor", "submitit", "--gpus-per-run", "0.5"]]
    for extra in bad:
        assert sweep.main([*base, "--out", str(tmp_path / "x"), *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("analysis.sweep: error: --") and "\n" not in err, err
    for package in ("ray", "submitit"):
        monkeypatch.setitem(sys.modules, package, None)  # import fails as if it were not installed
        assert sweep.main([*base, "--out", str(tmp_path / "y"), "--executor", package]) == 2
        err = capsys.readouterr().err
        assert f"needs the '{package}' package" in err and "genbound[cluster]" in err
        assert not (tmp_path / "y" / "runs").exists(), "nothing was started"
    # One cell of a grid: the preset's backbone and dataset replaced (nothing trained here: --tables-only).
    assert sweep.main(["--preset", "cpu-minilm", "--backbone", "mlp", "--dataset", "digits", "--seeds", "0",
                       "--methods", "lora", "--tables-only", "--no-figures", "--out", str(tmp_path / "cell")]) == 0
    capsys.readouterr()
    assert "(backbone mlp, dataset digits in its place)" in (tmp_path / "cell" / "summary.md").read_text()
    with pytest.raises(GenboundError, match="unknown --executor"):
        executors.make_executor("kubernetes", tmp_path)


def test_submitit_slurm_parameters(tmp_path, monkeypatch):
    """The Slurm options reach the sbatch script that submitit writes (checked without a cluster: submitit's
    check for srun is bypassed and nothing is submitted)."""
    pytest.importorskip("submitit")
    from submitit.slurm import slurm

    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    ex = executors.SubmititExecutor(folder=tmp_path, cluster="slurm", partition="gpu", time_min=90,
                                    cpus_per_run=8, gpus_per_run=1, mem_gb=64, array_parallelism=16).executor()
    params = ex._executor.parameters
    assert params["partition"] == "gpu" and params["time"] == 90 and params["gpus_per_node"] == 1
    assert params["cpus_per_task"] == 8 and params["mem"] == "64GB" and params["array_parallelism"] == 16
    script = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB"):
        assert line in script, line


def test_lock_of_a_dead_host_is_taken_over_after_missed_heartbeats(tmp_path):
    """A worker on another node died holding a run's lock: its file stops being touched, and once it is
    older than STALE_BEATS heartbeats the retry (on this node) takes it over; a beating one is never taken."""
    lock = tmp_path / ".run.sweep.lock"
    lock.write_text(json.dumps({"host": "elsewhere.invalid", "pid": 1, "start": "1", "heartbeat": 30.0}))
    assert not locks.try_acquire(lock), "recently touched: its owner may be alive"
    old = lock.stat().st_mtime - locks.STALE_BEATS * 30.0 - 5
    os.utime(lock, (old, old))
    assert locks.try_acquire(lock)
    assert locks.read_owner(lock)["host"] != "elsewhere.invalid"
    locks.release(lock)
    # The holder's heartbeat keeps its lock young.
    lock2 = tmp_path / ".run2.sweep.lock"
    assert locks.try_acquire(lock2)
    os.utime(lock2, (old, old))
    stop = threading.Event()
    t = threading.Thread(target=locks._beat, args=(lock2, stop, 0.05))
    t.start()
    try:
        time.sleep(0.3)
        assert lock2.stat().st_mtime > old + 60
    finally:
        stop.set()
        t.join()
        locks.release(lock2)
