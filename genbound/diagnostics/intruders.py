"""Intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of Equivalence").

Definition (docs/concepts.md, "Intruder dimensions"). Thin SVDs W0 = U0 S0 V0^T and W = W0 + dW = U S V^T (p = min(n, m)
singular vectors each). The j-th left singular vector u_j of W (j <= k) has score
max_i |<u_j, u0_i>|; it is an intruder if that score is below eps. Counts are per layer and summed over
adapted matrices; k = 10 and eps = 0.5 by default, and the paper also sweeps eps over (0, 1] (one set of
scores gives every eps: count(eps) = #{j <= k : score_j < eps}).

Computation. A dense SVD of every W0 + dW costs O(n m p) per layer and checkpoint. genbound instead

1. computes W0's SVD once per backbone layer and caches it (:class:`BaseSVDCache`, keyed by a digest of
   W0's bytes, so any number of checkpoints of the same backbone share it);
2. writes W exactly in the bases [U0, Q_L] and [V0, Q_R], where Q_L spans the part of dW's column space
   outside span(U0) (non-empty only when n > m) and Q_R likewise for rows (only when m > n):

       W = [U0 Q_L] K [V0 Q_R]^T,    K = diag(S0, 0) + F G^T,    F = [U0^T Q_B; Q_L^T Q_B] C,
                                                             G = [V0^T Q_A; Q_R^T Q_A],

   with B = Q_B R_B, A^T = Q_A R_A, C = s R_B R_A^T. This is an identity, not an approximation; K is a
   diagonal plus a rank-R matrix, so a product with K costs O(p R) rather than O(n m);
3. finds the top-k left singular vectors c_j of K by block Krylov iteration on K K^T (full
   re-orthogonalisation, Rayleigh-Ritz, start block [e_1 .. e_{k+8}, F]) until every residual
   ||K v_j - sigma_j c_j|| is below ``tol`` sigma_1; u_j = [U0 Q_L] c_j, so the scores are simply
   max_i |c_j[i]| over the first p coordinates and u_j itself is never formed. If the Krylov basis would
   grow past half of K's size it stops and takes a dense SVD of K instead (same answer, its cost).

``method="dense"``: SVD of the materialised W0 + dW, scored against the cached U0 (also used for k = all,
where nothing is saved); this alone halves the per-checkpoint cost of the two-SVD computation peft's
helper does. ``method="gram"`` (:mod:`genbound.diagnostics.gram_intruders`): two in-place symmetric
eigenproblems in one Gram buffer of W0's shorter side, for a W0 decomposed once only; it never holds U0, V0
or an SVD workspace. ``method="auto"`` takes the dense path up to min(n, m) = ``DENSE_MAX``; above it, the
Krylov path when the cache keeps W0's SVD for reuse, else the Gram path. Why (benchmarks/results/spectra.md,
2-core CPU): pretrained weights have close top singular values
(MiniLM's attention: sigma_2 / sigma_1 ~ 0.99), so the Krylov basis grows to ~40% of K before the top 10
converge to 1e-8; on MiniLM's 384 x 384 query and on 128 x 128 it was slower than one dense SVD, while on
1024 x 1024 (basis 74) it was 4.6x faster than the cached dense path and 11.6x faster than two dense SVDs,
once W0's SVD is cached. Without that reuse, the SVD of W0 is most of the Krylov path's cost and its
memory (10.2 float32 copies of the largest matrix against the Gram path's 1.9, docs/scale.md).
Every path is checked against a brute-force dense computation in the tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core.device import where
from ..core.errors import GenboundError
from ..core.readers import all_finite
from ..methods.update import LayerUpdate
from .gram_intruders import gram_scores
from .spectra import with_factors

METHODS = ("auto", "krylov", "dense", "gram")
DENSE_MAX = 512  # min(n, m) at or below which "auto" takes the dense path (see the benchmark)
OVERSAMPLE = 8


def eps_sweep(steps: int = 20) -> list[float]:
    """The grid (0, 1] in ``steps`` equal steps: 1/steps, 2/steps, ..., 1."""
    if steps < 1:
        raise GenboundError(f"an eps sweep needs at least one step, got {steps}")
    return [round((i + 1) / steps, 12) for i in range(steps)]


# --------------------------------------------------------------------------------------------------
# W0's SVD, once per backbone layer


@dataclass
class BaseSVD:
    U: Tensor  # (n, p)
    S: Tensor  # (p,)
    V: Tensor  # (m, p)


def _digest(W: Tensor) -> str:
    t = W.detach().contiguous().cpu()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tuple(t.shape)}|{t.dtype}".encode())
    if t.numel():  # the tensor's own buffer, not a bytes copy of it
        h.update(t.view(torch.uint8).reshape(-1).numpy())
    return h.hexdigest()


def _nbytes(b: BaseSVD) -> int:
    return sum(t.numel() * t.element_size() for t in (b.U, b.S, b.V))


class BaseSVDCache:
    """W0 -> thin SVD, computed once per distinct W0 (by content digest), device and dtype.

    At most ``maxsize`` entries and ``max_bytes`` of factors are kept, the oldest dropped first: the SVD of a
    7 B model's 4096 x 4096 projection is 256 MiB in float64, so a count alone would let a run over 64
    adapted layers hold 17 GB. ``max_bytes=0`` keeps nothing (one pass over a model's layers, each W0 once)."""

    def __init__(self, maxsize: int = 256, max_bytes: int = 2 << 30):
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self._store: dict[tuple, BaseSVD] = {}
        self.hits = 0
        self.misses = 0

    @property
    def keeps(self) -> bool:
        """Whether a decomposition is kept for reuse (else every W0 is decomposed for one use only)."""
        return self.maxsize >= 1 and self.max_bytes > 0

    def get(self, W0: Tensor, device: torch.device | None = None, dtype: torch.dtype = torch.float64) -> BaseSVD:
        device = where(device, W0)
        key = (_digest(W0), str(torch.device(device)), str(dtype))
        if key in self._store:
            self.hits += 1
            return self._store[key]
        self.misses += 1
        U, S, Vh = torch.linalg.svd(W0.to(device, dtype), full_matrices=False)
        out = BaseSVD(U, S, Vh.T.contiguous())
        if self.maxsize < 1 or _nbytes(out) > self.max_bytes:
            return out
        while self._store and (len(self._store) >= self.maxsize
                               or sum(map(_nbytes, self._store.values())) + _nbytes(out) > self.max_bytes):
            self._store.pop(next(iter(self._store)))
        self._store[key] = out
        return out


DEFAULT_CACHE = BaseSVDCache()


# --------------------------------------------------------------------------------------------------
# Scores


@dataclass
class LayerIntruders:
    name: str
    k: int  # vectors examined: min(k asked, min(n, m))
    scores: list[float]  # max_i |<u_j, u0_i>| for j = 1..k
    singular_values: list[float]  # top-k singular values of W0 + dW
    count: int  # scores below eps
    counts: dict[str, int]  # per eps of the sweep (keys formatted with repr of the float)
    method: str  # "krylov", "krylov->dense(K)", "gram" or "dense"
    residual: float | None  # Krylov: max_j ||K v_j - sigma_j u_j|| / sigma_1; dense: None
    basis_size: int | None  # Krylov: columns of the final basis
    # Gram path on a tall W0 (n > m): directions of W0 with sigma_i^2 <= r eps sigma_1^2, numerically null,
    # whose u0_i the thin SVD would pick arbitrarily; they are left out of the maximum (gram_intruders)
    null_directions: int = 0


@dataclass
class IntruderReport:
    layers: list[LayerIntruders]
    k: int | str
    eps: float
    total: int
    eps_sweep: list[float]
    total_by_eps: dict[str, int]
    method: str
    tol: float
    device: str
    missing_base: list[str] = field(default_factory=list)


def brute_force_scores(W0: Tensor, dW: Tensor, k: int | None = 10) -> tuple[Tensor, Tensor]:
    """Reference: dense thin SVDs of W0 and W0 + dW; (scores of the top-k, top-k singular values)."""
    U0 = torch.linalg.svd(W0, full_matrices=False)[0]
    U, S, _ = torch.linalg.svd(W0 + dW, full_matrices=False)
    k = U.shape[1] if k is None else min(int(k), U.shape[1])
    return (U[:, :k].T @ U0).abs().amax(dim=1), S[:k]


def _orth_extra(Q: Tensor, U0: Tensor) -> Tensor:
    """Orthonormal basis of the part of span(Q) outside span(U0) (U0 orthonormal), possibly empty."""
    resid = Q - U0 @ (U0.T @ Q)
    resid = resid - U0 @ (U0.T @ resid)  # a second pass for orthogonality to working precision
    if resid.shape[1] == 0:
        return resid
    Ur, sr, _ = torch.linalg.svd(resid, full_matrices=False)
    keep = sr > 1e3 * torch.finfo(Q.dtype).eps * max(1.0, float(sr.max()) if sr.numel() else 1.0)
    return Ur[:, keep]


@dataclass
class _Core:
    """K = D + F G^T with D = diag(S0) padded to (ql, qr)."""

    S0: Tensor
    F: Tensor  # (ql, R)
    G: Tensor  # (qr, R)
    ql: int
    qr: int

    def mv(self, X: Tensor) -> Tensor:  # K X, X (qr, b)
        p = self.S0.numel()
        out = self.F @ (self.G.T @ X)
        out[:p] += self.S0[:, None] * X[:p]
        return out

    def rmv(self, Y: Tensor) -> Tensor:  # K^T Y, Y (ql, b)
        p = self.S0.numel()
        out = self.G @ (self.F.T @ Y)
        out[:p] += self.S0[:, None] * Y[:p]
        return out

    def dense(self) -> Tensor:
        K = self.F @ self.G.T
        p = self.S0.numel()
        K[:p, :p] += torch.diag(self.S0)
        return K


def _core(base: BaseSVD, u: LayerUpdate) -> _Core:
    B, A, s = u.B, u.A, float(u.scale)
    Qb, Rb = torch.linalg.qr(B)
    Qa, Ra = torch.linalg.qr(A.T)
    C = s * (Rb @ Ra.T)
    U0, V0 = base.U, base.V
    # Only the longer side needs a complement: when n <= m, U0 is square and spans R^n.
    QL = _orth_extra(Qb, U0) if U0.shape[0] > U0.shape[1] else Qb.new_zeros(Qb.shape[0], 0)
    QR = _orth_extra(Qa, V0) if V0.shape[0] > V0.shape[1] else Qa.new_zeros(Qa.shape[0], 0)
    F = torch.cat([U0.T @ Qb, QL.T @ Qb], 0) @ C
    G = torch.cat([V0.T @ Qa, QR.T @ Qa], 0)
    return _Core(base.S, F, G, F.shape[0], G.shape[0])


def _orthogonalize(Z: Tensor, Q: Tensor | None) -> Tensor:
    """Columns of Z made orthonormal and orthogonal to Q (classical Gram-Schmidt twice), rank-revealing."""
    if Z.shape[1] == 0:
        return Z
    # Directions are dropped relative to Z's size before projection, so a block that already lies in
    # span(Q) comes back empty (an invariant subspace) instead of as amplified rounding noise.
    scale = float(Z.norm(dim=0).max())
    for _ in range(2):
        if Q is not None and Q.shape[1]:
            Z = Z - Q @ (Q.T @ Z)
    Uz, sz, _ = torch.linalg.svd(Z, full_matrices=False)
    keep = sz > 1e3 * torch.finfo(Z.dtype).eps * scale if scale > 0 else sz > 0
    Z = Uz[:, keep]
    if Q is not None and Q.shape[1] and Z.shape[1]:
        Z = Z - Q @ (Q.T @ Z)
        Z = torch.linalg.qr(Z)[0]
    return Z


def _krylov_top_left(core: _Core, k: int, tol: float, max_basis: int) -> tuple[Tensor, Tensor, float, int] | None:
    """Top-k (left vectors (ql, k), singular values) of K by block Krylov on K K^T; None if the basis
    would exceed ``max_basis`` before every residual is below tol * sigma_1."""
    ql, p = core.ql, core.S0.numel()
    dev, dt = core.F.device, core.F.dtype
    nstart = min(k + OVERSAMPLE, p)
    E = torch.zeros(ql, nstart, device=dev, dtype=dt)
    E[torch.arange(nstart, device=dev), torch.arange(nstart, device=dev)] = 1.0
    block = _orthogonalize(torch.cat([E, core.F], 1), None)
    Q = block
    while True:
        M = core.rmv(Q).T  # Q^T K, (b, qr)
        Um, Sm, Vmh = torch.linalg.svd(M, full_matrices=False)
        kk = min(k, Sm.numel())
        Uk = Q @ Um[:, :kk]
        Vk = Vmh[:kk].T
        Sk = Sm[:kk]
        # Rayleigh-Ritz on the left makes K^T u_j = sigma_j v_j exact; the residual is on the right.
        R = core.mv(Vk) - Uk * Sk[None, :]
        top = float(Sm[0]) if Sm.numel() else 0.0
        res = float(R.norm(dim=0).max()) / top if top > 0 else 0.0
        if kk == k and res <= tol:
            return Uk, Sk, res, Q.shape[1]
        nxt = _orthogonalize(core.mv(core.rmv(block)), Q)
        if nxt.shape[1] == 0:
            # Invariant subspace reached: the Ritz values are exact.
            return (Uk, Sk, res, Q.shape[1]) if kk == k else None
        if Q.shape[1] + nxt.shape[1] > max_basis:
            return None
        block = nxt
        Q = torch.cat([Q, block], 1)


def layer_scores(W0: Tensor, u: LayerUpdate, k: int | None = 10, method: str = "auto",
                 device: torch.device | None = None, dtype: torch.dtype = torch.float64,
                 cache: BaseSVDCache | None = None, tol: float = 1e-8) -> tuple[Tensor, Tensor, str, float | None,
                                                                                 int | None]:
    """(scores, top singular values of W0 + dW, method used, residual, basis size) for one layer.

    ``k=None`` means all min(n, m) left singular vectors (always the dense path). ``method``: "dense", "krylov",
    "gram" (:mod:`~genbound.diagnostics.gram_intruders`) or "auto": dense up to min(n, m) = DENSE_MAX;
    above, Krylov when ``cache`` keeps W0's SVD for reuse (the default cache: several checkpoints of one
    backbone), else gram, which needs a fifth of the memory and was 2.2x faster for one use (docs/scale.md).
    """
    return _layer(W0, u, k, method, device, dtype, cache, tol)[:5]


def _layer(W0: Tensor, u: LayerUpdate, k: int | None, method: str, device: torch.device | None,
           dtype: torch.dtype, cache: BaseSVDCache | None, tol: float) -> tuple[Tensor, Tensor, str, float | None,
                                                                                int | None, int]:
    """:func:`layer_scores` and the count of W0's null directions left out (the Gram path's)."""
    if method not in METHODS:
        raise GenboundError(f"intruder method must be one of {', '.join(METHODS)}, got '{method}'")
    if tuple(W0.shape) != u.shape:
        raise GenboundError(
            f"layer {u.name}: base weight of shape {tuple(W0.shape)} does not match the update's "
            f"{u.out_features}x{u.in_features}; is this checkpoint for this backbone?"
        )
    if not all_finite(W0):
        raise GenboundError(f"layer {u.name}: base weight contains NaN or Inf")
    if k is not None and k < 1:
        raise GenboundError(f"intruder k must be at least 1 (or 'all'), got {k}")
    device = where(device, u, W0)
    v = with_factors(u, device, dtype)
    p = min(u.shape)
    kk = p if k is None else min(int(k), p)
    store = DEFAULT_CACHE if cache is None else cache
    if k is not None and v.factored and (method == "gram" or (method == "auto" and p > DENSE_MAX and not store.keeps)):
        got = gram_scores(W0.to(device), v.to(device, torch.float64), kk)
        return got.scores.to(dtype), got.singular_values.to(dtype), "gram", None, None, got.unresolved
    W0 = W0.to(device, dtype)
    use_dense = method == "dense" or k is None or not v.factored or (method == "auto" and p <= DENSE_MAX)
    if not use_dense:
        base = store.get(W0, device, dtype)
        core = _core(base, v)
        got = _krylov_top_left(core, kk, tol, max_basis=max(kk + 1, min(core.ql, core.qr) // 2))
        if got is None:
            # Slow convergence: the dense SVD of K (exact, same cost order as the dense path).
            Uk, Sk, _ = torch.linalg.svd(core.dense(), full_matrices=False)
            Uk, Sk = Uk[:, :kk], Sk[:kk]
            scores = Uk[: base.S.numel()].abs().amax(dim=0)
            return scores, Sk, "krylov->dense(K)", None, None, 0
        Uk, Sk, res, nb = got
        return Uk[: base.S.numel()].abs().amax(dim=0), Sk, "krylov", res, nb, 0
    if cache is not None or method != "dense":
        U0 = store.get(W0, device, dtype).U
    else:
        U0 = torch.linalg.svd(W0, full_matrices=False)[0]
    U, S, _ = torch.linalg.svd(W0 + v.materialize(), full_matrices=False)
    return (U[:, :kk].T @ U0).abs().amax(dim=1), S[:kk], "dense", None, None, 0


def _eps_key(e: float) -> str:
    return f"{e:g}"


def intruders(base_weights: Mapping[str, Tensor], updates: Mapping[str, LayerUpdate], k: int | None = 10,
              eps: float = 0.5, sweep: Sequence[float] | None = None, method: str = "auto",
              device: torch.device | None = None, dtype: torch.dtype = torch.float64,
              cache: BaseSVDCache | None = None, tol: float = 1e-8,
              progress: bool | None = None) -> IntruderReport:
    """Intruder dimensions of every adapted layer (``updates``) against its pretrained weight.

    ``base_weights[name]`` is W0 in the update's (out, in) orientation. ``k=None`` examines all singular
    vectors. ``sweep`` (eps values in (0, 1]) adds per-eps counts; ``eps`` is the headline threshold.
    Layers without a base weight are listed in ``missing_base`` (an error if that is every layer).
    """
    from tqdm.auto import tqdm

    device = where(device, updates, base_weights)
    if not (0.0 < float(eps) <= 1.0):
        raise GenboundError(f"eps must be in (0, 1], got {eps}")
    grid = sorted({float(e) for e in (sweep or [])} | {float(eps)})
    bad = [e for e in grid if not (0.0 < e <= 1.0)]
    if bad:
        raise GenboundError(f"eps sweep values must be in (0, 1], got {bad[0]}")
    missing = [n for n in updates if n not in base_weights]
    if len(missing) == len(updates):
        raise GenboundError(
            f"no base weight for any adapted layer (first: {missing[0] if missing else '-'}); "
            "intruders need the pretrained backbone: pass --backbone"
        )
    layers: list[LayerIntruders] = []
    names = [n for n in updates if n in base_weights]
    for name in tqdm(names, desc="intruders", unit="layer", disable=None if progress is None else not progress):
        u = updates[name]
        if u.name != name:
            u = u.renamed(name)
        scores, S, used, res, nb, null = _layer(base_weights[name], u, k, method, device, dtype, cache, tol)
        sc = scores.cpu()
        counts = {_eps_key(e): int((sc < e).sum()) for e in grid}
        layers.append(LayerIntruders(name, int(sc.numel()), sc.tolist(), S.cpu().tolist(),
                                     counts[_eps_key(eps)], counts, used, res, nb, null))
    total_by_eps = {_eps_key(e): sum(lay.counts[_eps_key(e)] for lay in layers) for e in grid}
    return IntruderReport(
        layers=layers, k="all" if k is None else int(k), eps=float(eps), total=total_by_eps[_eps_key(eps)],
        eps_sweep=grid, total_by_eps=total_by_eps, method=method, tol=tol, device=str(torch.device(device)),
        missing_base=missing,
    )
