"""Denominator degrees of freedom for linear mixed models: Satterthwaite's (lmerTest) and
Kenward and Roger's (pbkrtest), for the coefficient table.

Satterthwaite (lmerTest 3.x): with the variance parameters ``phi = (theta, sigma)`` (lme4's
theta and the residual SD), ``A = 2 H^-1`` (H the Hessian of the unprofiled REML or ML
deviance in phi) and ``C(phi)`` the covariance of the fixed effects, a contrast ``l`` has
``df = 2 (l' C l)^2 / (g' A g)``, ``g = d(l' C l)/d phi``.  H and g come from autodiff
through the blocked Cholesky, not finite differences; a model with two or more grouping
factors goes through the sparse crossed system (:func:`jaxglmm.core.sparse.sparse_factor`:
L21 sparse, a dense factor of the trailing block only), in one compiled program per shape.
Timings against lmerTest: docs/benchmarks.md."""
from __future__ import annotations

import weakref

import jax
import jax.numpy as jnp
import numpy as np
from .._lazy import pandas as pd

from ..core import blocked, linalg, restructure as rs, sparse as sps
from ..core.lmm import lmm_data, refit_data
from ..design.sparse import sparse_lmm_data
from ..fit import cache
from ..fit.cache import program
from ..fit.likelihood import jit_options
from ..methods import get_method

DDF = ("satterthwaite", "kenward-roger")


# the sparse system of each crossed problem whose df were computed (its host-built pattern)
_SPARSE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _sparse(s) -> bool:
    """Whether the df go through the sparse crossed system: two or more grouping factors."""
    return len(s.factors) >= 2


def _lmm_data(problem):
    """The cross-products of an LMM fit's data: sparse (crossed factors) or dense."""
    s = problem.structure
    if not _sparse(s):
        return lmm_data(s, problem.arrays)
    if problem not in _SPARSE:
        _SPARSE[problem] = sparse_lmm_data(s, problem.arrays)
    return _SPARSE[problem]


def _phi_functions(s, p: int, d, reml: bool):
    """``(parts, dof)`` of one dataset's cross-products ``d`` (dense
    :class:`~jaxglmm.core.lmm.LmmData` or sparse :class:`~jaxglmm.design.sparse.SparseLmmData`):
    ``parts(theta, L) = [a, r2, l_k' V l_k...]`` with ``a`` the log-determinant terms of the
    deviance (REML: with log|R_X|^2), ``r2`` the penalized residual sum of squares and ``V``
    the fixed effects' covariance relative to sigma^2, ``(R_X' R_X)^-1``.  The deviance in
    ``phi = (theta, sigma)`` is ``a + dof log(2 pi sigma^2) + r2 / sigma^2 - sum log w`` and
    the covariance ``sigma^2 V``."""
    p2 = s.p2
    sparse = hasattr(d, "sp")

    def parts(theta, L):
        if sparse:
            ch = sps.sparse_factor(s, rs.lambdas(s, theta), d.sp)
            ld = linalg.logdet_chol(ch.L11) + 2.0 * jnp.sum(jnp.log(jnp.diagonal(ch.L22)[:p2]))
        else:
            ch = blocked.factor(*blocked.scaled_system(s, rs.lambdas(s, theta), d.cp))
            ld = blocked.logdet_z(ch, p2)
        L22 = ch.L22
        LX = L22[p2:p2 + p, p2:p2 + p]
        if reml:
            ld = ld + 2.0 * jnp.sum(jnp.log(jnp.diagonal(LX)))
        M = linalg.solve_lower(LX, L.T)                 # l' V l = |LX^-1 l|^2
        return jnp.concatenate([jnp.stack([ld, jnp.square(L22[-1, -1])]),
                                jnp.sum(jnp.square(M), axis=0)])

    return parts, (d.n - p if reml else d.n)


