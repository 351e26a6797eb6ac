"""Adapter layers that wrap a frozen ``nn.Linear``: low-rank, column-selector and PaCA column adapters.

An :class:`AdaptedLinear` computes

    y = W x + b + s B (A x)                       lora, lora_plus, asym, cola, rac   (A dense, r x m)
    y = W x + b + s B x[idx]                      cla, rcla, c3la, rc3la             (A = rows of I at idx)
    y = W x + b + (P - P0) x[idx]                 paca: P = W[:, idx] is trained, P0 its start value

where W is the frozen base weight (W0 plus every link already merged). Selector and PaCA layers gather the r
selected input columns instead of multiplying by a dense selector; autograd then keeps only the gathered
(batch, r) slice for the backward pass of B, because ``index_select``'s backward needs the indices alone.
That is where cLA and PaCA save time (no r x m multiply) and activation memory (no trained A to save x for).

Chains (cola, rac, c3la, rc3la): :meth:`AdaptedLinear.next_link` merges the current link into W
(W <- W + s B A) and starts fresh factors (B = 0; a new A for cola / rac; the next column block for c3la /
rc3la). Past links are kept, concatenated, so the total update dW = s [B_1 .. B_k][A_1; ..; A_k] stays
available in factored form (:meth:`AdaptedLinear.update`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .errors import GenboundError
from .methods import Method, column_indices, kaiming_factor
from .update import LayerUpdate


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
            raise GenboundError("fft trains the whole model and has no adapter layer")
        n, m = base.out_features, base.in_features
        method.check_rank([(n, m)], rank)
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.method = method
        self.layer = layer
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.seed = int(seed)
        self.paca_columns = paca_columns
        self.scale = 1.0 if method.family == "column" else self.alpha / self.rank
        self.link = 0
        # Reference path for tests: a dense one-hot selector instead of the gather.
        self.dense_selector = False
        dtype, device = base.weight.dtype, base.weight.device
        self.register_buffer("past_B", torch.zeros(n, 0, dtype=dtype, device=device))
        if method.uses_columns:
            self.register_buffer("past_idx", torch.zeros(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("past_A", torch.zeros(0, m, dtype=dtype, device=device))
        self._start_link()

    # -- factors of the current link ---------------------------------------------------------------

    def _start_link(self) -> None:
        n, m, r, k = self.base.out_features, self.base.in_features, self.rank, self.link
        dtype, device = self.base.weight.dtype, self.base.weight.device
        if self.method.family == "column":
            idx = column_indices(self.method, self.seed, self.layer, m, r, k, self.paca_columns).to(device)
            self._set_buffer("idx", idx)
            start = self.base.weight.detach()[:, idx].clone()
            self._set_buffer("P0", start)
            self._set_param("P", start.clone(), trained=True)
            return
        if self.method.uses_columns:
            self._set_buffer("idx", column_indices(self.method, self.seed, self.layer, m, r, k).to(device))
        else:
            A = kaiming_factor(self.seed, self.layer, k, r, m).to(device, dtype)
            self._set_param("A", A, trained=self.method.a_trained)
        self._set_param("B", torch.zeros(n, r, dtype=dtype, device=device), trained=True)

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
        return self.P - self.P0 if self.method.family == "column" else self.B

    def selector(self, idx: Tensor) -> Tensor:
        """The dense (r, m) one-hot A that a column index vector stands for."""
        A = torch.zeros(idx.numel(), self.base.in_features, dtype=self.base.weight.dtype, device=idx.device)
        A[torch.arange(idx.numel(), device=idx.device), idx] = 1.0
        return A

    # -- forward ------------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.base.weight, self.base.bias)
        if self.method.uses_columns:
            xs = F.linear(x, self.selector(self.idx)) if self.dense_selector else x.index_select(-1, self.idx)
            return y + self.scale * F.linear(xs, self.current_B())
        return y + self.scale * F.linear(F.linear(x, self.A), self.B)

    # -- chains and merges --------------------------------------------------------------------------

    def _current_A(self) -> Tensor:
        return self.selector(self.idx) if self.method.uses_columns else self.A

    @torch.no_grad()
    def current_delta(self) -> Tensor:
        """Dense dW of the current link alone (tests and merges)."""
        return self.scale * self.current_B() @ self._current_A()

    @torch.no_grad()
    def _add_link_to_base(self, B: Tensor, A: Tensor | None, idx: Tensor | None) -> None:
        if idx is not None:
            # Scatter-add the r columns: the exact analogue of W += s B A for a one-hot A.
            self.base.weight.index_add_(1, idx, self.scale * B)
        else:
            self.base.weight.add_(self.scale * (B @ A))

    @torch.no_grad()
    def next_link(self) -> None:
        """Merge the current link into the base weight and start a fresh one (chained methods)."""
        B = self.current_B().detach().clone()
        if self.method.uses_columns:
            self._add_link_to_base(B, None, self.idx)
            self.past_idx = torch.cat([self.past_idx, self.idx])
        else:
            A = self.A.detach().clone()
            self._add_link_to_base(B, A, None)
            self.past_A = torch.cat([self.past_A, A])
        self.past_B = torch.cat([self.past_B, B], dim=1)
        self.link += 1
        self._start_link()

    def update(self) -> LayerUpdate:
        """The total dW of all links, factored: s [B_1 .. B_k] [A_1; ..; A_k]."""
        with torch.no_grad():
            B = torch.cat([self.past_B, self.current_B()], dim=1).detach().clone()
            if self.method.uses_columns:
                cols = torch.cat([self.past_idx, self.idx]).detach().clone()
                A = self.selector(cols)
            else:
                cols = None
                A = torch.cat([self.past_A, self.A.detach()]).clone()
        return LayerUpdate(self.layer, self.base.out_features, self.base.in_features, self.scale, B, A, cols)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain Linear with weight W + (current link), i.e. W0 + dW; the adapter is left unchanged."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        out = out.to(self.base.weight.device, self.base.weight.dtype)
        out.weight.copy_(self.base.weight + self.current_delta())
        if self.base.bias is not None:
            out.bias.copy_(self.base.bias)
        return out


# --------------------------------------------------------------------------------------------------


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


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
        parent, child = _parent(model, name)
        base = getattr(parent, child)
        if not isinstance(base, nn.Linear):
            raise GenboundError(f"layer '{name}' is a {type(base).__name__}, not a Linear; pick Linear targets")
        adapter = AdaptedLinear(base, method, name, rank, alpha, seed, paca_columns)
        setattr(parent, child, adapter)
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
        parent, child = _parent(model, name)
        setattr(parent, child, adapter.merged())
    return model
