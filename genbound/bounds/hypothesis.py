"""The trained tensors a data-dependent bound describes, their data-independent start, and how to
evaluate the model they define.

A :class:`Hypothesis` holds ``trained`` (name -> tensor: what training produced and a code must send),
``reference`` (theta_0: the same tensors' values before training, which depend only on the pretrained
weights and the recorded seed: B_0 = 0, A_0 = Kaiming draw per link, head drawn from the seed, W0) and a
map from a set of trained tensors to the parameters of one plain (merged) model, evaluated with
``torch.func.functional_call`` so the model is never rebuilt or mutated. Frozen, seed-drawn factors (asym's
A, selector columns) are not in ``trained``: they cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..device import where
from ..errors import GenboundError
from ..evalset import EvalSet
from ..update import LayerUpdate


@dataclass
class Hypothesis:
    model: nn.Module  # plain model in eval mode
    trained: dict[str, Tensor]
    reference: dict[str, Tensor]
    to_params: Callable[[dict[str, Tensor]], dict[str, Tensor]]
    description: str = ""

    @property
    def num_params(self) -> int:
        return sum(int(t.numel()) for t in self.trained.values())

    def distance_sq(self) -> float:
        return float(sum(((self.trained[k].double() - self.reference[k].double().to(self.trained[k].device)) ** 2)
                         .sum() for k in self.trained))

    @torch.no_grad()
    def error(self, data: EvalSet, tensors: dict[str, Tensor] | None = None, batch_size: int = 256,
              device: torch.device | None = None) -> float:
        """0-1 error on ``data`` of the model defined by ``tensors`` (default: the trained ones)."""
        from torch.func import functional_call

        params = self.to_params(self.trained if tensors is None else tensors)
        device = where(device, self.model)  # None: where the model is
        wrong, total = 0, 0
        for feats, labels in data.batches(batch_size, device):
            logits = functional_call(self.model, params, args=(), kwargs=feats, strict=False)
            wrong += int((logits.argmax(-1) != labels).sum())
            total += int(labels.numel())
        if total == 0:
            raise GenboundError("the training set is empty; a bound needs training examples")
        return wrong / total


def from_module(model: nn.Module, reference: dict[str, Tensor]) -> Hypothesis:
    """A plain module whose parameters named in ``reference`` were trained from those start values."""
    named = dict(model.named_parameters())
    missing = [k for k in reference if k not in named]
    if missing:
        raise GenboundError(f"reference tensors {missing[:3]} are not parameters of the model")
    if not reference:
        raise GenboundError("no trained tensors given; the bound needs at least one")
    for k, v in reference.items():
        if tuple(v.shape) != tuple(named[k].shape):
            raise GenboundError(f"reference for {k} has shape {tuple(v.shape)}, the model {tuple(named[k].shape)}")
    trained = {k: named[k].detach() for k in reference}
    return Hypothesis(model.eval(), trained, {k: v.detach().to(named[k].device) for k, v in reference.items()},
                      lambda t: dict(t), "plain module")


def from_checkpoint(ckpt, device: torch.device | None = None) -> Hypothesis:
    """The coded tensors of a genbound checkpoint: every trained factor (B of each link; A of each link when
    it is trained), the head, or for fft every parameter; theta_0 rebuilt from the pretrained backbone and
    the recorded seed. The model is the merged model; adapted weights are W0 + s B A."""
    from ..methods import kaiming_factor

    device = where(device)  # a checkpoint is read onto the CPU
    meta, method = ckpt.meta, ckpt.method
    model = ckpt.build_model(device, merged=True)
    pristine = ckpt.initial_model(device)
    pristine_params = dict(pristine.named_parameters())
    if not method.adapter:
        trained = {k[len("model."):]: v.to(device) for k, v in ckpt.tensors.items() if k.startswith("model.")}
        reference = {k: pristine_params[k].detach() for k in trained}
        return Hypothesis(model, trained, reference, lambda t: dict(t), "fft: every parameter")
    base = {li.name: pristine.get_submodule(li.name).weight.detach() for li in meta.layers}
    trained: dict[str, Tensor] = {}
    reference: dict[str, Tensor] = {}
    frozen_A: dict[str, Tensor] = {}
    for li in meta.layers:
        B = ckpt.tensors[f"{li.name}.B"].to(device)
        trained[f"{li.name}.B"] = B
        reference[f"{li.name}.B"] = torch.zeros_like(B)
        if method.uses_columns:
            cols = ckpt.tensors[f"{li.name}.columns"].to(device)
            A = torch.zeros(cols.numel(), li.in_features, dtype=B.dtype, device=device)
            A[torch.arange(cols.numel(), device=device), cols] = 1.0
            frozen_A[li.name] = A
        elif method.a_trained:
            trained[f"{li.name}.A"] = ckpt.tensors[f"{li.name}.A"].to(device)
            reference[f"{li.name}.A"] = torch.cat([
                kaiming_factor(meta.seed, li.name, link, meta.rank, li.in_features)
                for link in range(meta.chain)]).to(device, B.dtype)
        else:
            frozen_A[li.name] = ckpt.tensors[f"{li.name}.A"].to(device)
    for k in ("weight", "bias"):
        trained[f"head.{k}"] = ckpt.tensors[f"head.{k}"].to(device)
        reference[f"head.{k}"] = pristine.head.get_parameter(k).detach()
    scale = float(meta.scale)

    def to_params(t: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {"head.weight": t["head.weight"], "head.bias": t["head.bias"]}
        for li in meta.layers:
            A = frozen_A.get(li.name)
            if A is None:
                A = t[f"{li.name}.A"]
            upd = LayerUpdate(li.name, li.out_features, li.in_features, scale, t[f"{li.name}.B"], A)
            out[f"{li.name}.weight"] = base[li.name] + upd.materialize().to(base[li.name].dtype)
        return out

    return Hypothesis(model, trained, reference, to_params, f"{method.name}: trained factors and head")
