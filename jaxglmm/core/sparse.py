"""The blocked Cholesky with L21 kept sparse (MixedModels.jl's scheme for crossed factors).

The first factor (most levels) is block-diagonal as in :mod:`.blocked`; the rows of the other
factors' levels meet the first factor's levels only where the two co-occur in the data, so
``A21 = [Z2]' W Z1`` is held as a list of (first-factor level, other level) *pairs* with their
``q_f x q1`` blocks, and the Schur update ``L21 L21'`` is a sum over *triplets* (two pairs
sharing a first-factor level): it costs about ``sum_g nnz_g^2``, not
``levels2 * levels1 * levels2``.  Only the trailing block (the other factors with [X y]) is
dense.  The pattern depends on the data, so it is built on the host once per dataset
(:func:`jaxglmm.design.sparse.sparse_system`).  Everything here is jittable, and a factor
costs nothing in n (:func:`sparse_values`, which refreshes the values from new weights, is
one pass over the rows).
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from ..design.sparse import SparseSystem
from . import linalg
from .blocked import (dense_block, dense_rows, first_block, level_blocks, scale_dense_axis0,
                      tri_solve)
from .ops import segment_sum
from .restructure import ReStructure


# the dense Schur update's flops (an LMM evaluation, a Laplace Newton step) from which the
# crossed LMM and the Laplace Hessian keep L21 sparse (InstEval: 2972 * 1145^2 = 3.9e9;
# penicillin: 24 * 8^2).  Measured warm (scripts/bench_peers.py --grid, XLA-optimized
# programs): crossed designs of 120 groups (128 * 63^2 = 5e5) fit in 27 ms dense and 21 ms
# sparse (gaussian), 29 and 39 ms (binomial); of 200 groups (2.6e6), 62 and 17 ms, 80 and
# 44 ms; of 300 groups, crossed, three-factor and nested gaussian designs 203, 798 and 791 ms
# dense against 53, 59 and 64 ms sparse (binomial nested 1250 against 449 ms).  It was 1e8.
SPARSE_MIN_WORK = 1e6


def sparse_schur_pays(structure: ReStructure, n_extra: int) -> bool:
    """Whether the sparse blocks pay: two or more grouping factors and a dense Schur update
    of the trailing block, G1 * q1 * m^2 flops, past ``SPARSE_MIN_WORK``."""
    if len(structure.factors) < 2:
        return False
    f0 = structure.factors[0]
    m = structure.p2 + n_extra
    return f0.n_levels * f0.q * m * m >= SPARSE_MIN_WORK


class SparseCholesky(NamedTuple):
    """The blocked Cholesky factor with L21 sparse: L11 (G1, q1, q1); ``Ct`` (P, q1, qm) the
    pairs' blocks of L11^{-1} A12 (the Z2 part of L21', sparse); ``CE`` (G1, q1, e) the
    extra columns' part (dense over levels); L22 (m, m) dense."""

    L11: jnp.ndarray
    Ct: jnp.ndarray
    CE: jnp.ndarray
    L22: jnp.ndarray


def _padded_lambdas(structure: ReStructure, lams, qm: int):
    out = [jnp.pad(lam, ((0, qm - f.q), (0, qm - f.q)))
           for f, lam in zip(structure.dense_factors, lams[1:])]
    return jnp.stack(out) if out else jnp.zeros((1, qm, qm), lams[0].dtype)


def sparse_factor(structure: ReStructure, lams, sp: SparseSystem) -> SparseCholesky:
    """Factor ``Lambda' Z' W Z Lambda + I`` (augmented by E) from the sparse cross-products."""
    L11, Ct, CE, S = sparse_schur(structure, lams, sp)
    # S holds its lower triangle only; the Cholesky's derivative rule takes the whole
    # matrix, so it is made symmetric (one m^2 pass) for the derivatives to be right
    S = jnp.tril(S) + jnp.tril(S, -1).T
    return SparseCholesky(L11, Ct, CE, linalg.dense_chol(S))


def scalar_blocks(structure: ReStructure) -> bool:
    """Whether every grouping factor has one scalar term (``(1 | g)``-like: theta_j scales
    factor j's columns), the case of the closed-form gradient
    (:func:`jaxglmm.core.lmm.sparse_deviance_gradient`)."""
    return all(f.q == 1 and len(f.terms) == 1 for f in structure.factors)


