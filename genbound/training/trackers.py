"""Diagnostics in the experiment tracker during training: TensorBoard, MLflow, Weights & Biases.

What is logged (the scalar names, the same in every tracker):

* ``train/loss_running`` every ``log_every`` steps (the exponential moving average the progress bar shows),
  ``val/loss`` and ``val/accuracy`` at each epoch's end;
* ``dW/<layer>/spectral_norm``, ``dW/<layer>/frobenius_norm``, ``dW/<layer>/stable_rank`` (||dW||_F^2 /
  ||dW||_2^2) and the overall ``dW/overall/*`` (genbound.diagnostics.spectra), and ``intruders/total``
  (genbound.diagnostics.intruders: singular vectors of W0 + dW whose largest cosine with any of W0's is below
  ``eps``), every ``diagnostics_every`` steps, at each epoch's end and at the end;
* with ``hessian_every`` K, ``hessian/top_eigenvalue`` every K steps (Lanczos on a seeded subset of the
  training split, genbound.diagnostics.hessian);
* at the end the checkpoint's own results: ``final/{train,val,test}_{loss,accuracy}``, ``final/gap``
  (L_test - L_train) and ``final/gap_01``.

The final diagnostics are computed from the same tensors the checkpoint stores, with the functions
``genbound spectra`` uses, so they equal what genbound reports for the checkpoint.

Each tracker is an optional extra (``pip install 'genbound[trackers]'``), imported only when chosen, and none
reaches the network: TensorBoard writes event files, MLflow writes to a local file store (``file://`` under the
log folder; MLflow 3 wants MLFLOW_ALLOW_FILE_STORE=true for it, which genbound sets for its own default store)
unless MLFLOW_TRACKING_URI names another, and Weights & Biases runs in offline mode only.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.errors import GenboundError

TRACKERS = ("tensorboard", "mlflow", "wandb")
_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def _missing(name: str) -> GenboundError:
    return GenboundError(f"--report-to {name} needs the {_PACKAGES[name]} package, which is not installed; "
                         f"pip install 'genbound[trackers]' (or pip install {_PACKAGES[name]})")


class Tracker:
    """One tracker's run: :meth:`log` scalars at a step, :meth:`close` at the end."""

    name = ""

    def log(self, scalars: Mapping[str, float], step: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - interface
        pass


class TensorBoardTracker(Tracker):
    """torch.utils.tensorboard.SummaryWriter (the tensorboard package's event-file writer) into ``directory``."""

    name = "tensorboard"

    def __init__(self, directory: Path, params: Mapping[str, Any] | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard") from None
        self.directory = Path(directory)
        self.writer = SummaryWriter(log_dir=str(self.directory))
        if params:
            self.writer.add_text("genbound/config", "\n".join(f"{k}: {v}" for k, v in params.items()), 0)

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, float(v), int(step))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowTracker(Tracker):
    """An MLflow run through ``mlflow.MlflowClient``: the run already active in this process (the Trainer's
    MLflowCallback starts one), else a new run of experiment ``genbound`` in the store at ``tracking_uri``
    (default: MLFLOW_TRACKING_URI, else a local file store ``<directory>/mlruns``)."""

    name = "mlflow"

    def __init__(self, directory: Path, run_name: str | None = None, params: Mapping[str, Any] | None = None,
                 tracking_uri: str | None = None):
        # MLflow 3 sends usage telemetry unless told not to: nothing genbound runs may reach the network.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        try:
            import mlflow
        except ImportError:
            raise _missing("mlflow") from None
        self.mlflow = mlflow
        active = mlflow.active_run()
        self.owned = active is None
        if active is not None:
            self.client = mlflow.MlflowClient()
            self.run_id = active.info.run_id
        else:
            local = (Path(directory) / "mlruns").resolve().as_uri()  # a file store: nothing leaves the machine
            uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or local
            if uri == local:
                # MLflow 3 keeps the file store only behind this opt-in (its database stores need SQLAlchemy);
                # the local file store is what keeps a run off the network without a server.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            self.client = mlflow.MlflowClient(tracking_uri=uri)
            exp = self.client.get_experiment_by_name("genbound")
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment("genbound")
            self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        self.tracking_uri = self.client.tracking_uri if hasattr(self.client, "tracking_uri") else None
        if params and self.owned:
            from mlflow.entities import Param

            self.client.log_batch(self.run_id, params=[Param(str(k), str(v)[:500]) for k, v in params.items()])

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(step)) for k, v in scalars.items()]
        for i in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def close(self) -> None:
        if self.owned:
            self.client.set_terminated(self.run_id)