def satterthwaite_many(model, method: str, Y: np.ndarray, theta: np.ndarray,
                       sigma: np.ndarray, contrast: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(variance, df) of ``contrast @ beta`` for each of many LMM refits of ``model``'s
    design (responses ``Y`` (B, n), their ``theta`` (B, k) and ``sigma`` (B,)), as
    :func:`satterthwaite` for each, in one compiled vmapped program (power simulations)."""
    s, p = model.structure, model.design.n_fixef
    reml = get_method(method).reml

    def build():
        def one(d, phi, l):
            var, df = _satterthwaite(*_phi_functions(s, p, d, reml), phi, l[None, :])
            return var[0], df[0]

        def many(a, Y, phis, l):
            return jax.vmap(one, in_axes=(0, 0, None))(refit_data(s, a, Y), phis, l)
        return cache.jit(many)       # a batch: XLA's default optimizations (fit/likelihood.py)

    run = program(("satterthwaite-many", s, p, reml), build)
    phis = np.column_stack([np.asarray(theta, float), np.asarray(sigma, float)])
    var, df = run(model.arrays, jnp.asarray(Y, float), jnp.asarray(phis),
                  jnp.asarray(contrast, float))
    return np.asarray(var), np.asarray(df)


def satterthwaite(fit, contrasts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(variance, df) of ``contrasts @ beta`` for each row of ``contrasts`` (k, p)."""
    problem = fit.problem
    s, p, reml = problem.structure, fit.problem.design.n_fixef, get_method(fit.method).reml
    phi = jnp.asarray(np.append(np.asarray(fit.theta, float), fit.sigma))
    L = jnp.asarray(np.atleast_2d(contrasts), dtype=phi.dtype)
    run = program(("satterthwaite", s, p, reml, _sparse(s), problem.large), lambda: cache.jit(
        lambda d, phi, L: _satterthwaite(*_phi_functions(s, p, d, reml), phi, L),
        **jit_options(problem)))
    var, df = run(_lmm_data(problem), phi, L)
    return np.asarray(var), np.asarray(df)


def _satterthwaite(parts, dof, phi, L):
    """(variance, df) of ``L @ beta`` (L: (k, p)) at ``phi = (theta, sigma)``: ``A = 2
    H^-1`` with H the deviance's Hessian in phi, ``g = d(l' C l)/d phi``, df = 2 (l' C
    l)^2 / (g' A g).  The factor is traced once, under two forward-mode derivatives in
    theta (:func:`_phi_functions`' ``parts``); sigma enters in closed form::

        d2 dev / dtheta2 = a'' + r2'' / s^2,  d2 dev / dtheta ds = -2 r2' / s^3,
        d2 dev / ds2 = -2 dof / s^2 + 6 r2 / s^4,  g = (s^2 v', 2 s v),  v = l' V l."""
    theta, sigma = phi[:-1], phi[-1]

    def first(t):
        J, v = jax.jacfwd(lambda u: (lambda o: (o, o))(parts(u, L)), has_aux=True)(t)
        return J, (J, v)
    Hp, (J, v) = jax.jacfwd(first, has_aux=True)(theta)     # (m, k, k), (m, k), (m,)
    s2 = jnp.square(sigma)
    Htt = Hp[0] + Hp[1] / s2
    Hts = -2.0 * J[1] / (s2 * sigma)
    Hss = -2.0 * dof / s2 + 6.0 * v[1] / jnp.square(s2)
    H = jnp.block([[Htt, Hts[:, None]], [Hts[None, :], jnp.reshape(Hss, (1, 1))]])
    A = 2.0 * linalg.dense_pinv(H)
    var = s2 * v[2:]
    G = jnp.concatenate([s2 * J[2:], (2.0 * sigma * v[2:])[:, None]], axis=1)   # (k, n_phi)
    denom = jnp.einsum("ki,ij,kj->k", G, A, G)
    return var, jnp.where(denom > 0, 2.0 * var ** 2 / jnp.where(denom > 0, denom, 1.0),
                          jnp.nan)


def coef_table(fit, ddf: str | None = None, exponentiate: bool = False) -> pd.DataFrame:
    """The fixed-effects table: Estimate, Std. Error and the test statistic; with ``ddf``
    (LMM fits by REML or ML only) also df and ``Pr(>|t|)`` from Student's t with
    Satterthwaite's or Kenward-Roger's denominator degrees of freedom, as lmerTest's
    ``summary(fit, ddf=)``.  Without ``ddf``, a model with an estimated residual scale gets
    lme4's t value and no p-value; the others z and ``Pr(>|z|)``.  ``exponentiate``:
    estimates as exp(estimate), their standard errors by the delta method (exp(b) se);
    statistics and p-values stay those of the linear-predictor scale."""
    if ddf is not None and (not isinstance(ddf, str) or ddf.lower() not in DDF):
        raise ValueError(f"ddf must be None or one of {DDF}, got {ddf!r}")
    if getattr(fit, "draws", None) is not None:
        raise ValueError(f"coef_table tests likelihood fits; for this {fit.method!r} fit use "
                         "fit.posterior_summary")
    est = fit.fixef.to_numpy(float)
    se = fit.fixef_se.to_numpy(float)
    names = list(fit.fixef.index)
    from scipy.stats import norm, t as student_t  # loads when first used (import time)
    out = pd.DataFrame({"Estimate": est, "Std. Error": se}, index=names)
    stat = est / se
    if ddf is None:
        if fit.problem.family.residual is not None:
            out["t value"] = stat
        else:
            out["z value"] = stat
            out["Pr(>|z|)"] = 2.0 * norm.sf(np.abs(stat))
    else:
        ddf = ddf.lower()
        lmm = fit.problem.family.exact_lmm and get_method(fit.method).exact_lmm_only
        if not lmm:
            raise ValueError(f"denominator degrees of freedom are for linear mixed models "
                             f"fitted by 'reml' or 'ml'; this is a {fit.problem.family.name} "
                             f"{fit.method!r} fit (use ddf=None: Wald z tests)")
        if ddf == "kenward-roger":
            var, df = kenward_roger(fit, np.eye(len(names)))
        else:
            var, df = satterthwaite(fit, np.eye(len(names)))
        se = np.sqrt(var)
        stat = est / se
        out["Std. Error"] = se
        out["df"] = df
        out["t value"] = stat
        out["Pr(>|t|)"] = 2.0 * student_t.sf(np.abs(stat), df)
    if exponentiate:
        out["Std. Error"] = np.exp(est) * out["Std. Error"]
        out["Estimate"] = np.exp(est)
    return out


KR_MAX_ROWS = 6000      # the n x n matrices below: 6000 rows is 0.3 GB each


def kenward_roger(fit, contrasts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(adjusted variance, df) of ``contrasts @ beta``, as pbkrtest's ``vcovAdj`` and
    ``Lb_ddf`` (which lmerTest's ``ddf = "Kenward-Roger"`` calls): the marginal covariance
    ``Sigma = sum_r gamma_r G_r + sigma^2 W^-1`` is linear in the (co)variance components
    gamma (each term's variances and covariances, then the residual variance), so the
    adjustment needs only ``Sigma^-1`` and the ``G_r``.  Dense in the rows, as pbkrtest."""
    if not get_method(fit.method).reml:
        raise ValueError("Kenward-Roger degrees of freedom need a REML fit (as pbkrtest); "
                         f"this fit is by {fit.method!r}: refit with method='reml' or use "
                         "ddf='satterthwaite'")
    design, s = fit.problem.design, fit.problem.structure
    n = design.nobs
    if n > KR_MAX_ROWS:
        raise ValueError(f"Kenward-Roger here builds dense {n} x {n} matrices (as pbkrtest); "
                         f"{n} rows is over {KR_MAX_ROWS}: use ddf='satterthwaite'")
    X = np.asarray(design.X, float)
    w = np.asarray(design.weights, float)
    covs = rs.term_covariances(s, np.asarray(fit.theta, float), float(fit.sigma))
    G, gamma = [], []
    for t in design.terms:
        idx = np.asarray(t.group_index)
        same = (idx[:, None] == idx[None, :]).astype(float)
        Z = np.asarray(t.Z, float)
        C = covs[(t.label, tuple(t.names))]
        for j in range(t.q):
            for i in range(j, t.q):
                outer = np.outer(Z[:, i], Z[:, j])
                G.append(same * (outer + outer.T if i != j else outer))
                gamma.append(C[i, j])
    with np.errstate(divide="ignore"):
        G.append(np.diag(np.where(w > 0, 1.0 / w, 0.0)))
    gamma.append(float(fit.sigma) ** 2)
    Sigma = sum(g * Gr for g, Gr in zip(gamma, G))
    Sinv = np.linalg.inv(Sigma)
    Sinv = 0.5 * (Sinv + Sinv.T)
    T = Sinv @ X
    Phi = np.linalg.inv(X.T @ T)
    H = [Gr @ Sinv for Gr in G]
    O = [h @ X for h in H]
    R = len(G)
    P = [-(o.T @ T) for o in O]
    P = [0.5 * (m + m.T) for m in P]
    Q = {(a, b): O[a].T @ Sinv @ O[b] for a in range(R) for b in range(a, R)}
    IE2 = np.empty((R, R))
    for a in range(R):
        for b in range(a, R):
            IE2[a, b] = IE2[b, a] = (np.sum(H[a].T * H[b]) - 2.0 * np.sum(Phi * Q[a, b])
                                     + np.sum((Phi @ P[a]) * (P[b] @ Phi)))
    ok = np.min(np.abs(np.linalg.eigvalsh(IE2))) > 1e-10
    W = 2.0 * (np.linalg.inv(IE2) if ok else np.linalg.pinv(IE2))
    U = np.zeros_like(Phi)
    for a in range(R - 1):
        for b in range(a + 1, R):
            U += W[a, b] * (Q[a, b] - P[a] @ Phi @ P[b])
    U = U + U.T
    for a in range(R):
        U += W[a, a] * (Q[a, a] - P[a] @ Phi @ P[a])
    PhiA = Phi + 2.0 * Phi @ U @ Phi
    L = np.atleast_2d(np.asarray(contrasts, float))
    var = np.einsum("kp,pq,kq->k", L, PhiA, L)
    df = np.array([_kr_df(l[None, :], Phi, P, W) for l in L])
    return var, df


def _kr_df(L, V0, P, W) -> float:
    """pbkrtest's ``Lb_ddf``: the denominator df of one contrast (rank q = 1 here)."""
    Theta = L.T @ np.linalg.solve(L @ V0 @ L.T, L)
    ThetaV0 = Theta @ V0
    A1 = A2 = 0.0
    R = len(P)
    for i in range(R):
        ui = ThetaV0 @ P[i] @ V0
        for j in range(i, R):
            e = 1.0 if i == j else 2.0
            uj = ThetaV0 @ P[j] @ V0
            A1 += e * W[i, j] * np.trace(ui) * np.trace(uj)
            A2 += e * W[i, j] * np.sum(ui * uj.T)
    q = 1.0
    B = (A1 + 6.0 * A2) / (2.0 * q)
    g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
    den = 3 * q + 2 * (1 - g)
    c1, c2, c3 = g / den, (q - g) / den, (q + 2 - g) / den
    V0_ = 1 + c1 * B
    V0_ = 0.0 if abs(V0_) < 1e-10 else V0_
    V1, V2 = 1 - c2 * B, 1 - c3 * B
    ratio = 0.0 if V1 == 0 else (1 - A2 / q) / V1
    rho = (ratio ** 2) * V0_ / V2 / q
    return 4.0 + (q + 2) / (q * rho - 1)
