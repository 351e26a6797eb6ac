"""What a Hugging Face model is, asked of transformers and of the model itself, never of hand-written tables.

genbound used to know models by special cases: the width of a model's output looked up as ``hidden_size``,
``dim`` or ``d_model`` in config.json (GPT-2 calls it ``n_embd``), the adapted layers checked against the keys
of the weights file (ViT's file says ``vit.encoder.layer.N.attention.attention.query`` while transformers 5
builds ``vit.layers.N.attention.q_proj``), and only ``input_ids`` / ``attention_mask`` kept of what a
tokenizer returns (BERT's segment ids were dropped for sentence pairs). Here each of those is asked instead:

* :func:`empty_model` -- genbound's model for a backbone built from its config on PyTorch's ``meta`` device:
  every module with its name and shape, nothing allocated, no weight read. Module names, Linear shapes, the
  head's input width, the GPT-2 ``Conv1D`` layers genbound holds as Linear, and the adaptable layers come
  from it.
* :func:`forward_inputs` -- the named parameters of the model's ``forward``: what it accepts of a
  tokenizer's or image processor's output.
* :func:`checkpoint_names` -- each key of the weights file mapped to the parameter it loads into, through
  transformers' own key conversion (``transformers.conversion_mapping.get_model_conversion_mapping`` and
  ``transformers.core_model_loading.rename_source_key``, what ``from_pretrained`` itself applies, with the
  base-model prefix added or removed as it does). A key that transformers converts (fuses, splits,
  transposes) rather than renames maps to None: its tensor is not the parameter as stored.
* :func:`text_config` -- ``config.get_text_config()``; attribute aliases (GPT-2's ``n_embd`` as
  ``hidden_size``, ``n_positions`` as ``max_position_embeddings``) are transformers' own ``attribute_map``.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from ..core.readers import model_header
from ..core.shards import weight_paths

# forward parameters that are not model inputs a processor returns: never fed from the data
_NOT_INPUTS = {"self", "labels", "return_dict", "output_attentions", "output_hidden_states", "use_cache",
               "past_key_values", "cache", "cache_position", "inputs_embeds", "head_mask", "logits_to_keep",
               "decoder_inputs_embeds"}


def state_key(backbone) -> tuple:
    """What a backbone's built model depends on: its name, kind, task, weights file (path, size, modification
    time; for a sharded checkpoint its index's and every shard's) and config.json's modification time."""
    stats = tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in weight_paths(Path(backbone.weights)))
    folder = str(backbone.folder) if backbone.folder is not None else ""
    cfg = Path(folder) / "config.json" if folder else None
    cfg_m = cfg.stat().st_mtime_ns if cfg is not None and cfg.is_file() else 0
    return (backbone.name, backbone.kind, backbone.task, str(backbone.weights), folder, stats, cfg_m)


_CACHE_SIZE = 32
_EMPTY: dict[tuple, nn.Module] = {}
_NAMES: dict[tuple, dict[str, str | None]] = {}


def _remember(cache: dict, key: tuple, value):
    if len(cache) >= _CACHE_SIZE:
        cache.pop(next(iter(cache)))
    cache[key] = value
    return value


def empty_model(backbone, num_labels: int = 2) -> nn.Module:
    """genbound's model for ``backbone`` (the same wrapper :meth:`Backbone.build` makes: TaskClassifier,
    CausalLM, TextClassifier or MLPClassifier) with every tensor on the ``meta`` device: names and shapes only.
    Cached per backbone, weights file and config; callers must not modify it."""
    key = (*state_key(backbone), int(num_labels))
    if key not in _EMPTY:
        with torch.device("meta"):
            model = backbone.build_empty(int(num_labels))
        _remember(_EMPTY, key, model)
    return _EMPTY[key]


def forward_inputs(model: nn.Module) -> tuple[str, ...]:
    """The inputs ``model.forward`` accepts by name (its named parameters, less labels and generation or output
    switches); a genbound wrapper's forward is asked through to the transformers model it calls."""
    target = getattr(model, "forward_target", None)
    fn = target() if callable(target) else model.forward
    names = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD) or p.name in _NOT_INPUTS:
            continue
        names.append(p.name)
    return tuple(names)


def text_config(config):
    """The text part of a configuration (itself for a text-only model): transformers' ``get_text_config``."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def max_positions(config) -> int | None:
    """Tokens per sequence the model's position table holds (``max_position_embeddings`` under transformers'
    own name for it, GPT-2's ``n_positions`` included), or None where the model has no such limit."""
    mp = getattr(text_config(config), "max_position_embeddings", None)
    return int(mp) if isinstance(mp, int) and mp > 0 else None


def _conversions(hf: nn.Module):
    """transformers' weight renamings and converters for ``hf`` (what from_pretrained applies), or None
    where the installed transformers has no key conversion (then file keys are the parameter names)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:
        return None
    try:
        transforms = get_model_conversion_mapping(hf)
    except Exception:  # noqa: BLE001 - a model transformers cannot map: keys are taken as they are
        return None
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    return renamings, converters, rename_source_key


def checkpoint_names(backbone) -> dict[str, str | None]:
    """Each key of the backbone's weights file -> the name of the parameter of genbound's model it loads into
    (``backbone.<path>`` for a transformers model, ``head.<...>`` for the head genbound trains), or None where
    it loads into nothing or only through a tensor conversion (transformers' own mapping, module docstring)."""
    key = state_key(backbone)
    if key not in _NAMES:
        _remember(_NAMES, key, dict(_checkpoint_names(backbone)))
    return dict(_NAMES[key])


def _checkpoint_names(backbone) -> list[tuple[str, str | None]]:
    keys = list(model_header(Path(backbone.weights)))
    model = empty_model(backbone)
    if backbone.kind == "mlp":
        params = {n for n, _ in model.named_parameters()}
        return [(k, k if k in params else None) for k in keys]
    hf = model.backbone
    state = dict(hf.state_dict(keep_vars=True))
    head_path = getattr(model, "head_path", None)
    head = {f"{head_path}.{k}": f"head.{k}" for k in model.head.state_dict()} if head_path else {}
    conv = _conversions(hf)
    prefix = getattr(hf, "base_model_prefix", "") or ""
    out = []
    for k in keys:
        if conv is not None:
            renamings, converters, rename = conv
            new, pattern = rename(k, renamings, converters, prefix or None, {**state, **dict.fromkeys(head, 1)})
            if pattern is not None:
                out.append((k, None))
                continue
        else:
            new = k
            if prefix and new.startswith(prefix + ".") and new[len(prefix) + 1:] in state:
                new = new[len(prefix) + 1:]
            elif prefix and f"{prefix}.{new}" in state:
                new = f"{prefix}.{new}"
        if new in head:
            out.append((k, head[new]))
        elif new in state:
            out.append((k, f"backbone.{new}"))
        else:
            out.append((k, None))
    return out


def linear_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(out, in) of every Linear module of ``model`` by name (an empty model's, typically)."""
    return {n: (int(m.out_features), int(m.in_features)) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
