"""The dense blocked Cholesky of ``Lambda' Z' W Z Lambda + I``.

The first factor (most levels) is kept block-diagonal: one ``q1 x q1`` block per level, factored
with unrolled batched Cholesky.  Every other factor, together with any extra dense columns
(for the linear mixed model: ``[X, y]``), forms a dense trailing block of size ``m``; its Schur
complement is factored with a dense Cholesky.  This is MixedModels.jl's blocked scheme.  For a
single grouping factor the dense block holds only the extra columns; nested and crossed designs
put the factors with fewer levels there (:mod:`.sparse` keeps their coupling to the first
factor sparse where the dense update would be large).

Everything here is a pure function of arrays and the static :class:`~.restructure.ReStructure`.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from . import linalg
from .ops import segment_sum
from .restructure import ReStructure


# ----------------------------------------------------------------------------- cross-products
class CrossProducts(NamedTuple):
    """Unscaled weighted cross-products of ``[Z_1 | Z_2 ... E]``.

    d11: (G1, q1, q1)   Z1' W Z1 per level
    d21: (m, G1, q1)    [Z2 E]' W Z1
    d22: (m, m)         [Z2 E]' W [Z2 E]
    """

    d11: jnp.ndarray
    d21: jnp.ndarray
    d22: jnp.ndarray


def dense_rows(structure: ReStructure, index, Z, extra):
    """Sparse rows of the dense block: values (n, k) and column positions (n, k)."""
    vals, pos, off = [], [], 0
    for f, idx, z in zip(structure.dense_factors, index[1:], Z[1:]):
        vals.append(z)
        pos.append(off + idx[:, None] * f.q + jnp.arange(f.q)[None, :])
        off += f.n_levels * f.q
    if extra is not None:
        n, k = extra.shape
        vals.append(extra)
        pos.append(jnp.broadcast_to(off + jnp.arange(k)[None, :], (n, k)))
    if not vals:
        return None, None
    return jnp.concatenate(vals, axis=1), jnp.concatenate(pos, axis=1)


def dense_size(structure: ReStructure, n_extra: int) -> int:
    return structure.p2 + n_extra


def cross_products(structure: ReStructure, index, Z, w, extra=None) -> CrossProducts:
    """Weighted cross-products by segment sums over observations (never a dense Z)."""
    f0 = structure.factors[0]
    g1 = index[0]
    d11, wz1 = first_block(structure, index, Z, w)
    m = dense_size(structure, 0 if extra is None else extra.shape[1])
    vals, pos = dense_rows(structure, index, Z, extra)
    if vals is None:
        return CrossProducts(d11, jnp.zeros((0, f0.n_levels, f0.q)), jnp.zeros((0, 0)))
    # d21[pos, g1, :] += w * v * z1
    flat = (pos * f0.n_levels + g1[:, None]).reshape(-1)
    contrib = (vals[:, :, None] * wz1[:, None, :]).reshape(-1, f0.q)
    d21 = segment_sum(contrib, flat, m * f0.n_levels).reshape(m, f0.n_levels, f0.q)
    return CrossProducts(d11, d21, dense_block(vals, pos, w, m))


def first_block(structure: ReStructure, index, Z, w):
    """``Z1' W Z1`` per first-factor level (G1, q1, q1), and ``W Z1`` (n, q1)."""
    wz1 = w[:, None] * Z[0]
    return segment_sum(wz1[:, :, None] * Z[0][:, None, :], index[0],
                       structure.factors[0].n_levels), wz1


def dense_block(vals, pos, w, m: int):
    """The dense block's weighted cross-products (m, m) from :func:`dense_rows`."""
    flat = (pos[:, :, None] * m + pos[:, None, :]).reshape(-1)
    contrib = (w[:, None, None] * vals[:, :, None] * vals[:, None, :]).reshape(-1)
    return segment_sum(contrib, flat, m * m).reshape(m, m)


def scale_dense_axis0(structure: ReStructure, lams, M):
    """Apply D' from the left along axis 0, where D = blockdiag(I_levels (x) Lambda_f, I_extra)."""
    parts, off = [], 0
    for f, lam in zip(structure.dense_factors, lams[1:]):
        size = f.n_levels * f.q
        blk = M[off:off + size].reshape((f.n_levels, f.q) + M.shape[1:])
        blk = jnp.einsum("gq...,qr->gr...", blk, lam)
        parts.append(blk.reshape((size,) + M.shape[1:]))
        off += size
    parts.append(M[off:])
    return jnp.concatenate(parts, axis=0)


