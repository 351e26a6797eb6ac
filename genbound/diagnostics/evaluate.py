"""Loss and accuracy of a model over an EvalSet, in eval mode, averaged exactly by example (or token) count.

The empirical generalization gap (docs/concepts.md, "Empirical generalization gap") is G = L_test - L_train
with both losses computed
this way: the same per-example cross-entropy over the full splits at the same checkpoint, never a running
training-loss average. For a causal LM (token labels, genbound.models.losses) the losses and accuracies are means
over the split's target tokens, and the gap is one between token-level means; N is still the number of
sequences (docs/concepts.md, "Causal language modelling: tokens and sequences").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..core.device import where as device_of
from ..core.distributed import Group
from ..core.errors import NonFiniteError
from ..core.progress import bar
from ..core.sharding import lockstep_slices
from ..data.evalset import EvalSet
from ..models.losses import correct as n_correct
from ..models.losses import count, summed_loss
from ..models.precision import dtype_name
from ..sources.context import context_for


@dataclass
class Evaluation:
    loss: float  # mean cross-entropy (nats) per example, or per target token (causal LM)
    accuracy: float
    error: float  # 1 - accuracy (the 0-1 loss)
    n: int  # examples (sequences)
    targets: int | None = None  # target tokens (causal LM), else None
    unit: str = "example"  # what loss and accuracy average over: "example" or "token"


@torch.no_grad()
def evaluate(
    model: nn.Module, data: EvalSet, batch_size: int = 64, device: torch.device | None = None,
    where: str = "evaluation",
    progress: bool | None = False,
) -> Evaluation:
    """Mean cross-entropy and accuracy over ``data`` in eval mode; the model's mode is restored. ``progress``
    shows a bar over the examples (genbound.core.progress: None only on a terminal)."""
    device = device_of(device, model)  # None: where the model is
    was_training = model.training
    model.eval()
    total_loss, correct, targets = 0.0, 0, 0
    shown = bar(total=len(data), desc=f"evaluate {where}", unit="ex", progress=progress)
    try:
        for feats, labels in data.batches(batch_size, device):
            shown.update(len(labels))
            logits = model(**feats)
            total_loss += float(summed_loss(logits, labels))
            correct += int(n_correct(logits, labels))
            targets += count(labels)
    finally:
        shown.close()
        model.train(was_training)
    causal = data.labels.dim() == 2
    if targets == 0:
        raise NonFiniteError(f"{where} has no targets to evaluate; it is empty")
    loss = total_loss / targets
    if not math.isfinite(loss):
        raise NonFiniteError(f"the loss is not finite in {where}; the model or its inputs hold NaN or Inf")
    return Evaluation(loss=loss, accuracy=correct / targets, error=1 - correct / targets, n=len(data),
                      targets=targets if causal else None, unit="token" if causal else "example")


def evaluate_source(source, device: torch.device | None = None, batch_size: int = 64,
                    base_dtype: torch.dtype | str | None = None) -> dict:
    """Train / val / test loss and accuracy and the gap G = L_test - L_train of a genbound checkpoint or a
    peft source (genbound.sources.peft_source), in eval mode over the full splits. For classification every example
    is one sequence (or image) with one label, so losses and the gap are per sequence; for a causal LM they
    are per target token (``unit``, with the token counts in ``target_tokens``), while N (``n_train``, what a
    bound counts) is the number of training sequences either way. ``source`` may be a run context
    (genbound.sources.context). ``base_dtype``: the frozen base's precision (genbound.models.precision; a
    given context keeps its own), recorded as ``base_dtype``."""
    source = context_for(source, device, dtype=base_dtype)
    model = source.build_model(device)
    device = next(model.parameters()).device
    splits = source.load_splits()
    causal = splits.train.labels.dim() == 2
    out: dict = {"source": str(source.path), "kind": getattr(source, "kind", "genbound"),
                 "method": source.meta.method, "dataset": splits.name,
                 "task": "causal-lm" if causal else "classification", "unit": "token" if causal else "sequence",
                 "sizes": splits.sizes, "n_train": len(splits.train), "n_unit": "sequence",
                 "classes": list(splits.classes), "base_dtype": dtype_name(source.dtype)}
    if causal:
        out["target_tokens"] = {}
        out["note"] = ("losses, accuracies (next-token top-1) and the gap are means over target tokens (non-pad "
                       "tokens after the first of each sequence); N for a bound is the number of training "
                       "sequences, the i.i.d. samples")
    for split in ("train", "val", "test"):
        ev = evaluate(model, splits.split(split), batch_size, device, f"the {split} split")
        out[f"{split}_loss"], out[f"{split}_accuracy"] = ev.loss, ev.accuracy
        if causal:
            out["target_tokens"][split] = ev.targets
    out["gap"] = out["test_loss"] - out["train_loss"]
    out["gap_01"] = out["train_accuracy"] - out["test_accuracy"]
    return out


def skipped_final_eval(meta) -> bool:
    """Whether a genbound checkpoint was trained with ``--no-final-eval``: its record then holds no losses, and
    a reader that needs them measures them (:func:`source_results`) or says they are missing."""
    return getattr(meta, "final_eval", True) is False


def source_results(source, device: torch.device | None = None) -> dict:
    """Train / val / test loss and accuracy and the gap of a peft source on its data (or of a genbound
    checkpoint trained with ``--no-final-eval``), measured once by :func:`evaluate_source` and kept in its meta
    in memory (a genbound checkpoint records its own at training)."""
    meta = source.meta
    if not getattr(meta, "results", None):
        rep = evaluate_source(source, device)
        meta.results = {k: v for k, v in rep.items() if k.endswith(("_loss", "_accuracy")) or k in ("gap", "gap_01")}
    return meta.results


def sharded_evaluate(group: Group, lockstep: bool = False):
    """:func:`genbound.diagnostics.evaluate.evaluate` with the examples shared out over the processes: each
    evaluates its
    shard, the summed losses and correct counts are added up, and every process gets the whole set's mean
    (the same value in each, up to the order of the float additions the one-process mean). ``lockstep``: the
    model's frozen base is FSDP-sharded (genbound.core.sharding), so every process runs the same number of
    forward passes."""
    def score(model, data: EvalSet, batch_size: int = 64, device=None, where: str = "evaluation",
              progress: bool | None = False) -> Evaluation:
        share = group.shard(len(data))
        sl = slice(share.start, share.stop)
        local = data.index(sl)
        sums = [0.0, 0.0]
        if lockstep:
            sums = _lockstep_sums(model, local, batch_size, device, where, group)
        elif len(share):
            part = evaluate(model, local, batch_size, device, where, progress=progress)
            sums = [part.loss * part.n, float(round(part.accuracy * part.n))]
        total, correct = group.sum_floats(sums)
        n = len(data)
        return Evaluation(loss=total / n, accuracy=correct / n, error=1 - correct / n, n=n)

    return score


def _lockstep_sums(model: nn.Module, data: EvalSet, batch_size: int, device, where: str, group: Group) -> list[float]:
    """Summed loss and correct count of ``data`` in as many forward passes as every other process runs (each
    gathers the sharded weights); a process whose shard has no examples left runs its pass on none."""
    sums = [0.0, 0.0]
    device = device_of(device, model)
    for sl in lockstep_slices(len(data), batch_size, group):
        chunk = data.index(sl)
        if len(chunk):
            part = evaluate(model, chunk, len(chunk), device, where)
            sums[0] += part.loss * part.n
            sums[1] += float(round(part.accuracy * part.n))
        else:
            with torch.no_grad():
                model(**{k: v.to(device) for k, v in chunk.features.items()})
    return sums
