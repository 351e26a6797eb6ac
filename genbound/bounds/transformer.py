"""Where Theorem 1 applies, and why it does not apply to a transformer.

Theorem 1 (Cadenhead et al., arXiv 2606.13767) is proved for a plain chain
f(x) = s_L(W^L ... s_1(W^1 x)): each link is a linear map followed by a globally Lipschitz activation, the
input is a vector with ||x|| <= C, and the adapted weights are the links of the chain.

The ``mlp`` backbone is such a chain: x -> relu(fc1 x + b1) -> relu(fc2 . + b2) -> head . + b3 (identity
activation), and the theorem applies to it as stated (W0 of the head is its seeded initial value, which is
data-independent; dW of the head is trained - initial).

A BERT-style encoder (``minilm``) computes, per example,

    token ids -> word + position + token-type embeddings -> LayerNorm ->
    6 x [ h <- LayerNorm( h + W_O softmax( (h W_Q^T)(h W_K^T)^T / sqrt(d_h) ) (h W_V^T) )     (12 heads)
          h <- LayerNorm( h + W_2 GELU( W_1 h + b_1 ) + b_2 ) ]
    -> masked mean pooling over tokens -> head W_h . + b_h

with the adapters on W_Q and W_V. The assumptions of Theorem 1 fail there:

1. Residual connections: a block is h + F(h), not s(W h); the chain of the theorem has no skip paths, and
   bounding through (1 + Lip F) is a different theorem.
2. Dot-product self-attention is not globally Lipschitz (Kim, Papamakarios & Mnih 2021, "The Lipschitz
   constant of self-attention"): it is cubic in h, and W_Q, W_K enter as a product inside a softmax, so the
   adapted W_Q is not a link "s(W x)" with a Lipschitz s.
3. LayerNorm is not globally Lipschitz: its local constant is gamma / std(h), unbounded as the variance of
   h goes to 0 (with eps = 1e-12 the worst case is ~1e6 gamma).
4. The input is a token sequence, not a vector of bounded norm fed to the first adapted layer: the adapted
   maps act on hidden states whose norm is not bounded a priori (only after LayerNorm, by sqrt(d) gamma).
5. The adapted layers are not consecutive links: Q and V of a layer sit in parallel branches, and ~36
   unadapted linear maps lie between them.

So for a transformer :func:`applicability` returns "not applicable" with these reasons instead of a number.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..models.backbones import MLPClassifier

MLP_CHAIN = ("x -> relu(fc1 x + b1) -> relu(fc2 . + b2) -> head . + b3 (identity); "
             "Theorem 1's plain chain with L = 3 links")
TRANSFORMER_CHAIN = (
    "token ids -> embeddings -> LayerNorm -> 6 x [LayerNorm(h + W_O softmax((h W_Q^T)(h W_K^T)^T / sqrt(d)) "
    "(h W_V^T)); LayerNorm(h + W_2 GELU(W_1 h + b_1) + b_2)] -> masked mean pooling -> head; adapters on W_Q, W_V"
)
TRANSFORMER_REASONS = [
    "residual connections: each block is h + F(h), not s(W h); the theorem's chain has no skip paths",
    "dot-product self-attention is not globally Lipschitz (Kim et al. 2021); the adapted W_Q enters through "
    "a softmax of a product with W_K, not as a Lipschitz activation of W x",
    "LayerNorm is not globally Lipschitz: its constant gamma / std(h) is unbounded as the variance -> 0",
    "the inputs are token sequences and the adapted maps see hidden states with no a-priori norm bound C",
    "the adapted layers are not consecutive links: Q and V sit in parallel, with unadapted maps in between",
]


@dataclass
class Applicability:
    applicable: bool
    architecture: str
    chain_of_maps: str
    reasons: list[str] = field(default_factory=list)


def applicability(model: nn.Module) -> Applicability:
    """Whether Theorem 1 applies to ``model`` as a plain chain, with the chain of maps and the reasons."""
    if isinstance(model, MLPClassifier):
        return Applicability(True, "mlp", MLP_CHAIN)
    kinds = {type(m).__name__ for m in model.modules()}
    has_norm = any(isinstance(m, nn.LayerNorm) for m in model.modules())
    has_attention = any("Attention" in k for k in kinds)
    if has_norm or has_attention or hasattr(model, "backbone"):
        return Applicability(False, "transformer", TRANSFORMER_CHAIN, list(TRANSFORMER_REASONS))
    return Applicability(
        False, type(model).__name__,
        "unknown architecture",
        [f"{type(model).__name__} is not a recognised plain chain of Linear layers and Lipschitz activations; "
         "build the chain with genbound.bounds.theorem1.chain_from_linears"],
    )