def sparse_schur(structure: ReStructure, lams, sp: SparseSystem):
    """The pieces of :func:`sparse_factor` before the dense factorization: ``(L11, Ct, CE,
    S)`` with S the trailing block's Schur complement (its lower triangle)."""
    lam1 = lams[0]
    q1 = lam1.shape[0]
    m = sp.d22.shape[0]
    p2 = structure.p2
    qm = sp.pair_values.shape[1]
    L11 = linalg.chol(jnp.einsum("qr,gqs,st->grt", lam1, sp.d11, lam1) + jnp.eye(q1))
    CE = linalg.solve_lower(L11, jnp.einsum("qr,gqe->gre", lam1, sp.dE))
    lamp = _padded_lambdas(structure, lams, qm)[sp.pair_factor]          # (P, qm, qm)
    A = jnp.einsum("kab,kaq,qr->krb", lamp, sp.pair_values, lam1)         # (P, q1, qm)
    Ct = linalg.solve_lower(L11[sp.pair_level], A)                       # (P, q1, qm)
    # S = A22 - L21 L21': the Z2 x Z2 part over the triplets, the rest from CE
    e = m - p2
    scale = jnp.concatenate([jnp.full(f.n_levels * f.q, lam[0, 0])
                             for f, lam in zip(structure.dense_factors, lams[1:])]
                            + [jnp.ones(e)])
    if sp.extra_level.shape[0]:
        # scalar blocks (q1 = qm = 1): every product in L21 L21' is P_t lam1^2 / A11_g, times
        # the two rows' lambdas; one sorted sum for the Z2 rows, one for the E rows, then
        # S = D (d22 - T) D + I_p2 in one pass
        wg = jnp.square(lam1[0, 0]) / (jnp.square(lam1[0, 0]) * sp.d11[:, 0, 0] + 1.0)
        cz = wg[sp.triplet_level]
        if sp.triplet_product.shape[0]:
            cz = cz * sp.triplet_product
        Tz = segment_sum_sorted(cz, sp.triplet_position.reshape(-1), p2 * m, sorted_=True)
        Te = segment_sum_sorted(wg[sp.extra_level] * sp.extra_product, sp.extra_position,
                                e * m, sorted_=True)
        T = jnp.concatenate([Tz, Te]).reshape(m, m)
        S = scale[:, None] * (sp.d22 - T) * scale[None, :]
        S = S.at[jnp.arange(p2), jnp.arange(p2)].add(1.0)
    else:
        contrib = jnp.einsum("tqa,tqb->tab", Ct[sp.triplet_pair1], Ct[sp.triplet_pair2])
        T = segment_sum_sorted(contrib.reshape(-1), sp.triplet_position.reshape(-1), m * m + 1,
                               sorted_=qm == 1)[:m * m].reshape(m, m)
        a22 = scale_dense_axis0(structure, lams, sp.d22)
        a22 = scale_dense_axis0(structure, lams, a22.T).T
        a22 = a22 + jnp.diag(jnp.concatenate([jnp.ones(p2), jnp.zeros(m - p2)]))
        S = a22 - T
        if e:           # the extra columns' part (none for the Laplace Hessian)
            ez = jnp.einsum("kqe,kqa->kae", CE[sp.pair_level], Ct)        # (P, qm, e)
            EZ = segment_sum_sorted(ez.reshape(-1, e), sp.pair_rows.reshape(-1), m + 1,
                                    sorted_=False)[:p2]                  # (p2, e)
            EE = jnp.einsum("gqe,gqf->ef", CE, CE)
            S = S.at[p2:, :p2].add(-EZ.T).at[p2:, p2:].add(-EE)
    return L11, Ct, CE, S


def segment_sum_sorted(data, ids, num_segments: int, sorted_: bool):
    """:func:`~jaxglmm.core.ops.segment_sum` (the one place of the strategy), its ids sorted
    where ``sorted_``."""
    return segment_sum(data, ids, num_segments, indices_are_sorted=sorted_)


def sparse_l21_times(ch: SparseCholesky, sp: SparseSystem, x2: jnp.ndarray) -> jnp.ndarray:
    """``L21' x`` restricted to the Z2 columns, per first-factor level: (G1, q1) from x2 (p2,)."""
    xp = jnp.concatenate([x2, jnp.zeros(1, x2.dtype)])
    rows = jnp.where(sp.pair_rows >= x2.shape[0], x2.shape[0], sp.pair_rows)
    per = jnp.einsum("kqa,ka->kq", ch.Ct, xp[rows])
    return segment_sum(per, sp.pair_level, ch.L11.shape[0])


