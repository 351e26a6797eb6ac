"""Adapter layers that wrap a frozen ``nn.Linear`` and delegate to their method's factor kind.

An :class:`AdaptedLinear` holds the frozen base W (W0 plus every link already merged), the run's rank,
scale s = ``method.scale(alpha, r)`` and seed, and the factors of the current link; what they are and how
the layer computes is the factor kind's (:mod:`genbound.methods.factors`):

    y = W x + b + s B (A x)                       lora, lora_plus, asym, cola, rac   (A dense, r x m)
    y = W x + b + s B x[idx]                      cla, rcla, c3la, rc3la             (A = rows of I at idx)
    y = W x + b + (P - P0) x[idx]                 paca: P = W[:, idx] is trained, P0 its start value
    y = W x + b + b_v * (B (d * (A x)))           vera (A, B frozen and shared per shape)
    y = (W - s B0 A0) x + b + s B (A x)           pissa (the base is the residual)
    y = m / ||W + s B A||_row * (W x + s B A x) + b   dora

Selector and PaCA layers gather the r selected input columns instead of multiplying by a dense selector;
autograd then keeps only the gathered (batch, r) slice for the backward pass of B, because
``index_select``'s backward needs the indices alone. That is where cLA and PaCA save time (no r x m
multiply) and activation memory (no trained A to save x for).

Chains (cola, rac, c3la, rc3la): :meth:`AdaptedLinear.next_link` merges the current link into W
(W <- W + s B A) and starts fresh factors (B = 0; a new A for cola / rac; the next column block for c3la /
rc3la). Past links are kept, concatenated, so the total update dW = s [B_1 .. B_k][A_1; ..; A_k] stays
available in factored form (:meth:`AdaptedLinear.update`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..core.errors import GenboundError
from .update import LayerUpdate, one_hot_selector

if TYPE_CHECKING:  # annotations only: the catalogue builds on the factor kinds, which attach adapters
    from .catalogue import Method


class AdaptedLinear(nn.Module):
    """A frozen Linear plus one method's trainable update (see module docstring)."""

    def __init__(
        self,
        base: nn.Linear,
        method: Method,
        layer: str,
        rank: int,
        alpha: float,
        seed: int,
        paca_columns: str = "random",
    ):
        super().__init__()
        if not method.adapter:
            raise GenboundError(f"{method.name} trains the whole model and has no adapter layer")
        n, m = base.out_features, base.in_features
        method.check_rank([(n, m)], rank)
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.method = method
        self.factor = method.factor
        self.layer = layer
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.seed = int(seed)
        self.paca_columns = paca_columns
        self.scale = method.scale(self.alpha, self.rank)
        self.link = 0
        # Reference path for tests: a dense one-hot selector instead of the gather.
        self.dense_selector = False
        self.factor.init_layer(self)
        self.factor.start_link(self)

    # -- factors of the current link (set by the factor kind) -----------------------------------------

    def _start_link(self) -> None:
        """(Re)start the current link's factors from the base weight and the seed."""
        self.factor.start_link(self)

    def _set_buffer(self, name: str, value: Tensor) -> None:
        if name in self._buffers:
            self._buffers[name] = value
        else:
            self.register_buffer(name, value)

    def _set_param(self, name: str, value: Tensor, trained: bool) -> None:
        """(Re)set a factor in place, so an optimizer holding the Parameter keeps holding it."""
        current = self._parameters.get(name) if trained else None
        if current is not None and current.shape == value.shape:
            with torch.no_grad():
                current.copy_(value)
            return
        if trained:
            self.register_parameter(name, nn.Parameter(value))
        else:
            self._set_buffer(name, value)

    def trained_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self._parameters.items() if p is not None and p.requires_grad}

    def current_B(self) -> Tensor:
        """The current link's B (for PaCA, P - P0: the change of the trained columns)."""
        return self.factor._current_B(self)

    def selector(self, idx: Tensor) -> Tensor:
        """The dense (r, m) one-hot A that a column index vector stands for."""
        return one_hot_selector(idx, self.base.in_features, self.base.weight.dtype)

    # -- forward, chains, merges ------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        return self.factor.forward(self, x)

    @torch.no_grad()
    def current_delta(self) -> Tensor:
        """Dense change of the current link relative to the base weight (tests and merges)."""
        return self.factor.current_delta(self)

    @torch.no_grad()
    def next_link(self) -> None:
        """Merge the current link into the base weight and start a fresh one (chained methods)."""
        self.factor.next_link(self)

    def update(self) -> LayerUpdate:
        """The total dW of all links relative to the pretrained W0 (factored where the kind allows)."""
        return self.factor.update(self)

    def checkpoint_tensors(self) -> dict[str, Tensor]:
        """This layer's checkpoint tensors by suffix (``<layer>.<suffix>``)."""
        return self.factor.tensors(self)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain Linear with the weight the forward applies (W0 + dW); the adapter is left unchanged."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        out = out.to(self.base.weight.device, self.base.weight.dtype)
        out.weight.copy_(self.factor.effective_weight_live(self))
        if self.base.bias is not None:
            out.bias.copy_(self.base.bias)
        return out


# --------------------------------------------------------------------------------------------------


def attach_adapters(
    model: nn.Module,
    method: Method,
    layers: list[str],
    rank: int,
    alpha: float,
    seed: int,
    paca_columns: str = "random",
) -> dict[str, AdaptedLinear]:
    """Wrap each named Linear of ``model`` in an :class:`AdaptedLinear` (in place) and freeze everything
    except the adapters' trained factors and the head. For fft, only set every parameter trainable."""
    if not method.adapter:
        for p in model.parameters():
            p.requires_grad_(True)
        return {}
    for p in model.parameters():
        p.requires_grad_(False)
    adapters: dict[str, AdaptedLinear] = {}
    for name in layers:
        base = model.get_submodule(name)
        if not isinstance(base, nn.Linear):
            raise GenboundError(f"layer '{name}' is a {type(base).__name__}, not a Linear; pick Linear targets")
        adapter = AdaptedLinear(base, method, name, rank, alpha, seed, paca_columns)
        model.set_submodule(name, adapter)
        adapters[name] = adapter
    for p in model.head.parameters():
        p.requires_grad_(True)
    return adapters


def find_adapters(model: nn.Module) -> dict[str, AdaptedLinear]:
    return {a.layer: a for a in model.modules() if isinstance(a, AdaptedLinear)}


@torch.no_grad()
def merge_adapters(model: nn.Module) -> nn.Module:
    """Replace every AdaptedLinear by its merged Linear (W0 + dW), in place; returns the model."""
    for name, adapter in find_adapters(model).items():
        model.set_submodule(name, adapter.merged())
    return model


def trained_tensors(model: nn.Module, adapters: dict[str, AdaptedLinear], full: bool) -> dict[str, Tensor]:
    """The checkpoint's tensors (see genbound.checkpoints.checkpoint): factors of all links, head; fft: everything."""
    if full:
        return {f"model.{k}": p.detach().clone() for k, p in model.named_parameters()}
    out: dict[str, Tensor] = {}
    for name, ad in adapters.items():
        for suffix, t in ad.checkpoint_tensors().items():
            out[f"{name}.{suffix}"] = t
    for k in ("weight", "bias"):  # by attribute: a parametrized head (subspace training) computes them
        t = getattr(model.head, k, None)
        if t is not None:  # decoders' score layer has no bias
            out[f"head.{k}"] = t.detach().clone()
    return out
