"""Linear mixed models: exact REML and ML through the profiled deviance.

With ``A = Lambda' Z' W Z Lambda + I`` and the blocked Cholesky of the augmented system
``[Z Lambda | X | y]`` (lme4 / MixedModels.jl), the fixed effects and the residual scale are
profiled out, leaving a function of theta alone::

    ML:   -2 l(theta)  = log|A| + n (1 + log(2 pi r^2 / n))               - sum log w
    REML: -2 lR(theta) = log|A| + log|R_X|^2 + (n-p) (1 + log(2 pi r^2/(n-p))) - sum log w

where ``r^2`` is the penalized residual sum of squares and ``R_X`` the Cholesky factor of the
Schur complement of the X block.  The weighted cross-products are computed once per dataset
(segment sums over observations); each evaluation then costs O(levels * q^3 + m^3), not O(n).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..design.sparse import SparseLmmData
from . import blocked, linalg, nested, sparse as sps
from . import restructure as rs
from .ops import segment_sum
from .problem import ProblemArrays


class LmmParts(NamedTuple):
    deviance: jnp.ndarray
    beta: jnp.ndarray
    sigma: jnp.ndarray
    u: jnp.ndarray
    vcov: jnp.ndarray
    chol: blocked.BlockedCholesky


def cross_products(structure: rs.ReStructure, a: ProblemArrays) -> blocked.CrossProducts:
    extra = jnp.concatenate([a.X, (a.y - a.offset)[:, None]], axis=1)
    return blocked.cross_products(structure, a.index, a.Z, a.weights, extra)


def profiled_parts(structure, cp, theta, n, p, reml, sum_log_w, full: bool):
    ch = _factor(structure, cp, theta)
    p2 = structure.p2
    L22 = ch.L22
    dev, LX, sigma2 = _deviance(blocked.logdet_z(ch, p2), L22, p2, p, n, reml, sum_log_w)
    if not full:
        return dev
    # [u; beta] solves L_aug' x = (y row of L), by back substitution through both blocks.
    Laug = L22[:-1, :-1]
    x2 = linalg.solve_upper_t(Laug, L22[-1, :-1, None])[:, 0]
    cy = ch.C[:, :, -1]
    x1 = linalg.solve_upper_t(ch.L11, (cy - jnp.einsum("gqm,m->gq", ch.C[:, :, :-1], x2))[..., None])[..., 0]
    beta = x2[p2:]
    u = jnp.concatenate([x1.reshape(-1), x2[:p2]])
    LXinv = linalg.solve_lower(LX, jnp.eye(p))
    vcov = sigma2 * LXinv.T @ LXinv
    return LmmParts(dev, beta, jnp.sqrt(sigma2), u, vcov, ch)


# ----------------------------------------------------------------------------- not profiled
class LmmData(NamedTuple):
    """What the unprofiled LMM density needs of one dataset, computed once: the weighted
    cross-products, the number of rows with positive weight and the sum of their log weights."""

    cp: blocked.CrossProducts
    n: jnp.ndarray
    sum_log_w: jnp.ndarray


def lmm_data(structure: rs.ReStructure, a: ProblemArrays) -> LmmData:
    return LmmData(cross_products(structure, a), *_row_counts(a))


def _row_counts(a: ProblemArrays):
    """The number of rows with positive weight and the sum of their log weights (rows of
    weight zero carry no information, and lme4 drops them)."""
    positive = a.weights > 0
    n = jnp.sum(positive).astype(a.y.dtype)
    sum_log_w = jnp.sum(jnp.where(positive, jnp.log(jnp.where(positive, a.weights, 1.0)), 0.0))
    return n, sum_log_w


def refit_data(structure: rs.ReStructure, a: ProblemArrays, Y: jnp.ndarray) -> LmmData:
    """:func:`lmm_data` of one design with many responses ``Y`` (B, n), stacked over B.

    What does not depend on the response (Z'WZ, Z'WX, X'WX and the sparsity pattern) is
    computed once; each response adds only its own row: Z'Wy, X'Wy and y'Wy."""
    base = blocked.cross_products(structure, a.index, a.Z, a.weights, a.X)
    vals, pos = blocked.dense_rows(structure, a.index, a.Z, a.X)
    f0 = structure.factors[0]
    m0 = base.d22.shape[0]
    one = lmm_data(structure, a._replace(y=a.offset))     # n and sum log w: no response

    def per_response(y):
        wy = a.weights * (y - a.offset)
        d21y = segment_sum(wy[:, None] * a.Z[0], a.index[0], f0.n_levels)
        r = segment_sum((wy[:, None] * vals).reshape(-1), pos.reshape(-1), m0)
        yy = jnp.dot(wy, y - a.offset)
        d21 = jnp.concatenate([base.d21, d21y[None]], axis=0)
        d22 = jnp.block([[base.d22, r[:, None]], [r[None, :], yy[None, None]]])
        return LmmData(blocked.CrossProducts(base.d11, d21, d22), one.n, one.sum_log_w)

    return jax.vmap(per_response)(Y)


def _deviance(ld, L22, p2, p, n, reml, sum_log_w):
    """The profiled deviance from log|A| and the dense block's factor; also R_X and sigma^2."""
    LX = L22[p2:p2 + p, p2:p2 + p]
    r2 = jnp.square(L22[-1, -1])
    if reml:
        dof = n - p
        dev = ld + 2.0 * jnp.sum(jnp.log(jnp.diagonal(LX))) + dof * (1.0 + jnp.log(2 * jnp.pi * r2 / dof))
    else:
        dof = n
        dev = ld + n * (1.0 + jnp.log(2 * jnp.pi * r2 / n))
    return dev - sum_log_w, LX, r2 / dof


def _factor(structure, cp, theta) -> blocked.BlockedCholesky:
    return blocked.factor(*blocked.scaled_system(structure, rs.lambdas(structure, theta), cp))


def marginal_loglik(structure: rs.ReStructure, d: LmmData, theta, beta, sigma) -> jnp.ndarray:
    """``log p(y | beta, theta, sigma)`` with the random effects integrated out exactly::

        -2 log p = n log(2 pi sigma^2) + log|A| + r^2(beta) / sigma^2 - sum log w,
        r^2(beta) = r^2_min + |R_X beta - c_y|^2

    from the blocked Cholesky of the augmented system (the X and y rows of its dense block
    give R_X and c_y); each evaluation costs O(levels q^3 + m^3), not O(n)."""
    ch = _factor(structure, d.cp, theta)
    p2, p = structure.p2, beta.shape[0]
    L22 = ch.L22
    resid = L22[-1, p2:p2 + p] - L22[p2:p2 + p, p2:p2 + p].T @ beta
    prss = jnp.square(L22[-1, -1]) + jnp.dot(resid, resid)
    return -0.5 * (d.n * jnp.log(2 * jnp.pi * jnp.square(sigma)) + blocked.logdet_z(ch, p2)
                   + prss / jnp.square(sigma)) + 0.5 * d.sum_log_w


def conditional_u(structure: rs.ReStructure, d: LmmData, theta, beta, sigma, eps) -> jnp.ndarray:
    """A draw of the random effects from their exact conditional distribution, on lme4's
    scale (``b = Lambda(theta) u``, ``u ~ N(0, sigma^2 I)`` a priori, as ``fit_lmm``'s u):
    ``u | y, beta, theta, sigma ~ N(u_hat(beta), sigma^2 A^{-1})`` given standard normal
    ``eps`` (n_u,), by back-substitution through L_ZZ' of ``c - L_XZ' beta + sigma eps``."""
    ch = _factor(structure, d.cp, theta)
    p2, p = structure.p2, beta.shape[0]
    G1, q1 = ch.L11.shape[:2]
    e1, e2 = eps[:G1 * q1].reshape(G1, q1), eps[G1 * q1:]
    L22 = ch.L22
    if p2:
        rhs2 = L22[-1, :p2] - L22[p2:p2 + p, :p2].T @ beta + sigma * e2
        x2 = linalg.solve_upper_t(L22[:p2, :p2], rhs2[:, None])[:, 0]
    else:
        x2 = jnp.zeros(0, beta.dtype)
    rhs1 = ch.C[:, :, -1] - jnp.einsum("gqm,m->gq", ch.C[:, :, :-1],
                                        jnp.concatenate([x2, beta])) + sigma * e1
    x1 = linalg.solve_upper_t(ch.L11, rhs1[..., None])[..., 0]
    return jnp.concatenate([x1.reshape(-1), x2])


# ----------------------------------------------------------------------------- nested
def nested_lmm_data(structure: rs.ReStructure, a: ProblemArrays, parent) -> LmmData:
    """:func:`lmm_data` of a nested design (:mod:`.nested`): its ``cp`` is the
    :class:`~.nested.NestedSystem` of ``[Z | X y]``."""
    extra = jnp.concatenate([a.X, (a.y - a.offset)[:, None]], axis=1)
    ns = nested.nested_system(structure, parent, a.index, a.Z, a.weights, extra)
    return LmmData(ns, *_row_counts(a))


def nested_profiled_parts(structure: rs.ReStructure, d: LmmData, theta, p: int, reml: bool,
                          full: bool):
    """:func:`profiled_parts` through the nested factor (the same deviance and estimates)."""
    ch = nested.nested_factor(structure, rs.lambdas(structure, theta), d.cp)
    dev, LX, sigma2 = _deviance(nested.logdet_z(ch), ch.L3, 0, p, d.n, reml, d.sum_log_w)
    if not full:
        return dev
    u, beta = nested.back_substitute(ch, d.cp.parent, p)
    LXinv = linalg.solve_lower(LX, jnp.eye(p))
    return LmmParts(dev, beta, jnp.sqrt(sigma2), u, sigma2 * LXinv.T @ LXinv, ch)


# ----------------------------------------------------------------------------- sparse crossed
def sparse_profiled_parts(structure: rs.ReStructure, d: SparseLmmData, theta, p: int,
                          reml: bool, full: bool, ch: sps.SparseCholesky | None = None):
    """:func:`profiled_parts` through the sparse factor (the same deviance and estimates);
    ``ch``: the factor at theta, where the caller has it."""
    if ch is None:
        ch = sps.sparse_factor(structure, rs.lambdas(structure, theta), d.sp)
    p2 = structure.p2
    L22 = ch.L22
    ld = linalg.logdet_chol(ch.L11) + 2.0 * jnp.sum(jnp.log(jnp.diagonal(L22)[:p2]))
    dev, LX, sigma2 = _deviance(ld, L22, p2, p, d.n, reml, d.sum_log_w)
    if not full:
        return dev
    x2 = linalg.solve_upper_t(L22[:-1, :-1], L22[-1, :-1, None])[:, 0]
    beta = x2[p2:]
    rhs = (ch.CE[:, :, -1] - sps.sparse_l21_times(ch, d.sp, x2[:p2])
           - jnp.einsum("gqe,e->gq", ch.CE[:, :, :p], beta))
    x1 = linalg.solve_upper_t(ch.L11, rhs[..., None])[..., 0]
    u = jnp.concatenate([x1.reshape(-1), x2[:p2]])
    LXinv = linalg.solve_lower(LX, jnp.eye(p))
    vcov = sigma2 * LXinv.T @ LXinv
    return LmmParts(dev, beta, jnp.sqrt(sigma2), u, vcov, ch)


def dense_cholesky_inverse(S, k: int):
    """``(L, Sigma)``: the Cholesky factor of S (m x m, lower triangle read) and, in the lower
    triangle of an m x m array (zeros elsewhere), the inverse of S's leading k x k block
    ``(L_k L_k')^{-1}``.  On the device: a triangular solve and a product, about 3 k^3
    flops (:func:`jaxglmm.design.sparse.lapack_cholesky_inverse`: LAPACK's, 2 k^3 / 3)."""
    m = S.shape[0]
    L = linalg.dense_chol(S)
    Kinv = linalg.dense_tri_inv(L[:k, :k])
    return L, jnp.pad(jnp.tril(Kinv.T @ Kinv), ((0, m - k), (0, m - k)))


def sparse_deviance_gradient(structure: rs.ReStructure, d: SparseLmmData, theta, p: int,
                             reml: bool, dense_inverse=dense_cholesky_inverse):
    """The profiled deviance and its closed-form gradient in theta, for scalar blocks (each
    grouping factor one ``(1 | g)``-like term, theta_j scaling factor j's columns;
    :func:`.sparse.scalar_blocks`), without reverse mode through the large Cholesky.  With
    ``M`` the factored system (the u block, and the X block for REML), ``n_j`` factor j's
    levels and ``u`` the conditional modes::

        d log|M| / d theta_j = (2 / theta_j) (n_j - tr_j(M^{-1}))
        d r^2    / d theta_j = -2 |u_j|^2 / theta_j

    (``M^{-1} Lambda G Lambda = I - M^{-1}`` for the first; the envelope theorem on the
    penalized least squares for the second).  ``tr_j`` needs the diagonal of ``M^{-1}``:
    for the dense factors that of Sigma, the inverse of the trailing block; for the first
    factor ``sum_g (1 + c_g' Sigma c_g) / l_g^2`` (c_g: level g's column of L21, l_g its
    L11), a gather of Sigma at the triplets of the Schur update.  An evaluation costs the
    deviance's plus the inverse of the dense block and one pass over the triplets."""
    lams = rs.lambdas(structure, theta)
    sp = d.sp
    L11, Ct, CE, S = sps.sparse_schur(structure, lams, sp)
    p2 = structure.p2
    m = S.shape[0]
    k = p2 + p if reml else p2
    L22, Sig = dense_inverse(S, k)
    parts = sparse_profiled_parts(structure, d, theta, p, reml, full=True,
                                  ch=sps.SparseCholesky(L11, Ct, CE, L22))
    # c_g[r] c_g[c] / l_g^2 = scale_r scale_c (lam1^2 / l_g^4) P_t over the triplets (as in
    # sparse.sparse_schur), off-diagonal positions twice (Sig holds the lower triangle)
    f0 = structure.factors[0]
    scale = jnp.concatenate([jnp.full(f.n_levels, lam[0, 0])
                             for f, lam in zip(structure.dense_factors, lams[1:])]
                            + [jnp.ones(m - p2)])
    W = Sig * scale[:, None] * scale[None, :] * (2.0 - jnp.eye(m))
    l2 = jnp.square(L11[:, 0, 0])
    w2 = jnp.square(lams[0][0, 0]) / jnp.square(l2)
    Wf = W.reshape(-1)
    cz = w2[sp.triplet_level] * Wf[sp.triplet_position.reshape(-1)]
    cross = jnp.sum(cz * sp.triplet_product) if sp.triplet_product.shape[0] else jnp.sum(cz)
    cross = cross + jnp.sum(w2[sp.extra_level] * sp.extra_product * Wf[p2 * m + sp.extra_position])
    diag = jnp.diagonal(Sig)
    n_levels = [f0.n_levels]
    traces = [jnp.sum(1.0 / l2) + cross]
    usq = [jnp.sum(jnp.square(parts.u[:f0.n_levels]))]
    off = 0
    for f in structure.dense_factors:
        n_levels.append(f.n_levels)
        traces.append(jnp.sum(diag[off:off + f.n_levels]))
        usq.append(jnp.sum(jnp.square(parts.u[f0.n_levels + off:f0.n_levels + off + f.n_levels])))
        off += f.n_levels
    dof = d.n - p if reml else d.n
    r2 = jnp.square(parts.chol.L22[-1, -1])
    grad = jnp.zeros_like(theta)
    for f, nj, tr, uu in zip(structure.factors, n_levels, traces, usq):
        j = f.terms[0].theta_start
        th = theta[j]
        safe = jnp.where(th > 0, th, 1.0)
        g = (2.0 * (nj - tr) - 2.0 * dof * uu / r2) / safe
        grad = grad.at[j].set(jnp.where(th > 0, g, 0.0))
    return parts.deviance, grad
