"""Bayesian models on the one log-density: the posterior of a flat unconstrained vector.

NUTS, variational inference and the posterior mode (:mod:`jaxglmm.bayes.drivers`) all move on
that vector; :func:`log_posterior` is a pure function of it and the data, so a compiled
sampler serves every same-shape dataset.  As in Stan, each site has a transform to its
support (``exp`` for SDs; tanh and signed stick-breaking for correlation Cholesky factors),
and the log-Jacobian is part of the density.

Sites (non-centred, as brms):

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

from ..core import restructure as rs
from ..core.laplace import GlmmModel
from ..core.lmm import conditional_u, lmm_data, marginal_loglik
from ..core.predictor import joint_log_density
from ..fit.aot import AheadOfTime
from ..fit.cache import jit, program
from .priors import kernel, lkj_log_normalizer, log_normalizer, resolve_priors

# priors on parameters bounded below by zero (renormalised over the positive half)
_HALF_KEYS = ("sd", "sigma")


@dataclass(frozen=True)
class Layout:
    """Where intercepts, slopes, terms and family parameters sit (static)."""

    intercept_cols: tuple[int, ...]      # one per linear predictor with an intercept
    slope_cols: tuple[int, ...]
    col_channel: tuple[int, ...]
    p: int
    terms: tuple                          # restructure TermSpecs in theta order
    n_phi: int
    n_u: int


def make_layout(problem) -> Layout:
    d, s = problem.design, problem.structure
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
                  tuple(s.terms), problem.n_phi, s.n_u)


def _flat_natural(family, phi):
    return jnp.concatenate([jnp.ravel(v) for v in family.natural_params(phi).values()]) \
        if phi.shape[0] else jnp.zeros(0)


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


def _intercepts(layout: Layout, sites: dict):
    return jnp.stack([sites[f"Intercept_{k}"] for k in range(len(layout.intercept_cols))]) \
        if layout.intercept_cols else jnp.zeros(0)


def _beta_theta(layout: Layout, sites: dict, x_means):
    """The uncentred coefficients and theta (absolute scale) of one draw of the sites."""
    beta = _beta_raw(layout, _intercepts(layout, sites), sites.get("b", jnp.zeros(0)), x_means)
    theta = _theta(layout, [sites[f"sd_{k}"] for k in range(len(layout.terms))],
                   [sites.get(f"L_{k}") for k in range(len(layout.terms))])
    return beta, theta


# ----------------------------------------------------------------------------- parameter vector
@dataclass(frozen=True)
class Block:
    """One site's slice of the unconstrained parameter vector."""

    site: str                  # "Intercept_<k>", "b", "sd_<k>", "L_<k>", "u", "phi"
    start: int
    size: int
    kind: str                  # "real", "positive" (exp) or "corr" (correlation Cholesky)
    shape: tuple[int, ...]     # the site's (constrained) shape


