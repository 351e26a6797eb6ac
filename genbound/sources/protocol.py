"""The source protocol: what every analysed fine-tuning offers (:class:`Source`) and what a full one, which
rebuilds its model and data, adds (:class:`FullSource`). genbound.sources.source describes the kinds and loads
them; this module names the protocol alone, so that code which only asks what a source is (the CLI's compare)
imports neither torch nor the loaders.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: importing the protocol must not import torch
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
