"""The method catalogue: the one place where each fine-tuning method is defined.

A :class:`Method` is a frozen spec built by keyword: a name, the paper's title, a factor kind
(:mod:`genbound.methods.factors`) and whether it chains. Training, adapters, checkpoints, the bounds and the reports
all read :data:`METHODS` and delegate to the method's factor; nothing else looks at a method's name.
Definitions follow "Beyond LoRA: Is Sparsity-Induced Adaptation Better?" (arXiv 2606.13767) and
docs/concepts.md ("The methods"). A pretrained layer has W0 of shape (n, m) = (out, in):

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
vera        diag(b) B diag(d) A                    d, b         A, B (shared per shape)       no
pissa       s B A from W0's top-r SVD; base W0-BA  A, B         residual base                 no
dora        m * (W0 + s B A) / ||W0 + s B A||_row  A, B, m      -                             no
==========  =====================================  ===========  ============================  =======

Data-dependent parameters D (what the information-theoretic bound counts, docs/concepts.md "The
data-dependent parameter count D"): a frozen, seed-drawn factor is data-independent and costs nothing, so
D = k r sum_i (m_i + n_i) when A is trained and D = k r sum_i n_i when it is not; VeRA's is
sum_i (n_i + r), DoRA's LoRA's plus sum_i n_i; fft counts every parameter. The trained head is added
unless excluded (the paper's Table 1 excludes it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..core.errors import GenboundError
from .factors import (
    DenseA,
    Dora,
    Factor,
    Full,
    PacaColumns,
    Pissa,
    Selector,
    Vera,
    kaiming_factor,
    layer_generator,
)

__all__ = ["METHODS", "Method", "get_method", "register_method", "unregister_method", "registered",
           "column_indices", "kaiming_factor", "layer_generator"]

Shapes = Iterable[tuple[int, int]]  # (n_out, m_in) per adapted layer


@dataclass(frozen=True, kw_only=True)
class Method:
    """One fine-tuning method: a factor kind (what trains, what is frozen, how it is drawn) and whether it
    chains. Everything method-specific is the factor's (:class:`genbound.methods.factors.Factor`)."""

    name: str
    title: str  # the paper's name
    factor: Factor
    chained: bool = False
    b_lr_ratio: float = 1.0  # learning rate of B relative to A (LoRA+: 16, applied once); 1: no ratio
    description: str = ""
    source: str = ""  # where the method is defined

    def __post_init__(self):
        if self.chained and not self.factor.chainable:
            raise GenboundError(f"method '{self.name}': a {type(self.factor).__name__} factor cannot chain")

    @property
    def adapter(self) -> bool:
        return self.factor.adapter

    @property
    def family(self) -> str:
        """A label for listings (the factor's); nothing branches on it."""
        return self.factor.family

    @property
    def uses_columns(self) -> bool:
        """A is a column selector: the layer gathers r input columns instead of multiplying by A."""
        return self.factor.gathers

    @property
    def has_lr_ratio(self) -> bool:
        """Whether ``--lr-ratio`` means anything: B has its own learning rate."""
        return self.b_lr_ratio != 1.0

    @property
    def trained_factors(self) -> tuple[str, ...]:
        return tuple(self.factor.trained)

    @property
    def frozen_factors(self) -> tuple[str, ...]:
        return tuple(self.factor.frozen)

    def scale(self, alpha: float, rank: int) -> float:
        """The update's scale s (alpha / r, or 1 where the factor has none)."""
        return self.factor.scale(alpha, rank)

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
        if not self.adapter:
            if total is None:
                raise GenboundError(f"{self.name} counts every parameter; pass the model's total parameter count")
            return int(total)
        return int(sum(self.factor.trainable(n, m, r) for n, m in shapes) + head)

    def data_dependent_params(
        self, shapes: Shapes, r: int, k: int = 1, head: int = 0, total: int | None = None
    ) -> int:
        """D of Table 1: the factor's data-dependent scalars over k links, plus ``head`` (0 reproduces the
        paper's table); all parameters for fft (``total`` already includes the head)."""
        if not self.adapter:
            return self.trainable_params(shapes, r, total=total)
        k = self.effective_chain(k)
        return int(sum(self.factor.data_dependent(n, m, r, k) for n, m in shapes) + head)

    def check_rank(self, shapes: Shapes, r: int, k: int = 1) -> None:
        """Rank in 1..min(m, n); for column chains k r <= m (no silent wrap-around)."""
        for n, m in shapes:
            self.factor.check(self.name, n, m, r, k)

    def symbolic(self, head: bool) -> str:
        """The Table 1 cell (LaTeX), with the head term when it is counted."""
        if not self.adapter:
            return r"\sqrt{\frac{2 q \sigma^2 \ln 2 \, \lvert\theta\rvert}{N}}"
        h = " + \\lvert h \\rvert" if head else ""
        d = self.factor.symbolic("k " if self.chained else "")
        return rf"\sqrt{{\frac{{2 q \sigma^2 \ln 2 \, ({d}{h})}}{{N}}}}"

    def summary(self) -> dict:
        return {
            "name": self.name,
            "title": self.title,
            "family": self.family,
            "factor": repr(self.factor),
            "trained": ", ".join(self.trained_factors),
            "frozen": ", ".join(self.frozen_factors) or "-",
            "chained": self.chained,
            "b_lr_ratio": self.b_lr_ratio,
            "description": self.description,
            "source": self.source,
        }


