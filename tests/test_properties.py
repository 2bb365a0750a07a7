"""Properties with a known truth: exact gradients against finite differences, a zero gradient
at the optimum, recovery of simulated parameters, and no recompilation for same-shape data."""
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxglmm as jg
from jaxglmm.core import lmm
from jaxglmm.core.laplace import GlmmModel


def central_differences(f, x, h=1e-5):
    x = np.asarray(x, float)
    out = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h * (1 + abs(x[i]))
        out[i] = (f(x + e) - f(x - e)) / (2 * e[i])
    return out


def glmm_objective(model: jg.Model, n_agq=1):
    gm = GlmmModel(model.structure, model.family, model.arrays, int(model.problem.phi0.shape[0]))
    if n_agq == 1:
        return gm, jax.jit(lambda x: gm.laplace_deviance(x)[0])
    return gm, jax.jit(lambda x: gm.agq_deviance(x, n_agq)[0])


@pytest.mark.parametrize("dataset,formula,family,n_agq", [
    ("cbpp", "cbind(incidence, size - incidence) ~ period + (1 | herd)", "binomial", 1),
    ("cbpp", "cbind(incidence, size - incidence) ~ period + (1 | herd)", "binomial", 7),
    ("grouseticks", "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)", "poisson", 1),
    ("classroom", "math_better ~ student_age_s + (1 + student_female | teacher_id)", "bernoulli", 1),
])
def test_laplace_gradient_matches_finite_differences(dataset, formula, family, n_agq):
    model = jg.Model(formula, jg.load_dataset(dataset), family)
    gm, f = glmm_objective(model, n_agq)
    rng = np.random.default_rng(1)
    # an arbitrary point away from the optimum: theta off-diagonals nonzero, beta perturbed
    x = np.concatenate([model.structure.theta_init() * 0.7 + 0.05,
                        rng.normal(0, 0.3, model.design.n_fixef), np.asarray(model.problem.phi0)])
    g_auto = np.asarray(jax.grad(f)(jnp.asarray(x)))
    g_fd = central_differences(lambda z: float(f(jnp.asarray(z))), x)
    np.testing.assert_allclose(g_auto, g_fd, rtol=2e-5, atol=2e-5 * np.abs(g_fd).max())


def test_lmm_profiled_gradient_matches_finite_differences():
    model = jg.Model("Reaction ~ Days + (Days | Subject)", jg.load_dataset("sleepstudy"))
    a, s = model.arrays, model.structure
    cp = lmm.cross_products(s, a)
    n, p = a.X.shape
    f = jax.jit(lambda th: lmm.profiled_parts(s, cp, th, n, p, True, 0.0, full=False))
    th = np.array([0.8, 0.1, 0.3])
    np.testing.assert_allclose(np.asarray(jax.grad(f)(th)),
                               central_differences(lambda z: float(f(z)), th), rtol=1e-6)


@pytest.mark.parametrize("case", ["sleepstudy_reml", "cbpp_laplace", "grouseticks_poisson"])
def test_gradient_vanishes_at_optimum(case, reference_fit):
    fit, _ = reference_fit(case)
    g = fit.optinfo["grad"]
    H = fit.optinfo["hessian"]
    # the Newton step that remains (lme4's scaled gradient) is negligible
    assert np.max(np.abs(np.linalg.solve(H, g))) < 1e-6
    assert np.all(np.linalg.eigvalsh(H) > 0)


def simulate_bernoulli(rng, n_groups=150, per_group=30, beta=(-0.5, 1.0), sd=(0.8, 0.4), rho=0.3):
    g = np.repeat(np.arange(n_groups), per_group)
    x = rng.normal(size=g.size)
    cov = np.array([[sd[0] ** 2, rho * sd[0] * sd[1]], [rho * sd[0] * sd[1], sd[1] ** 2]])
    b = rng.multivariate_normal(np.zeros(2), cov, size=n_groups)
    eta = beta[0] + beta[1] * x + b[g, 0] + b[g, 1] * x
    y = rng.binomial(1, 1 / (1 + np.exp(-eta)))
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{k}" for k in g]})


