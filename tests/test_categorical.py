"""The categorical family: several linear predictors per observation."""
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxglmm as jg
from jaxglmm.core.laplace import GlmmModel
from reference_cases import load_reference
from test_properties import central_differences

ORDER = {"favorite_subject": ["reading", "math", "science"]}
FORMULA = "favorite_subject ~ student_age_s + student_female + (1 | teacher_id)"


@pytest.fixture(scope="module")
def favorite():
    return jg.fit(FORMULA, jg.load_dataset("classroom"), family="categorical", levels=ORDER)


def test_ml_agrees_with_brms_posterior(favorite):
    # ML estimates against brms's NUTS posterior means: within 2 posterior SDs.
    ref = {p["variable"]: p for p in load_reference("classroom_favorite_categorical_nuts_brms")["posterior"]}
    fit = favorite
    assert fit.converged, fit.messages
    for cat in ("math", "science"):
        for term in ("Intercept", "student_age_s", "student_female"):
            post = ref[f"b_mu{cat}_{term}"]
            assert abs(fit.fixef[f"{cat}:{term}"] - post["mean"]) < 2 * post["sd"], (cat, term)
        post = ref[f"sd_teacher_id__mu{cat}_Intercept"]
        vc = fit.varcorr
        sd = vc[(vc.group == "teacher_id") & (vc.var1 == f"{cat}:Intercept")].sd_or_cor.iloc[0]
        assert abs(sd - post["mean"]) < 2 * post["sd"], cat


@pytest.mark.slow
def test_reference_category_is_the_users_choice():
    df = jg.load_dataset("classroom")
    fit = jg.fit(FORMULA, df, family="categorical",
                 levels={"favorite_subject": ["math", "reading", "science"]})
    assert [n.split(":")[0] for n in fit.fixef.index[::3]] == ["reading", "science"]
    probs = fit.predict()
    assert list(probs.columns) == ["math", "reading", "science"]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)


def test_recovers_simulated_categorical():
    rng = np.random.default_rng(4)
    G, m = 120, 25
    g = np.repeat(np.arange(G), m)
    x = rng.normal(size=g.size)
    b = rng.normal(0, [0.7, 0.4], size=(G, 2))
    eta = np.stack([0.5 + 1.0 * x + b[g, 0], -0.5 - 0.5 * x + b[g, 1]], axis=1)
    logits = np.concatenate([np.zeros((g.size, 1)), eta], axis=1)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    df = pd.DataFrame({"y": np.array(["a", "b", "c"])[y], "x": x, "g": g.astype(str)})
    fit = jg.fit("y ~ x + (1 | g)", df, family="categorical")
    truth = {"b:Intercept": 0.5, "b:x": 1.0, "c:Intercept": -0.5, "c:x": -0.5}
    for name, value in truth.items():
        assert abs(fit.fixef[name] - value) < 4 * fit.fixef_se[name], name
    sds = fit.varcorr.sd_or_cor.to_numpy()
    np.testing.assert_allclose(sds, [0.7, 0.4], atol=0.25)


def test_hvp_system_equals_cross_product_system():
    model = jg.Model("TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)",
                     jg.load_dataset("grouseticks"), "poisson")
    gm = GlmmModel(model.structure, model.family, model.arrays, 0)
    theta = jnp.array([0.7, 0.4])
    beta = jnp.array([0.4, 1.0, -1.0, -0.02])
    u = jnp.asarray(np.random.default_rng(0).normal(0, 0.3, model.structure.n_u))
    a = gm.system(u, theta, beta, jnp.zeros(0), fisher=False)
    b = gm._system_hvp(u, theta, beta, jnp.zeros(0))
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-10, atol=1e-10)


def test_categorical_laplace_gradient_matches_finite_differences():
    df = jg.load_dataset("classroom").iloc[:400]
    model = jg.Model(FORMULA, df, "categorical", levels=ORDER)
    gm = GlmmModel(model.structure, model.family, model.arrays, 0)
    f = jax.jit(lambda x: gm.laplace_deviance(x)[0])
    x = np.array([0.6, 0.4, 0.3, 0.2, -0.4, -0.2, 0.1, 0.5])
    np.testing.assert_allclose(np.asarray(jax.grad(f)(x)),
                               central_differences(lambda z: float(f(z)), x), rtol=1e-5, atol=1e-6)


def test_correlated_categories_with_brms_id_syntax():
    # brms's (1 | ID | g): the per-category intercepts of a teacher are correlated
    df = jg.load_dataset("classroom")
    fit = jg.fit("favorite_subject ~ student_age_s + (1 | p | teacher_id)", df,
                 family="categorical", levels=ORDER)
    assert fit.converged, fit.messages
    vc = fit.varcorr
    cor = vc[vc.var2.notna()]
    assert list(zip(cor.var1, cor.var2)) == [("math:Intercept", "science:Intercept")]
    assert -1 < cor.sd_or_cor.iloc[0] < 1
    independent = jg.fit("favorite_subject ~ student_age_s + (1 | teacher_id)", df,
                         family="categorical", levels=ORDER)
    assert fit.loglik >= independent.loglik - 1e-6      # nested: one more parameter
    assert fit.df == independent.df + 1
    probs = fit.predict(df.head(5))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


@pytest.mark.slow
def test_ids_correlate_terms_across_a_parameter_formula():
    rng = np.random.default_rng(8)
    g = np.repeat(np.arange(60), 15)
    x = rng.normal(size=g.size)
    b = rng.multivariate_normal([0, 0], [[0.36, 0.3], [0.3, 0.64]], size=60)
    mu = np.exp(0.3 + 0.5 * x + b[g, 0])
    zi = 1 / (1 + np.exp(-(-0.5 + b[g, 1])))
    y = np.where(rng.random(g.size) < zi, 0, rng.poisson(mu))
    df = pd.DataFrame({"y": y, "x": x, "g": g.astype(str)})
    fit = jg.fit("y ~ x + (1 | p | g)", df, family="zero_inflated_poisson",
                 dpars={"zi": "~ 1 + (1 | p | g)"})
    vc = fit.varcorr
    assert list(vc.var1) == ["Intercept", "zi_Intercept", "Intercept"]
    assert vc.var2.iloc[2] == "zi_Intercept" and vc.sd_or_cor.iloc[2] > 0