_PAPER = "Cadenhead et al., arXiv 2606.13767"
_M = [
    Method(name="fft", title="Full FT", factor=Full(), description="every weight moves", source=_PAPER),
    Method(name="lora", title="LoRA", factor=DenseA(a_trained=True), description="dW = s B A, both trained",
           source="Hu et al., ICLR 2022"),
    Method(name="lora_plus", title="LoRA+", factor=DenseA(a_trained=True), b_lr_ratio=16.0,
           description="LoRA with lr(B) = 16 lr(A)", source="Hayou et al., ICML 2024"),
    Method(name="asym", title="Asym-LoRA", factor=DenseA(a_trained=False), description="A frozen random, B trained",
           source="Zhu et al., ICML 2024"),
    Method(name="cola", title="CoLA", factor=DenseA(a_trained=True), chained=True,
           description="chain of k merged LoRA links", source="Xia et al., ICML 2024"),
    Method(name="rac", title="RAC", factor=DenseA(a_trained=False), chained=True,
           description="chain of asym links, fresh frozen A", source=_PAPER),
    Method(name="cla", title="cLA", factor=Selector(policy="first"), description="A selects input columns 0..r-1",
           source=_PAPER),
    Method(name="rcla", title="random-cLA", factor=Selector(policy="random"),
           description="A selects r random input columns (without replacement, from the seed)", source=_PAPER),
    Method(name="c3la", title="c3LA", factor=Selector(policy="blocks"), chained=True,
           description="chain of cLA links over consecutive column blocks", source=_PAPER),
    Method(name="rc3la", title="random-c3LA", factor=Selector(policy="random_blocks"), chained=True,
           description="chain of cLA links over disjoint random column blocks", source=_PAPER),
    Method(name="paca", title="PaCA", factor=PacaColumns(),
           description="train r columns of W0 itself (random from the seed, or the first r)",
           source="Woo et al., 2025"),
    Method(name="vera", title="VeRA", factor=Vera(d_init=0.1),
           description="dW = diag(b) B diag(d) A; A, B frozen random shared per layer shape; d, b trained",
           source="Kopiczko et al., ICLR 2024"),
    Method(name="pissa", title="PiSSA", factor=Pissa(),
           description="LoRA started at W0's top-r singular factors, base replaced by the residual",
           source="Meng et al., NeurIPS 2024"),
    Method(name="dora", title="DoRA", factor=Dora(),
           description="W = m (W0 + s B A) / ||W0 + s B A||_row; A, B and the magnitude m trained",
           source="Liu et al., ICML 2024"),
]
METHODS: dict[str, Method] = {m.name: m for m in _M}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise GenboundError(f"unknown method '{name}'; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def register_method(method: Method, replace: bool = False) -> Method:
    """Add ``method`` to the catalogue (a test, a plug-in); its name must be new unless ``replace``."""
    if not isinstance(method, Method):
        raise GenboundError(f"register_method takes a Method, got {type(method).__name__}")
    if method.name in METHODS and not replace:
        raise GenboundError(f"method '{method.name}' is already registered")
    METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    METHODS.pop(name, None)


@contextmanager
def registered(method: Method) -> Iterator[Method]:
    """Register ``method`` for the duration of a ``with`` block."""
    register_method(method)
    try:
        yield method
    finally:
        unregister_method(method.name)


def column_indices(method: Method, seed: int, layer: str, m: int, r: int, link: int = 0,
                   paca_columns: str = "random") -> torch.Tensor:
    """Input columns selected by link ``link`` of a column-selecting method (int64, length r)."""
    if not isinstance(method.factor, Selector):
        raise GenboundError(f"method '{method.name}' has no column selector")
    return method.factor.columns(seed, layer, m, r, link, {"paca_columns": paca_columns})
