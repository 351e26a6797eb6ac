"""The task loss: cross-entropy per example (classification) or per next token (causal language modelling).

Every genbound model maps ``**features`` to logits; the labels say which task it is:

* classification: labels (N,) class ids, logits (N, C). The loss of an example is CE(logits, label); a split's
  loss is the mean over examples; accuracy is top-1 over examples.
* causal language modelling: labels (N, T) token ids with ``IGNORE`` (-100) at padding, logits (N, T, V).
  Position t predicts token t + 1 (labels shifted left by one, as transformers' ``labels=`` loss does), so a
  sequence of n real tokens has n - 1 targets. A split's loss is the mean over all target tokens of the split
  (token-level, equal to transformers' loss on the split as one batch); accuracy is next-token top-1 over
  target tokens. docs/concepts.md, "Causal language modelling: tokens and sequences".

The examples that are i.i.d. draws, and so N of every bound, are always the rows (sequences for a causal LM);
bounds on the 0-1 loss use :func:`per_example_error`, which for a causal LM is each sequence's next-token error
rate (in [0, 1]), averaged over sequences.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

IGNORE = -100  # transformers' ignore index: padding positions carry no target


def is_causal(labels: Tensor) -> bool:
    """Token labels (N, T) of a causal LM rather than class labels (N,)."""
    return labels.dim() == 2


def lm_labels(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Causal-LM labels: the input ids with padding (attention mask 0) set to IGNORE. Masking by the attention
    mask rather than the pad id keeps a real end-of-sequence token that shares its id with the pad token."""
    return input_ids.masked_fill(attention_mask == 0, IGNORE)


def _shift(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(M, V) predictions at positions 0..T-2 and their (M,) targets at 1..T-1, over the leading dims."""
    v = logits.shape[-1]
    return logits[..., :-1, :].reshape(-1, v), labels[..., 1:].reshape(-1)


def summed_loss(logits: Tensor, labels: Tensor, upcast: bool = True) -> Tensor:
    """Sum of cross-entropies over examples (classification) or target tokens (causal LM), in float32 (or,
    without ``upcast``, in the logits' own dtype: the Hessian differentiates it in float64)."""
    if is_causal(labels):
        x, y = _shift(logits, labels)
        return F.cross_entropy(x.float() if upcast else x, y, reduction="sum", ignore_index=IGNORE)
    return F.cross_entropy(logits.float() if upcast else logits, labels, reduction="sum")


def count(labels: Tensor) -> int:
    """What :func:`summed_loss` sums over: examples, or target tokens (non-ignored labels after the first)."""
    if is_causal(labels):
        return int((labels[:, 1:] != IGNORE).sum())
    return int(labels.shape[0])


def mean_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """The training loss of a batch: mean over examples, or over the batch's target tokens (transformers'
    ``labels=`` loss)."""
    if is_causal(labels):
        x, y = _shift(logits, labels)
        return F.cross_entropy(x, y, ignore_index=IGNORE)
    return F.cross_entropy(logits, labels)


def correct(logits: Tensor, labels: Tensor) -> Tensor:
    """Number of top-1 hits (an int64 scalar) over examples or target tokens."""
    if is_causal(labels):
        x, y = _shift(logits, labels)
        keep = y != IGNORE
        return (x.argmax(-1)[keep] == y[keep]).sum()
    return (logits.argmax(-1) == labels).sum()


def per_example_error(logits: Tensor, labels: Tensor) -> Tensor:
    """(N,) 0-1 loss of each example: wrong or not (classification), or the sequence's next-token error rate
    (causal LM; 0 for a sequence without targets, which the data loaders refuse)."""
    if is_causal(labels):
        pred = logits[:, :-1, :].argmax(-1)
        y = labels[:, 1:]
        keep = y != IGNORE
        wrong = ((pred != y) & keep).sum(1).double()
        return wrong / keep.sum(1).clamp_min(1).double()
    return (logits.argmax(-1) != labels).double()


def per_example_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """(N,) cross-entropy of each example: of its label, or the mean over the sequence's target tokens."""
    if is_causal(labels):
        n, t, v = logits.shape
        ce = F.cross_entropy(logits[:, :-1, :].reshape(-1, v).float(), labels[:, 1:].reshape(-1),
                             reduction="none", ignore_index=IGNORE).view(n, t - 1)
        keep = (labels[:, 1:] != IGNORE).sum(1).clamp_min(1)
        return ce.sum(1) / keep
    return F.cross_entropy(logits.float(), labels, reduction="none")


def point_scores(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per point p of logits (P, n, ...): summed loss (float64) and number of hits over the batch ``labels``."""
    losses, hits = [], []
    for p in range(logits.shape[0]):
        losses.append(summed_loss(logits[p], labels).double())
        hits.append(correct(logits[p], labels).double())
    return torch.stack(losses), torch.stack(hits)


def unit(labels: Tensor) -> str:
    """What a split's loss and accuracy average over."""
    return "token" if is_causal(labels) else "example"
