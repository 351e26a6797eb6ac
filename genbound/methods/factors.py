"""Factor kinds: what a method trains, how the frozen part is drawn, and everything that follows from it.

A :class:`~genbound.methods.catalogue.Method` is a frozen spec plus one factor kind. The kind owns, for one adapted
Linear with pretrained weight W0 of shape (n, m) = (out, in) (docs/concepts.md, "The methods"):

* drawing the frozen, data-independent parts from (seed, layer, link) (:func:`layer_generator`);
* the live layer: starting a link, its forward (the gather path for selectors), merging a link into the
  base weight (chains), the factored update dW;
* conversion to and from checkpoint tensors (``<layer>.<suffix>``) and the dW a checkpoint stands for;
* theta_0, the data-independent start of the coded tensors, and the map from coded tensors to the layer's
  effective weight (the bounds' hypothesis);
* the trainable and data-dependent counts and the symbolic Table 1 entry.

Adapters, training, checkpoints and bounds call these methods; none of them looks at a method's name.
A new kind is a subclass of :class:`Factor`; a new method is a :class:`~genbound.methods.catalogue.Method` that uses
one, registered with :func:`genbound.methods.catalogue.register_method`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from ..core.errors import CheckpointError, GenboundError
from .adapters import attach_adapters, merge_adapters
from .update import LayerUpdate, one_hot_selector

TensorSpec = dict[str, tuple[tuple[int, ...], torch.dtype]]


# --------------------------------------------------------------------------------------------------
# Frozen, data-independent draws. Each comes from (run seed, layer name, purpose) alone, so the same
# seed gives the same draws on every machine and another seed gives others.


def layer_generator(seed: int, layer: str, purpose: str) -> torch.Generator:
    """A generator seeded by SHA-256 of ``"<seed>|<layer>|<purpose>"`` (docs/concepts.md, "How a frozen
    factor is drawn from the seed")."""
    digest = hashlib.sha256(f"{int(seed)}|{layer}|{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def kaiming_factor(seed: int, layer: str, link: int, r: int, m: int) -> torch.Tensor:
    """A (r, m) drawn like peft's default LoRA A (Kaiming-uniform, a = sqrt 5: U(-1/sqrt m, 1/sqrt m))."""
    bound = 1.0 / m**0.5
    g = layer_generator(seed, layer, f"A-link{link}")
    return torch.empty(r, m).uniform_(-bound, bound, generator=g)


def principal_factors(W0: Tensor, r: int, scale: float) -> tuple[Tensor, Tensor]:
    """PiSSA's start (Meng et al. 2024): B0 = U_r (S_r / s)^(1/2), A0 = (S_r / s)^(1/2) V_r^T from the top-r
    SVD of W0, so s B0 A0 = U_r S_r V_r^T (peft's convention; with alpha = r, s = 1 and B0 = U_r S_r^(1/2)).

    Computed in float64, with each singular pair's sign fixed (largest |entry| of u positive), so the start
    is a function of W0 alone and not of the LAPACK build."""
    U, S, Vh = torch.linalg.svd(W0.detach().to("cpu", torch.float64), full_matrices=False)
    U, S, Vh = U[:, :r], S[:r], Vh[:r]
    sign = torch.sign(U.gather(0, U.abs().argmax(0, keepdim=True))).squeeze(0)
    sign[sign == 0] = 1.0
    U, Vh = U * sign, Vh * sign[:, None]
    root = (S / scale).sqrt()
    return (U * root).to(W0.device, W0.dtype), (root[:, None] * Vh).to(W0.device, W0.dtype)


def dora_weight(W0: Tensor, B: Tensor, A: Tensor, scale: float, magnitude: Tensor) -> Tensor:
    """DoRA's weight (Liu et al. 2024) in peft's convention: W = diag(m / ||V||_row) V, V = W0 + s B A,
    one norm per output unit (row of the (out, in) matrix). Used by training and by the peft importer."""
    V = W0 + scale * (B @ A)
    norm = torch.linalg.vector_norm(V, dim=1)
    if bool((norm == 0).any()):
        raise GenboundError("a row of W0 + s B A is zero, so its DoRA scaling is undefined")
    return (magnitude / norm)[:, None] * V


# --------------------------------------------------------------------------------------------------


@dataclass
class LayerContext:
    """What a factor needs to read one layer of a checkpoint: its shape, the run's rank / scale / seed /
    links / options, and W0 on demand (only kinds with ``needs_base`` call it)."""

    name: str
    n: int
    m: int
    rank: int
    scale: float
    seed: int
    links: int = 1
    options: dict = field(default_factory=dict)
    base: Callable[[], Tensor] | None = None

    def w0(self) -> Tensor:
        if self.base is None:
            raise GenboundError(f"layer {self.name}: this update depends on W0, but no base weights were given")
        return self.base()


def _bad(where: Path | str, what: str) -> CheckpointError:
    return CheckpointError(f"{where}: {what}; the checkpoint was altered")


class Factor:
    """A factor kind. Subclasses are frozen dataclasses (so a Method stays hashable and comparable)."""

    family: str = ""  # a label for listings; nothing branches on it
    adapter: bool = True  # False: the whole model trains (fft), no adapter layer
    gathers: bool = False  # A is a column selector: the layer gathers input columns
    chainable: bool = False  # links can be merged into the base and restarted
    needs_base: bool = False  # dW from the checkpoint needs W0
    peft_dora: bool = False  # exported as peft's DoRA (A, B and lora_magnitude_vector), not as a LoRA of dW
    trained: tuple[str, ...] = ()
    frozen: tuple[str, ...] = ()

    # -- counts, Table 1 --------------------------------------------------------------------------

    def scale(self, alpha: float, rank: int) -> float:
        """The scale s of the update: alpha / r unless the kind says otherwise."""
        return float(alpha) / int(rank)

    def trainable(self, n: int, m: int, r: int) -> int:
        """Scalars trained in one link of one (n, m) layer."""
        raise NotImplementedError

    def data_dependent(self, n: int, m: int, r: int, k: int) -> int:
        """Data-dependent scalars of one layer after k links (frozen, seed-drawn parts cost nothing)."""
        return k * self.trainable(n, m, r)

    def symbolic(self, k: str) -> str:
        """The adapted layers' part of D in Table 1 (LaTeX); ``k`` is "k " for chained methods or ""."""
        raise NotImplementedError

    def check(self, name: str, n: int, m: int, r: int, k: int) -> None:
        if r < 1 or r > min(m, n):
            raise GenboundError(f"rank {r} is invalid for a {n}x{m} layer; use 1 <= rank <= {min(m, n)}")

    # -- the live layer (``ad`` is the AdaptedLinear that holds the tensors) ------------------------

    def init_layer(self, ad) -> None:
        """Buffers that outlive a link (past links of a chain)."""

    def start_link(self, ad) -> None:
        raise NotImplementedError

    def forward(self, ad, x: Tensor) -> Tensor:
        raise NotImplementedError

    def effective_weight_live(self, ad) -> Tensor:
        """The layer's weight W0 + dW as the forward applies it (the merged weight)."""
        return ad.base.weight + self.current_delta(ad)

    def current_delta(self, ad) -> Tensor:
        """Dense change of the current link relative to the base weight."""
        raise NotImplementedError

    def next_link(self, ad) -> None:
        raise GenboundError(f"method '{ad.method.name}' does not chain")

    def update(self, ad) -> LayerUpdate:
        """The total dW of the layer relative to the pretrained W0."""
        raise NotImplementedError

    def tensors(self, ad) -> dict[str, Tensor]:
        """The checkpoint tensors of this layer, by suffix (``<layer>.<suffix>``)."""
        raise NotImplementedError

    # -- checkpoints --------------------------------------------------------------------------------

    def tensor_spec(self, n: int, m: int, r: int, links: int, dtype: torch.dtype) -> TensorSpec:
        raise NotImplementedError

    def links_in(self, tensors: dict[str, Tensor], r: int) -> int | None:
        """Links held by a (trajectory) snapshot of this layer; None if its tensors cannot say."""
        return 1

    def check_tensors(self, ctx: LayerContext, tensors: dict[str, Tensor], where: Path | str) -> None:
        """Values the shapes cannot catch (column indices out of range)."""

    def load_link(self, ad, tensors: dict[str, Tensor], link: int, where: Path | str) -> None:
        """Put link ``link``'s stored factors into the live layer; refuse frozen parts the seed does not draw."""
        raise NotImplementedError

    def layer_update(self, ctx: LayerContext, tensors: dict[str, Tensor]) -> LayerUpdate:
        raise NotImplementedError

    def coded(self, ctx: LayerContext, tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(trained tensors, theta_0): the data-dependent tensors by suffix and their data-independent start."""
        raise NotImplementedError

    def effective_weight(self, ctx: LayerContext, tensors: dict[str, Tensor], W0: Tensor) -> Tensor:
        """W0 + dW from the checkpoint tensors (differentiable in them; the hypothesis of the bounds)."""
        return W0 + self.layer_update(ctx, tensors).materialize().to(W0.dtype)

    # -- a whole checkpoint (docs/checkpoint-format.md, "tensors.safetensors") --------------------------

    key_prefix: str = ""  # a checkpoint keeps this kind's tensors at "<prefix><layer>.<suffix>", "<prefix>head.*"
    extra_prefix: str | None = None  # further keys under this prefix are allowed (Full: every model parameter)

    def checkpoint_spec(self, layers: list[tuple[str, int, int]], rank: int, links: int, dtype: torch.dtype,
                        head: TensorSpec, model_shapes: Callable[[], dict[str, tuple[int, ...]]] | None = None
                        ) -> TensorSpec:
        """Keys, shapes and dtypes of a checkpoint's tensors: the head's and every layer's ``tensor_spec``.
        ``model_shapes`` (called only by kinds that store the model's own parameters) gives them all."""
        out = {f"{self.key_prefix}head.{k}": v for k, v in head.items()}
        for name, n, m in layers:
            spec = self.tensor_spec(n, m, rank, links, dtype)
            out.update({f"{self.key_prefix}{name}.{suffix}": v for suffix, v in spec.items()})
        return out

    def restore(self, model, ckpt, merged: bool = False) -> None:
        """Put a loaded checkpoint's trained tensors into ``model`` (its pristine backbone): adapters holding
        every link's factors (past links of a chain re-merged in training order, so the weights are
        bit-identical to training's) and the head; with ``merged`` plain Linear layers W0 + dW whose weights
        count as trained (docs/concepts.md, "Chains and real merges")."""
        m = ckpt.meta
        adapters = attach_adapters(model, ckpt.method, [li.name for li in m.layers], m.rank, m.alpha, m.seed,
                                   m.paca_columns)
        with torch.no_grad():
            for name, ad in adapters.items():
                layer = ckpt.layer_tensors(name)
                for link in range(m.chain):
                    ad.factor.load_link(ad, layer, link, ckpt.path)
                    if link < m.chain - 1:
                        ad.next_link()
            for k, p in model.head.named_parameters():
                p.copy_(ckpt.tensors[f"head.{k}"])
        if merged:
            merge_adapters(model)
            for li in m.layers:
                model.get_submodule(li.name).weight.requires_grad_(True)


@dataclass(frozen=True)
class Full(Factor):
    """Every parameter of the model trains (fft); dW = W_trained - W0, dense."""

    family = "full"
    adapter = False
    trained = ("all",)

    def trainable(self, n: int, m: int, r: int) -> int:
        return n * m

    def symbolic(self, k: str) -> str:
        return r"\lvert\theta\rvert"

    def check(self, name: str, n: int, m: int, r: int, k: int) -> None:
        return None

    # A checkpoint stores the model's own parameters, "model.<name>": the adapted layers' weights (whose dW
    # is W_trained - W0), the head and everything else the run trained.
    needs_base = True
    key_prefix = "model."
    extra_prefix = "model."

    def tensor_spec(self, n, m, r, links, dtype):
        return {"weight": ((n, m), dtype)}

    def checkpoint_spec(self, layers, rank, links, dtype, head, model_shapes=None):
        if model_shapes is None:  # without the model: the tensors every reader uses (layers, head)
            return super().checkpoint_spec(layers, rank, links, dtype, head)
        return {f"{self.key_prefix}{k}": (tuple(s), dtype) for k, s in model_shapes().items()}

    def layer_update(self, ctx, tensors):
        return LayerUpdate(ctx.name, ctx.n, ctx.m, dense=tensors["weight"] - ctx.w0())

    def restore(self, model, ckpt, merged=False):
        """Every parameter from ``model.<name>``, refused unless the names and shapes are the backbone's own."""
        state = {k[len(self.key_prefix):]: v for k, v in ckpt.tensors.items()}
        params = dict(model.named_parameters())
        missing, extra = set(params) - set(state), set(state) - set(params)
        where, backbone = ckpt.path, ckpt.meta.backbone
        if missing:
            raise CheckpointError(f"{where}: fft checkpoint lacks parameter '{sorted(missing)[0]}'")
        if extra:
            raise CheckpointError(f"{where}: fft checkpoint has tensor 'model.{sorted(extra)[0]}' that "
                                  f"backbone '{backbone}' does not have")
        for k, p in params.items():
            if tuple(state[k].shape) != tuple(p.shape):
                raise CheckpointError(f"{where}: tensor 'model.{k}' has shape {tuple(state[k].shape)}, "
                                      f"backbone '{backbone}' has {tuple(p.shape)}")
        model.load_state_dict(state, strict=False)
        for p in model.parameters():
            p.requires_grad_(True)


class _Chained(Factor):
    """Shared by kinds whose links are s B_j A_j with B_j (n, r): past links are kept, concatenated."""

    chainable = True

    def _current_B(self, ad) -> Tensor:
        return ad.B

    def links_in(self, tensors: dict[str, Tensor], r: int) -> int | None:
        B = tensors.get("B")
        if B is None or B.dim() != 2 or B.shape[1] % r:
            return None
        return B.shape[1] // r

    def coded(self, ctx, tensors):
        B = tensors["B"]
        return {"B": B}, {"B": torch.zeros_like(B)}


@dataclass(frozen=True)
class DenseA(_Chained):
    """dW = s B A with A (r, m) a Kaiming-uniform draw per link (purpose ``A-link<j>``) and B = 0 at start;
    A trained (lora, lora_plus, cola) or frozen (asym, rac)."""

    a_trained: bool = True
    family = "lowrank"

    @property
    def trained(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("A", "B") if self.a_trained else ("B",)

    @property
    def frozen(self) -> tuple[str, ...]:  # type: ignore[override]
        return () if self.a_trained else ("A",)

    def trainable(self, n, m, r):
        return r * (m + n) if self.a_trained else r * n

    def symbolic(self, k):
        return rf"{k}r \sum_{{i=1}}^{{L}} (m_i + n_i)" if self.a_trained else rf"{k}r \sum_{{i=1}}^{{L}} n_i"

    def init_layer(self, ad):
        n, m = ad.base.out_features, ad.base.in_features
        w = ad.base.weight
        ad.register_buffer("past_B", torch.zeros(n, 0, dtype=w.dtype, device=w.device))
        ad.register_buffer("past_A", torch.zeros(0, m, dtype=w.dtype, device=w.device))

    def start_link(self, ad):
        n, m, w = ad.base.out_features, ad.base.in_features, ad.base.weight
        A = kaiming_factor(ad.seed, ad.layer, ad.link, ad.rank, m).to(w.device, w.dtype)
        ad._set_param("A", A, trained=self.a_trained)
        ad._set_param("B", torch.zeros(n, ad.rank, dtype=w.dtype, device=w.device), trained=True)

    def forward(self, ad, x):
        y = F.linear(x, ad.base.weight, ad.base.bias)
        # A frozen base held in lower precision (bf16) under float32 factors: the update is computed in the
        # factors' dtype and added in the base's (a no-op cast when both agree).
        return y + (ad.scale * F.linear(F.linear(x.to(ad.A.dtype), ad.A), ad.B)).to(y.dtype)

    def current_delta(self, ad):
        return ad.scale * ad.B @ ad.A

    @torch.no_grad()
    def next_link(self, ad):
        B, A = ad.B.detach().clone(), ad.A.detach().clone()
        ad.base.weight.add_(ad.scale * (B @ A))
        ad.past_A = torch.cat([ad.past_A, A])
        ad.past_B = torch.cat([ad.past_B, B], dim=1)
        ad.link += 1
        self.start_link(ad)

    @torch.no_grad()
    def _factors(self, ad) -> tuple[Tensor, Tensor]:
        B = torch.cat([ad.past_B, ad.B], dim=1).detach().clone()
        return B, torch.cat([ad.past_A, ad.A.detach()]).clone()

    def update(self, ad):
        B, A = self._factors(ad)
        return LayerUpdate(ad.layer, ad.base.out_features, ad.base.in_features, ad.scale, B, A)

    def tensors(self, ad):
        B, A = self._factors(ad)
        return {"B": B, "A": A}

    def tensor_spec(self, n, m, r, links, dtype):
        return {"B": ((n, links * r), dtype), "A": ((links * r, m), dtype)}

    @torch.no_grad()
    def load_link(self, ad, tensors, link, where):
        block = slice(link * ad.rank, (link + 1) * ad.rank)
        dtype = ad.base.weight.dtype
        A = tensors["A"][block].to(dtype)
        if not self.a_trained and not torch.equal(A, ad.A.cpu()):
            raise _bad(where, f"layer {ad.layer} link {link} has a frozen A that seed {ad.seed} does not draw")
        ad.A.copy_(A)
        ad.B.copy_(tensors["B"][:, block].to(dtype))

    def layer_update(self, ctx, tensors):
        return LayerUpdate(ctx.name, ctx.n, ctx.m, ctx.scale, tensors["B"], tensors["A"])

    def coded(self, ctx, tensors):
        trained, reference = super().coded(ctx, tensors)
        if self.a_trained:
            A = tensors["A"]
            trained["A"] = A
            reference["A"] = torch.cat([kaiming_factor(ctx.seed, ctx.name, j, ctx.rank, ctx.m)
                                        for j in range(ctx.links)]).to(A.device, A.dtype)
        return trained, reference


SELECTOR_POLICIES = ("first", "blocks", "random", "random_blocks")


@dataclass(frozen=True)
class Selector(_Chained):
    """dW = s B A with A the one-hot rows of r input columns (frozen); only B trains. The layer gathers
    x[idx] instead of multiplying by A (docs/concepts.md, "The gather implementation of selectors").

    Policies: ``first`` (columns 0..r-1), ``blocks`` (link j: jr..jr+r-1), ``random`` (r columns without
    replacement, purpose ``columns``), ``random_blocks`` (one permutation per layer, purpose
    ``column-blocks``, cut into disjoint blocks; link j takes block j)."""

    policy: str = "first"
    family = "selector"
    gathers = True
    trained = ("B",)
    frozen = ("A",)

    def __post_init__(self):
        if self.policy not in SELECTOR_POLICIES:
            raise GenboundError(f"column policy '{self.policy}' is not one of {SELECTOR_POLICIES}")

    def trainable(self, n, m, r):
        return r * n

    def symbolic(self, k):
        return rf"{k}r \sum_{{i=1}}^{{L}} n_i"

    def check(self, name, n, m, r, k):
        super().check(name, n, m, r, k)
        if k * r > m:
            raise GenboundError(
                f"{name} with chain {k} and rank {r} needs {k * r} distinct input columns but a layer "
                f"has only {m}; the largest valid chain is {m // r}"
            )

    def _policy(self, options: dict) -> str:
        return self.policy

    def columns(self, seed: int, layer: str, m: int, r: int, link: int = 0, options: dict | None = None) -> Tensor:
        """Input columns selected by link ``link`` (int64, length r)."""
        kind = self._policy(options or {})
        if kind == "first":
            idx = torch.arange(r)
        elif kind == "blocks":
            idx = torch.arange(link * r, (link + 1) * r)
        elif kind == "random":
            idx = torch.randperm(m, generator=layer_generator(seed, layer, "columns"))[:r]
        else:
            # One permutation per layer; link j takes block j: disjoint blocks, drawn without replacement.
            perm = torch.randperm(m, generator=layer_generator(seed, layer, "column-blocks"))
            idx = perm[link * r : (link + 1) * r]
        if idx.numel() != r or int(idx.max()) >= m:
            raise GenboundError(f"link {link} with rank {r} runs past the {m} input columns")
        return idx.to(torch.long)

    def _options(self, ad) -> dict:
        return {"paca_columns": ad.paca_columns}

    def init_layer(self, ad):
        w = ad.base.weight
        ad.register_buffer("past_B", torch.zeros(ad.base.out_features, 0, dtype=w.dtype, device=w.device))
        ad.register_buffer("past_idx", torch.zeros(0, dtype=torch.long, device=w.device))

    def start_link(self, ad):
        w, m = ad.base.weight, ad.base.in_features
        ad._set_buffer("idx", self.columns(ad.seed, ad.layer, m, ad.rank, ad.link, self._options(ad)).to(w.device))
        ad._set_param("B", torch.zeros(ad.base.out_features, ad.rank, dtype=w.dtype, device=w.device), trained=True)

    def forward(self, ad, x):
        y = F.linear(x, ad.base.weight, ad.base.bias)
        if ad.dense_selector:  # reference path for tests
            xs = F.linear(x, one_hot_selector(ad.idx, ad.base.in_features, ad.base.weight.dtype))
        else:
            xs = x.index_select(-1, ad.idx)
        return y + ad.scale * F.linear(xs, self._current_B(ad))

    def current_delta(self, ad):
        return ad.scale * self._current_B(ad) @ one_hot_selector(ad.idx, ad.base.in_features, ad.base.weight.dtype)

    @torch.no_grad()
    def next_link(self, ad):
        B = self._current_B(ad).detach().clone()
        # Scatter-add the r columns: the exact analogue of W += s B A for a one-hot A.
        ad.base.weight.index_add_(1, ad.idx, ad.scale * B)
        ad.past_idx = torch.cat([ad.past_idx, ad.idx])
        ad.past_B = torch.cat([ad.past_B, B], dim=1)
        ad.link += 1
        self.start_link(ad)

    @torch.no_grad()
    def _factors(self, ad) -> tuple[Tensor, Tensor]:
        B = torch.cat([ad.past_B, self._current_B(ad)], dim=1).detach().clone()
        return B, torch.cat([ad.past_idx, ad.idx]).detach().clone()

    def update(self, ad):
        B, cols = self._factors(ad)
        m = ad.base.in_features
        return LayerUpdate(ad.layer, ad.base.out_features, m, ad.scale, B, one_hot_selector(cols, m, B.dtype), cols)

    def tensors(self, ad):
        B, cols = self._factors(ad)
        return {"B": B, "columns": cols}

    def tensor_spec(self, n, m, r, links, dtype):
        return {"B": ((n, links * r), dtype), "columns": ((links * r,), torch.int64)}

    def check_tensors(self, ctx, tensors, where):
        cols = tensors["columns"]
        if cols.numel() and (int(cols.min()) < 0 or int(cols.max()) >= ctx.m):
            raise CheckpointError(f"{where}: layer {ctx.name} selects a column outside 0..{ctx.m - 1}")
        # Every link draws rank distinct columns (column_indices): a repeat is an edit that spectra would
        # otherwise accept and bounds refuse.
        if any(int(torch.unique(b).numel()) != int(b.numel()) for b in cols.split(ctx.rank)):
            raise CheckpointError(f"{where}: layer {ctx.name} selects a column twice within one link; the checkpoint "
                                  "was altered")

    @torch.no_grad()
    def load_link(self, ad, tensors, link, where):
        block = slice(link * ad.rank, (link + 1) * ad.rank)
        if not torch.equal(tensors["columns"][block], ad.idx.cpu()):
            raise _bad(where, f"layer {ad.layer} link {link} selects columns that seed {ad.seed} does not draw")
        self._load_B(ad, tensors["B"][:, block].to(ad.base.weight.dtype))

    def _load_B(self, ad, B: Tensor) -> None:
        ad.B.copy_(B)

    def layer_update(self, ctx, tensors):
        B, cols = tensors["B"], tensors["columns"]
        return LayerUpdate(ctx.name, ctx.n, ctx.m, ctx.scale, B, one_hot_selector(cols, ctx.m, B.dtype), cols)


@dataclass(frozen=True)
class PacaColumns(Selector):
    """PaCA (Woo et al. 2025): train r columns of W0 itself, P = W[:, cols], starting at W0; dW = (P - P0)
    on those columns (s = 1), stored as B = P - P0 with the column indices. The columns are random from
    the seed, or the first r with the run option ``paca_columns="first"``."""

    policy: str = "random"
    family = "column"
    trained = ("W[:, cols]",)
    frozen = ("W[:, other cols]",)

    def scale(self, alpha, rank):
        return 1.0

    def check(self, name, n, m, r, k):
        Factor.check(self, name, n, m, r, k)

    def _policy(self, options):
        return "first" if options.get("paca_columns") == "first" else "random"

    def _current_B(self, ad):
        return ad.P - ad.P0

    def start_link(self, ad):
        idx = self.columns(ad.seed, ad.layer, ad.base.in_features, ad.rank, ad.link, self._options(ad))
        idx = idx.to(ad.base.weight.device)
        ad._set_buffer("idx", idx)
        start = ad.base.weight.detach()[:, idx].clone()
        ad._set_buffer("P0", start)
        ad._set_param("P", start.clone(), trained=True)

    def _load_B(self, ad, B):
        ad.P.copy_(ad.P0 + B)


@dataclass(frozen=True)
class Vera(Factor):
    """VeRA (Kopiczko et al. 2024): dW = diag(b) B diag(d) A with A (r, m) and B (n, r) frozen Kaiming-uniform
    draws shared by every layer of one shape (purpose ``vera-A`` / ``vera-B`` under the name ``vera/<n>x<m>``),
    d (r) starting at ``d_init`` and b (n) at 0; only d and b train, so D = sum_i (n_i + r)."""

    d_init: float = 0.1
    family = "vera"
    trained = ("d", "b")
    frozen = ("A", "B (shared)")

    def scale(self, alpha, rank):
        return 1.0

    def trainable(self, n, m, r):
        return n + r

    def symbolic(self, k):
        return r"\sum_{i=1}^{L} (n_i + r)"

    @staticmethod
    def shared(seed: int, n: int, m: int, r: int) -> tuple[Tensor, Tensor]:
        """The frozen (A, B) of every (n, m) layer of a run: a function of (seed, shape, r) only."""
        key, a, b = f"vera/{n}x{m}", 1.0 / m**0.5, 1.0 / r**0.5
        A = torch.empty(r, m).uniform_(-a, a, generator=layer_generator(seed, key, f"vera-A{r}"))
        B = torch.empty(n, r).uniform_(-b, b, generator=layer_generator(seed, key, f"vera-B{r}"))
        return A, B

    def start_link(self, ad):
        w, n, m = ad.base.weight, ad.base.out_features, ad.base.in_features
        A, B = self.shared(ad.seed, n, m, ad.rank)
        ad._set_buffer("vera_A", A.to(w.device, w.dtype))
        ad._set_buffer("vera_B", B.to(w.device, w.dtype))
        ad._set_param("lambda_d", torch.full((ad.rank,), self.d_init, dtype=w.dtype, device=w.device), trained=True)
        ad._set_param("lambda_b", torch.zeros(n, dtype=w.dtype, device=w.device), trained=True)

    def forward(self, ad, x):
        y = F.linear(x, ad.base.weight, ad.base.bias)
        return y + ad.lambda_b * F.linear(ad.lambda_d * F.linear(x, ad.vera_A), ad.vera_B)

    @staticmethod
    def _B(B: Tensor, d: Tensor, b: Tensor) -> Tensor:
        return b[:, None] * B * d[None, :]

    def current_delta(self, ad):
        return self._B(ad.vera_B, ad.lambda_d, ad.lambda_b) @ ad.vera_A

    def update(self, ad):
        with torch.no_grad():
            B = self._B(ad.vera_B, ad.lambda_d, ad.lambda_b).clone()
        return LayerUpdate(ad.layer, ad.base.out_features, ad.base.in_features, 1.0, B, ad.vera_A.clone())

    def tensors(self, ad):
        return {"lambda_b": ad.lambda_b.detach().clone(), "lambda_d": ad.lambda_d.detach().clone()}

    def tensor_spec(self, n, m, r, links, dtype):
        return {"lambda_b": ((n,), dtype), "lambda_d": ((r,), dtype)}

    @torch.no_grad()
    def load_link(self, ad, tensors, link, where):
        ad.lambda_b.copy_(tensors["lambda_b"])
        ad.lambda_d.copy_(tensors["lambda_d"])

    def layer_update(self, ctx, tensors):
        b, d = tensors["lambda_b"], tensors["lambda_d"]
        A, B = self.shared(ctx.seed, ctx.n, ctx.m, ctx.rank)
        A, B = A.to(b.device, b.dtype), B.to(b.device, b.dtype)
        return LayerUpdate(ctx.name, ctx.n, ctx.m, 1.0, self._B(B, d, b), A)

    def coded(self, ctx, tensors):
        b, d = tensors["lambda_b"], tensors["lambda_d"]
        return {"lambda_b": b, "lambda_d": d}, {"lambda_b": torch.zeros_like(b),
                                                 "lambda_d": torch.full_like(d, self.d_init)}


@dataclass(frozen=True)
class Pissa(Factor):
    """PiSSA (Meng et al. 2024): B, A start at W0's principal factors (:func:`principal_factors`) and both
    train; the base becomes the residual W0 - s B0 A0. dW = s (B A - B0 A0), kept factored as
    s [B, B0] [A; -A0] (rank <= 2r). theta_0 depends on W0 alone, so D = r sum_i (m_i + n_i) as for LoRA."""

    family = "principal"
    needs_base = True
    trained = ("A", "B")
    frozen = ("residual W0 - s B0 A0",)

    def trainable(self, n, m, r):
        return r * (m + n)

    def symbolic(self, k):
        return r"r \sum_{i=1}^{L} (m_i + n_i)"

    @torch.no_grad()
    def start_link(self, ad):
        B0, A0 = principal_factors(ad.base.weight, ad.rank, ad.scale)
        ad.base.weight.sub_(ad.scale * (B0 @ A0))
        ad._set_buffer("B0", B0)
        ad._set_buffer("A0", A0)
        ad._set_param("A", A0.clone(), trained=True)
        ad._set_param("B", B0.clone(), trained=True)

    def forward(self, ad, x):
        y = F.linear(x, ad.base.weight, ad.base.bias)
        # A frozen base held in lower precision (bf16) under float32 factors: the update is computed in the
        # factors' dtype and added in the base's (a no-op cast when both agree).
        return y + (ad.scale * F.linear(F.linear(x.to(ad.A.dtype), ad.A), ad.B)).to(y.dtype)

    def current_delta(self, ad):
        return ad.scale * ad.B @ ad.A

    @staticmethod
    def _update(name, n, m, scale, B, A, B0, A0) -> LayerUpdate:
        return LayerUpdate(name, n, m, scale, torch.cat([B, B0], dim=1), torch.cat([A, -A0]))

    def update(self, ad):
        with torch.no_grad():
            return self._update(ad.layer, ad.base.out_features, ad.base.in_features, ad.scale, ad.B.detach().clone(),
                                ad.A.detach().clone(), ad.B0.clone(), ad.A0.clone())

    def tensors(self, ad):
        return {"B": ad.B.detach().clone(), "A": ad.A.detach().clone()}

    def tensor_spec(self, n, m, r, links, dtype):
        return {"B": ((n, r), dtype), "A": ((r, m), dtype)}

    @torch.no_grad()
    def load_link(self, ad, tensors, link, where):
        ad.A.copy_(tensors["A"])
        ad.B.copy_(tensors["B"])

    def _start(self, ctx, like: Tensor) -> tuple[Tensor, Tensor]:
        return principal_factors(ctx.w0().to(like.device, like.dtype), ctx.rank, ctx.scale)

    def layer_update(self, ctx, tensors):
        B0, A0 = self._start(ctx, tensors["B"])
        return self._update(ctx.name, ctx.n, ctx.m, ctx.scale, tensors["B"], tensors["A"], B0, A0)

    def coded(self, ctx, tensors):
        B0, A0 = self._start(ctx, tensors["B"])
        return {"A": tensors["A"], "B": tensors["B"]}, {"A": A0, "B": B0}


@dataclass(frozen=True)
class Dora(Factor):
    """DoRA (Liu et al. 2024): W = diag(m / ||V||_row) V with V = W0 + s B A (:func:`dora_weight`); A, B as
    LoRA (Kaiming-uniform draw, B = 0) and the magnitude m (n) starting at W0's row norms, all trained. The
    norm is treated as a constant in the backward pass, as the paper (section 4.3) and peft do. dW has
    full rank and is kept dense. D = r sum_i (m_i + n_i) + sum_i n_i."""

    family = "magnitude"
    needs_base = True
    peft_dora = True
    trained = ("A", "B", "m")

    def trainable(self, n, m, r):
        return r * (m + n) + n

    def symbolic(self, k):
        return r"r \sum_{i=1}^{L} (m_i + n_i) + \sum_{i=1}^{L} n_i"

    def start_link(self, ad):
        w, n, m = ad.base.weight, ad.base.out_features, ad.base.in_features
        ad._set_param("A", kaiming_factor(ad.seed, ad.layer, 0, ad.rank, m).to(w.device, w.dtype), trained=True)
        ad._set_param("B", torch.zeros(n, ad.rank, dtype=w.dtype, device=w.device), trained=True)
        ad._set_param("magnitude", torch.linalg.vector_norm(w.detach(), dim=1).clone(), trained=True)

    def forward(self, ad, x):
        W = ad.base.weight
        lora = ad.scale * F.linear(F.linear(x, ad.A), ad.B)
        norm = torch.linalg.vector_norm(W + ad.scale * (ad.B @ ad.A), dim=1).detach()
        y = (ad.magnitude / norm) * (F.linear(x, W) + lora)
        return y if ad.base.bias is None else y + ad.base.bias

    def effective_weight_live(self, ad):
        return dora_weight(ad.base.weight, ad.B, ad.A, ad.scale, ad.magnitude)

    def current_delta(self, ad):
        return self.effective_weight_live(ad) - ad.base.weight

    def update(self, ad):
        with torch.no_grad():
            dense = self.current_delta(ad).clone()
        return LayerUpdate(ad.layer, ad.base.out_features, ad.base.in_features, dense=dense)

    def tensors(self, ad):
        return {"B": ad.B.detach().clone(), "A": ad.A.detach().clone(), "magnitude": ad.magnitude.detach().clone()}

    def tensor_spec(self, n, m, r, links, dtype):
        return {"B": ((n, r), dtype), "A": ((r, m), dtype), "magnitude": ((n,), dtype)}

    @torch.no_grad()
    def load_link(self, ad, tensors, link, where):
        for key in ("A", "B", "magnitude"):
            getattr(ad, key).copy_(tensors[key])

    def effective_weight(self, ctx, tensors, W0):
        return dora_weight(W0, tensors["B"], tensors["A"], ctx.scale, tensors["magnitude"]).to(W0.dtype)

    def layer_update(self, ctx, tensors):
        W0 = ctx.w0().to(tensors["B"].device, tensors["B"].dtype)
        return LayerUpdate(ctx.name, ctx.n, ctx.m, dense=self.effective_weight(ctx, tensors, W0) - W0)

    def coded(self, ctx, tensors):
        A, B, mag = tensors["A"], tensors["B"], tensors["magnitude"]
        W0 = ctx.w0().to(B.device, B.dtype)
        A0 = torch.cat([kaiming_factor(ctx.seed, ctx.name, 0, ctx.rank, ctx.m)]).to(A.device, A.dtype)
        return ({"A": A, "B": B, "magnitude": mag},
                {"A": A0, "B": torch.zeros_like(B), "magnitude": torch.linalg.vector_norm(W0, dim=1)})
