"""Theorem 1 of "Beyond LoRA" (Cadenhead et al., arXiv 2606.13767): the correction terms, in O(L).

For f(x) = s_L((W0^L + dW^L) ... s_1((W0^1 + dW^1) x)), a loss that is L_l-Lipschitz in the output,
activations s_l that are lam_l-Lipschitz, ||x|| <= C, the paper states

    G(W0 + dW) <= min( G(W0) + Phi_dW , G(dW) + Phi_W0 ).

Phi is printed as a sum over 2^L index patterns. With a_l = ||W0^l||_2, b_l = ||dW^l||_2 and
o_l = ||s_l(0)|| (biases folded into the activation: s_l(z) = act(z + beta_l), so o_l = ||act(beta_l)||),
the O(L) recursion (docs/concepts.md, "Theorem 1 and its O(L) recursion") is, with G_0 = C and E_0 = 0,

    G_l = lam_l ((a_l + b_l) G_{l-1} + d_l) + o_l           bound on ||g_l||, the fine-tuned network
    E_l = lam_l (ref_l E_{l-1} + other_l G_{l-1} + d_l)     bound on ||g_l - h_l||
    Phi = 2 L_l E_L

with ref = a, other = b for Phi_dW (h = f_{W0}) and ref = b, other = a for Phi_W0 (h = f_{dW}). By
induction ||g_l - h_l|| <= lam_l (||ref_l|| ||g_{l-1} - h_{l-1}|| + ||other_l|| ||g_{l-1}|| + d_l), and a risk
moves by at most L_l times that on the population and on the sample, hence the factor 2. d_l = ||dbeta_l||
is a genbound extension for a bias that was trained too (the head's): d = 0 is the paper's setting, and
then E_L = G_L - K_L with K_l = lam_l ref_l K_{l-1} + o_l exactly as docs/concepts.md writes it.

The printed formula (:func:`phi_printed`) is kept behind an explicit call that warns: its P(i, j) uses the
exponent 2^{L-1}, which makes P independent of j, and its offset terms follow an odd/even rule for H(i, j)
that is the swap of what the recursion needs (and Phi_W0 keeps an s_L(0) term the recursion does not
have). The counterexample in docs/concepts.md (L = 2, s_1(z) = z + 1, x = 0) shows the printed Phi_W0 failing.
:func:`phi_enumerated` is the 2^L enumeration with both readings corrected; it equals the recursion and is
used as the brute-force check in the tests.

Hoeffding: W0 does not depend on the sample, so G(W0) <= (b - a) sqrt(ln(1/delta) / (2N)) w.p. 1 - delta.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..core.errors import GenboundError
from .common import check_positive, hoeffding_gap, vacuity_note

# Lipschitz constants of common activations (sup of |act'|): GELU's is max_x d/dx x Phi(x) ~ 1.1289.
ACTIVATION_LIPSCHITZ = {"identity": 1.0, "relu": 1.0, "leaky_relu": 1.0, "tanh": 1.0, "gelu": 1.1289,
                        "sigmoid": 0.25, "softplus": 1.0, "silu": 1.0998}
CROSS_ENTROPY_LIPSCHITZ = math.sqrt(2.0)  # ||grad_z CE(z, y)||_2 = ||softmax(z) - e_y||_2 <= sqrt(2)
ENUMERATION_LIMIT = 24

_ACTS = {"identity": lambda z: z, "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
         "gelu": torch.nn.functional.gelu, "softplus": torch.nn.functional.softplus,
         "silu": torch.nn.functional.silu, "leaky_relu": torch.nn.functional.leaky_relu}


def _arrays(a: Sequence[float], b: Sequence[float], lam: Sequence[float], offsets: Sequence[float] | None,
            bias_shift: Sequence[float] | None = None):
    a, b, lam = [float(x) for x in a], [float(x) for x in b], [float(x) for x in lam]
    n = len(a)
    offsets = [0.0] * n if offsets is None else [float(x) for x in offsets]
    bias_shift = [0.0] * n if bias_shift is None else [float(x) for x in bias_shift]
    if n == 0 or not (len(b) == len(lam) == len(offsets) == len(bias_shift) == n):
        raise GenboundError("Theorem 1 needs one spectral norm of W0, of dW, a Lipschitz constant and an "
                            "offset per layer; the lists have different lengths or are empty")
    for name, xs in (("||W0||", a), ("||dW||", b), ("Lipschitz constant", lam), ("||s(0)||", offsets),
                     ("||dbeta||", bias_shift)):
        if any(not math.isfinite(x) or x < 0 for x in xs):
            raise GenboundError(f"every layer's {name} must be finite and >= 0, got {xs}")
    return a, b, lam, offsets, bias_shift


def _branch(branch: str) -> str:
    key = branch.lower().replace("_", "").replace("Δ", "d")
    if key in ("dw", "deltaw"):
        return "dW"
    if key == "w0":
        return "W0"
    raise GenboundError(f"unknown Theorem 1 branch '{branch}'; use 'dW' (Phi_dW) or 'W0' (Phi_W0)")


def output_deviation(a, b, lam, offsets=None, C: float = 1.0, branch: str = "dW",
                     bias_shift=None) -> float:
    """E_L: a bound on sup_{||x|| <= C} ||f_{W0+dW}(x) - f_ref(x)||, ref = W0 (branch dW) or dW (branch W0).
    O(L) time. Layers are listed input first."""
    a, b, lam, offsets, bias_shift = _arrays(a, b, lam, offsets, bias_shift)
    branch = _branch(branch)
    C = float(C)
    if not math.isfinite(C) or C < 0:
        raise GenboundError(f"the input bound C must be finite and >= 0, got {C}; pass --input-bound")
    g, e = C, 0.0
    for al, bl, ll, ol, dl in zip(a, b, lam, offsets, bias_shift):
        ref, other = (al, bl) if branch == "dW" else (bl, al)
        e = ll * (ref * e + other * g + dl)
        g = ll * ((al + bl) * g + dl) + ol
    return e


def phi_recursion(a, b, lam, offsets=None, C: float = 1.0, loss_lipschitz: float = CROSS_ENTROPY_LIPSCHITZ,
                  branch: str = "dW", bias_shift=None) -> float:
    """Phi_dW or Phi_W0 = 2 L_l E_L by the O(L) recursion (the default form)."""
    loss_lipschitz = check_positive(loss_lipschitz, "the loss Lipschitz constant", "--loss-lipschitz")
    return 2.0 * loss_lipschitz * output_deviation(a, b, lam, offsets, C, branch, bias_shift)


def _enumerate(a, b, lam, offsets, C, loss_lipschitz, branch, literal: bool) -> float:
    """The 2^L sums of Theorem 1. Layer indices are the paper's: W^{L-j+1} for j = 1..L.

    literal=True evaluates the formula as printed: P(i, j) picks W0 when floor((i-1) / 2^{L-1}) is odd,
    H(i, j) picks dW when floor(i / 2^{psi(i)-j}) is odd, and Phi_W0's offset sum runs over
    i = 1..2^L-1 except powers of two 2^a, a >= 1 (so it includes i = 1, the s_L(0) term).
    literal=False reads P's exponent as 2^{L-j}, swaps H's odd/even rule and drops that s_L(0) term:
    then every term is one path of the recursion's expansion and the sum equals it.
    """
    a, b, lam, offsets, _ = _arrays(a, b, lam, offsets)
    branch = _branch(branch)
    L = len(a)
    if L > ENUMERATION_LIMIT:
        raise GenboundError(f"the 2^L enumeration is limited to L <= {ENUMERATION_LIMIT} layers (got {L}); "
                            "use the O(L) recursion")
    A = lambda j: a[L - j]  # noqa: E731  ||W0^{L-j+1}||, j = 1..L
    Bn = lambda j: b[L - j]  # noqa: E731
    lam_top = lambda j: lam[L - j]  # noqa: E731  L_{sigma_{L-j+1}}
    lam_prod = math.prod(lam)

    def P(i: int, j: int) -> float:
        exponent = L - 1 if literal else L - j
        return A(j) if ((i - 1) >> exponent) % 2 == 1 else Bn(j)

    def H(i: int, j: int) -> float:
        psi = i.bit_length() - 1
        odd = (i >> (psi - j)) % 2 == 1
        if not literal:
            odd = not odd
        return Bn(j) if odd else A(j)

    def F(i: int) -> float:
        psi = i.bit_length() - 1  # floor(log2 i)
        out = offsets[L - psi - 1]  # ||s_{L-psi}(0)||
        for j in range(1, psi + 1):
            out *= lam_top(j) * H(i, j)
        return out

    if branch == "dW":
        c_range = range(1, 2**L)  # i = 1 .. 2^L - 1
        excluded = {2**k - 1 for k in range(1, L + 1)}
        f_range = [i for i in range(1, 2**L - 1) if i not in excluded]
    else:
        c_range = range(2, 2**L + 1)  # i = 2 .. 2^L
        excluded = {2**k for k in range(1, L + 1)}
        f_range = [i for i in range(1, 2**L) if i not in excluded]
        if not literal:
            f_range = [i for i in f_range if i != 1]
    c_term = sum(math.prod(P(i, j) for j in range(1, L + 1)) for i in c_range)
    f_term = sum(F(i) for i in f_range)
    return 2.0 * float(loss_lipschitz) * (float(C) * lam_prod * c_term + f_term)


def phi_enumerated(a, b, lam, offsets=None, C: float = 1.0, loss_lipschitz: float = CROSS_ENTROPY_LIPSCHITZ,
                   branch: str = "dW") -> float:
    """Brute force: Theorem 1's 2^L sums with P's exponent read as 2^{L-j} and H's rule swapped. Equals
    :func:`phi_recursion` (bias_shift = 0); O(L 2^L), for tests and small L only."""
    return _enumerate(a, b, lam, offsets, C, loss_lipschitz, branch, literal=False)


def phi_printed(a, b, lam, offsets=None, C: float = 1.0, loss_lipschitz: float = CROSS_ENTROPY_LIPSCHITZ,
                branch: str = "dW") -> float:
    """Theorem 1's Phi exactly as printed in the paper. Warns: it is not a valid bound in general
    (see the module docstring); use :func:`phi_recursion`."""
    warnings.warn(
        "Theorem 1 as printed: P(i, j) does not depend on j and the offset terms use the wrong odd/even "
        "rule, so this Phi can be smaller than the true deviation (docs/concepts.md, Theorem 1); use the recursion",
        UserWarning, stacklevel=2,
    )
    return _enumerate(a, b, lam, offsets, C, loss_lipschitz, branch, literal=True)


def network_forward(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor | None],
                    activations: Sequence[str]) -> Tensor:
    """s_L(W^L ... s_1(W^1 x + beta_1) ... + beta_L) for a batch x (rows), for tests and sampling."""
    h = x
    for W, beta, act in zip(weights, biases, activations):
        z = h @ W.T
        if beta is not None:
            z = z + beta
        h = _ACTS[act](z)
    return h


# --------------------------------------------------------------------------------------------------
# The chain of a plain network and the full result.


@dataclass
class ChainLayer:
    """One link of Theorem 1's chain, input side first. ``offset`` = ||act(beta_ref)||; ``bias_shift`` =
    ||beta_trained - beta_ref|| (0 when the bias was not trained)."""

    name: str
    out_features: int
    in_features: int
    w0_norm: float  # a_l = ||W0^l||_2
    dw_norm: float  # b_l = ||dW^l||_2
    activation: str
    lipschitz: float
    offset: float
    bias_shift: float = 0.0
    sources: dict = field(default_factory=dict)


@dataclass
class Theorem1Result:
    """Theorem 1 for one model: both branches, the Hoeffding term on G(W0), and what was assumed."""

    applicable: bool
    form: str  # "recursion" or "printed"
    layers: list[ChainLayer]
    input_bound: float | None
    loss_lipschitz: float | None
    n_train: int | None
    delta: float
    loss_range: float
    phi_dw: float | None = None
    phi_w0: float | None = None
    hoeffding_w0: float | None = None  # high-probability bound on G(W0)
    measured_gap_w0: float | None = None  # L_test - L_train of the initial network, when measured
    mi_gap_dw: float | None = None  # Table 1's bound used for G(dW), when given
    branch_dw: float | None = None  # G(W0) bound + Phi_dW
    branch_w0: float | None = None  # G(dW) bound + Phi_W0
    bound: float | None = None
    vacuous: bool = True
    verdict: str = ""
    reasons: list[str] = field(default_factory=list)  # why it does not apply, when it does not
    chain_of_maps: str = ""
    assumed: dict = field(default_factory=dict)
    measured: dict = field(default_factory=dict)


def theorem1(layers: list[ChainLayer], input_bound: float, n_train: int, loss_lipschitz: float =
             CROSS_ENTROPY_LIPSCHITZ, loss_range: float = 1.0, delta: float = 0.05,
             mi_gap_dw: float | None = None, form: str = "recursion", measured_gap_w0: float | None = None,
             assumed: dict | None = None, measured: dict | None = None, chain_of_maps: str = "") -> Theorem1Result:
    """Both branches of Theorem 1 for a plain chain.

    Branch 1: G(W0 + dW) <= Hoeffding(G(W0)) + Phi_dW (a high-probability statement: W0 is fixed before
    the data). Branch 2: G(dW) + Phi_W0 with G(dW) bounded by Table 1's expected-gap bound ``mi_gap_dw``
    when given (mixing an expectation with a tail bound: reported, not certified). ``loss_range`` is b - a
    of the bounded (clipped) loss; a bound >= loss_range is vacuous.
    """
    if form not in ("recursion", "printed"):
        raise GenboundError(f"unknown Theorem 1 form '{form}'; use 'recursion' (default) or 'printed'")
    a = [lay.w0_norm for lay in layers]
    b = [lay.dw_norm for lay in layers]
    lam = [lay.lipschitz for lay in layers]
    off = [lay.offset for lay in layers]
    shift = [lay.bias_shift for lay in layers]
    if form == "recursion":
        phi_dw = phi_recursion(a, b, lam, off, input_bound, loss_lipschitz, "dW", shift)
        phi_w0 = phi_recursion(a, b, lam, off, input_bound, loss_lipschitz, "W0", shift)
    else:
        if any(s > 0 for s in shift):
            warnings.warn("the printed form has no trained-bias term; the bias shifts are ignored", UserWarning,
                          stacklevel=2)
        phi_dw = phi_printed(a, b, lam, off, input_bound, loss_lipschitz, "dW")
        phi_w0 = phi_printed(a, b, lam, off, input_bound, loss_lipschitz, "W0")
    hoeff = hoeffding_gap(n_train, delta, loss_range)
    branch_dw = hoeff + phi_dw
    branch_w0 = None if mi_gap_dw is None else mi_gap_dw + phi_w0
    bound = branch_dw if branch_w0 is None else min(branch_dw, branch_w0)
    vac = not math.isfinite(bound) or bound >= loss_range
    return Theorem1Result(
        applicable=True, form=form, layers=layers, input_bound=float(input_bound),
        loss_lipschitz=float(loss_lipschitz), n_train=int(n_train), delta=float(delta),
        loss_range=float(loss_range), phi_dw=phi_dw, phi_w0=phi_w0, hoeffding_w0=hoeff,
        measured_gap_w0=measured_gap_w0, mi_gap_dw=mi_gap_dw, branch_dw=branch_dw, branch_w0=branch_w0,
        bound=bound, vacuous=vac, verdict=vacuity_note(bound, loss_range, "gap of the clipped loss"),
        chain_of_maps=chain_of_maps, assumed=dict(assumed or {}), measured=dict(measured or {}),
    )


def spectral_norm(W: Tensor) -> float:
    """||W||_2 of a dense matrix (torch.linalg.matrix_norm, ord=2) in float64 on W's device."""
    return float(torch.linalg.matrix_norm(W.detach().to(torch.float64), ord=2))


