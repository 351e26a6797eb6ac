"""What every analysed fine-tuning is: a source, and the one loader for all of them.

A source is a genbound checkpoint (:class:`genbound.checkpoints.checkpoint.Checkpoint`), a peft adapter read alone
(:class:`genbound.sources.peft_import.PeftCheckpoint`: factors, and W0 when its base is known) or a peft adapter on
its base model folder with a dataset (:class:`genbound.sources.peft_source.PeftSource`). Each offers
:class:`Source`: its metadata, the factored layer updates dW (docs/concepts.md, "Factored update spectra"),
the base weights W0 and the data spec it is evaluated on, or None where it records none. A *full* source
(:class:`FullSource`) also rebuilds its backbone, data and model, which the data-dependent diagnostics need
(bounds, Hessian, landscape, evaluation); a run context (:mod:`genbound.sources.context`) caches those.

:func:`load_source` tells the kinds apart by their files (``genbound.json`` or ``adapter_config.json``), never
by executing anything.
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoints.checkpoint import load_checkpoint
from .peft_import import is_peft_dir, load_peft
from .peft_source import PeftSource
from .protocol import FullSource, Source, is_full
from .tasks import check_checkpoint_task

__all__ = ["FullSource", "Source", "is_full", "load_any", "load_source"]


def load_source(path: str | Path, backbone: str | None = None, data=None, dataset: str | None = None,
                task: str | None = None) -> Source:
    """The source at ``path``: a genbound checkpoint, or a peft adapter. With ``data`` (a
    :class:`genbound.sources.peft_source.DataChoice`) a peft adapter is rebuilt on its base model folder
    (``backbone`` or the one it records) as a full source; without, only its factors are read (and W0 from
    ``backbone`` where given). A genbound checkpoint that was moved is pointed at its model folder and data by
    ``backbone`` and ``dataset`` (default: ``data.dataset``), each checked by fingerprint
    (genbound.checkpoints.provenance); ``task`` must then be the one it was trained for."""
    if is_peft_dir(path):
        if data is not None:
            return PeftSource(path, backbone, data, task)
        return load_peft(path, backbone)
    ckpt = load_checkpoint(path, backbone, dataset or getattr(data, "dataset", None))
    if task is not None:
        check_checkpoint_task(ckpt.meta, ckpt.path, task)
    return ckpt


def load_any(path: str | Path, backbone=None):
    """A genbound checkpoint or a peft adapter's factors (:func:`load_source` without data); both give
    ``.meta``, ``.layer_updates()`` and ``.base_weights()``."""
    return load_source(path, backbone)