def make_blocks(layout: Layout, marginal: bool = False) -> tuple[Block, ...]:
    """Where each site sits in the flat unconstrained vector that the samplers move on; with
    ``marginal=True`` there is no ``u`` (the random effects are integrated out)."""
    blocks, pos = [], 0

    def add(site, kind, shape, size=None):
        nonlocal pos
        size = int(np.prod(shape)) if size is None else size
        blocks.append(Block(site, pos, size, kind, tuple(shape)))
        pos += size

    for k in range(len(layout.intercept_cols)):
        add(f"Intercept_{k}", "real", ())
    if layout.slope_cols:
        add("b", "real", (len(layout.slope_cols),))
    for k, t in enumerate(layout.terms):
        add(f"sd_{k}", "positive", (t.q,))
        if t.correlated and t.q > 1:
            add(f"L_{k}", "corr", (t.q, t.q), t.q * (t.q - 1) // 2)
    if not marginal:
        add("u", "real", (layout.n_u,))
    if layout.n_phi:
        add("phi", "real", (layout.n_phi,))
    return tuple(blocks)


def dimension(blocks) -> int:
    return blocks[-1].start + blocks[-1].size if blocks else 0


def _log1m_tanh2(x):
    """log(1 - tanh(x)^2), stable for large |x|."""
    return 2.0 * (np.log(2.0) - x - jax.nn.softplus(-2.0 * x))


def corr_cholesky(x, q: int):
    """Stan's (and numpyro's) map from R^{q(q-1)/2} to the Cholesky factor of a correlation
    matrix: tanh to (-1, 1), then signed stick-breaking along each row (entries in row-major
    order of the strict lower triangle).  Returns the factor and the log-Jacobian of the map
    to its strict lower triangle."""
    eps = np.finfo(np.float64).eps if x.dtype == jnp.float64 else np.finfo(np.float32).eps
    t = jnp.clip(jnp.tanh(x), -1 + eps, 1 - eps)
    logj = jnp.sum(_log1m_tanh2(x))
    rows, k = [], 0
    for i in range(q):
        row, rem = [], 1.0
        for j in range(i):
            row.append(t[k] * jnp.sqrt(rem))
            if j > 0:
                logj = logj + 0.5 * jnp.log(rem)
            rem = rem * (1.0 - t[k] * t[k])
            k += 1
        row.append(jnp.sqrt(rem) if i else jnp.ones((), x.dtype))
        row += [jnp.zeros((), x.dtype)] * (q - i - 1)
        rows.append(jnp.stack(row))
    return jnp.stack(rows), logj


def corr_cholesky_inverse(L: np.ndarray) -> np.ndarray:
    """The unconstrained vector of a correlation Cholesky factor (inverse of corr_cholesky)."""
    L = np.asarray(L, float)
    out = []
    for i in range(1, L.shape[0]):
        rem = 1.0
        for j in range(i):
            t = np.clip(L[i, j] / np.sqrt(rem), -1 + 1e-12, 1 - 1e-12)
            out.append(np.arctanh(t))
            rem *= 1.0 - t * t
    return np.asarray(out)


def constrain(blocks, z):
    """Flat unconstrained vector -> site values, and the log-Jacobian of the map."""
    sites, logj = {}, 0.0
    for blk in blocks:
        x = z[blk.start:blk.start + blk.size]
        if blk.kind == "real":
            sites[blk.site] = x.reshape(blk.shape)
        elif blk.kind == "positive":
            sites[blk.site] = jnp.exp(x).reshape(blk.shape)
            logj = logj + jnp.sum(x)
        else:
            sites[blk.site], lj = corr_cholesky(x, blk.shape[0])
            logj = logj + lj
    return sites, logj


def unconstrain(blocks, values: dict) -> np.ndarray:
    """Site values -> the flat unconstrained vector (host-side, for starting points)."""
    z = np.zeros(dimension(blocks))
    for blk in blocks:
        v = np.asarray(values[blk.site], float)
        if blk.kind == "real":
            x = v.reshape(-1)
        elif blk.kind == "positive":
            x = np.log(v).reshape(-1)
        else:
            x = corr_cholesky_inverse(v)
        z[blk.start:blk.start + blk.size] = x
    return z


# ----------------------------------------------------------------------------- the model
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
    exact_marginal: bool = False     # gaussian, identity link: u integrates out exactly

    def blocks(self, marginal: bool = False) -> tuple[Block, ...]:
        return make_blocks(self.layout, marginal)


def _prior_term(spec: Spec, data, key: str, x):
    """Sum of the prior ``key``'s log density over the entries of ``x``."""
    dist = dict(spec.prior_dists)[key]
    if dist == "flat":
        return 0.0
    x = jnp.asarray(x)
    return jnp.sum(kernel(dist, x, data["priors"][key])) + x.size * data["prior_const"][key]


def _family_log_prior(spec: Spec, data, phi, beta):
    """Priors on the family's natural parameters, plus the log-Jacobian of phi -> them.  The
    map is triangular for every family (each parameter depends on its own entry of phi and
    those before it: tested), so the log-determinant is the sum over the diagonal."""
    fam, keys = spec.family, dict(spec.prior_dists)
    jac = jax.jacfwd(lambda z: _flat_natural(fam, z))(phi)
    i = np.arange(jac.shape[0])
    lp = jnp.sum(jnp.log(jnp.abs(jac[i, i])))
    for name, value in fam.natural_params(phi).items():
        if name == "thresholds":   # priors on the thresholds of the centred predictors
            lp = lp + _prior_term(spec, data, "Intercept", value - jnp.dot(data["x_means"], beta))
        elif name in keys:
            lp = lp + _prior_term(spec, data, name, value)
    return lp


def log_posterior(spec: Spec, z, data, marginal: bool = False):
    """Unnormalised log posterior density of the flat unconstrained vector ``z`` (the
    log-Jacobian of the transforms included).  With ``marginal=True`` the random effects are
    integrated out (``z`` has no ``u``): exactly for a gaussian model with the identity link
    (the collapsed posterior), else by the Laplace approximation (for the posterior mode).

    Pure in ``(z, data)``: one compiled sampler serves every same-shape dataset."""
    L, keys = spec.layout, dict(spec.prior_dists)
    sites, lp = constrain(spec.blocks(marginal), z)
    lp = lp + _prior_term(spec, data, "Intercept", _intercepts(L, sites))
    b = sites.get("b", jnp.zeros(0))
    by_key: dict[str, list[int]] = {}
    for k, j in enumerate(L.slope_cols):
        key = f"b_{spec.fixef_names[j]}"
        by_key.setdefault(key if key in keys else "b", []).append(k)
    for key, idx in by_key.items():
        lp = lp + _prior_term(spec, data, key, b[np.array(idx)])
    for k, t in enumerate(L.terms):
        key = f"sd_{t.group}" if f"sd_{t.group}" in keys else "sd"
        lp = lp + _prior_term(spec, data, key, sites[f"sd_{k}"])
        Lk = sites.get(f"L_{k}")
        if Lk is not None:     # LKJ(eta) on the Cholesky factor
            eta, q = data["priors"]["cor"][0], t.q
            order = 2.0 * eta - 3.0 + q - np.arange(1, q)
            i = np.arange(1, q)
            lp = lp + jnp.sum(order * jnp.log(Lk[i, i])) + data["lkj_const"][k]
    phi = sites.get("phi", jnp.zeros(0))
    beta, theta = _beta_theta(L, sites, data["x_means"])
    if L.n_phi:
        lp = lp + _family_log_prior(spec, data, phi, beta)
    if marginal and spec.exact_marginal:
        sigma = spec.family.natural_params(phi)["sigma"]
        return lp + marginal_loglik(spec.structure, data["lmm"], theta / sigma, beta, sigma)
    if marginal:
        lap = GlmmModel(spec.structure, spec.family, data["arrays"], L.n_phi)
        return lp - 0.5 * lap.laplace_deviance(jnp.concatenate([theta, beta, phi]))[0]
    params = {"beta": beta, "theta": theta, "phi": phi, "u": sites["u"]}
    return lp + joint_log_density(spec.structure, spec.family, data["arrays"], params)


class BayesModel:
    """One model's Bayesian pieces: the static :class:`Spec`, the data the sampler takes,
    and the maps from draws to reported values."""

    def __init__(self, problem, priors: dict | None = None):
        problem = getattr(problem, "problem", problem)      # a Model hands over its problem
        self.problem = problem
        self.priors = resolve_priors(problem, priors)
        self.layout = make_layout(problem)
        self.family_param_names = tuple(problem.family.natural_params(
            jnp.asarray(problem.phi0)).keys())
        exact = problem.exact_lmm and self.layout.n_u > 0
        self.spec = Spec(problem.structure, problem.family, self.layout,
                         tuple(problem.design.fixef_names),
                         tuple((k, p.dist) for k, p in self.priors.items()), exact)
        self.x_means = np.asarray(problem.design.X).mean(axis=0)
        consts = {k: log_normalizer(p, half=k.startswith(_HALF_KEYS))
                  for k, p in self.priors.items() if p.dist != "lkj"}
        eta = self.priors["cor"].args[0]
        self.data = {"arrays": problem.arrays, "x_means": self.x_means,
                     "priors": {k: np.asarray(p.args, np.float64) for k, p in self.priors.items()},
                     "prior_const": {k: np.float64(c) for k, c in consts.items()},
                     "lkj_const": np.array([lkj_log_normalizer(eta, t.q) if t.q > 1 else 0.0
                                            for t in self.layout.terms], np.float64)}
        if exact:
            self.data["lmm"] = _lmm_data_fn(problem.structure)(problem.arrays)

    def blocks(self, marginal: bool = False):
        return self.spec.blocks(marginal)

    def log_posterior(self, z, marginal: bool = False):
        return log_posterior(self.spec, z, self.data, marginal)

    def unconstrain(self, values: dict, marginal: bool = False) -> np.ndarray:
        return unconstrain(self.blocks(marginal), values)

    def laplace(self):
        p = self.problem
        return GlmmModel(p.structure, p.family, p.arrays, self.layout.n_phi)

    # -- reported quantities ----------------------------------------------------------
    def transform_draws(self, samples: dict) -> dict:
        """Per-draw reported values (chain, draw, ...) from site draws: beta (uncentred),
        theta, phi, u, the family's natural parameters (``natural``) and the random effects
        b = Lambda u per factor (``b``, each (chain, draw, levels, q))."""
        lead = np.shape(next(iter(samples.values())))[:2]
        flat = {k: np.asarray(v).reshape((-1,) + np.shape(v)[2:]) for k, v in samples.items()}
        out = jax.device_get(_report_fn(self.spec)(flat, self.x_means))
        return _unflatten(out, lead)

    def draws_from_z(self, zs, marginal: bool = False, draw_u: bool = False,
                     seed: int = 0) -> tuple[dict, dict]:
        """Site draws and reported values (as :meth:`transform_draws`) from unconstrained
        draws ``zs`` (chain, draw, dim), by one compiled function per model spec.  With
        ``draw_u`` (a collapsed gaussian posterior) each draw gets random effects drawn from
        their exact conditional distribution."""
        zs = np.asarray(zs)
        flat = zs.reshape(-1, zs.shape[-1])
        args = self._post_args(flat, draw_u, seed)
        sites, report = jax.device_get(_post_fn(self.spec, marginal, draw_u)(*args))
        return _unflatten(sites, zs.shape[:2]), _unflatten(report, zs.shape[:2])

    def prepare_draws(self, shape: tuple, marginal: bool = False, draw_u: bool = False) -> None:
        """Compile :meth:`draws_from_z` for draws of this (chain, draw) shape now."""
        flat = np.zeros((int(np.prod(shape)), dimension(self.blocks(marginal))))
        _post_fn(self.spec, marginal, draw_u).prepare(*self._post_args(flat, draw_u, 0),
                                                      background=False)

    def _post_args(self, flat, draw_u: bool, seed: int) -> tuple:
        if not draw_u:
            return flat, self.x_means
        eps = np.random.default_rng(seed).standard_normal((flat.shape[0], self.layout.n_u))
        return flat, self.x_means, self.data["lmm"], eps

    def centre_values(self) -> dict:
        """A cheap starting point from the priors and the data, no fit needed: intercepts at
        the intercept prior's location (brms's link(median(y))), slopes 0, SDs at half the SD
        prior's scale, no correlation, random effects 0 and the family's moment-based start
        for its parameters."""
        L, pri = self.layout, self.priors
        loc = pri["Intercept"].args[-2] if pri["Intercept"].dist in ("normal", "student_t",
                                                                   "cauchy") else 0.0
        vals = {f"Intercept_{k}": np.float64(loc if len(L.intercept_cols) == 1 else 0.0)
                for k in range(len(L.intercept_cols))}
        if L.slope_cols:
            vals["b"] = np.zeros(len(L.slope_cols))
        for k, t in enumerate(L.terms):
            p = pri.get(f"sd_{t.group}", pri["sd"])
            scale = p.args[-1] if p.dist in ("normal", "student_t", "cauchy") else 2.0
            vals[f"sd_{k}"] = np.full(t.q, 0.5 * scale)
            if t.correlated and t.q > 1:
                vals[f"L_{k}"] = np.eye(t.q)
        vals["u"] = np.zeros(L.n_u)
        if L.n_phi:
            vals["phi"] = np.asarray(self.problem.phi0, float)
        return vals

    def init_values(self, raw) -> dict:
        """Site values at a maximum-likelihood fit (a :class:`~jaxglmm.fit.likelihood.RawFit`:
        a good place to start the chains)."""
        L, exact = self.layout, self.problem.exact_lmm
        beta = np.asarray(raw.beta, float)
        means = self.x_means
        vals = {}
        for k, j in enumerate(L.intercept_cols):
            same = [i for i in L.slope_cols if L.col_channel[i] == L.col_channel[j]]
            vals[f"Intercept_{k}"] = jnp.asarray(beta[j] + means[same] @ beta[same])
        if L.slope_cols:
            vals["b"] = jnp.asarray(beta[list(L.slope_cols)])
        sigma = float(raw.sigma) if exact else 1.0
        # Lambda is relative to sigma for the LMM (lme4's scale), absolute otherwise
        covs = rs.term_covariances(self.problem.structure, np.asarray(raw.theta), sigma)
        for k, t in enumerate(L.terms):
            C = covs[(t.label, tuple(t.names))]
            sd = np.sqrt(np.maximum(np.diag(C), 1e-4))
            vals[f"sd_{k}"] = jnp.asarray(np.maximum(sd, 0.05 * max(sd.max(), 1e-2)))
            if t.correlated and t.q > 1:
                R = C / np.outer(sd, sd) + 1e-3 * np.eye(t.q)
                R = R / np.sqrt(np.outer(np.diag(R), np.diag(R)))
                vals[f"L_{k}"] = jnp.asarray(np.linalg.cholesky(R))
        # the LMM's u is on lme4's scale (variance sigma^2); here u ~ N(0, I)
        vals["u"] = np.asarray(raw.u) / sigma
        if L.n_phi:
            phi = np.array([np.log(sigma)]) if exact else np.asarray(raw.x)[-L.n_phi:]
            vals["phi"] = jnp.asarray(phi)
        return vals


def _unflatten(tree, lead: tuple):
    return jax.tree.map(lambda v: np.asarray(v).reshape(tuple(lead) + np.shape(v)[1:]), tree)


def _report_one(spec: Spec, d: dict, x_means) -> dict:
    """Reported values of one draw of the sites."""
    L, s = spec.layout, spec.structure
    phi = d["phi"] if L.n_phi else jnp.zeros(0)
    u = d.get("u", jnp.zeros(L.n_u))
    beta, theta = _beta_theta(L, d, x_means)
    return {"beta": beta, "theta": theta, "phi": phi, "u": u,
            "natural": spec.family.natural_params(phi) if L.n_phi else {},
            "b": tuple(rs.random_effects(s, rs.lambdas(s, theta), u))}


# compiled per model spec, so a same-shape dataset reuses them
def _report_fn(spec: Spec):
    """Site draws (N, ...) -> reported values."""
    return program(("bayes-report", spec), lambda: jit(lambda flat, x_means: jax.vmap(
        lambda d: _report_one(spec, d, x_means))(flat)))


def _conditional_u(spec: Spec, sites: dict, x_means, lmm, eps):
    """Random effects (unit scale, b = Lambda u) of a collapsed gaussian draw, from their
    exact conditional distribution."""
    beta, theta = _beta_theta(spec.layout, sites, x_means)
    sigma = spec.family.natural_params(sites["phi"])["sigma"]
    return conditional_u(spec.structure, lmm, theta / sigma, beta, sigma, eps) / sigma


def _post_fn(spec: Spec, marginal: bool, draw_u: bool = False):
    """Unconstrained draws (N, dim) -> (site draws, reported values); with ``draw_u`` the
    arguments are (zs, x_means, lmm data, standard normal eps (N, n_u)) and u is drawn per
    draw."""
    def build():
        blocks = spec.blocks(marginal)

        def one(z, x_means, lmm=None, e=None):
            sites = constrain(blocks, z)[0]
            if draw_u:
                sites = dict(sites, u=_conditional_u(spec, sites, x_means, lmm, e))
            return sites, _report_one(spec, sites, x_means)

        def fn(zs, x_means, lmm=None, eps=None):
            if draw_u:
                return jax.vmap(lambda z, e: one(z, x_means, lmm, e))(zs, eps)
            return jax.vmap(lambda z: one(z, x_means))(zs)
        return AheadOfTime(jit(fn))
    return program(("bayes-post", spec, marginal, draw_u), build)


def _lmm_data_fn(structure):
    return program(("lmm-data", structure),
                   lambda: AheadOfTime(jit(lambda a: lmm_data(structure, a))))
