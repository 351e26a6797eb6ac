"""Restoring what a checkpoint was trained on and the model it describes: backbone, data, W0, the model.

* :func:`load_backbone` — the recorded backbone, refused if its weights' fingerprint differs;
* :func:`load_splits` / :func:`check_splits` — the recorded dataset split (name, split seed, max length),
  refused if its classes, size or content digest differ from the record;
* :func:`pristine_model` — the pretrained backbone with the head drawn from the run seed (theta_0 outside the
  adapters, docs/concepts.md, "The data-dependent parameter count D"), every adapted layer checked;
* :func:`base_weights` — W0 of the adapted layers, read from the weights file (:mod:`genbound.models.pretrained`)
  without building the model where the file says enough;
* :func:`build_model` — the fine-tuned model: the pristine one with the trained tensors put back by the
  method's factor kind (:meth:`genbound.methods.factors.Factor.restore`).

The functions take what they need (metadata, a backbone, a pristine model) so that a run context
(:mod:`genbound.sources.context`) can hand each one what it has already built.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor, nn

from ..core.device import where
from ..core.errors import CheckpointError
from ..data.datasets import LEGACY_INPUTS, get_dataset
from ..data.prior_split import prior_splits
from ..models.backbones import Backbone, get_backbone
from ..models.pretrained import pretrained_weights
from .provenance import missing_backbone, missing_dataset


def load_backbone(meta, path: Path | str) -> Backbone:
    """The recorded backbone, refused if its weights' fingerprint differs from the checkpoint's."""
    moved = missing_backbone(meta, path)
    if moved is not None:
        raise moved
    # A model folder trained before task models existed records no task: it was the pooled encoder.
    backbone = get_backbone(meta.backbone, meta.hyperparameters.get("task") or "pooled")
    if backbone.fingerprint != meta.fingerprint:
        raise CheckpointError(
            f"{path}: backbone '{meta.backbone}' has weights {backbone.fingerprint[:19]}… but the "
            f"checkpoint was trained on {meta.fingerprint[:19]}…; use the backbone it was trained on"
        )
    return backbone


def dataset_spec(meta):
    """The recorded dataset (a registered name or the researcher's data file, with its column options)."""
    moved = missing_dataset(meta)
    if moved is not None:
        raise moved
    hp = meta.hyperparameters
    if meta.dataset == "bbc" and "deduplicated" not in (meta.dataset_card or {}):
        # trained before BBC News was deduplicated (genbound.data.datasets): the corpus as it then loaded
        return get_dataset("bbc-raw")
    return get_dataset(meta.dataset, hp.get("text_columns"), hp.get("label_column"), hp.get("split_column"))


def check_splits(meta, path: Path | str, splits):
    """``splits`` if they are the ones the checkpoint was trained on (classes, size, content digest)."""
    if list(splits.classes) != list(meta.classes):
        raise CheckpointError(
            f"{path}: dataset '{meta.dataset}' has classes {list(splits.classes)[:6]}, the checkpoint "
            f"recorded {list(meta.classes)[:6]}; it was trained on other data or edited"
        )
    if splits.sizes["train"] != meta.n_train:
        raise CheckpointError(
            f"{path}: dataset '{meta.dataset}' now has {splits.sizes['train']} training examples, "
            f"the checkpoint recorded {meta.n_train}; the data changed since training"
        )
    if meta.split_digest:
        digest = splits.info.get("_digest") or splits.digest()
        splits.info["_digest"] = digest  # the splits are not changed after loading: hash them once
        if digest != meta.split_digest:
            raise CheckpointError(
                f"{path}: the rebuilt '{meta.dataset}' split (split seed {meta.split_seed}) differs from the "
                "one the checkpoint was trained on; the split seed, tokenizer or data changed since training"
            )
    return splits


def model_inputs(meta) -> tuple[str, ...]:
    """The model inputs the checkpoint was trained on: its record, or for a checkpoint that predates the record
    the ones genbound then fed every model (token ids and attention mask, pixel values, features)."""
    recorded = (meta.hyperparameters or {}).get("model_inputs")
    return tuple(recorded) if isinstance(recorded, list) else LEGACY_INPUTS


def load_splits(meta, path: Path | str, backbone: Backbone):
    """The dataset split the checkpoint was trained on (same name, split seed, max length and model inputs; for a
    run on the prior part of its training set, ``train --prior-fraction``, the training split cut to that part)."""
    full = full_splits(meta, backbone)
    fraction = (meta.hyperparameters or {}).get("prior_fraction")
    if fraction is None:
        return check_splits(meta, path, full)
    return check_splits(meta, path, prior_splits(full, fraction, int(meta.hyperparameters.get("prior_seed", 0))))


def full_splits(meta, backbone: Backbone):
    """The recorded dataset's three splits, uncut and unchecked (:func:`load_splits` checks them; a certificate
    with a data-dependent centre, genbound.bounds.ddprior, counts errors on the part the run did not see)."""
    return dataset_spec(meta).load(backbone, meta.split_seed, meta.max_length or 128, inputs=model_inputs(meta))


def pristine_model(meta, path: Path | str, backbone: Backbone) -> nn.Module:
    """The pretrained backbone with a head of ``num_labels`` drawn from the run seed, on the CPU; every
    recorded layer must be a Linear of the recorded shape."""
    model = backbone.build(meta.num_labels, meta.seed)
    check_layers(meta, path, model)
    return model


def check_layers(meta, path: Path | str, model: nn.Module) -> None:
    names = dict(model.named_modules())
    for li in meta.layers:
        mod = names.get(li.name)
        shape = (li.out_features, li.in_features)
        if not isinstance(mod, nn.Linear) or (mod.out_features, mod.in_features) != shape:
            got = f"{mod.out_features}x{mod.in_features}" if isinstance(mod, nn.Linear) else "no Linear"
            raise CheckpointError(
                f"{path}: layer {li.name} is {li.out_features}x{li.in_features} in the checkpoint but "
                f"{got} in backbone '{meta.backbone}'"
            )


def base_weights(meta, backbone: Backbone, pristine=None) -> dict[str, Tensor]:
    """The pretrained W0 of every adapted layer, (out, in): from the weights file where it tells them, else
    from ``pristine()`` (a callable giving the pristine model)."""
    layers = [(li.name, li.out_features, li.in_features) for li in meta.layers]
    out = pretrained_weights(backbone, layers)
    if out is not None:
        return out
    mods = dict(pristine().named_modules())
    return {li.name: mods[li.name].weight.detach().clone() for li in meta.layers}


def build_model(ckpt, pristine: nn.Module, device: torch.device | None = None, merged: bool = False,
                copy_pristine: bool = False) -> nn.Module:
    """The fine-tuned model in eval mode: ``pristine`` (copied with ``copy_pristine``) with the checkpoint's
    trained tensors put back by its factor kind; with ``merged`` a plain model whose adapted weights are
    W0 + dW."""
    model = copy.deepcopy(pristine) if copy_pristine else pristine
    ckpt.method.factor.restore(model, ckpt, merged)
    model.to(where(device))
    model.eval()
    return model
