"""The blocked Cholesky of a nested design: two grouping factors, every level of the first
(most levels, ``a:b``) within one level of the second (``a``).

Then ``L21 L21'`` has no block between two levels of the second factor, so the second
factor's block of the Schur complement stays block-diagonal, one ``q2 x q2`` block per level,
as MixedModels.jl keeps it (its ``Diagonal``/``UniformBlockDiagonal`` ``L[2, 2]`` for nested
factors): the factor is three levels of blocks, ::

    L = [ L11              ]     L11: (G1, q1, q1)  the first factor's blocks
        [ C1'   L2         ]     C1:  (G1, q1, q2)  L11^{-1} A12, the parent's columns only
        [ C1E'  C2'   L3   ]     L2:  (G2, q2, q2)  the second factor's blocks
                                 C2:  (G2, q2, e)   the extra columns' (an LMM's [X y])
                                 L3:  (e, e)        dense

and an evaluation costs ``O(G1 q1^3 + G2 q2^3 + e^3)``, where the dense trailing block of
:mod:`.blocked` and :mod:`.sparse` costs ``O((G2 q2)^3)``: a gaussian design with 3,000 groups
took 8 s (scripts/bench_peers.py --grid), a binomial one did not finish in 150 s.

The values are computed from the rows in the compiled program (segment sums); only the
parent of each first-factor level (:func:`nested_parent`) is built on the host.  Levels and
rows of a padded problem (zero weights, empty levels) add nothing.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from . import linalg
from .blocked import first_block
from .ops import segment_sum
from .restructure import ReStructure


class NestedPattern(NamedTuple):
    """The nesting of a dataset: each first-factor level's level of the second factor."""

    parent: jnp.ndarray             # (G1,) int


class NestedSystem(NamedTuple):
    """Weighted cross-products of ``[Z1 | Z2 | E]`` for nested factors."""

    d11: jnp.ndarray                # (G1, q1, q1) Z1' W Z1 per first-factor level
    d21: jnp.ndarray                # (G1, q2, q1) Z2' W Z1 per first-factor level (its parent)
    d22: jnp.ndarray                # (G2, q2, q2) Z2' W Z2 per second-factor level
    d1E: jnp.ndarray                # (G1, q1, e)
    d2E: jnp.ndarray                # (G2, q2, e)
    dEE: jnp.ndarray                # (e, e)
    parent: jnp.ndarray             # (G1,)


class NestedCholesky(NamedTuple):
    """The factor of ``[Lambda'Z'WZ Lambda + I, ...; ..., E'WE]`` (see the module)."""

    L11: jnp.ndarray
    C1: jnp.ndarray
    C1E: jnp.ndarray
    L2: jnp.ndarray
    C2: jnp.ndarray
    L3: jnp.ndarray


def nested_parent(structure: ReStructure, index, weights) -> np.ndarray | None:
    """Each first-factor level's level of the second factor (host NumPy, once per dataset),
    or None where the design is not nested: not exactly two grouping factors, or a
    first-factor level that meets two levels of the second in rows of positive weight."""
    if len(structure.factors) != 2 or structure.n_channels != 1:
        return None
    f1, f2 = structure.factors
    keep = np.asarray(weights) > 0
    i1 = np.asarray(index[0])[keep].astype(np.int64)
    i2 = np.asarray(index[1])[keep].astype(np.int64)
    pairs = np.unique(i1 * f2.n_levels + i2)
    first = pairs // f2.n_levels
    if first.size != np.unique(first).size:
        return None
    parent = np.zeros(f1.n_levels, np.int32)    # a level without rows: any parent (adds 0)
    parent[first] = pairs % f2.n_levels
    return parent


def nested_system(structure: ReStructure, parent, index, Z, w, extra=None) -> NestedSystem:
    """The cross-products, by segment sums over the rows (``extra``: the dense columns E,
    (n, e), or None)."""
    f1, f2 = structure.factors
    d11, wz1 = first_block(structure, index, Z, w)                   # (G1, q1, q1), (n, q1)
    z2 = Z[1]
    wz2 = w[:, None] * z2
    d21 = segment_sum(z2[:, :, None] * wz1[:, None, :], index[0], f1.n_levels)
    d22 = segment_sum(wz2[:, :, None] * z2[:, None, :], index[1], f2.n_levels)
    if extra is None:
        extra = jnp.zeros((w.shape[0], 0), w.dtype)
    d1E = segment_sum(wz1[:, :, None] * extra[:, None, :], index[0], f1.n_levels)
    d2E = segment_sum(wz2[:, :, None] * extra[:, None, :], index[1], f2.n_levels)
    dEE = (w[:, None] * extra).T @ extra
    return NestedSystem(d11, d21, d22, d1E, d2E, dEE, parent)


