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

from ..core.device import where
from ..core.errors import GenboundError
from ..data.evalset import EvalSet
from ..models.losses import per_example_error


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
        """0-1 error on ``data`` of the model defined by ``tensors`` (default: the trained ones): the mean over
        the N examples of each one's 0-1 loss; for a causal LM each sequence's next-token error rate
        (genbound.models.losses.per_example_error), so that the N i.i.d. samples of the bounds are sequences."""
        from torch.func import functional_call

        params = self.to_params(self.trained if tensors is None else tensors)
        device = where(device, self.model)  # None: where the model is
        wrong, total = 0.0, 0
        for feats, labels in data.batches(batch_size, device):
            logits = functional_call(self.model, params, args=(), kwargs=feats, strict=False)
            wrong += float(per_example_error(logits, labels).sum())
            total += int(labels.shape[0])
        if total == 0:
            raise GenboundError("the training set is empty; a bound needs training examples")
        return wrong / total


def from_checkpoint(ckpt, device: torch.device | None = None) -> Hypothesis:
    """The coded tensors of a genbound checkpoint: what the method's factor says is data-dependent (B of
    each link; A where it is trained; VeRA's vectors; DoRA's magnitude), the head, or for fft every
    parameter; theta_0 from the factor (the pretrained backbone and the recorded seed). The model is the
    merged model; each adapted weight is the factor's W0 + dW of the coded tensors."""
    device = where(device)  # a checkpoint is read onto the CPU
    meta, method = ckpt.meta, ckpt.method
    model = ckpt.build_model(device, merged=True)
    pristine = ckpt.initial_model(device)
    pristine_params = dict(pristine.named_parameters())
    if not method.adapter:
        trained = {k[len("model."):]: v.to(device) for k, v in ckpt.tensors.items() if k.startswith("model.")}
        reference = {k: pristine_params[k].detach() for k in trained}
        return Hypothesis(model, trained, reference, lambda t: dict(t), f"{method.name}: every parameter")
    factor = method.factor
    base = {li.name: pristine.get_submodule(li.name).weight.detach() for li in meta.layers}
    trained: dict[str, Tensor] = {}
    reference: dict[str, Tensor] = {}
    stored: dict[str, dict[str, Tensor]] = {}
    contexts = {}
    for li in meta.layers:
        ctx = ckpt.layer_context(li)
        ctx.base = (lambda name=li.name: base[name])
        layer = {k: v.to(device) for k, v in ckpt.layer_tensors(li.name).items()}
        coded, start = factor.coded(ctx, layer)
        for k in coded:
            trained[f"{li.name}.{k}"] = coded[k]
            reference[f"{li.name}.{k}"] = start[k].to(device)
        stored[li.name], contexts[li.name] = layer, ctx
    for k in [k for k in ("weight", "bias") if f"head.{k}" in ckpt.tensors]:
        trained[f"head.{k}"] = ckpt.tensors[f"head.{k}"].to(device)
        reference[f"head.{k}"] = pristine.head.get_parameter(k).detach()

    def to_params(t: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {k: t[k] for k in ("head.weight", "head.bias") if k in t}
        for li in meta.layers:
            layer = dict(stored[li.name])
            layer.update({k[len(li.name) + 1:]: v for k, v in t.items() if k.startswith(f"{li.name}.")
                          and k[len(li.name) + 1:] in layer})
            out[f"{li.name}.weight"] = factor.effective_weight(contexts[li.name], layer, base[li.name])
        return out

    return Hypothesis(model, trained, reference, to_params, f"{method.name}: trained factors and head")
