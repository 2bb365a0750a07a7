"""Influence diagnostics from the implicit derivatives of a fit, and exact refits.

* :func:`influence`: per observation or per level of a grouping factor, the change in every
  estimate (fixed effects, SDs, correlations, sigma, family parameters) when it is
  deleted, to first order: deleting rows S sets their case weights (each row's
  log-likelihood is multiplied by one) from 1 to 0, so the change is ``-J[:, S] 1`` with
  ``J`` the Jacobian of the estimates in the case weights, from
  :func:`jaxglmm.inference.implicit.fit_fn` (the implicit function theorem at the
  optimum; one reverse pass per estimate).  Cook's distance with it.
* :func:`hatvalues`, :func:`cooks_distance` (``level="obs"``): lme4's ``hatvalues.merMod``
  and ``cooks.distance.merMod``.  At a group level Cook's distance is lme4's
  ``cooks.distance.influence.merMod`` of the exact refits' dfbeta (:func:`influence` has
  the first-order one).
* :func:`leave_one_out`: exact leave-one-level-out refits (lme4's ``influence.merMod``),
  run as one batch on the batch engine: the design is kept and the left-out level's rows
  get weight 0, which leaves the likelihood of the other rows exactly as a fit without
  them (as :mod:`jaxglmm.inference.power` does), so every refit shares one compiled program.
* :func:`sensitivity`: derivatives of a MAP fit's posterior mode in its priors' arguments.
"""
from __future__ import annotations

import dataclasses
import weakref

import jax
import jax.numpy as jnp
import numpy as np
from .._lazy import pandas as pd

from ..core.laplace import GlmmModel
from ..core.predictor import spherical_predictor
from ..fit import cache
from ..fit.batched import fit_batch
from ..fit.cache import program
from ..fit.convergence import judge_many
from ..fit.likelihood import jit_options, uses_lmm
from ..methods import get_method
from .implicit import map_host, problem_fn
from .params import named, variance_names

# the weight Jacobian, computed once per model and method
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
PRIOR_ARGS = {"normal": ("location", "scale"), "student_t": ("df", "location", "scale"),
              "cauchy": ("location", "scale"), "exponential": ("rate",),
              "gamma": ("shape", "rate"), "beta": ("alpha", "beta"), "lkj": ("eta",)}


# ----------------------------------------------------------------------------- helpers
def _likelihood_fit(fit, what: str) -> None:
    spec = get_method(fit.method)
    if spec.bayesian or not spec.implicit:       # the likelihood fits fit_fn differentiates
        raise ValueError(f"{what} needs a likelihood fit by reml, ml or laplace; this is a "
                         f"{fit.method!r} fit")


def _lmm(fit) -> bool:
    return bool(fit.problem.exact_lmm and get_method(fit.method).implicit)


def estimate_names(fit) -> list[str]:
    """Names of :func:`estimates`' entries: fixed effects, then brms's ``sd_*``, ``cor_*``,
    ``sigma`` and family parameters (as ``fit.confint`` and ``fit.bootstrap`` name them)."""
    return list(fit.fixef.index) + variance_names(fit.problem.structure, _lmm(fit),
                                                  {} if _lmm(fit) else fit.family_params)


def estimates(structure, fa, lmm: bool) -> jnp.ndarray:
    """A :class:`~jaxglmm.inference.implicit.FitArrays` as one vector, differentiably: the
    fixed effects, each term's SDs and correlations, sigma (gaussian) and the family's
    natural parameters, in :func:`estimate_names`' order."""
    scale = fa.sigma if lmm else 1.0
    out = [fa.beta]
    for t in structure.terms:
        L = jnp.zeros((t.q, t.q)).at[np.array(t.theta_rows) - t.col0,
                                     np.array(t.theta_cols) - t.col0].set(
            fa.theta[t.theta_start:t.theta_start + t.n_theta])
        C = (L @ L.T) * jnp.square(scale)
        sd = jnp.sqrt(jnp.diagonal(C))
        i, j = np.triu_indices(t.q, 1)
        out += [sd, C[i, j] / (sd[i] * sd[j])]
    if lmm:
        out.append(jnp.reshape(fa.sigma, (1,)))
    else:
        out.append(fa.family_params)
    return jnp.concatenate(out)


def _traced(problem, arrays, phi0):
    """The problem with its data replaced by a program's arguments (see
    :func:`~jaxglmm.inference.implicit.problem_fn`)."""
    return dataclasses.replace(problem, arrays=arrays, phi0=phi0)