def scaled_system(structure: ReStructure, lams, cp: CrossProducts):
    """``Lambda' (Z'WZ) Lambda + I`` in blocked form (the identity only on the Z part)."""
    lam1 = lams[0]
    q1 = lam1.shape[0]
    a11 = jnp.einsum("qr,gqs,st->grt", lam1, cp.d11, lam1) + jnp.eye(q1)
    m = cp.d22.shape[0]
    if m == 0:
        return a11, cp.d21, cp.d22
    a21 = jnp.einsum("mgq,qr->mgr", scale_dense_axis0(structure, lams, cp.d21), lam1)
    a22 = scale_dense_axis0(structure, lams, cp.d22)
    a22 = scale_dense_axis0(structure, lams, a22.T).T
    p2 = structure.p2
    a22 = a22 + jnp.diag(jnp.concatenate([jnp.ones(p2), jnp.zeros(m - p2)]))
    return a11, a21, a22


# ----------------------------------------------------------------------------- factorization
class BlockedCholesky(NamedTuple):
    """L = [[L11, 0], [C', L22]] with L11 block-diagonal over the first factor's levels.

    L11: (G1, q1, q1); C: (G1, q1, m) = L11^{-1} A12 per level; L22: (m, m).
    """

    L11: jnp.ndarray
    C: jnp.ndarray
    L22: jnp.ndarray


def factor(a11, a21, a22) -> BlockedCholesky:
    L11 = linalg.chol(a11)
    m = a22.shape[0]
    if m == 0:
        return BlockedCholesky(L11, jnp.zeros(a11.shape[:2] + (0,)), a22)
    C = linalg.solve_lower(L11, jnp.transpose(a21, (1, 2, 0)))
    S = a22 - jnp.einsum("gqm,gqk->mk", C, C)
    return BlockedCholesky(L11, C, linalg.chol(S))


def logdet_z(chol: BlockedCholesky, p2: int) -> jnp.ndarray:
    """log|Lambda'Z'WZ Lambda + I| (the Z part only, extra columns excluded)."""
    out = linalg.logdet_chol(chol.L11)
    if p2:
        out = out + 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol.L22)[:p2]))
    return out


def solve(chol: BlockedCholesky, r1, r2):
    """Solve (L L') x = r with r split as (G1, q1) and (m,) parts."""
    z1 = linalg.solve_lower(chol.L11, r1[..., None])[..., 0]
    if chol.L22.shape[0] == 0:
        return linalg.solve_upper_t(chol.L11, z1[..., None])[..., 0], r2
    z2 = tri_solve(chol.L22, r2 - jnp.einsum("gqm,gq->m", chol.C, z1), trans=False)
    x2 = tri_solve(chol.L22, z2, trans=True)
    x1 = linalg.solve_upper_t(chol.L11, (z1 - jnp.einsum("gqm,m->gq", chol.C, x2))[..., None])[..., 0]
    return x1, x2


def tri_solve(L, b, trans):
    """``L^{-1} b`` (``trans``: ``L'^{-1} b``) for a dense lower-triangular L and a vector b."""
    fn = linalg.solve_upper_t if trans else linalg.solve_lower
    return fn(L, b[..., None])[..., 0]


def conditional_covariances(chol: BlockedCholesky, structure: ReStructure) -> list[jnp.ndarray]:
    """Diagonal blocks of (Lambda'Z'WZ Lambda + I)^{-1} per factor level: list of (G_f, q_f, q_f)."""
    p2 = structure.p2
    G1, q1 = chol.L11.shape[:2]
    eye = jnp.broadcast_to(jnp.eye(q1), (G1, q1, q1))
    L11inv = linalg.solve_lower(chol.L11, eye)                   # (G1, q1, q1)
    if p2 == 0:
        return [jnp.einsum("gkq,gkr->gqr", L11inv, L11inv)]
    L2 = chol.L22[:p2, :p2]
    Minv = linalg.dense_tri_inv(L2)        # L2^{-1}
    sigma22 = Minv.T @ Minv
    T = jnp.einsum("gqm,km->gqk", chol.C[:, :, :p2], Minv)        # C_g L2^{-T}
    inner = eye + jnp.einsum("gqk,grk->gqr", T, T)
    v11 = jnp.einsum("gkq,gkl,glr->gqr", L11inv, inner, L11inv)
    return [v11] + level_blocks(structure, sigma22)


def level_blocks(structure: ReStructure, sigma22) -> list[jnp.ndarray]:
    """The per-level diagonal blocks (G_f, q_f, q_f) of the dense factors' covariance."""
    out, off = [], 0
    for f in structure.dense_factors:
        size = f.n_levels * f.q
        blk = sigma22[off:off + size, off:off + size].reshape(f.n_levels, f.q, f.n_levels, f.q)
        out.append(jnp.einsum("gqgr->gqr", blk))
        off += size
    return out

