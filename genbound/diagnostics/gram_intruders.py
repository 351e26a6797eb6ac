"""Intruder scores in the memory of one Gram matrix: two in-place symmetric eigenproblems, no SVD.

The dense and Krylov paths of :mod:`genbound.diagnostics.intruders` hold W0's thin SVD (U0 and V0) and, in
LAPACK's divide-and-conquer SVD, a workspace of several more copies of the matrix: 11.4 float64 copies of a
1024 x 1024 W0 were measured. On a 7 B base (4096 x 11008 projections) that is the difference between a
laptop and a server. This path needs one float64 Gram matrix of the *shorter* side of W0, r x r with
r = min(n, m), and small (r, R) factors.

Orientation. Let Y = W0 if n <= m, else Y = W0^T, so that Y is r x c with r <= c, and write the update in the
same orientation, dY = s L R (L = B, R = A when n <= m; L = A^T, R = B^T otherwise). With E, lambda the
eigenpairs of Y Y^T (E = U0 when n <= m, V0 otherwise; lambda_i = sigma_i(W0)^2) and P = Y R^T,

    (Y + dY)(Y + dY)^T = Y Y^T + s (L P^T + P L^T) + s^2 L (R R^T) L^T,

so in the basis E, with Lt = E^T L and Pt = E^T P,

    M = E^T (Y + dY)(Y + dY)^T E = diag(lambda) + Z C Z^T,   Z = [Pt, Lt],   C = [[0, s I], [s I, s^2 R R^T]].

This is an identity. The top-k eigenpairs (mu_j, d_j) of M give sigma_j(W) = sqrt(mu_j) and the top-k
singular vectors of Y + dY in the coordinates of E.

* n <= m: d_j = U0^T u_j, so score_j = max_i |d_j[i]| (the definition, with no division).
* n > m: d_j = V0^T v_j holds the *right* vectors. With u_j = W v_j / sigma_j and u0_i = W0 v0_i / sigma_i,
  W^T W0 = Y Y^T + s L P^T gives

      <u_j, u0_i> = (lambda_i d_j[i] + s Pt[i] . (Lt^T d_j)) / (sigma_i sigma_j).

  Directions with lambda_i <= r eps lambda_1 are W0's null space to the Gram's precision: their u0_i is not
  determined by W0 (the thin SVD picks them arbitrarily), and they are left out of the maximum.

Memory. The Gram buffer is filled in column chunks of Y converted to float64 (W0 is never copied whole in
float64). E itself is never needed, only E^T [P, L]: LAPACK's ``dsytrd`` reduces the Gram in place to a
tridiagonal T = Q^T G Q, its reflectors are applied to the r x 2R block [P, L], the buffer is released, and
``dsytrd``'s T gives its eigenvectors Z to ``dstemr`` (MRRR), so E^T [P, L] = Z^T Q^T [P, L]. Z's memory then
holds M, of which ``dsyevr`` takes the top k eigenpairs only. One r x r buffer exists at a time. Peak: the
W0 the caller holds (none, for a view of a mapped file), plus 2 (r/c) float32 copies of W0 for the Gram,
plus O((n + m) R). On CUDA the two eigenproblems are torch.linalg.eigh (cuSOLVER keeps its own workspace);
the identity is the same.

Precision. Eigenvectors of a Gram matrix are as accurate as singular vectors where it matters here: the
angle error of the j-th vector is about eps ||M|| / (mu_j - mu_{j+1}) = eps sigma_1^2 / ((sigma_j - sigma_{j+1})
(sigma_j + sigma_{j+1})), the SVD's eps sigma_1 / (sigma_j - sigma_{j+1}) times sigma_1 / (sigma_j +
sigma_{j+1}), about 1/2 for the top k. The tests compare the scores with dense SVDs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.errors import GenboundError
from ..methods.update import LayerUpdate

CHUNK_ELEMENTS = 1 << 22  # at most this many float64 elements in one converted chunk of Y (32 MiB) ...
CHUNKS = 16  # ... and at most 1/CHUNKS of Y, so the conversion costs 1/8 of a float32 copy of W0


@dataclass
class GramScores:
    scores: Tensor  # (k,) max_i |<u_j, u0_i>|
    singular_values: Tensor  # (k,) top-k singular values of W0 + dW
    orientation: str  # "rows" (n <= m, the left Gram) or "columns" (n > m, the right Gram)
    unresolved: int  # directions of W0 left out as numerically null (only with orientation "columns")


def _oriented(W0: Tensor, u: LayerUpdate) -> tuple[Tensor, Tensor, Tensor, bool]:
    """(Y, L, R, tall): W0 and its update written as Y + s L R with Y r x c, r <= c."""
    n, m = W0.shape
    if n <= m:
        return W0, u.B, u.A, False
    return W0.T, u.A.T, u.B.T, True


def _gram_and_projection(Y: Tensor, R: Tensor) -> tuple[Tensor, Tensor]:
    """(Y Y^T, Y R^T) in float64, reading Y in column chunks so that no float64 copy of Y exists."""
    r, c = Y.shape
    dt, dev = torch.float64, R.device
    G = torch.zeros(r, r, dtype=dt, device=dev)
    P = torch.zeros(r, R.shape[0], dtype=dt, device=dev)
    step = max(1, min(-(-c // CHUNKS), CHUNK_ELEMENTS // max(r, 1)))
    for j in range(0, c, step):
        X = Y[:, j:j + step].to(dev, dt)
        G.addmm_(X, X.T)
        P.addmm_(X, R[:, j:j + step].T.to(dt))
    return G, P


def _householder_transpose(c, tau, X) -> None:
    """X <- Q^T X in place, Q = H_1 ... H_{r-1} the reflectors ``dsytrd`` (lower) leaves in ``c`` and ``tau``:
    H_i = I - tau_i v_i v_i^T with v_i = (0, .., 0, 1, c[i+2:, i]), the 1 at row i + 1."""
    import numpy as np

    for i in range(len(tau)):
        if tau[i] == 0.0:
            continue
        v = np.concatenate(([1.0], c[i + 2:, i]))
        X[i + 1:] -= tau[i] * np.outer(v, v @ X[i + 1:])


def _basis_projection(Y: Tensor, R: Tensor, L: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(lambda ascending, E^T [P, L], a free r x r float64 buffer) for the eigenpairs (E, lambda) of Y Y^T and
    P = Y R^T, holding one r x r buffer at a time.

    CPU: LAPACK's ``dsytrd`` reduces the Gram in place to tridiagonal T = Q^T G Q (the reflectors stay in its
    buffer), they are applied to [P, L] (r x 2R), the buffer is released, and ``dstemr`` (MRRR) gives T's
    eigenvectors Z, so E^T X = Z^T Q^T X; Z's memory is then the free buffer. That is 4/3 r^3 flops for the
    reduction against ``dsyev``'s QR iteration, about 7x faster at r = 2048, at the same one-buffer peak.
    CUDA: torch.linalg.eigh (cuSOLVER; the Gram's buffer is returned as the free one)."""
    G, P = _gram_and_projection(Y, R)
    X = torch.cat([P, L.to(P)], 1)
    if G.device.type != "cpu":
        lam, E = torch.linalg.eigh(G)
        return lam, E.T @ X, G
    import numpy as np
    from scipy.linalg import lapack

    r = G.shape[0]
    lwork = int(lapack.dsytrd_lwork(r, lower=1)[0])
    c, d, e, tau, info = lapack.dsytrd(G.numpy().T, lower=1, lwork=max(lwork, 1), overwrite_a=1)
    if info != 0:
        raise GenboundError(f"LAPACK dsytrd failed (info {info}) on a {r} x {r} Gram matrix")
    QX = X.numpy()
    _householder_transpose(c, tau, QX)
    del G, c  # the reflectors are applied: the buffer goes before T's eigenvectors take as much again
    e = np.append(e, 0.0)  # dstemr's off-diagonal has length r
    lw, liw, info = lapack.dstemr_lwork(d, e, 0, 0, 0, 0, 0, compute_v=1)
    _, w, z, info = lapack.dstemr(d, e, 0, 0, 0, 0, 0, compute_v=1, lwork=lw, liwork=liw)
    if info != 0:
        raise GenboundError(f"LAPACK dstemr failed (info {info}) on a {r} x {r} tridiagonal matrix")
    EX = z.T @ QX
    return torch.from_numpy(w), torch.from_numpy(EX), torch.from_numpy(z.T)  # z.T: C-ordered, the same memory


