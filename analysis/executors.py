"""Where a sweep's runs execute: this process (``local``), Ray tasks (``ray``), or Slurm job arrays (``submitit``).

An executor has one job: given the runs of a sweep (:class:`analysis.sweep.RunSpec`), have each one trained,
wait for them, and report name -> status ("trained", "resumed", "skipped", "failed: <why>", "locked by ...").
The run itself is :func:`analysis.sweep.run_one` (``fn(spec, overwrite, poll, wait_timeout)``), a function
of its spec and of the shared sweep directory only; the executors differ only in where that function is
called. Everything after training (bounds, tables, figures, Kendall tau) is computed by the sweep from the
checkpoints on disk, so it is the same whichever executor trained them (tests/test_cluster.py checks the
checkpoints byte for byte).

- :class:`LocalExecutor`: the runs one after another in this process, claiming each with its lock so that
  several processes on one machine can share a sweep (analysis.sweep.train_runs).
- :class:`RayExecutor`: each run is one Ray task with its CPU / GPU request (``num_cpus``, ``num_gpus``),
  on the cluster at ``address`` or on a local one. A task whose worker died (killed, out of memory, a lost
  node) is retried by Ray (``max_retries``); an exception raised by the run is not retried (it would fail
  again). The retry finds the dead attempt's lock stale (analysis.locks) and its saved state, and resumes.
- :class:`SubmititExecutor`: the runs as one Slurm job array through submitit (``AutoExecutor.map_array``);
  ``cluster="local"`` runs the same jobs as local processes (the tests), ``"debug"`` in this process. A job
  that ended without a result (killed, pre-empted, timed out, node failure) is resubmitted up to
  ``max_retries`` times; a job whose run raised is reported with the exception's last line.

Runs already finished with a matching configuration are not submitted at all, and a finished run with
another configuration is refused before anything is submitted (unless ``overwrite``), as in the local runner.
ray and submitit are imported only when their executor runs: ``pip install 'genbound[cluster]'``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from genbound.core.errors import GenboundError

from .runs import EXECUTORS, RunSpec, finished_run, run_one, train_runs

POLL = 5.0  # seconds between a worker's looks at a run's lock that another live process holds
_REPO = Path(__file__).resolve().parents[1]  # the directory holding the analysis package


class Executor(Protocol):
    name: str
    gpus_per_run: float

    def run(self, specs: list[RunSpec], overwrite: bool = False, progress: bool | None = None) -> dict[str, str]:
        """Train every run of ``specs`` not yet finished; returns name -> status."""


def require(package: str, executor: str) -> Any:
    """Import ``package`` or fail with the one-line fix (exit code 2 at the command line)."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise GenboundError(f"--executor {executor} needs the '{package}' package, which is not installed; "
                            f"pip install 'genbound[cluster]' (or pip install {package})") from None


def pending(specs: list[RunSpec], overwrite: bool) -> tuple[list[RunSpec], dict[str, str]]:
    """(runs to submit, statuses of the runs that need nothing): a finished run with a matching configuration
    is "skipped"; one with another configuration is refused unless ``overwrite`` (the local runner's rule)."""
    todo, status = [], {}
    for spec in specs:
        done, mismatch = finished_run(spec)
        if done and mismatch is None:
            status[spec.name] = "skipped"
            continue
        if done and not overwrite:
            raise GenboundError(f"{spec.path} holds a checkpoint trained with {mismatch}; use another --out, or "
                                "--overwrite to retrain runs whose configuration differs")
        todo.append(spec)
    return todo, status


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def _bar(total: int, desc: str, progress: bool | None):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="run", disable=None if progress is None else not progress)


def _pythonpath() -> str:
    # Workers must import the analysis package, which lives in the repository (not in the genbound wheel):
    # on a cluster the checkout is on the shared filesystem at the same path on every node.
    rest = os.environ.get("PYTHONPATH")
    return str(_REPO) + (os.pathsep + rest if rest else "")


@dataclass
class LocalExecutor:
    """The runs in this process, one after another (several processes may share the sweep directory)."""

    wait: bool = True
    wait_timeout: float | None = None
    name: str = "local"
    gpus_per_run: float = 0

    def run(self, specs: list[RunSpec], overwrite: bool = False, progress: bool | None = None) -> dict[str, str]:
        return train_runs(specs, overwrite=overwrite, wait=self.wait, wait_timeout=self.wait_timeout,
                          progress=progress)


@dataclass
class RayExecutor:
    """Each run as a Ray task requesting ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs, on the cluster at
    ``address`` (``"auto"``: the one this node belongs to; None: a new local one unless Ray is already
    initialized in this process), retried ``max_retries`` times when its worker dies."""

    address: str | None = None
    cpus_per_run: float = 1
    gpus_per_run: float = 0
    mem_gb: float | None = None
    max_retries: int = 3
    wait_timeout: float | None = None
    fn: Callable[..., str] = run_one  # a test replaces it with one that kills its worker
    name: str = "ray"

    def run(self, specs: list[RunSpec], overwrite: bool = False, progress: bool | None = None) -> dict[str, str]:
        todo, status = pending(specs, overwrite)
        if not todo:
            return status
        ray = require("ray", "ray")  # the optional cluster extra: imported only when this executor runs
        started = False
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network at run time
            kwargs: dict[str, Any] = {"runtime_env": {"env_vars": {"PYTHONPATH": _pythonpath()}},
                                      "log_to_driver": False}
            if self.address is None:
                kwargs["include_dashboard"] = False
            else:
                kwargs["address"] = self.address
            ray.init(**kwargs)
            started = True
        try:
            options: dict[str, Any] = {"num_cpus": self.cpus_per_run, "num_gpus": self.gpus_per_run,
                                       "max_retries": self.max_retries, "retry_exceptions": False}
            if self.mem_gb:
                options["memory"] = int(self.mem_gb * 2**30)
            task = ray.remote(self.fn)
            refs = {task.options(name=f"genbound {spec.name}", **options).remote(
                spec, overwrite, POLL, self.wait_timeout): spec for spec in todo}
            with _bar(len(todo), "sweep (ray)", progress) as bar:
                while refs:
                    done, _ = ray.wait(list(refs), num_returns=1)
                    for ref in done:
                        spec = refs.pop(ref)
                        try:
                            status[spec.name] = ray.get(ref)
                        except ray.exceptions.RayError as exc:
                            cause = getattr(exc, "cause", None)
                            status[spec.name] = f"failed: {_one_line(cause if cause is not None else exc)}"
                        bar.set_postfix_str(spec.name)
                        bar.update(1)
        finally:
            if started:
                ray.shutdown()
        return status