def weight_jacobian(fit) -> np.ndarray:
    """Jacobian (estimates x rows) of :func:`estimates` in the rows' case weights (each
    row's log-likelihood times its weight, 1 at the fit: weight 0 deletes the row), one
    compiled reverse pass per estimate through the implicit derivatives.  The program is
    cached by the model's shape, with the data as its arguments; the Jacobian per fit."""
    _likelihood_fit(fit, "influence")
    per_model = _CACHE.setdefault(fit.problem, {})
    if fit.method in per_model:
        return per_model[fit.method]
    problem, method, lmm = fit.problem, fit.method, _lmm(fit)
    s = problem.structure

    def build():
        def jacobian(arrays, phi0):
            f = problem_fn(_traced(problem, arrays, phi0), method, case_weights=True)
            return jax.jacrev(lambda c: estimates(s, f(weights=c), lmm))(
                jnp.ones(arrays.y.shape[0]))
        return cache.jit(jacobian, **jit_options(problem))

    run = program(("influence-weights", s, problem.family, problem.design.n_fixef, method,
                   lmm, problem.large), build)
    per_model[fit.method] = out = np.asarray(run(problem.arrays, jnp.asarray(problem.phi0, jnp.float64)))
    return out


def _factor(fit, group: str) -> int:
    groups = [f.group for f in fit.problem.structure.factors]
    if group not in groups:
        raise ValueError(f"{group!r} is not a grouping factor of the model; its grouping "
                         f"factors are {groups}")
    return groups.index(group)


def _levels(fit, group: str, k: int):
    frame = fit.ranef.get(group) if isinstance(fit.ranef, dict) else None
    n = fit.problem.structure.factors[k].n_levels
    if frame is not None and len(frame.index) == n:
        return list(frame.index)
    return list(range(n))


def _group_cooks(dfb: np.ndarray, vcov: np.ndarray) -> np.ndarray:
    """lme4's ``cooks.distance.influence.merMod``: (n - p) / (n p) dfbeta' V^-1 dfbeta over
    the n deleted groups."""
    n, p = dfb.shape
    inv = (n - p) / (n * p) * np.linalg.inv(vcov)
    return np.einsum("ij,jk,ik->i", dfb, inv, dfb)


# ----------------------------------------------------------------------------- influence
def influence(fit, level: str = "obs") -> pd.DataFrame:
    """First-order deletion diagnostics: one row per observation (``level="obs"``) or per
    level of the grouping factor ``level``, with ``dfbeta_<fixed effect>`` (the change in
    each fixed effect when the row or level is deleted, lme4's sign: deleted minus full),
    ``cooks_distance`` (``level="obs"``: lme4's ``cooks.distance.merMod``; a group: lme4's
    ``cooks.distance.influence.merMod`` of these dfbeta) and ``d_<parameter>`` (the change
    in each variance and family parameter, brms's names).  First order: ``-J[:, S] 1``
    with ``J`` the implicit Jacobian of the estimates in the rows' case weights
    (:func:`weight_jacobian`)."""
    J = weight_jacobian(fit)
    names = estimate_names(fit)
    p = len(fit.fixef)
    if level == "obs":
        delta = -J.T
        index = fit.problem.design.row_index
        cooks = cooks_distance(fit, "obs").to_numpy()
    else:
        k = _factor(fit, level)
        idx = np.asarray(fit.problem.arrays.index[k])
        G = fit.problem.structure.factors[k].n_levels
        member = (idx[None, :] == np.arange(G)[:, None]).astype(float)
        delta = -member @ J.T
        index = pd.Index(_levels(fit, level, k), name=level)
        cooks = _group_cooks(delta[:, :p], fit.vcov().to_numpy(float))
    cols = {f"dfbeta_{n}": delta[:, i] for i, n in enumerate(names[:p])}
    cols["cooks_distance"] = cooks
    cols.update({f"d_{n}": delta[:, p + i] for i, n in enumerate(names[p:])})
    out = pd.DataFrame(cols, index=index)
    out.attrs["order"] = "first"
    return out


