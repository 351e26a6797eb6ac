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
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # importing this module (the CLI's compare) must not import torch
    from torch import Tensor, nn

    from ..methods.update import LayerUpdate


@runtime_checkable
class Source(Protocol):
    """A fine-tuning to analyse: metadata (``meta.method``, ``meta.layers``, ``meta.params``, ...), dW, W0 and
    the data spec (None: the source records no data; the caller names it)."""

    kind: str
    path: Path
    meta: Any

    def layer_updates(self) -> dict[str, LayerUpdate]: ...

    def base_weights(self) -> dict[str, Tensor]: ...

    def data_spec(self) -> Any | None: ...


@runtime_checkable
class FullSource(Source, Protocol):
    """A source that also rebuilds its backbone, its data and its model."""

    def load_backbone(self) -> Any: ...

    def load_splits(self) -> Any: ...

    def initial_model(self, device=None) -> nn.Module: ...

    def build_model(self, device=None, merged: bool = False) -> nn.Module: ...

    def trained_parameter_names(self, model: nn.Module) -> list[str]: ...


def is_full(source: Any) -> bool:
    """Whether ``source`` rebuilds its model and data (a genbound checkpoint, a peft adapter with a dataset,
    or a run context over either)."""
    return isinstance(source, FullSource)


def load_source(path: str | Path, backbone: str | None = None, data=None) -> Source:
    """The source at ``path``: a genbound checkpoint, or a peft adapter. With ``data`` (a
    :class:`genbound.sources.peft_source.DataChoice`) a peft adapter is rebuilt on its base model folder
    (``backbone`` or the one it records) as a full source; without, only its factors are read (and W0 from
    ``backbone`` where given)."""
    from .peft_import import is_peft_dir

    if is_peft_dir(path):
        if data is not None:
            from .peft_source import PeftSource

            return PeftSource(path, backbone, data)
        from .peft_import import load_peft

        return load_peft(path, backbone)
    from ..checkpoints.checkpoint import load_checkpoint

    return load_checkpoint(path)
