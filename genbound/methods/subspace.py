"""Training in a random subspace: theta = theta_0 + P w (Li et al. 2018; Lotfi et al. 2022; docs/concepts.md,
section "Certificates").

theta is the flat vector of a model's trainable tensors (for an adapter method: every trained factor and the
head; for fft: every parameter), theta_0 their data-independent start (the values right after the adapters are
attached: pretrained W0, B_0 = 0, A_0 and the head drawn from the seed), and w in R^d the only trained vector.

P is a seeded, structured D x d projection that is never held in memory as a dense matrix: the first d columns
of a Kronecker product Q1 (x) Q2, with Q1 (D1, d1) and Q2 (D2, d2) standard Gaussian scaled by
1 / sqrt(D1 D2), D1 D2 >= D and d1 d2 >= d (the last D1 D2 - D rows are dropped). So every column of P has
squared norm about 1 and

    (P w)[i D2 + k] = (Q1 W Q2^T)[i, k],   W = reshape(pad(w, d1 d2), (d1, d2)),

which costs O(D (d2 + d1 d2 / D2)) time and O(D1 d1 + D2 d2) memory. Each tensor computes only its own slice
of P w (the rows of Q1 it touches), through ``torch.nn.utils.parametrize``, so the model stays an ordinary
module: ``model(x)``, ``model.head.weight``, the adapters' ``update()`` all see theta_0 + P w.

Chained methods: each link j of a chain is its own subspace (projection drawn from (seed, link j)), with its
own w_j of dimension d, started after the previous link is merged into the base weight; the code sends
w_1 .. w_k, and the decoder replays the chain (link j's theta_0 is the state after link j - 1 is merged,
which is a function of w_1 .. w_{j-1} and the seed only).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..core.device import where
from ..core.errors import GenboundError
from .catalogue import layer_generator

MIN_DIM = 1


class KroneckerProjection(nn.Module):
    """P: R^d -> R^D, the first d columns (and D rows) of Q1 (x) Q2 (module docstring)."""

    def __init__(self, D: int, d: int, seed: int, link: int = 0, dtype: torch.dtype = torch.float32):
        super().__init__()
        if d < MIN_DIM:
            raise GenboundError(f"the subspace dimension must be at least {MIN_DIM}, got {d}; "
                                "pass --subspace-dim d > 0")
        if d > D:
            raise GenboundError(f"the subspace dimension {d} exceeds the {D} trainable parameters; pass "
                                f"--subspace-dim at most {D}")
        self.D, self.d, self.seed, self.link = int(D), int(d), int(seed), int(link)
        self.d1 = math.ceil(math.sqrt(d))
        self.d2 = math.ceil(d / self.d1)
        self.D1 = math.ceil(math.sqrt(D))
        self.D2 = math.ceil(D / self.D1)
        scale = 1.0 / math.sqrt(self.D1 * self.D2)
        g1 = layer_generator(seed, "subspace", f"Q1-link{link}")
        g2 = layer_generator(seed, "subspace", f"Q2-link{link}")
        self.register_buffer("Q1", (torch.randn(self.D1, self.d1, generator=g1, dtype=torch.float64)
                                    * scale).to(dtype), persistent=False)
        self.register_buffer("Q2", torch.randn(self.D2, self.d2, generator=g2, dtype=torch.float64).to(dtype),
                             persistent=False)

    def _core(self, w: Tensor) -> Tensor:
        pad = self.d1 * self.d2 - self.d
        if pad:
            w = torch.cat([w, w.new_zeros(pad)])
        return w.reshape(self.d1, self.d2)

    def rows(self, w: Tensor, start: int, stop: int) -> Tensor:
        """(P w)[start:stop], computing only the rows of Q1 that the slice touches."""
        i0, i1 = start // self.D2, (stop - 1) // self.D2 + 1
        block = self.Q1[i0:i1] @ (self._core(w) @ self.Q2.T)  # (i1 - i0, D2)
        off = start - i0 * self.D2
        return block.reshape(-1)[off: off + stop - start]

    def forward(self, w: Tensor) -> Tensor:
        return self.rows(w, 0, self.D)

    def dense(self) -> Tensor:
        """The D x d matrix itself (tests only: small D)."""
        full = torch.kron(self.Q1, self.Q2)  # (D1 D2, d1 d2); column a d2 + b = Q1[:, a] (x) Q2[:, b]
        return full[: self.D, : self.d]


class _Slice(nn.Module):
    """Parametrization of one tensor: original (theta_0, frozen) + its slice of P w, reshaped."""

    def __init__(self, space: Subspace, start: int, stop: int):
        super().__init__()
        self.space = [space]  # a list, so the shared Subspace is not registered as this module's child
        self.start, self.stop = start, stop

    def forward(self, original: Tensor) -> Tensor:
        space = self.space[0]
        delta = space.projection.rows(space.value(), self.start, self.stop)
        return original + delta.reshape(original.shape).to(original.dtype)


class Subspace(nn.Module):
    """w (the trained vector) and P for one link; :func:`attach_subspace` wires it into a model."""

    def __init__(self, names: list[str], shapes: list[tuple[int, ...]], d: int, seed: int, link: int = 0,
                 device: torch.device | None = None):
        super().__init__()
        device = where(device)  # a fresh subspace: the CPU unless a device is given
        self.names = list(names)
        self.shapes = [tuple(s) for s in shapes]
        self.sizes = [math.prod(s) for s in self.shapes]
        D = sum(self.sizes)
        self.projection = KroneckerProjection(D, d, seed, link).to(device)
        self.w = nn.Parameter(torch.zeros(d, device=device))
        self.link = int(link)
        self.override: Tensor | None = None  # quantization-aware training substitutes q(w) for w

    def value(self) -> Tensor:
        return self.w if self.override is None else self.override

    @property
    def D(self) -> int:
        return self.projection.D

    @property
    def d(self) -> int:
        return self.projection.d


def trainable_names(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    modname, _, attr = name.rpartition(".")
    return (model.get_submodule(modname) if modname else model), attr


def attach_subspace(model: nn.Module, d: int, seed: int, link: int = 0) -> Subspace:
    """Freeze every trainable tensor of ``model`` at its current value (theta_0) and make it
    theta_0 + (P w)[its slice]; returns the Subspace, whose ``w`` (zeros) is the only trainable tensor.
    Tensors are ordered as ``model.named_parameters()`` lists them."""
    params = trainable_names(model)
    if not params:
        raise GenboundError("the model has no trainable tensors to put in a subspace")
    device = params[0][1].device
    space = Subspace([n for n, _ in params], [tuple(p.shape) for _, p in params], d, seed, link, device)
    start = 0
    for (name, p), size in zip(params, space.sizes):
        p.requires_grad_(False)
        owner, attr = _owner(model, name)
        parametrize.register_parametrization(owner, attr, _Slice(space, start, start + size), unsafe=True)
        start += size
    model.subspace = space  # registered: model.parameters() now yields w (and the frozen originals)
    return space


def detach_subspace(model: nn.Module) -> Subspace:
    """Bake theta_0 + P w into plain parameters again (trainable, as before :func:`attach_subspace`);
    returns the Subspace that was attached."""
    space = getattr(model, "subspace", None)
    if not isinstance(space, Subspace):
        raise GenboundError("the model has no subspace attached")
    with torch.no_grad():
        for name in space.names:
            owner, attr = _owner(model, name)
            parametrize.remove_parametrizations(owner, attr, leave_parametrized=True)
            getattr(owner, attr).requires_grad_(True)
    del model.subspace
    return space


@torch.no_grad()
def set_w(space: Subspace, w: Tensor) -> None:
    if tuple(w.shape) != (space.d,):
        raise GenboundError(f"w has shape {tuple(w.shape)}, the subspace has dimension {space.d}")
    space.w.copy_(w.to(space.w.dtype))


def link_dims(d: int, links: int) -> list[int]:
    """How a total subspace dimension d is split over the k links of a chain: d // k each, the first
    d mod k links one more (so a chain codes d numbers in all, like every other method)."""
    if links < 1:
        raise GenboundError(f"a chain has at least one link, got {links}")
    if d < links:
        raise GenboundError(f"--subspace-dim {d} is smaller than the {links} links of the chain; pass at least {links}")
    return [d // links + (1 if j < d % links else 0) for j in range(links)]


def next_link_subspace(model: nn.Module, adapters: dict, optimizer: torch.optim.Optimizer, d: int, seed: int,
                       link: int) -> Subspace:
    """At a chain boundary: bake link j's theta into the parameters, merge every adapter's link into its
    base weight (``next_link``), attach link j + 1's subspace and give the optimizer its fresh w (with no state)."""
    old = detach_subspace(model)
    for ad in adapters.values():
        ad.next_link()
    space = attach_subspace(model, d, seed, link)
    for group in optimizer.param_groups:
        if any(p is old.w for p in group["params"]):
            group["params"] = [space.w if p is old.w else p for p in group["params"]]
    optimizer.state.pop(old.w, None)
    return space


SUBSPACE_FILE = "subspace.safetensors"  # w of every link, keys w.link<j>, beside tensors.safetensors


def subspace_record(spaces: list[Subspace]) -> dict:
    """What a checkpoint records about its subspace (in ``params``): d in all and D (per link: link_dims)."""
    return {"subspace_dim": sum(s.d for s in spaces), "subspace_D": spaces[0].D,
            "data_dependent": sum(s.d for s in spaces)}
