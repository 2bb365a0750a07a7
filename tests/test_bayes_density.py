"""The Bayesian density and its pieces, each against an independent computation:

* the correlation-Cholesky transform and LKJ density against numpyro's;
* the whole log posterior of sleepstudy against scipy's densities plus Model.log_density;
* every family's phi -> natural-parameter map is triangular (the density uses the diagonal
  of its Jacobian);
* the MCMC diagnostics against ArviZ.
"""
import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.distributions.transforms import CorrCholeskyTransform
from scipy import stats

import jaxglmm as jg
from jaxglmm.bayes import diagnostics as dg
from jaxglmm.bayes.density import (BayesModel, constrain, corr_cholesky, corr_cholesky_inverse,
                           dimension, log_posterior)
from jaxglmm.families import FAMILIES, get_family


@pytest.mark.parametrize("q", [2, 3, 4])
def test_corr_cholesky_matches_numpyro_and_inverts(q):
    rng = np.random.default_rng(q)
    x = rng.normal(size=q * (q - 1) // 2)
    L, logj = corr_cholesky(jnp.asarray(x), q)
    t = CorrCholeskyTransform()
    L_ref = t(jnp.asarray(x))
    np.testing.assert_allclose(L, L_ref, atol=1e-12)
    np.testing.assert_allclose(logj, t.log_abs_det_jacobian(jnp.asarray(x), L_ref), rtol=1e-10)
    np.testing.assert_allclose(np.sum(np.asarray(L) ** 2, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(corr_cholesky_inverse(np.asarray(L)), x, atol=1e-9)


def _sleep_bm(priors=None):
    model = jg.Model("Reaction ~ Days + (Days | Subject)", jg.load_dataset("sleepstudy"))
    return model, BayesModel(model, priors)


@pytest.mark.parametrize("priors", [None, {"cor": "lkj(2)", "sd_Subject": "normal(0, 20)",
                                           "b_Days": "normal(10, 3)", "sigma": "cauchy(0, 10)"}])
def test_log_posterior_equals_independent_computation(priors):
    model, bm = _sleep_bm(priors)
    blocks = bm.blocks()
    rng = np.random.default_rng(1)
    z = bm.unconstrain(bm.centre_values()) + rng.uniform(-0.5, 0.5, dimension(blocks))
    sites, _ = constrain(blocks, jnp.asarray(z))
    ours = float(log_posterior(bm.spec, jnp.asarray(z), bm.data))

    pri = bm.priors
    intercept, days = float(sites["Intercept_0"]), float(sites["b"][0])
    sd, L = np.asarray(sites["sd_0"]), np.asarray(sites["L_0"])
    sigma = float(np.exp(sites["phi"][0]))

    def logpdf(p, x, half=False):
        d = {"student_t": lambda a: stats.t(a[0], a[1], a[2]),
             "normal": lambda a: stats.norm(a[0], a[1]),
             "cauchy": lambda a: stats.cauchy(a[0], a[1])}[p.dist](p.args)
        return d.logpdf(x) - (d.logsf(0.0) if half else 0.0)

    expect = logpdf(pri["Intercept"], intercept)
    if "b_Days" in pri:
        expect += logpdf(pri["b_Days"], days)
    sd_prior = pri.get("sd_Subject", pri["sd"])
    expect += sum(logpdf(sd_prior, s, half=True) for s in sd)
    expect += logpdf(pri["sigma"], sigma, half=True)
    expect += float(dist.LKJCholesky(2, pri["cor"].args[0]).log_prob(jnp.asarray(L)))
    # Jacobians: exp for the SDs and sigma, tanh for the correlation
    r = L[1, 0]
    expect += np.sum(np.log(sd)) + np.log(sigma) + np.log1p(-r * r)
    # the joint density of y and u at the uncentred coefficients
    beta = np.array([intercept - bm.x_means[1] * days, days])
    lam = np.diag(sd) @ L
    theta = np.array([lam[0, 0], lam[1, 0], lam[1, 1]])
    expect += float(model.log_density({"beta": jnp.asarray(beta), "theta": jnp.asarray(theta),
                                       "phi": sites["phi"], "u": sites["u"]}))
    assert ours == pytest.approx(expect, rel=1e-10, abs=1e-8)


def test_gradient_of_log_posterior_matches_finite_differences():
    _, bm = _sleep_bm()
    z = bm.unconstrain(bm.centre_values()) + 0.3
    f = jax.jit(lambda z: log_posterior(bm.spec, z, bm.data))
    g = np.asarray(jax.grad(f)(jnp.asarray(z)))
    h = 1e-6
    for i in [0, 1, 2, 3, 4, 5, 20, len(z) - 1]:
        e = np.zeros_like(z)
        e[i] = h
        fd = (float(f(jnp.asarray(z + e))) - float(f(jnp.asarray(z - e)))) / (2 * h)
        assert g[i] == pytest.approx(fd, rel=1e-5, abs=1e-6), i


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_parameter_map_is_triangular(name):
    fam = get_family(name)
    n = len(fam.param_names)
    if name == "cumulative":
        n = 4
    if n == 0:
        pytest.skip("no family parameters")
    phi = jnp.asarray(np.random.default_rng(0).normal(size=n))

    def flat(p):
        return jnp.concatenate([jnp.ravel(v) for v in fam.natural_params(p).values()])
    jac = np.asarray(jax.jacfwd(flat)(phi))
    assert jac.shape == (n, n)
    assert np.allclose(np.triu(jac, 1), 0.0), jac
    assert np.all(np.abs(np.diag(jac)) > 0)


@pytest.mark.parametrize("case", ["smooth", "short", "odd", "ties", "shifted"])
def test_diagnostics_match_arviz(case):
    rng = np.random.default_rng(len(case))
    n = {"short": 12, "odd": 301}.get(case, 800)
    x = np.cumsum(rng.standard_normal((4, n)), axis=1) * 0.1 + rng.standard_normal((4, n))
    if case == "ties":
        x = np.round(x)
    if case == "shifted":
        x = x + np.arange(4)[:, None] * 0.3
    ds = az.convert_to_dataset({"x": x})
    assert dg.rhat(x) == pytest.approx(float(az.rhat(ds)["x"]), rel=1e-10)
    assert dg.ess_bulk(x) == pytest.approx(float(az.ess(ds, method="bulk")["x"]), rel=1e-10)
    assert dg.ess_tail(x) == pytest.approx(float(az.ess(ds, method="tail")["x"]), rel=1e-10)
    assert dg.mcse_mean(x) == pytest.approx(float(az.mcse(ds)["x"]), rel=1e-10)


@pytest.mark.parametrize("formula,dataset", [
    ("Reaction ~ Days + (Days | Subject)", "sleepstudy"),
    ("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin")])     # a dense second factor
def test_exact_marginal_likelihood_and_conditional_draws(formula, dataset):
    """The unprofiled LMM density equals the ML log-likelihood at the ML estimates; the
    conditional draw with eps = 0 is the conditional mode, and the draws' covariance is
    sigma^2 A^{-1} (its diagonal blocks against blocked.conditional_covariances)."""
    from jaxglmm.core import lmm
    from jaxglmm.core import blocked, restructure as rs
    model = jg.Model(formula, jg.load_dataset(dataset))
    fit = model.fit("ml")
    s = model.structure
    d = lmm.lmm_data(s, model.arrays)
    theta, beta = jnp.asarray(fit.optinfo["x"]), jnp.asarray(fit.fixef.values)
    ll = lmm.marginal_loglik(s, d, theta, beta, fit.sigma)
    assert float(ll) == pytest.approx(fit.loglik, rel=1e-12)
    u0 = lmm.conditional_u(s, d, theta, beta, fit.sigma, jnp.zeros(s.n_u))
    np.testing.assert_allclose(u0, fit.optinfo["u"], atol=1e-9)
    # u(eps) - u(0) = sigma L^{-T} eps: its columns give the covariance exactly
    cols = jax.vmap(lambda e: lmm.conditional_u(s, d, theta, beta, fit.sigma, e))(jnp.eye(s.n_u))
    M = np.asarray(cols - u0).T
    cov = M @ M.T
    lams = rs.lambdas(s, theta)
    ch = blocked.factor(*blocked.scaled_system(s, lams, d.cp))
    blocks = blocked.conditional_covariances(ch, s)
    G1, q1 = blocks[0].shape[:2]
    for g in range(G1):
        np.testing.assert_allclose(cov[g * q1:(g + 1) * q1, g * q1:(g + 1) * q1],
                                   fit.sigma ** 2 * np.asarray(blocks[0][g]), rtol=1e-8, atol=1e-12)


def test_exact_marginal_posterior_equals_the_joint_density_integrated():
    """For a gaussian model the collapsed log posterior equals the joint one with u
    integrated out: log p(theta | y) = log p(theta, u | y) - log p(u | theta, y), at any u."""
    from jaxglmm.core import lmm
    model, bm = _sleep_bm()
    rng = np.random.default_rng(3)
    zm = bm.unconstrain(bm.centre_values(), marginal=True) + rng.uniform(-0.5, 0.5, 6)
    sites, _ = constrain(bm.blocks(True), jnp.asarray(zm))
    collapsed = float(log_posterior(bm.spec, jnp.asarray(zm), bm.data, marginal=True))
    # joint at u = the conditional mode: log p(theta, u_hat | y) - log N(u_hat; u_hat, A^-1)
    # (u on the unit scale of the joint density, b = Lambda u)
    from jaxglmm.bayes.density import _conditional_u
    u_hat = _conditional_u(bm.spec, sites, bm.x_means, bm.data["lmm"], jnp.zeros(36))
    zj = np.concatenate([zm[:5], np.asarray(u_hat), zm[5:]])
    joint = float(log_posterior(bm.spec, jnp.asarray(zj), bm.data))
    sigma = float(jnp.exp(sites["phi"][0]))
    L, sd = np.asarray(sites["L_0"]), np.asarray(sites["sd_0"])
    lam = np.diag(sd) @ L / sigma
    theta = jnp.asarray([lam[0, 0], lam[1, 0], lam[1, 1]])
    from jaxglmm.core import blocked, restructure as rs
    ch = blocked.factor(*blocked.scaled_system(model.structure, rs.lambdas(model.structure, theta),
                                     bm.data["lmm"].cp))
    logdet_a = float(blocked.logdet_z(ch, 0))
    log_cond = -0.5 * 36 * np.log(2 * np.pi) + 0.5 * logdet_a
    assert collapsed == pytest.approx(joint - log_cond, rel=1e-10)