def _top_eigh_in_place(M: Tensor, top: int) -> tuple[Tensor, Tensor]:
    """The ``top`` largest eigenpairs of the symmetric ``M`` (ascending), overwriting M on CPU (``dsyevr``)."""
    if M.device.type != "cpu":
        w, V = torch.linalg.eigh(M)
        return w[-top:], V[:, -top:]
    from scipy.linalg import eigh

    a = M.numpy().T  # M is symmetric, so its transpose is the Fortran-ordered matrix LAPACK works in place on
    r = a.shape[0]
    w, V = eigh(a, overwrite_a=True, driver="evr", subset_by_index=[r - top, r - 1], check_finite=False)
    return torch.from_numpy(w), torch.from_numpy(V)


def gram_scores(W0: Tensor, u: LayerUpdate, k: int) -> GramScores:
    """Top-k intruder scores and singular values of W0 + s B A from one r x r Gram buffer (module docstring).

    ``u`` must be factored with an explicit A, in float64 on W0's device (``spectra.with_factors``); W0 may be
    in any floating dtype and is only read."""
    if not u.factored or u.A is None:
        raise GenboundError(f"layer {u.name}: the Gram path needs a factored update (B and A); use method 'dense'")
    Y, L, R, tall = _oriented(W0, u)
    r = Y.shape[0]
    k = min(int(k), r)
    s = float(u.scale)
    lam, Z, M = _basis_projection(Y, R, L)  # Z = [Pt, Lt] = E^T [P, L]; M: the free r x r buffer
    Pt, Lt = Z[:, :R.shape[0]], Z[:, R.shape[0]:]
    Rd = R.to(Z)
    eye = torch.eye(L.shape[1], dtype=Z.dtype, device=Z.device)
    C = torch.cat([torch.cat([torch.zeros_like(eye), s * eye], 1),
                   torch.cat([s * eye, s * s * (Rd @ Rd.T)], 1)], 0)
    torch.matmul(Z @ C, Z.T, out=M)
    M.diagonal().add_(lam.to(M))
    mu, D = _top_eigh_in_place(M, top=k)
    mu, D = mu.flip(0).clamp_min(0.0), D.flip(1)  # descending
    sigma = mu.sqrt()
    if not tall:
        return GramScores(D.abs().amax(dim=0), sigma, "rows", 0)
    lam = lam.to(D)
    resolved = lam > r * torch.finfo(lam.dtype).eps * float(lam.max().clamp_min(0.0))
    num = lam[:, None] * D + s * Pt.to(D) @ (Lt.to(D).T @ D)
    sig0 = lam.clamp_min(0.0).sqrt()
    cos = num[resolved] / (sig0[resolved, None] * sigma.clamp_min(torch.finfo(D.dtype).tiny)[None, :])
    return GramScores(cos.abs().amax(dim=0), sigma, "columns", int((~resolved).sum()))