def test_recovers_simulated_bernoulli_glmm():
    rng = np.random.default_rng(7)
    df = simulate_bernoulli(rng)
    fit = jg.fit("y ~ x + (1 + x | g)", df, family="bernoulli")
    assert fit.converged
    for name, truth in [("Intercept", -0.5), ("x", 1.0)]:
        assert abs(fit.fixef[name] - truth) < 4 * fit.fixef_se[name]
    sds = fit.varcorr[fit.varcorr.var2.isna()].sd_or_cor.to_numpy()
    np.testing.assert_allclose(sds, [0.8, 0.4], atol=0.25)


def test_recovers_simulated_crossed_lmm():
    rng = np.random.default_rng(11)
    a_lv, b_lv, reps = 30, 12, 4
    a = np.repeat(np.arange(a_lv), b_lv * reps)
    b = np.tile(np.repeat(np.arange(b_lv), reps), a_lv)
    x = rng.normal(size=a.size)
    y = (2.0 + 0.5 * x + rng.normal(0, 1.5, a_lv)[a] + rng.normal(0, 0.7, b_lv)[b]
         + rng.normal(0, 1.0, a.size))
    df = pd.DataFrame({"y": y, "x": x, "a": a.astype(str), "b": b.astype(str)})
    fit = jg.fit("y ~ x + (1 | a) + (1 | b)", df, method="ml")
    assert fit.converged
    assert abs(fit.fixef["x"] - 0.5) < 4 * fit.fixef_se["x"]
    vc = fit.varcorr.set_index("group").sd_or_cor
    assert abs(vc["Residual"] - 1.0) < 0.06
    assert abs(vc["a"] - 1.5) < 0.5 and abs(vc["b"] - 0.7) < 0.4


def test_same_shape_dataset_does_not_recompile():
    from jaxglmm.fit import cache
    rng = np.random.default_rng(3)
    df1 = simulate_bernoulli(rng, n_groups=20, per_group=10)
    df2 = simulate_bernoulli(rng, n_groups=20, per_group=10)
    jg.fit("y ~ x + (1 | g)", df1, family="bernoulli")
    before = cache.n_compiled()
    fit2 = jg.fit("y ~ x + (1 | g)", df2, family="bernoulli")
    assert cache.n_compiled() == before
    assert fit2.converged


def test_fit_many_matches_single_fits():
    rng = np.random.default_rng(5)
    datasets = [simulate_bernoulli(rng, n_groups=25, per_group=12) for _ in range(3)]
    many = jg.fit_many("y ~ x + (1 | g)", datasets, family="bernoulli")
    assert len(many) == 3
    for i, df in enumerate(datasets):
        single = jg.fit("y ~ x + (1 | g)", df, family="bernoulli")
        np.testing.assert_allclose(many.fixef.iloc[i].to_numpy(), single.fixef.to_numpy(),
                                   rtol=1e-5, atol=1e-7)
        assert abs(many.result(i).loglik - single.loglik) < 1e-6


def test_refit_many_parametric_bootstrap_lmm():
    model = jg.Model("Reaction ~ Days + (Days | Subject)", jg.load_dataset("sleepstudy"))
    fit = model.fit()
    sims = fit.simulate(4, seed=2).to_numpy().T
    many = jg.refit_many(model, sims)
    assert many.fixef.shape == (4, 2)
    for i in range(4):
        df = jg.load_dataset("sleepstudy").assign(Reaction=sims[i])
        single = jg.fit("Reaction ~ Days + (Days | Subject)", df)
        np.testing.assert_allclose(many.fixef.iloc[i], single.fixef, rtol=1e-6)


@pytest.mark.multidevice
def test_fit_many_shards_across_devices_and_matches_single_fits():
    import jax
    rng = np.random.default_rng(9)
    datasets = [simulate_bernoulli(rng, n_groups=20, per_group=10) for _ in range(4)]
    assert len(jax.devices()) == 4          # conftest: four CPU devices, as a multi-GPU host
    many = jg.fit_many("y ~ x + (1 | g)", datasets, family="bernoulli")
    for i, df in enumerate(datasets):
        single = jg.fit("y ~ x + (1 | g)", df, family="bernoulli")
        np.testing.assert_allclose(many.fixef.iloc[i], single.fixef, rtol=1e-5, atol=1e-7)
