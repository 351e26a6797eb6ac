"""The precision of the frozen base: its weights stored, and its products computed, in float32, bfloat16 or
float16, while the trained tensors stay float32.

An adapter of a billion-parameter model trains a few million parameters on top of frozen weights; storing
those in bfloat16 halves the model's memory and the activations it saves. :func:`cast_base` casts every
parameter that is not trained (``requires_grad`` False) to the base dtype and leaves the trained ones (the
adapters' factors, the head, every parameter of a full fine-tune) in float32, and marks the model. The
models' forwards (:mod:`genbound.models.backbones`, :mod:`genbound.models.causal_lm`) run under
:func:`compute_precision`, which, on a marked model, is ``torch.autocast`` in the base dtype: mixed
precision as torch defines it (P. Micikevicius et al., "Mixed precision training", ICLR 2018). Matrix
products run in the low dtype (their float32 operands, the trained factors included, cast on the fly; CPU
and CUDA kernels accumulate them in float32), reductions such as the layer norms and softmax in float32,
and the logits come out in float32 (:func:`float_logits`), so losses, their means and every gradient with
respect to a trained tensor are float32. Autocast, rather than explicit casts in each adapted layer, is
what makes every architecture run (its norms, attention and heads mix the two dtypes everywhere), and it
is differentiable twice and in forward mode (``torch.func.jvp``), which the Hessian-vector products need.

Rounding (:func:`unit_roundoff`): u = 2^-8 for bfloat16 (8 significand bits), 2^-11 for float16, 2^-24
for float32. What it does to a loss or a Hessian eigenvalue is bounded in :func:`rounding_factor`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ..core.errors import GenboundError

BASE_DTYPES = ("float32", "bfloat16", "float16")
_MARK = "_genbound_base_dtype"  # plain attribute: survives deepcopy, not part of the state dict
_MATMUL_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)


def base_dtype(name: str | torch.dtype | None) -> torch.dtype:
    """``--dtype`` (a name of :data:`BASE_DTYPES`, a torch dtype or None for float32) as a torch dtype."""
    if name is None:
        return torch.float32
    if isinstance(name, torch.dtype):
        name = str(name).replace("torch.", "")
    if name not in BASE_DTYPES:
        raise GenboundError(f"unknown base dtype {name!r}; use one of {', '.join(BASE_DTYPES)}")
    return getattr(torch, name)


def dtype_name(dtype: torch.dtype | str | None) -> str:
    return str(base_dtype(dtype)).replace("torch.", "")


def check_precision(dtype: torch.dtype | str | None, device: torch.device | str) -> torch.dtype:
    """The base dtype, refused in one line where this torch cannot run it on ``device``."""
    dtype = base_dtype(dtype)
    device = torch.device(device)
    if dtype == torch.float32:
        return dtype
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise GenboundError("this GPU has no bfloat16 arithmetic; pass --dtype float16 (or float32)")
    if not torch.amp.is_autocast_available(device.type):
        raise GenboundError(f"torch has no mixed precision on {device.type}; pass --dtype float32")
    return dtype


def cast_base(model: nn.Module, dtype: torch.dtype | str | None) -> nn.Module:
    """Cast every frozen parameter of ``model`` to ``dtype`` in place, keep the trained ones (``requires_grad``)
    as they are, and mark the model so that its forward runs under :func:`compute_precision`. float32 (or
    None) only clears the mark; a model whose frozen weights are already low stays so (the mark is what
    turns autocast on). Buffers (position ids, frozen adapter factors) are left as they are: they are small.
    Returns the model."""
    dtype = base_dtype(dtype)
    if dtype == torch.float32:
        if hasattr(model, _MARK):
            delattr(model, _MARK)
        return model
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
    setattr(model, _MARK, dtype)
    return model


def precision_of(model: nn.Module) -> torch.dtype:
    """The base dtype ``model`` was cast to (:func:`cast_base`), float32 when unmarked."""
    return getattr(model, _MARK, torch.float32)


@contextlib.contextmanager
def compute_precision(model: nn.Module, like: Tensor | None = None) -> Iterator[None]:
    """``torch.autocast`` in the model's base dtype on the device of ``like`` (a model input), or nothing for
    an unmarked model (module docstring)."""
    dtype = precision_of(model)
    if dtype == torch.float32:
        yield
        return
    device = like.device.type if like is not None else next(model.parameters()).device.type
    with torch.autocast(device, dtype=dtype):
        yield


def float_logits(model: nn.Module, logits: Tensor) -> Tensor:
    """Logits of a low-precision model in float32 (losses and means are float32); others unchanged."""
    return logits.float() if precision_of(model) != torch.float32 and logits.dtype != torch.float32 else logits


def unit_roundoff(dtype: torch.dtype | str | None) -> float:
    """u = 2^-p for a p-bit significand: half the machine epsilon (2^-8 bfloat16, 2^-11 float16, 2^-24
    float32)."""
    return float(torch.finfo(base_dtype(dtype)).eps) / 2


def rounding_points(model: nn.Module) -> int:
    """Matrix products that run in the base dtype: the frozen Linear, convolution and embedding modules."""
    return sum(1 for m in model.modules() if isinstance(m, _MATMUL_MODULES)
               and any(not p.requires_grad for p in m.parameters(recurse=False)))


def rounding_factor(model: nn.Module, passes: int = 3) -> float:
    """The condition factor c in ``|x~ - x| <= c u |x|`` for a quantity x computed with the base in the low
    dtype (x~) against the float32 model's (x): a loss or a landscape value (``passes`` = 1: the forward) or
    the Hessian, ``||H~ - H|| <= c u ||H||`` (``passes`` = 3: forward, backward, and the tangent or second
    backward of a Hessian-vector product).

    Derivation, to first order in u: each low-precision matrix product contributes three roundings of
    relative size u to what passes through it: its weight (stored rounded), its input and its output (both
    rounded to the low dtype; the float32 accumulation inside the product adds ~2^-24 only). A quantity
    that passes the n products of the model ``passes`` times collects 3 passes n such roundings. Rounding
    errors of independent operations add like a random walk, so their sum is at most lambda sqrt(3 passes n)
    u with probability at least 1 - 2 exp(-lambda^2 / 2) (N. J. Higham and T. Mary, "A new approach to
    probabilistic rounding error analysis", SIAM J. Sci. Comput. 41(5), 2019, Thm. 2.4); lambda = 4 (1 -
    7e-4). Hence c = 4 sqrt(3 passes n). What this leaves out is the network's own amplification of a
    relative perturbation (its condition number), taken as 1: the measured errors are well inside (tests
    and docs/scale.md: a top eigenvalue within 0.71 u of the float32 one on the tiny mlp (c = 17) and BERT
    (c = 48) runs, for bfloat16 and float16 alike)."""
    n = max(rounding_points(model), 1)
    return 4.0 * math.sqrt(3 * passes * n)


def precision_error(model: nn.Module, norm: float) -> float:
    """The rounding bound ``c u ||H||`` of the Hessian of a low-precision ``model`` (:func:`rounding_factor`;
    0 for a float32 model, whose rounding the Lanczos bounds leave out as before). Weyl's inequality turns it
    into a bound on every eigenvalue: |lambda_i(H~) - lambda_i(H)| <= ||H~ - H||."""
    dtype = precision_of(model)
    if dtype == torch.float32:
        return 0.0
    return rounding_factor(model, 3) * unit_roundoff(dtype) * float(norm)