class WandbTracker(Tracker):
    """A Weights & Biases run in offline mode (``wandb sync`` uploads it later, if ever); never online."""

    name = "wandb"

    def __init__(self, directory: Path, run_name: str | None = None, params: Mapping[str, Any] | None = None):
        try:
            import wandb
        except ImportError:
            raise _missing("wandb") from None
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(mode="offline", dir=str(directory), project="genbound", name=run_name,
                              config=dict(params or {}), reinit=True)

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        self.run.log({k: float(v) for k, v in scalars.items()}, step=int(step))

    def close(self) -> None:
        self.run.finish()


def open_trackers(names: Sequence[str], directory: str | Path, run_name: str | None = None,
                  params: Mapping[str, Any] | None = None) -> list[Tracker]:
    """One tracker per name in ``names`` (each imported only here), logging under ``directory``."""
    bad = [n for n in names if n not in TRACKERS]
    if bad:
        raise GenboundError(f"--report-to {bad[0]}: unknown tracker; choose from {', '.join(TRACKERS)}")
    directory = Path(directory)
    out: list[Tracker] = []
    for name in dict.fromkeys(names):
        if name == "tensorboard":
            out.append(TensorBoardTracker(directory / "tensorboard", params))
        elif name == "mlflow":
            out.append(MLflowTracker(directory, run_name, params))
        else:
            out.append(WandbTracker(directory, run_name, params))
    return out


def update_diagnostics(updates: Mapping[str, Any], base: Mapping[str, Any] | None = None, *, top_k: int = 10,
                       eps: float = 0.5, device=None) -> dict[str, float]:
    """The cheap diagnostics of dW: per layer and overall ||dW||_2, ||dW||_F and the stable rank
    (genbound.diagnostics.spectra), and with the pretrained weights ``base`` the intruder count
    (genbound.diagnostics.intruders)."""
    from ..diagnostics.intruders import intruders
    from ..diagnostics.spectra import spectra

    out: dict[str, float] = {}
    if not updates:
        return out
    sp = spectra(dict(updates), top_k=top_k, device=device, progress=False)
    for layer in sp.layers:
        out[f"dW/{layer.name}/spectral_norm"] = float(layer.spectral_norm)
        out[f"dW/{layer.name}/frobenius_norm"] = float(layer.frobenius_norm)
        out[f"dW/{layer.name}/stable_rank"] = float(layer.stable_rank)
    out["dW/overall/spectral_norm"] = float(sp.overall.spectral_norm)
    out["dW/overall/frobenius_norm"] = float(sp.overall.frobenius_norm)
    out["dW/overall/mean_stable_rank"] = float(sp.overall.mean_stable_rank)
    if base is not None:
        ir = intruders(dict(base), dict(updates), k=top_k, eps=eps, device=device, progress=False)
        out["intruders/total"] = float(ir.total)
    return {k: v for k, v in out.items() if math.isfinite(v)}


def adapter_diagnostics(adapters: Mapping[str, Any], **kw: Any) -> dict[str, float]:
    """:func:`update_diagnostics` of genbound's live adapters (genbound.methods.adapters.AdaptedLinear): dW = the total
    update of all links, W0 = the effective weight minus dW (the pretrained weight, merged links removed)."""
    import torch

    with torch.no_grad():
        updates = {n: ad.update() for n, ad in adapters.items()}
        base = {n: (ad.merged().weight - updates[n].to(ad.base.weight.device).materialize()).detach().cpu()
                for n, ad in adapters.items()}
    return update_diagnostics({n: u.to("cpu") for n, u in updates.items()}, base, **kw)