def hatvalues(fit) -> pd.Series:
    """lme4's ``hatvalues.merMod``: the diagonal of the hat matrix of the penalized
    least-squares problem at the fit, ``h_i = w_i v_i' M^-1 v_i`` with ``v_i = (Lambda' z_i,
    x_i)``, ``M = [Lambda'Z'WZ Lambda + I, Lambda'Z'WX; X'WZ Lambda, X'WX]``, ``W`` the
    prior weights (LMM) or the working weights at the mode (GLMM, where lme4 warns that it
    may not make sense) and ``w`` the prior weights (binomial: the trials)."""
    _likelihood_fit(fit, "hatvalues")
    problem = fit.problem
    s, fam = problem.structure, problem.family
    a = problem.arrays
    x = jnp.asarray(fit.optinfo["x"], jnp.float64)
    p = a.X.shape[1]
    prior = np.asarray(a.weights, float) * (np.asarray(a.trials, float) if fam.needs_trials
                                           else 1.0)
    if uses_lmm(problem, get_method(fit.method)):
        theta = x
        W = np.asarray(a.weights, float)
    else:
        glmm = GlmmModel(s, fam, a, problem.n_phi)
        theta, beta, phi = glmm.layout.unpack(x)
        u = glmm.mode(theta, beta, phi)
        W = np.asarray(glmm.weights(u, theta, beta, phi, fisher=True), float)
    ZL = np.asarray(jax.jacfwd(lambda u: spherical_predictor(s, a, jnp.zeros(p), theta, u))(
        jnp.zeros(s.n_u)))
    V = np.concatenate([ZL, np.asarray(a.X, float)], axis=1)
    M = V.T @ (W[:, None] * V)
    M[:s.n_u, :s.n_u] += np.eye(s.n_u)
    h = prior * np.einsum("ij,ji->i", V, np.linalg.solve(M, V.T))
    return pd.Series(h, index=problem.design.row_index, name="hatvalues")


def cooks_distance(fit, level: str = "obs", exact: bool | None = None) -> pd.Series:
    """Cook's distances.  ``level="obs"``: lme4's ``cooks.distance.merMod``,
    ``(r / (1 - h))^2 h / (sigma^2 rank(X))`` with Pearson residuals r and hat values h.  A
    grouping factor's name: lme4's ``cooks.distance(influence(fit, groups=))``, ``(G - p) /
    (G p) dfbeta' V^-1 dfbeta`` over its G levels, the dfbeta from the exact
    leave-one-level-out refits (:func:`leave_one_out`'s ``cooks_distance`` column; the
    first-order one is :func:`influence`'s).  ``exact``: None or True (a group's distances
    are always from refits; False is refused)."""
    _likelihood_fit(fit, "cooks_distance")
    if level == "obs":
        if exact:
            raise ValueError("exact=True refits without each level of a grouping factor; "
                             "give level=<group name>")
        h = hatvalues(fit).to_numpy()
        r = fit.residuals(type="pearson").to_numpy(float)
        sigma = fit.sigma if fit.sigma is not None else 1.0
        rank = np.linalg.matrix_rank(np.asarray(fit.problem.design.X, float))
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.square(r / (1.0 - h)) * h / (sigma ** 2 * rank)
        d[np.isinf(d)] = np.nan
        return pd.Series(d, index=fit.problem.design.row_index, name="cooks_distance")
    if exact is False:
        raise ValueError("a grouping factor's Cook's distances are lme4's, from exact "
                         "leave-one-level-out refits; the first-order approximation is "
                         f"fit.influence({level!r})['cooks_distance']")
    return leave_one_out(fit, level)["cooks_distance"]


