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
    x_means: tuple[float, ...]            # column means of X
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
    return Layout(tuple(intercepts), slopes, tuple(chan), tuple(X.mean(axis=0)), X.shape[1],
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


class BayesModel:
    """Closures for one model: the numpyro model, and maps from samples to reported values."""

    def __init__(self, model, priors: dict | None = None):
        self.model = model
        self.priors = resolve_priors(model, priors)
        self.layout = make_layout(model)
        fam = model.family
        self.family_param_names = tuple(fam.natural_params(model._phi0()).keys())

    # -- pieces -----------------------------------------------------------------------
    def _coef_prior(self, j) -> Prior:
        name = self.model.design.fixef_names[j]
        return self.priors.get(f"b_{name}", self.priors["b"])

    def _sd_prior(self, term) -> Prior:
        return self.priors.get(f"sd_{term.group}", self.priors["sd"])

    def beta_raw(self, intercepts, b):
        """Coefficients of the uncentred design from the centred intercepts and slopes."""
        L = self.layout
        beta = jnp.zeros(L.p)
        beta = beta.at[np.array(L.slope_cols, int)].set(b) if L.slope_cols else beta
        means = np.array(L.x_means)
        for k, j in enumerate(L.intercept_cols):
            same = [i for i in L.slope_cols if L.col_channel[i] == L.col_channel[j]]
            shift = jnp.dot(means[same], beta[np.array(same, int)]) if same else 0.0
            beta = beta.at[j].set(intercepts[k] - shift)
        return beta

    def theta(self, sds, Ls):
        """Lower-triangular entries of Lambda = diag(sd) L, in theta order."""
        parts = []
        for t, sd, L in zip(self.layout.terms, sds, Ls):
            lam = sd[:, None] * L if L is not None else jnp.diag(sd)
            rows = np.array(t.theta_rows) - t.col0
            cols = np.array(t.theta_cols) - t.col0
            parts.append(lam[rows, cols])
        return jnp.concatenate(parts)

    # -- the numpyro model ------------------------------------------------------------
    def numpyro_model(self, marginal: bool = False):
        """The joint model; with ``marginal=True`` the random effects are integrated out by
        the Laplace approximation (u is not a site), for the posterior mode (MAP)."""
        L, fam, pri = self.layout, self.model.family, self.priors
        intercepts = []
        for k, j in enumerate(L.intercept_cols):
            p = pri["Intercept"]
            name = f"Intercept_{k}"
            if p.dist == "flat":
                intercepts.append(numpyro.sample(name, dist.ImproperUniform(constraints.real, (), ())))
            else:
                intercepts.append(numpyro.sample(name, _numpyro_dist(p)))
        intercepts = jnp.stack(intercepts) if intercepts else jnp.zeros(0)
        b = jnp.zeros(0)
        if L.slope_cols:
            b = numpyro.sample("b", dist.ImproperUniform(constraints.real, (), (len(L.slope_cols),)))
            lp = 0.0
            for k, j in enumerate(L.slope_cols):
                p = self._coef_prior(j)
                if p.dist != "flat":
                    lp = lp + p.log_prob(b[k])
            numpyro.factor("b_prior", lp)
        sds, Ls = [], []
        for k, t in enumerate(L.terms):
            sd = numpyro.sample(f"sd_{k}", dist.ImproperUniform(constraints.positive, (), (t.q,)))
            numpyro.factor(f"sd_{k}_prior", jnp.sum(self._sd_prior(t).log_prob(sd, half=True)))
            sds.append(sd)
            if t.correlated and t.q > 1:
                Ls.append(numpyro.sample(f"L_{k}", dist.LKJCholesky(t.q, pri["cor"].args[0])))
            else:
                Ls.append(None)
        if not marginal:
            u = numpyro.sample("u", dist.ImproperUniform(constraints.real, (), (L.n_u,)))
        phi = numpyro.sample("phi", dist.ImproperUniform(constraints.real, (), (L.n_phi,))) \
            if L.n_phi else jnp.zeros(0)
        beta = self.beta_raw(intercepts, b)
        if L.n_phi:
            numpyro.factor("phi_prior", self.family_log_prior(phi, beta))
        theta = self.theta(sds, Ls)
        if marginal:
            x = jnp.concatenate([theta, beta, phi])
            numpyro.factor("log_marginal", -0.5 * self.laplace().laplace_deviance(x)[0])
        else:
            params = {"beta": beta, "theta": theta, "phi": phi, "u": u}
            numpyro.factor("log_density", self.model.log_density(params))

    def laplace(self):
        from .laplace import GlmmModel
        m = self.model
        return GlmmModel(m.structure, m.family, m.arrays, self.layout.n_phi)

    def family_log_prior(self, phi, beta):
        """Priors on the family's natural parameters, plus the log-Jacobian of phi -> them."""
        fam, pri = self.model.family, self.priors
        jac = jax.jacfwd(lambda z: _flat_natural(fam, z))(phi)
        lp = jnp.linalg.slogdet(jac)[1]
        nat = fam.natural_params(phi)
        for name, value in nat.items():
            if name == "thresholds":
                shift = jnp.dot(jnp.asarray(self.layout.x_means), beta)
                lp = lp + jnp.sum(pri["Intercept"].log_prob(value - shift))
            elif name in pri:
                lp = lp + jnp.sum(pri[name].log_prob(value, half=name == "sigma"))
        return lp

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

        flat = jax.tree.map(lambda v: v.reshape((-1,) + v.shape[2:]), samples)
        out = jax.vmap(one)(flat)
        n_chain, n_draw = next(iter(samples.values())).shape[:2]
        return jax.tree.map(lambda v: v.reshape((n_chain, n_draw) + v.shape[1:]), out)

    def init_values(self, ml_fit) -> dict:
        """Site values at a maximum-likelihood fit (a good place to start the chains)."""
        L = self.layout
        beta = np.asarray(ml_fit.fixef, float)
        means = np.array(L.x_means)
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