def sparse_conditional_covariances(ch: SparseCholesky, sp: SparseSystem,
                                   structure: ReStructure, lams,
                                   sigma22: jnp.ndarray | None = None) -> list[jnp.ndarray]:
    """As :func:`.blocked.conditional_covariances`, for the sparse factor: the first factor's blocks
    from the triplets (``C_g Sigma22 C_g'`` summed over the pairs of each level).
    ``sigma22``: the inverse of the factor's leading p2 x p2 block where the caller has it
    (its lower triangle is read)."""
    p2 = structure.p2
    G1, q1 = ch.L11.shape[:2]
    eye = jnp.broadcast_to(jnp.eye(q1), (G1, q1, q1))
    L11inv = linalg.solve_lower(ch.L11, eye)
    if sigma22 is None:
        Minv = linalg.dense_tri_inv(ch.L22[:p2, :p2])
        sigma22 = Minv.T @ Minv
    else:
        sigma22 = jnp.tril(sigma22[:p2, :p2])
        sigma22 = sigma22 + jnp.tril(sigma22, -1).T
    sig = jnp.pad(sigma22, ((0, 1), (0, 1)))
    if sp.extra_level.shape[0]:
        m = sp.d22.shape[0]
        dest = sp.triplet_position.reshape(-1)
        r, c = dest // m, dest % m
        scale = jnp.concatenate([jnp.full(f.n_levels, lam[0, 0])
                                 for f, lam in zip(structure.dense_factors, lams[1:])]
                                + [jnp.zeros(1)])
        wg = jnp.square(lams[0][0, 0]) / jnp.square(ch.L11[:, 0, 0])
        product = sp.triplet_product if sp.triplet_product.shape[0] else 1.0
        x = wg[sp.triplet_level] * product * scale[r] * scale[c] * sig[r, c]
        x = jnp.where(r == c, x, 2.0 * x)
        inner = eye + segment_sum(x, sp.triplet_level, G1)[:, None, None]
    else:
        rows = jnp.where(sp.pair_rows >= p2, p2, sp.pair_rows)
        t1, t2 = sp.triplet_pair1, sp.triplet_pair2
        ra, rb = rows[t1], rows[t2]
        blk = sig[ra[:, :, None], rb[:, None, :]]                         # (T, qm, qm)
        X = jnp.einsum("tqa,tab,trb->tqr", ch.Ct[t1], blk, ch.Ct[t2])
        X = X + jnp.where((t1 != t2)[:, None, None], jnp.swapaxes(X, 1, 2), 0.0)
        inner = eye + segment_sum(X, sp.pair_level[t1], G1)
    v11 = jnp.einsum("gkq,gkl,glr->gqr", L11inv, inner, L11inv)
    return [v11] + level_blocks(structure, sigma22)


def sparse_values(structure: ReStructure, sp: SparseSystem, row_pair, index, Z,
                  w) -> SparseSystem:
    """``sp`` with its values recomputed from the weights ``w`` (its pattern kept; no extra
    columns): one pass over the rows, ``Z1'WZ1`` per level, ``Z2'WZ1`` per pair (``row_pair``
    from :func:`jaxglmm.design.sparse.sparse_system`) and the dense ``Z2'WZ2``."""
    q1 = structure.factors[0].q
    P, qm = sp.pair_values.shape[:2]
    d11, wz1 = first_block(structure, index, Z, w)
    pv = jnp.zeros((P, qm, q1), w.dtype)
    for f, rp, z in zip(structure.dense_factors, row_pair, Z[1:]):
        blk = segment_sum(z[:, :, None] * wz1[:, None, :], rp, P)        # (P, q_f, q1)
        pv = pv + jnp.pad(blk, ((0, 0), (0, qm - f.q), (0, 0)))
    vals, pos = dense_rows(structure, index, Z, None)
    return sp._replace(d11=d11, d22=dense_block(vals, pos, w, structure.p2), pair_values=pv)


def sparse_solve(ch: SparseCholesky, sp: SparseSystem, r1, r2):
    """:func:`.blocked.solve` for the sparse factor (no extra columns): ``(L L') x = r``, r as
    (G1, q1) and (p2,)."""
    z1 = linalg.solve_lower(ch.L11, r1[..., None])[..., 0]
    m = ch.L22.shape[0]
    per = jnp.einsum("kqa,kq->ka", ch.Ct, z1[sp.pair_level])             # (P, qm)
    l21z = segment_sum(per.reshape(-1), sp.pair_rows.reshape(-1), m + 1)[:m]
    z2 = tri_solve(ch.L22, r2 - l21z, trans=False)
    x2 = tri_solve(ch.L22, z2, trans=True)
    x1 = linalg.solve_upper_t(ch.L11, (z1 - sparse_l21_times(ch, sp, x2))[..., None])[..., 0]
    return x1, x2