def nested_factor(structure: ReStructure, lams, ns: NestedSystem) -> NestedCholesky:
    """Factor the system at ``lams`` (the two factors' relative covariance factors)."""
    lam1, lam2 = lams
    q1, q2 = lam1.shape[0], lam2.shape[0]
    G2 = structure.factors[1].n_levels
    L11 = linalg.chol(jnp.einsum("qr,gqs,st->grt", lam1, ns.d11, lam1) + jnp.eye(q1))
    C1 = linalg.solve_lower(L11, jnp.einsum("qr,gsq,st->grt", lam1, ns.d21, lam2))
    C1E = linalg.solve_lower(L11, jnp.einsum("qr,gqe->gre", lam1, ns.d1E))
    D = (jnp.einsum("qr,hqs,st->hrt", lam2, ns.d22, lam2) + jnp.eye(q2)
         - segment_sum(jnp.einsum("gqa,gqb->gab", C1, C1), ns.parent, G2))
    B = (jnp.einsum("qr,hqe->hre", lam2, ns.d2E)
         - segment_sum(jnp.einsum("gqa,gqe->gae", C1, C1E), ns.parent, G2))
    L2 = linalg.chol(D)
    C2 = linalg.solve_lower(L2, B)
    e = ns.dEE.shape[0]
    if e == 0:
        return NestedCholesky(L11, C1, C1E, L2, C2, ns.dEE)
    S3 = (ns.dEE - jnp.einsum("gqe,gqf->ef", C1E, C1E) - jnp.einsum("hqe,hqf->ef", C2, C2))
    return NestedCholesky(L11, C1, C1E, L2, C2, linalg.chol(S3))


def logdet_z(ch: NestedCholesky) -> jnp.ndarray:
    """log|Lambda'Z'WZ Lambda + I| (the extra columns excluded)."""
    return linalg.logdet_chol(ch.L11) + linalg.logdet_chol(ch.L2)


def solve(ch: NestedCholesky, parent, r1, r2):
    """Solve ``(L L') x = r`` for a factor without extra columns, r as (G1, q1) and (G2 q2,);
    returns x the same way."""
    G2, q2 = ch.L2.shape[:2]
    z1 = linalg.solve_lower(ch.L11, r1[..., None])[..., 0]
    r2 = r2.reshape(G2, q2) - segment_sum(jnp.einsum("gqa,gq->ga", ch.C1, z1), parent, G2)
    z2 = linalg.solve_lower(ch.L2, r2[..., None])[..., 0]
    x2 = linalg.solve_upper_t(ch.L2, z2[..., None])[..., 0]
    x1 = linalg.solve_upper_t(ch.L11, (z1 - jnp.einsum("gqa,ga->gq", ch.C1, x2[parent]))
                              [..., None])[..., 0]
    return x1, x2.reshape(-1)


def back_substitute(ch: NestedCholesky, parent, p: int):
    """The LMM's ``[u; beta]`` from the factor of ``[Z Lambda | X | y]``: ``L' x = `` the y
    row of L, by back-substitution through the three levels.  Returns ``(u, beta)``."""
    L3 = ch.L3
    beta = linalg.solve_upper_t(L3[:p, :p], L3[p, :p, None])[:, 0]
    rhs2 = ch.C2[:, :, -1] - jnp.einsum("hqe,e->hq", ch.C2[:, :, :p], beta)
    x2 = linalg.solve_upper_t(ch.L2, rhs2[..., None])[..., 0]
    rhs1 = (ch.C1E[:, :, -1] - jnp.einsum("gqe,e->gq", ch.C1E[:, :, :p], beta)
            - jnp.einsum("gqa,ga->gq", ch.C1, x2[parent]))
    x1 = linalg.solve_upper_t(ch.L11, rhs1[..., None])[..., 0]
    return jnp.concatenate([x1.reshape(-1), x2.reshape(-1)]), beta


def conditional_covariances(ch: NestedCholesky, parent) -> list[jnp.ndarray]:
    """The diagonal blocks of ``(Lambda'Z'WZ Lambda + I)^{-1}`` per level of each factor
    (as :func:`.blocked.conditional_covariances`): ``Sigma2_h = (L2_h L2_h')^{-1}`` and
    ``L11_g^{-T} (I + C1_g Sigma2_{parent(g)} C1_g') L11_g^{-1}``."""
    G1, q1 = ch.L11.shape[:2]
    G2, q2 = ch.L2.shape[:2]
    L11inv = linalg.solve_lower(ch.L11, jnp.broadcast_to(jnp.eye(q1), (G1, q1, q1)))
    L2inv = linalg.solve_lower(ch.L2, jnp.broadcast_to(jnp.eye(q2), (G2, q2, q2)))
    sigma2 = jnp.einsum("hkq,hkr->hqr", L2inv, L2inv)
    inner = jnp.eye(q1) + jnp.einsum("gqa,gab,grb->gqr", ch.C1, sigma2[parent], ch.C1)
    v1 = jnp.einsum("gkq,gkl,glr->gqr", L11inv, inner, L11inv)
    return [v1, sigma2]