@dataclass
class SubmititExecutor:
    """The runs as one Slurm job array (``cluster=None``: Slurm when ``sbatch`` exists, else local processes;
    ``"slurm"``, ``"local"`` or ``"debug"`` to choose), each job with ``cpus_per_run`` CPUs, ``gpus_per_run``
    GPUs, ``mem_gb`` of memory and ``time_min`` minutes on ``partition``; submitit's logs and pickles go to
    ``folder``. Jobs that end without a result are resubmitted up to ``max_retries`` times."""

    folder: Path
    cluster: str | None = None
    partition: str | None = None
    time_min: int = 120
    cpus_per_run: int = 1
    gpus_per_run: int = 0
    mem_gb: float | None = None
    array_parallelism: int | None = None
    max_retries: int = 2
    wait_timeout: float | None = None
    poll_s: float = 10.0  # how often to look at the jobs' states (each look may query sacct)
    slurm_extra: dict[str, Any] = field(default_factory=dict)  # any other submitit slurm_* parameter
    fn: Callable[..., str] = run_one
    name: str = "submitit"

    def executor(self):
        submitit = require("submitit", "submitit")
        ex = submitit.AutoExecutor(folder=str(self.folder), cluster=self.cluster)
        params: dict[str, Any] = {"name": "genbound-sweep", "timeout_min": int(self.time_min),
                                  "cpus_per_task": int(self.cpus_per_run), "tasks_per_node": 1, "nodes": 1}
        if self.gpus_per_run:
            params["gpus_per_node"] = int(self.gpus_per_run)
        if self.mem_gb:
            params["mem_gb"] = self.mem_gb
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.array_parallelism:
            params["slurm_array_parallelism"] = int(self.array_parallelism)
        params.update({k if k.startswith("slurm_") else f"slurm_{k}": v for k, v in self.slurm_extra.items()})
        ex.update_parameters(**params)
        return ex

    def run(self, specs: list[RunSpec], overwrite: bool = False, progress: bool | None = None) -> dict[str, str]:
        todo, status = pending(specs, overwrite)
        if not todo:
            return status
        # the optional cluster extra: imported only when this executor runs
        submitit = require("submitit", "submitit")
        from submitit.core.utils import FailedJobError, UncompletedJobError

        ex = self.executor()
        with _bar(len(todo), f"sweep ({ex.cluster})", progress) as bar:
            for attempt in range(self.max_retries + 1):
                jobs = ex.map_array(self.fn, todo, [overwrite] * len(todo), [POLL] * len(todo),
                                    [self.wait_timeout] * len(todo))
                by_job = {id(job): spec for job, spec in zip(jobs, todo)}
                lost = []
                for job in submitit.helpers.as_completed(jobs, poll_frequency=self.poll_s):
                    spec = by_job[id(job)]
                    try:
                        status[spec.name] = job.result()
                    except UncompletedJobError as exc:  # no result: the job's process died
                        if attempt < self.max_retries:
                            lost.append(spec)
                            bar.set_postfix_str(f"{spec.name} died; resubmitting")
                            continue
                        status[spec.name] = f"failed: no result after {attempt + 1} attempts ({_one_line(exc)})"
                    except FailedJobError as exc:
                        status[spec.name] = f"failed: {_one_line(exc)}"
                    bar.set_postfix_str(spec.name)
                    bar.update(1)
                todo = lost
                if not todo:
                    break
        return status


def make_executor(name: str, out: Path, **options: Any) -> Executor:
    """The executor ``name`` (one of :data:`EXECUTORS`) with the options that apply to it (None = default)."""
    opts = {k: v for k, v in options.items() if v is not None}
    if name == "local":
        return LocalExecutor(**{k: v for k, v in opts.items() if k in ("wait", "wait_timeout")})
    if name == "ray":
        keys = ("address", "cpus_per_run", "gpus_per_run", "mem_gb", "max_retries", "wait_timeout")
        return RayExecutor(**{k: v for k, v in opts.items() if k in keys})
    if name == "submitit":
        keys = ("cluster", "partition", "time_min", "cpus_per_run", "gpus_per_run", "mem_gb", "array_parallelism",
                "max_retries", "wait_timeout")
        folder = opts.pop("folder", None) or Path(out) / "submitit"
        return SubmititExecutor(folder=Path(folder), **{k: v for k, v in opts.items() if k in keys})
    raise GenboundError(f"unknown --executor '{name}'; choose one of {', '.join(EXECUTORS)}")
