"""The method catalogue: the one place where each of the eleven fine-tuning methods is defined.

Training, the bounds and the reports all read :data:`METHODS`. Definitions follow "Beyond LoRA: Is
Sparsity-Induced Adaptation Better?" (arXiv 2606.13767); docs/concepts.md, "The eleven methods". A pretrained layer has
W0 of shape (n, m) = (out, in); every adapter adds dW = s B A with s = alpha / r:

==========  =====================================  ===========  ============================  =======
method      update                                 trained      frozen (drawn from the seed)  chained
==========  =====================================  ===========  ============================  =======
fft         all weights move                       everything   -                             no
lora        s B A, A Kaiming-uniform, B = 0        A, B         -                             no
lora_plus   as lora, lr(B) = ratio * lr(A)         A, B         -                             no
asym        s B A, B = 0                           B            A (random)                    no
cola        chain of k lora links                  A_j, B_j     -                             yes
rac         chain of k asym links                  B_j          A_j (fresh random per link)   yes
cla         s B A, A = [I_r 0] (columns 0..r-1)    B            A (first r columns)           no
rcla        A selects r random columns             B            A (random columns)            no
c3la        chain of cla; link j: cols jr..jr+r-1  B_j          A_j (column blocks)           yes
rc3la       chain; disjoint random column blocks   B_j          A_j (disjoint random blocks)  yes
paca        train r columns of W0 itself           W[:, cols]   rest of W0                    no
==========  =====================================  ===========  ============================  =======

Data-dependent parameters D (what the information-theoretic bound counts; docs/concepts.md,
"The data-dependent parameter count D"): a
frozen, seed-drawn factor is data-independent and costs nothing, so D = k r sum_i (m_i + n_i) when A is
trained and D = k r sum_i n_i when it is not; fft counts every parameter. The trained head is added
unless excluded (the paper's Table 1 excludes it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .errors import GenboundError

Shapes = Iterable[tuple[int, int]]  # (n_out, m_in) per adapted layer


@dataclass(frozen=True)
class Method:
    """One fine-tuning method: its factors, what is trained and frozen, and whether it chains."""

    name: str
    title: str  # the paper's name
    family: str  # "full", "lowrank", "selector" or "column"
    a_init: str  # how A is drawn: "none", "kaiming", "first_cols", "random_cols", "block_cols",
    #              "random_block_cols", "paca_cols"
    a_trained: bool
    chained: bool
    b_lr_ratio: float = 1.0  # learning rate of B relative to A (LoRA+: 16, applied once)
    description: str = ""

    @property
    def adapter(self) -> bool:
        return self.family != "full"

    @property
    def uses_columns(self) -> bool:
        """A is a column selector: the layer gathers r input columns instead of multiplying by A."""
        return self.family in ("selector", "column")

    @property
    def trained_factors(self) -> tuple[str, ...]:
        if self.family == "full":
            return ("all",)
        if self.family == "column":
            return ("W[:, cols]",)
        return ("A", "B") if self.a_trained else ("B",)

    @property
    def frozen_factors(self) -> tuple[str, ...]:
        if self.family == "full" or self.a_trained:
            return ()
        if self.family == "column":
            return ("W[:, other cols]",)
        return ("A",)

    def effective_chain(self, k: int) -> int:
        """Links actually used: k for chained methods, and 1 otherwise (k > 1 is an error there)."""
        if k < 1:
            raise GenboundError(f"chain length must be at least 1, got {k}")
        if k > 1 and not self.chained:
            chained = [m for m, spec in METHODS.items() if spec.chained]
            raise GenboundError(f"method '{self.name}' does not chain; use --chain 1 or one of {chained}")
        return k

    def trainable_params(self, shapes: Shapes, r: int, head: int = 0, total: int | None = None) -> int:
        """Parameters trained at any one moment (one link), plus the head."""
        shapes = list(shapes)
        if self.family == "full":
            if total is None:
                raise GenboundError("fft counts every parameter; pass the model's total parameter count")
            return int(total)
        per = sum(r * (m + n) if self.a_trained else r * n for n, m in shapes)
        return int(per + head)

    def data_dependent_params(
        self, shapes: Shapes, r: int, k: int = 1, head: int = 0, total: int | None = None
    ) -> int:
        """D = r S of Table 1: k r sum(m + n) if A is trained, k r sum(n) if not; all parameters for fft.

        ``head`` is the trained head's parameter count (0 reproduces the paper's table). For fft, ``total``
        already includes the head.
        """
        if self.family == "full":
            return self.trainable_params(shapes, r, total=total)
        k = self.effective_chain(k)
        return int(k * self.trainable_params(shapes, r) + head)

    def check_rank(self, shapes: Shapes, r: int, k: int = 1) -> None:
        """Rank in 1..min(m, n); for column chains k r <= m (no silent wrap-around)."""
        if self.family == "full":
            return
        for n, m in shapes:
            if r < 1 or r > min(m, n):
                raise GenboundError(f"rank {r} is invalid for a {n}x{m} layer; use 1 <= rank <= {min(m, n)}")
            if self.uses_columns and self.chained and k * r > m:
                raise GenboundError(
                    f"{self.name} with chain {k} and rank {r} needs {k * r} distinct input columns but a layer "
                    f"has only {m}; the largest valid chain is {m // r}"
                )

    def summary(self) -> dict:
        return {
            "name": self.name,
            "title": self.title,
            "family": self.family,
            "trained": ", ".join(self.trained_factors),
            "frozen": ", ".join(self.frozen_factors) or "-",
            "chained": self.chained,
            "a_init": self.a_init,
            "b_lr_ratio": self.b_lr_ratio,
            "description": self.description,
        }


_M = [
    Method("fft", "Full FT", "full", "none", True, False, description="every weight moves"),
    Method("lora", "LoRA", "lowrank", "kaiming", True, False, description="dW = s B A, both trained"),
    Method("lora_plus", "LoRA+", "lowrank", "kaiming", True, False, 16.0, "LoRA with lr(B) = 16 lr(A)"),
    Method("asym", "Asym-LoRA", "lowrank", "kaiming", False, False, description="A frozen random, B trained"),
    Method("cola", "CoLA", "lowrank", "kaiming", True, True, description="chain of k merged LoRA links"),
    Method("rac", "RAC", "lowrank", "kaiming", False, True, description="chain of asym links, fresh frozen A"),
    Method("cla", "cLA", "selector", "first_cols", False, False, description="A selects input columns 0..r-1"),
    Method("rcla", "random-cLA", "selector", "random_cols", False, False,
           description="A selects r random input columns (without replacement, from the seed)"),
    Method("c3la", "c3LA", "selector", "block_cols", False, True,
           description="chain of cLA links over consecutive column blocks"),
    Method("rc3la", "random-c3LA", "selector", "random_block_cols", False, True,
           description="chain of cLA links over disjoint random column blocks"),
    Method("paca", "PaCA", "column", "paca_cols", False, False,
           description="train r columns of W0 itself (random from the seed, or the first r)"),
]
METHODS: dict[str, Method] = {m.name: m for m in _M}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise GenboundError(f"unknown method '{name}'; choose one of {', '.join(METHODS)}")
    return METHODS[name]


# --------------------------------------------------------------------------------------------------
# Frozen, data-independent draws. Each comes from (run seed, layer name, purpose) alone, so the same
# seed gives the same draws on every machine and another seed gives others.


def layer_generator(seed: int, layer: str, purpose: str) -> torch.Generator:
    digest = hashlib.sha256(f"{int(seed)}|{layer}|{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def column_indices(method: Method, seed: int, layer: str, m: int, r: int, link: int = 0,
                   paca_columns: str = "random") -> torch.Tensor:
    """Input columns selected by link ``link`` of a selector or column method (int64, length r)."""
    kind = method.a_init
    if kind == "paca_cols":
        kind = "first_cols" if paca_columns == "first" else "random_cols"
    if kind == "first_cols":
        idx = torch.arange(r)
    elif kind == "block_cols":
        idx = torch.arange(link * r, (link + 1) * r)
    elif kind == "random_cols":
        idx = torch.randperm(m, generator=layer_generator(seed, layer, "columns"))[:r]
    elif kind == "random_block_cols":
        # One permutation per layer; link j takes block j: disjoint blocks, drawn without replacement.
        perm = torch.randperm(m, generator=layer_generator(seed, layer, "column-blocks"))
        idx = perm[link * r : (link + 1) * r]
    else:
        raise GenboundError(f"method '{method.name}' has no column selector")
    if idx.numel() != r or int(idx.max()) >= m:
        raise GenboundError(f"{method.name}: link {link} with rank {r} runs past the {m} input columns")
    return idx.to(torch.long)


def kaiming_factor(seed: int, layer: str, link: int, r: int, m: int) -> torch.Tensor:
    """A (r, m) drawn like peft's default LoRA A (Kaiming-uniform, a = sqrt 5: U(-1/sqrt m, 1/sqrt m))."""
    bound = 1.0 / m**0.5
    g = layer_generator(seed, layer, f"A-link{link}")
    return torch.empty(r, m).uniform_(-bound, bound, generator=g)