class TrainMonitor:
    """What genbound.training.train calls during a run (``train(..., monitor=...)``) to log to the trackers: the running
    loss every ``log_every`` steps, the diagnostics every ``diagnostics_every`` steps (None: at each epoch's
    end only) and the validation fit at each epoch's end, the checkpoint's results at the end."""

    def __init__(self, trackers: Sequence[Tracker], log_every: int = 10, diagnostics_every: int | None = None,
                 top_k: int = 10, eps: float = 0.5, hessian_every: int | None = None, hessian_samples: int = 256,
                 seed: int = 0):
        if log_every < 1 or any(x is not None and x < 1 for x in (diagnostics_every, hessian_every)):
            raise GenboundError("--log-every, --diagnostics-every and --hessian-every must be positive numbers of "
                                "steps")
        self.hessian_every, self.hessian_samples, self.seed = hessian_every, int(hessian_samples), int(seed)
        self.model = self.evalset = self.device = None
        self.trackers = list(trackers)
        self.log_every, self.diagnostics_every = int(log_every), diagnostics_every
        self.top_k, self.eps = top_k, eps
        self.logged: dict[int, dict[str, float]] = {}  # every value sent, by step (what the tests read back)

    def _log(self, scalars: Mapping[str, float], step: int) -> None:
        if not scalars:
            return
        self.logged.setdefault(int(step), {}).update(scalars)
        for t in self.trackers:
            t.log(scalars, step)

    def _diagnostics(self, adapters, step: int) -> None:
        if adapters:
            self._log(adapter_diagnostics(adapters, top_k=self.top_k, eps=self.eps), step)

    def attach(self, model, train_split, device) -> None:
        """The live model and its training split, for the Hessian (genbound.training.train calls this once)."""
        self.model, self.device = model, device
        if self.hessian_every is not None:
            self.evalset = train_split.subset(self.hessian_samples, self.seed)

    def _hessian(self, step: int) -> None:
        """The top eigenvalue of the training loss's Hessian in the trained parameters (Lanczos,
        genbound.diagnostics.hessian) on a fixed seeded subset of the training split. The global random state is
        forked so that training continues exactly as without it (hessian_spectrum leaves the model as it was)."""
        import torch

        from ..diagnostics.hessian import hessian_spectrum

        trained = [n for n, p in self.model.named_parameters() if p.requires_grad]
        with torch.random.fork_rng(devices=[self.device] if getattr(self.device, "type", "") == "cuda" else []):
            rep = hessian_spectrum(self.model, "trained", self.evalset, top_k=1, trace=False, density=False,
                                   device=self.device, seed=self.seed, trained=trained, progress=False)
        if rep.eigen is not None and len(rep.eigen.top):
            self._log({"hessian/top_eigenvalue": float(rep.eigen.top[0])}, step)

    def on_step(self, step: int, running_loss: float, adapters) -> None:
        if step % self.log_every == 0:
            self._log({"train/loss_running": running_loss}, step)
        if self.diagnostics_every is not None and step % self.diagnostics_every == 0:
            self._diagnostics(adapters, step)
        if self.hessian_every is not None and self.evalset is not None and step % self.hessian_every == 0:
            self._hessian(step)

    def on_epoch(self, step: int, val_loss: float, val_accuracy: float | None, adapters) -> None:
        self._log({"val/loss": val_loss, **({"val/accuracy": val_accuracy} if val_accuracy is not None else {})},
                  step)
        self._diagnostics(adapters, step)

    def on_end(self, step: int, results: Mapping[str, float], adapters) -> None:
        self._log({f"final/{k}": float(v) for k, v in results.items() if v is not None}, step)
        self._diagnostics(adapters, step)

    def close(self) -> None:
        for t in self.trackers:
            t.close()
