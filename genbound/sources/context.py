"""The run context: one lazy, cached object per (source, device) that owns what the diagnostics rebuild.

A diagnostic of a checkpoint needs some of: the backbone, the pretrained weights W0 of the adapted layers,
the tokenized splits of the data it was trained on, and the fine-tuned model (adapters or merged). Before
this object each entry point rebuilt them: one ``genbound compare --hessian --landscape`` built the backbone
15 times and loaded the dataset 7 times. A :class:`RunContext` builds each at most once, on first use:

* the backbone (fingerprint checked once) and, through a :class:`BuildCache` that several contexts share,
  the pristine model (pretrained backbone and the head drawn from the run seed) per (backbone, labels,
  seed): two checkpoints of one backbone build it once;
* W0, read straight from the backbone's safetensors (:mod:`genbound.models.pretrained`), the model built only where
  the file cannot tell a layer's orientation;
* the splits, shared by every context of the cache that names the same data, split seed, max length and
  tokenizer; tokenization itself is cached on disk across processes (:mod:`genbound.data.tokcache`);
* the rebuilt models (with adapters, merged), handed out as copies, so that a diagnostic that perturbs
  its model in place cannot change another's; with a base ``dtype`` (bfloat16, float16) their frozen
  weights are cast to it and their forwards run in mixed precision (:func:`genbound.models.precision.cast_base`),
  the trained tensors kept float32.

The context offers the source's interface (``meta``, ``path``, ``method``, ``layer_updates``,
``base_weights``, ``load_splits``, ``initial_model``, ``build_model``, ...; everything else is the source's
own), so that every ``*_from_checkpoint`` entry point takes a context, a loaded source or a path alike
(:func:`context_for`). The diagnostics themselves stay pure functions of (model, parameters, data)
(docs/concepts.md, "Diagnostics").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoints import restore
from ..checkpoints.checkpoint import Checkpoint
from ..core.device import where
from ..models.precision import cast_base, check_precision, dtype_name
from .hypothesis import from_checkpoint
from .source import load_source


@dataclass
class BuildCache:
    """What the contexts of one analysis share: pristine models and splits, keyed by what determines them."""

    pristine: dict[tuple, nn.Module] = field(default_factory=dict)
    splits: dict[tuple, Any] = field(default_factory=dict)


class RunContext:
    """A source (a genbound :class:`~genbound.checkpoints.checkpoint.Checkpoint` or a peft source) on ``device``
    with its
    backbone, W0, splits and models built lazily and kept (module docstring)."""

    def __init__(self, source: Any, device: torch.device | None = None, cache: BuildCache | None = None,
                 dtype: torch.dtype | str | None = None):
        self.source = source
        self.device = where(device)
        self.dtype = check_precision(dtype, self.device)  # of the frozen base (genbound.models.precision)
        self.cache = cache if cache is not None else BuildCache()
        self._backbone = None
        self._w0: dict[str, Tensor] | None = None
        self._splits = None
        self._updates = None
        self._models: dict[bool, nn.Module] = {}

    def __repr__(self) -> str:
        return f"RunContext({self.source!r}, device={self.device}, dtype={dtype_name(self.dtype)})"

    def __getattr__(self, name: str) -> Any:  # everything not cached here is the source's own
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    @property
    def meta(self):
        return self.source.meta

    @property
    def path(self) -> Path:
        return self.source.path

    @property
    def method(self):
        return self.source.method

    def _genbound(self) -> bool:
        return isinstance(self.source, Checkpoint)

    # -- the backbone and W0 -----------------------------------------------------------------------------

    def load_backbone(self):
        """The source's backbone (for a checkpoint: its fingerprint checked), once."""
        if self._backbone is None:
            self._backbone = self.source.load_backbone()
        return self._backbone

    def _pristine(self) -> nn.Module:
        """The shared pristine model of a genbound checkpoint (CPU); callers copy it before changing it."""
        m, backbone = self.meta, self.load_backbone()
        key = (str(backbone.weights), backbone.fingerprint, backbone.task, m.num_labels, m.seed)
        if key not in self.cache.pristine:
            self.cache.pristine[key] = restore.pristine_model(m, self.path, backbone)
        else:
            restore.check_layers(m, self.path, self.cache.pristine[key])
        return self.cache.pristine[key]

    def base_weights(self) -> dict[str, Tensor]:
        """W0 of every adapted layer, (out, in); read from the weights file where it can be, once."""
        if self._w0 is None:
            if self._genbound():
                self._w0 = restore.base_weights(self.meta, self.load_backbone(), self._pristine)
                self.source._base_cache = self._w0  # the factors that need W0 read this one
            else:
                self._w0 = self.source.base_weights()
        return self._w0

    def layer_updates(self):
        """dW of every adapted layer (factored where the method is), once."""
        if self._updates is None:
            if self._genbound() and self.method.factor.needs_base:
                self.base_weights()
            self._updates = self.source.layer_updates()
        return self._updates

    def hypothesis(self, device: torch.device | None = None):
        """The trained hypothesis the bounds perturb (:mod:`genbound.sources.hypothesis`), its model in the
        context's base dtype."""
        device = self.device if device is None else where(device)
        if hasattr(self.source, "hypothesis"):  # a peft source builds its own
            hyp = self.source.hypothesis(device)
            cast_base(hyp.model, self.dtype)
            return hyp
        return from_checkpoint(self, device)  # through this context's models, already cast

    # -- the data ------------------------------------------------------------------------------------------

    def load_splits(self):
        """The splits the source was trained on (a genbound checkpoint: checked against its record), once;
        shared with the other contexts of the cache that name the same data and tokenizer."""
        if self._splits is not None:
            return self._splits
        if not self._genbound():
            self._splits = self.source.load_splits()
            return self._splits

        m, backbone = self.meta, self.load_backbone()
        hp = m.hyperparameters
        key = (m.dataset, tuple(hp.get("text_columns") or ()), hp.get("label_column"), hp.get("split_column"),
               backbone.name, backbone.task, m.split_seed, m.max_length or 128, restore.model_inputs(m))
        if key not in self.cache.splits:
            self.cache.splits[key] = restore.dataset_spec(m).load(backbone, m.split_seed, m.max_length or 128,
                                                                  inputs=restore.model_inputs(m))
        self._splits = restore.check_splits(m, self.path, self.cache.splits[key])
        return self._splits

    @property
    def splits(self):
        return self.load_splits()

    # -- models ----------------------------------------------------------------------------------------------

    def initial_model(self, device: torch.device | None = None) -> nn.Module:
        """A copy of the data-independent starting point (pretrained backbone, head from the seed)."""
        device = self.device if device is None else where(device)
        if not self._genbound():
            return cast_base(self.source.initial_model(device), self.dtype)
        return cast_base(copy.deepcopy(self._pristine()).to(device).eval(), self.dtype)

    def build_model(self, device: torch.device | None = None, merged: bool = False) -> nn.Module:
        """A copy of the fine-tuned model in eval mode (with adapters, or ``merged``: W0 + dW)."""
        device = self.device if device is None else where(device)
        if merged not in self._models:
            if self._genbound():
                self._models[merged] = restore.build_model(self.source, self._pristine(), "cpu", merged,
                                                           copy_pristine=True)
            elif merged:
                self._models[merged] = self.source.build_model("cpu", merged=True)
            else:  # any object with build_model(device) is a source here
                self._models[merged] = self.source.build_model("cpu")
        return cast_base(copy.deepcopy(self._models[merged]).to(device).eval(), self.dtype)


def context_for(source: Any, device: torch.device | None = None, cache: BuildCache | None = None,
                backbone: str | None = None, data=None, dtype: torch.dtype | str | None = None) -> RunContext:
    """``source`` as a run context: a context is returned as it is; a path or a loaded source is wrapped
    (a path loaded by :func:`genbound.sources.source.load_source`) with the base ``dtype``."""
    if isinstance(source, RunContext):
        return source
    if isinstance(source, (str, Path)):
        source = load_source(source, backbone, data)
    return RunContext(source, device, cache, dtype)


def contexts_for(sources, device: torch.device | None = None, backbone: str | None = None,
                 data=None, dtype: torch.dtype | str | None = None) -> list[RunContext]:
    """One context per source, sharing one :class:`BuildCache` (contexts given keep their own)."""
    cache = next((s.cache for s in sources if isinstance(s, RunContext)), None) or BuildCache()
    return [context_for(s, device, cache, backbone, data, dtype) for s in sources]