def chain_from_linears(initial: Sequence[nn.Linear], trained: Sequence[nn.Linear], activations: Sequence[str],
                       names: Sequence[str] | None = None, updates: dict | None = None,
                       lipschitz: dict[str, float] | None = None) -> list[ChainLayer]:
    """Theorem 1's chain from matching Linear layers of the data-independent reference network (pretrained
    weights, seeded head) and the trained one. b_l comes from ``updates[name].spectral_norm()`` (the factors)
    when given, otherwise from the dense difference. Biases fold into the activation: offset =
    ||act(beta_ref)||, bias_shift = ||beta_trained - beta_ref||."""
    names = list(names or [f"layer{i}" for i in range(len(initial))])
    if not (len(initial) == len(trained) == len(activations) == len(names)):
        raise GenboundError("the initial and trained chains must have the same layers and one activation each")
    updates = updates or {}
    lipschitz = lipschitz or {}
    out: list[ChainLayer] = []
    for name, lin0, lin1, act in zip(names, initial, trained, activations):
        if act not in _ACTS:
            raise GenboundError(f"unknown activation '{act}' for layer {name}; choose from {sorted(_ACTS)}")
        W0 = lin0.weight.detach()
        if name in updates:
            b = float(updates[name].spectral_norm())
            b_src = "spectral norm of the factored update (QR core)"
        else:
            b = spectral_norm(lin1.weight.detach() - W0)
            b_src = "spectral norm of trained - initial weight"
        beta0 = lin0.bias.detach() if lin0.bias is not None else torch.zeros(W0.shape[0], device=W0.device)
        beta1 = lin1.bias.detach() if lin1.bias is not None else torch.zeros_like(beta0)
        lam = float(lipschitz.get(act, ACTIVATION_LIPSCHITZ[act]))
        out.append(ChainLayer(
            name=name, out_features=int(W0.shape[0]), in_features=int(W0.shape[1]), w0_norm=spectral_norm(W0),
            dw_norm=b, activation=act, lipschitz=lam,
            offset=float(torch.linalg.vector_norm(_ACTS[act](beta0.to(torch.float64)))),
            bias_shift=float(torch.linalg.vector_norm((beta1 - beta0).to(torch.float64))),
            sources={"w0_norm": "matrix_norm(ord=2) of the initial weight", "dw_norm": b_src,
                     "lipschitz": f"{act} (given)" if act in lipschitz else f"{act}: sup |act'|",
                     "offset": "||act(initial bias)||", "bias_shift": "||trained bias - initial bias||"},
        ))
    return out


def input_norm_bound(x: Tensor) -> float:
    """max_i ||x_i||_2 over the rows of ``x`` (flattened per example): C measured on the training set."""
    if x.numel() == 0:
        raise GenboundError("no inputs to measure the input bound C on; pass --input-bound")
    return float(torch.linalg.vector_norm(x.detach().reshape(x.shape[0], -1).to(torch.float64), dim=1).max())
