"""One run of a sweep and many runs shared between processes: the spec of a run (:class:`RunSpec`), whether
it is already finished (its checkpoint records the same configuration), training one under its lock
(:func:`run_one`, what the cluster executors call) and a list of them in this process (:func:`train_runs`:
resumable, lock-claimed, a finished run never trained again).

Below both analysis.sweep (which plans the runs and reports on them) and analysis.executors (which decide where
the runs are trained), so that neither imports the other's caller.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from genbound.checkpoints.checkpoint import is_checkpoint, load_meta
from genbound.checkpoints.resume import config_difference, state_dir_for
from genbound.core.errors import GenboundError
from genbound.data.datasets import get_dataset
from genbound.models.backbones import get_backbone
from genbound.training.train import train

from . import locks

EXECUTORS = ("local", "ray", "submitit")  # analysis.executors, imported when a sweep runs


@dataclass
class RunSpec:
    method: str
    seed: int
    name: str
    path: Path
    config: Any  # genbound.training.train.TrainConfig

    @property
    def lock(self) -> Path:
        # Not ".<name>.lock": genbound.training.train holds that one itself (output.run_lock) and writes a bare pid in
        # it, which this lock would read as a stale owner record and take over.
        return self.path.parent / f".{self.name}.sweep.lock"


def config_mismatch(hyperparameters: dict[str, Any], config) -> str | None:
    """The first configuration field where a checkpoint's recorded hyperparameters differ from ``config``
    (device and progress do not count: genbound.checkpoints.resume.config_difference), or None when they match."""
    fields = asdict(config)
    diff = config_difference(hyperparameters, fields, keys=fields)
    return None if diff is None else f"{diff[0]}={diff[1]!r} (this sweep: {diff[2]!r})"


def finished_run(spec: RunSpec) -> tuple[bool, str | None]:
    """(is a checkpoint, mismatch or None)."""
    if not is_checkpoint(spec.path):
        return False, None
    return True, config_mismatch(load_meta(spec.path).hyperparameters, spec.config)


class _SplitCache:
    """Tokenized splits shared by the runs of a sweep (tokenizing BBC News for MiniLM takes seconds)."""

    def __init__(self) -> None:
        self.cache: dict[tuple, Any] = {}

    def get(self, config) -> Any:
        key = (config.backbone, config.dataset, config.split_seed, config.max_length)
        if key not in self.cache:
            self.cache[key] = get_dataset(config.dataset).load(get_backbone(config.backbone), config.split_seed,
                                                               config.max_length)
        return self.cache[key]


def _train_one(spec: RunSpec, splits: _SplitCache, overwrite: bool) -> str:
    """Train ``spec`` unless finished; returns the status. The caller holds the run's lock."""
    done, mismatch = finished_run(spec)
    if done and mismatch is None:
        return "skipped"
    if done and not overwrite:
        raise GenboundError(f"{spec.path} holds a checkpoint trained with {mismatch}; use another --out, or "
                            "--overwrite to retrain runs whose configuration differs")
    resumed = state_dir_for(spec.path).exists() and not done
    train(spec.config, spec.path, overwrite=done, resume=not done, splits=splits.get(spec.config))
    return "resumed" if resumed else "trained"


def run_one(spec: RunSpec, overwrite: bool = False, poll: float = 5.0, wait_timeout: float | None = None) -> str:
    """Train one run wherever this is called (this process, a Ray worker, a Slurm job); returns its status.

    The cluster executors (analysis.executors) call this, one call per run. It is a function of ``spec`` and
    of what is on the shared filesystem only: it claims the run's lock (waiting while another live process
    holds it; a dead holder's lock is taken over, see analysis.locks), returns "skipped" for a finished
    matching checkpoint, continues a killed run's saved state ("resumed"), and otherwise trains it
    ("trained"). genbound.training.train writes the checkpoint atomically, so a worker killed part-way never leaves a
    half-written run that a later reader could take for a finished one. A GenboundError (e.g. a diverging
    loss) is returned as "failed: <message>"; anything else propagates, for the engine to report.
    """
    start = time.monotonic()
    while True:
        with locks.held(spec.lock) as mine:
            if mine:
                try:
                    return _train_one(spec, _SplitCache(), overwrite)
                except GenboundError as exc:
                    return f"failed: {exc}"
        if wait_timeout is not None and time.monotonic() - start > wait_timeout:
            owner = locks.read_owner(spec.lock) or {}
            return f"locked by pid {owner.get('pid')} on {owner.get('host')}"
        time.sleep(poll)


def train_runs(specs: list[RunSpec], overwrite: bool = False, wait: bool = True, poll: float = 2.0,
               wait_timeout: float | None = None, progress: bool | None = None) -> dict[str, str]:
    """Train every run not yet finished, claiming each with its lock; returns name -> status.

    Runs another live process holds are retried until it releases them (its checkpoint then exists) or
    dies (its lock is taken over and its saved state resumed); with ``wait=False`` they are reported as
    "locked". A run that fails with a GenboundError (e.g. a diverging loss) is "failed: <message>".
    """
    from tqdm.auto import tqdm

    status: dict[str, str] = {}
    splits = _SplitCache()
    pending = list(specs)
    start = time.monotonic()
    bar = tqdm(total=len(specs), desc="sweep", unit="run", disable=None if progress is None else not progress)
    try:
        while pending:
            waiting = []
            for spec in pending:
                bar.set_postfix_str(spec.name)
                with locks.held(spec.lock) as mine:
                    if not mine:
                        waiting.append(spec)
                        continue
                    try:
                        status[spec.name] = _train_one(spec, splits, overwrite)
                    except GenboundError as exc:
                        if "--overwrite" in str(exc) and "holds a checkpoint" in str(exc):
                            raise
                        status[spec.name] = f"failed: {exc}"
                bar.update(1)
            pending = waiting
            if pending:
                if not wait or (wait_timeout is not None and time.monotonic() - start > wait_timeout):
                    for spec in pending:
                        owner = locks.read_owner(spec.lock) or {}
                        status[spec.name] = f"locked by pid {owner.get('pid')} on {owner.get('host')}"
                    break
                bar.set_postfix_str(f"waiting for {len(pending)} run(s) held by another process")
                time.sleep(poll)
    finally:
        bar.close()
    return status


# -- bounds per checkpoint -----------------------------------------------------------------------------------