# ----------------------------------------------------------------------------- exact refits
def leave_one_out(fit, group: str) -> pd.DataFrame:
    """Exact refits without each level of ``group`` (lme4's ``influence(fit, groups=)``):
    one row per left-out level, in level order, with the fixed effects and the variance
    and family parameters (brms's names) of the refit, ``cooks_distance`` (lme4's
    ``cooks.distance(influence(fit, groups=))`` of these refits' fixed effects) and
    ``converged``.

    One batch on the batch engine (:func:`jaxglmm.fit.batched.fit_batch`): every refit
    keeps the design and gives the left-out level's rows weight 0, so all share one
    compiled program; each starts at the fit's optimum, as lme4's does."""
    _likelihood_fit(fit, "leave_one_out")
    k = _factor(fit, group)
    problem = fit.problem
    s = problem.structure
    a = problem.arrays
    idx = np.asarray(a.index[k])
    G = s.factors[k].n_levels
    w0 = np.asarray(a.weights, float)
    W = np.where(idx[None, :] == np.arange(G)[:, None], 0.0, w0[None, :])
    stacked = jax.tree.map(lambda v: np.broadcast_to(np.asarray(v), (G,) + v.shape), a)
    stacked = stacked._replace(weights=W)
    x0 = np.asarray(fit.optinfo["x"], float)
    H = np.asarray(fit.optinfo["hessian"], float)
    Hinv = np.linalg.inv(H) if np.all(np.isfinite(H)) and np.linalg.eigvalsh(H)[0] > 0 \
        else np.full(H.shape, np.nan)
    lmm = uses_lmm(problem, get_method(fit.method))
    if lmm:
        args = (stacked, jnp.asarray(x0), jnp.asarray(Hinv))
    else:
        phi0 = np.broadcast_to(np.asarray(problem.phi0, float), (G, problem.n_phi))
        args = (stacked, phi0, jnp.asarray(x0), jnp.asarray(Hinv))
    raw, times = fit_batch(problem, get_method(fit.method), {}, args, refit=False)
    phi = np.asarray(raw.x)[:, s.n_theta + problem.design.n_fixef:] if not lmm \
        else np.zeros((G, 0))
    out = named(s, problem.family, list(fit.fixef.index), np.asarray(raw.beta),
                np.asarray(raw.theta), np.asarray(raw.sigma), phi, lmm)
    verdicts = judge_many(raw.status, raw.grad, raw.hessian, raw.theta, s.theta_diagonal(),
                          raw.n_iter)
    dfb = np.asarray(raw.beta, float) - fit.fixef.to_numpy(float)[None, :]
    out["cooks_distance"] = _group_cooks(dfb, fit.vcov().to_numpy(float))
    out["converged"] = [v.converged for v in verdicts]
    out.index = pd.Index(_levels(fit, group, k), name=group)
    out.attrs["seconds"] = {"compile": times.compile, "run": times.run}
    return out


# ----------------------------------------------------------------------------- MAP
def sensitivity(fit, prior: str | None = None) -> pd.DataFrame:
    """Derivatives of a MAP fit's posterior mode in its priors' arguments: one row per
    estimate (fixed effects, SDs, correlations, sigma, family parameters), one column
    ``<prior>:<argument>`` per argument (``location``, ``scale``, ``df``...) of ``prior``
    (a class or name as ``fit.priors`` lists them, e.g. ``"Intercept"``, ``"sd"``,
    ``"b_Days"``) or, with None, of every prior that has arguments.  By the implicit
    function theorem at the mode (:func:`jaxglmm.inference.implicit.fit_fn`)."""
    spec = get_method(fit.method)
    if not (spec.bayesian and spec.implicit):
        raise ValueError(f"sensitivity is for MAP fits (method='map'); this is a "
                         f"{fit.method!r} fit")
    problem = fit.problem
    options = {k: v for k, v in spec.settings(fit.options or {}).items()
               if k in ("priors", "init", "maxiter")}
    host = map_host(problem, options)
    dists = dict(host["bm"].spec.prior_dists)
    defaults = {k: np.asarray(v, np.float64) for k, v in host["data"]["priors"].items()}
    if prior is not None and prior not in dists:
        raise ValueError(f"no prior {prior!r} in this fit; its priors are {sorted(dists)}")
    keys = [prior] if prior is not None else [k for k, d in dists.items()
                                              if d != "flat" and defaults[k].size]
    if not keys or not defaults[keys[0]].size:
        raise ValueError(f"prior {prior!r} ({dists.get(prior)}) has no arguments to "
                         "differentiate in")
    s, lmm = problem.structure, _lmm(fit)
    static = {k: v for k, v in options.items() if k == "maxiter"}

    def build():
        def jacobian(arrays, phi0, data, z0, pri):
            f = problem_fn(_traced(problem, arrays, phi0), "map", options=static,
                           host={"bm": host["bm"], "data": data, "z0": z0})
            return jax.jacfwd(lambda q: estimates(s, f(priors=q), lmm))(pri)
        return cache.jit(jacobian, **jit_options(problem))

    run = program(("sensitivity", host["bm"].spec, lmm, tuple(keys),
                   tuple(sorted(static.items())), problem.large), build)
    jac = run(problem.arrays, jnp.asarray(problem.phi0, jnp.float64), host["data"],
              jnp.asarray(host["z0"]), {k: defaults[k] for k in keys})
    cols = {}
    for k in keys:
        args = PRIOR_ARGS.get(dists[k], ())
        for i in range(defaults[k].size):
            cols[f"{k}:{args[i] if i < len(args) else i}"] = np.asarray(jac[k])[:, i]
    return pd.DataFrame(cols, index=pd.Index(estimate_names(fit), name="parameter"))
