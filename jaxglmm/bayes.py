"""Bayesian fitting: a numpyro model on the one log-density, with NUTS and variational inference.

Parameterization (non-centred, as brms):

* ``Intercept_<k>``: the intercept of linear predictor k for *centred* predictors; the
  reported intercept is ``Intercept - mean(X) . b`` (brms's ``b_Intercept``).
* ``b``: the other coefficients.
* ``sd_<j>`` (per term, positive) and ``L_<j>`` (Cholesky factor of the correlation matrix,
  LKJ prior) give each term's covariance factor ``Lambda = diag(sd) L``, whose lower triangle
  is the ``theta`` of :meth:`jaxglmm.model.Model.log_density`.
* ``u``: spherical random effects; ``b = Lambda u``; their N(0, I) prior is part of the
  log-density.
* ``phi``: the family's unconstrained parameters, with priors on their natural values (plus
  the log-Jacobian of the transform).  For cumulative models the priors go on the thresholds
  of the centred predictors, as brms's ``Intercept[k]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from .priors import Prior, resolve_priors


@dataclass(frozen=True)
class Layout:
    """Where intercepts, slopes, terms and family parameters sit (static)."""

    intercept_cols: tuple[int, ...]      # one per linear predictor with an intercept
    slope_cols: tuple[int, ...]
    col_channel: tuple[int, ...]
    p: int
    terms: tuple                          # resystem TermSpecs in theta order
    n_phi: int
    n_u: int


def make_layout(model) -> Layout:
    d, s = model.design, model.structure
    X = np.asarray(d.X)
    chan = s.fixef_channels or (0,) * X.shape[1]
    ones = [j for j in range(X.shape[1]) if np.allclose(X[:, j], 1.0)]
    intercepts, seen = [], set()
    for j in ones:
        if chan[j] not in seen:
            intercepts.append(j)
            seen.add(chan[j])
    slopes = tuple(j for j in range(X.shape[1]) if j not in intercepts)
    return Layout(tuple(intercepts), slopes, tuple(chan), X.shape[1],
                  tuple(s.terms), int(np.size(model._phi0())), s.n_u)


def _flat_natural(family, phi):
    return jnp.concatenate([jnp.ravel(v) for v in family.natural_params(phi).values()]) \
        if phi.shape[0] else jnp.zeros(0)


def _numpyro_dist(prior: Prior, half=False):
    a = prior.args
    if prior.dist == "student_t":
        d = dist.StudentT(a[0], a[1], a[2])
    elif prior.dist == "normal":
        d = dist.Normal(a[0], a[1])
    elif prior.dist == "cauchy":
        d = dist.Cauchy(a[0], a[1])
    else:
        return None
    return d


@dataclass(frozen=True)
class Spec:
    """Everything static about a Bayesian model: equal for same-shape datasets, so one
    compiled sampler serves them all (the data, column means and prior arguments are the
    sampler's arguments, see :meth:`BayesModel.data`)."""

    structure: object
    family: object
    layout: Layout
    fixef_names: tuple[str, ...]
    prior_dists: tuple[tuple[str, str], ...]      # (key, distribution name)


def _priors(spec: Spec, data) -> dict[str, Prior]:
    return {k: Prior(d, tuple(data["priors"][k])) for k, d in spec.prior_dists}


def _beta_raw(layout: Layout, intercepts, b, x_means):
    """Coefficients of the uncentred design from the centred intercepts and slopes."""
    beta = jnp.zeros(layout.p)
    beta = beta.at[np.array(layout.slope_cols, int)].set(b) if layout.slope_cols else beta
    for k, j in enumerate(layout.intercept_cols):
        same = np.array([i for i in layout.slope_cols
                         if layout.col_channel[i] == layout.col_channel[j]], int)
        shift = jnp.dot(x_means[same], beta[same]) if same.size else 0.0
        beta = beta.at[j].set(intercepts[k] - shift)
    return beta


def _theta(layout: Layout, sds, Ls):
    """Lower-triangular entries of Lambda = diag(sd) L, in theta order."""
    parts = []
    for t, sd, L in zip(layout.terms, sds, Ls):
        lam = sd[:, None] * L if L is not None else jnp.diag(sd)
        parts.append(lam[np.array(t.theta_rows) - t.col0, np.array(t.theta_cols) - t.col0])
    return jnp.concatenate(parts)


def _family_log_prior(spec: Spec, pri, phi, beta, x_means):
    """Priors on the family's natural parameters, plus the log-Jacobian of phi -> them."""
    fam = spec.family
    jac = jax.jacfwd(lambda z: _flat_natural(fam, z))(phi)
    lp = jnp.linalg.slogdet(jac)[1]
    for name, value in fam.natural_params(phi).items():
        if name == "thresholds":   # priors on the thresholds of the centred predictors
            lp = lp + jnp.sum(pri["Intercept"].log_prob(value - jnp.dot(x_means, beta)))
        elif name in pri:
            lp = lp + jnp.sum(pri[name].log_prob(value, half=name == "sigma"))
    return lp


def numpyro_model(spec: Spec, data, marginal: bool = False):
    """The joint model of one dataset; with ``marginal=True`` the random effects are
    integrated out by the Laplace approximation (u is not a site), for the posterior mode."""
    from .model import joint_log_density
    L, pri, x_means = spec.layout, _priors(spec, data), data["x_means"]
    intercepts = []
    for k, _ in enumerate(L.intercept_cols):
        p = pri["Intercept"]
        d = _numpyro_dist(p) if p.dist != "flat" else dist.ImproperUniform(constraints.real, (), ())
        intercepts.append(numpyro.sample(f"Intercept_{k}", d))
    intercepts = jnp.stack(intercepts) if intercepts else jnp.zeros(0)
    b = jnp.zeros(0)
    if L.slope_cols:
        b = numpyro.sample("b", dist.ImproperUniform(constraints.real, (), (len(L.slope_cols),)))
        lp = 0.0
        for k, j in enumerate(L.slope_cols):
            p = pri.get(f"b_{spec.fixef_names[j]}", pri["b"])
            if p.dist != "flat":
                lp = lp + p.log_prob(b[k])
        numpyro.factor("b_prior", lp)
    sds, Ls = [], []
    for k, t in enumerate(L.terms):
        sd = numpyro.sample(f"sd_{k}", dist.ImproperUniform(constraints.positive, (), (t.q,)))
        prior = pri.get(f"sd_{t.group}", pri["sd"])
        numpyro.factor(f"sd_{k}_prior", jnp.sum(prior.log_prob(sd, half=True)))
        sds.append(sd)
        if t.correlated and t.q > 1:
            Ls.append(numpyro.sample(f"L_{k}", dist.LKJCholesky(t.q, pri["cor"].args[0])))
        else:
            Ls.append(None)
    if not marginal:
        u = numpyro.sample("u", dist.ImproperUniform(constraints.real, (), (L.n_u,)))
    phi = numpyro.sample("phi", dist.ImproperUniform(constraints.real, (), (L.n_phi,))) \
        if L.n_phi else jnp.zeros(0)
    beta = _beta_raw(L, intercepts, b, x_means)
    if L.n_phi:
        numpyro.factor("phi_prior", _family_log_prior(spec, pri, phi, beta, x_means))
    theta = _theta(L, sds, Ls)
    if marginal:
        from .laplace import GlmmModel
        lap = GlmmModel(spec.structure, spec.family, data["arrays"], L.n_phi)
        numpyro.factor("log_marginal", -0.5 * lap.laplace_deviance(jnp.concatenate([theta, beta, phi]))[0])
    else:
        params = {"beta": beta, "theta": theta, "phi": phi, "u": u}
        numpyro.factor("log_density", joint_log_density(spec.structure, spec.family,
                                                        data["arrays"], params))


class BayesModel:
    """One model's Bayesian pieces: the static :class:`Spec`, the data the sampler takes,
    and the maps from draws to reported values."""

    def __init__(self, model, priors: dict | None = None):
        self.model = model
        self.priors = resolve_priors(model, priors)
        self.layout = make_layout(model)
        self.family_param_names = tuple(model.family.natural_params(model._phi0()).keys())
        self.spec = Spec(model.structure, model.family, self.layout,
                         tuple(model.design.fixef_names),
                         tuple((k, p.dist) for k, p in self.priors.items()))
        self.x_means = np.asarray(model.design.X).mean(axis=0)
        self.data = {"arrays": model.arrays, "x_means": jnp.asarray(self.x_means),
                     "priors": {k: jnp.asarray(p.args, jnp.float64) for k, p in self.priors.items()}}

    def numpyro_model(self, marginal: bool = False):
        return numpyro_model(self.spec, self.data, marginal)

    def beta_raw(self, intercepts, b):
        return _beta_raw(self.layout, intercepts, b, jnp.asarray(self.x_means))

    def theta(self, sds, Ls):
        return _theta(self.layout, sds, Ls)

    def laplace(self):
        from .laplace import GlmmModel
        m = self.model
        return GlmmModel(m.structure, m.family, m.arrays, self.layout.n_phi)

    # -- reported quantities ----------------------------------------------------------
    def transform_draws(self, samples: dict) -> dict:
        """Per-draw reported values: beta (uncentred), theta, natural family parameters."""
        L = self.layout

        def one(s):
            ints = jnp.stack([s[f"Intercept_{k}"] for k in range(len(L.intercept_cols))]) \
                if L.intercept_cols else jnp.zeros(0)
            b = s["b"] if L.slope_cols else jnp.zeros(0)
            sds = [s[f"sd_{k}"] for k in range(len(L.terms))]
            Ls = [s.get(f"L_{k}") for k in range(len(L.terms))]
            phi = s["phi"] if L.n_phi else jnp.zeros(0)
            return {"beta": self.beta_raw(ints, b), "theta": self.theta(sds, Ls),
                    "phi": phi, "u": s.get("u", jnp.zeros(L.n_u))}

        flat = jax.tree.map(lambda v: jnp.asarray(v).reshape((-1,) + v.shape[2:]), samples)
        out = jax.jit(jax.vmap(one))(flat)
        n_chain, n_draw = next(iter(samples.values())).shape[:2]
        return jax.tree.map(lambda v: v.reshape((n_chain, n_draw) + v.shape[1:]), out)

    def init_values(self, ml_fit) -> dict:
        """Site values at a maximum-likelihood fit (a good place to start the chains)."""
        L = self.layout
        beta = np.asarray(ml_fit.fixef, float)
        means = self.x_means
        vals = {}
        for k, j in enumerate(L.intercept_cols):
            same = [i for i in L.slope_cols if L.col_channel[i] == L.col_channel[j]]
            vals[f"Intercept_{k}"] = jnp.asarray(beta[j] + means[same] @ beta[same])
        if L.slope_cols:
            vals["b"] = jnp.asarray(beta[list(L.slope_cols)])
        from .varcorr import term_covariances
        scale = ml_fit.sigma if self.model._exact_gaussian() else 1.0
        covs = term_covariances(self.model.structure, ml_fit.theta, scale)
        for k, t in enumerate(L.terms):
            C = covs[(t.label, tuple(t.names))]
            sd = np.sqrt(np.maximum(np.diag(C), 1e-4))
            vals[f"sd_{k}"] = jnp.asarray(np.maximum(sd, 0.05 * max(sd.max(), 1e-2)))
            if t.correlated and t.q > 1:
                R = C / np.outer(sd, sd) + 1e-3 * np.eye(t.q)
                R = R / np.sqrt(np.outer(np.diag(R), np.diag(R)))
                vals[f"L_{k}"] = jnp.asarray(np.linalg.cholesky(R))
        vals["u"] = jnp.asarray(ml_fit.optinfo.get("u", np.zeros(L.n_u)))
        if L.n_phi:
            phi = np.asarray(ml_fit.optinfo["x"])[-L.n_phi:] if not self.model._exact_gaussian() \
                else np.array([np.log(ml_fit.sigma)])
            vals["phi"] = jnp.asarray(phi)
        return vals
