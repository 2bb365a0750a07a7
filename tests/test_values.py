"""Families are values, fitters ask a family instead of its name, and no method runs under
another's name (the architecture issue's behaviour)."""
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxglmm as jg
from jaxglmm.core.predictor import spherical_predictor
from jaxglmm.families import FAMILIES, Family, get_family, register_family
from jaxglmm.families import glm
from jaxglmm.fit import cache


def test_equal_families_compare_and_hash_equal():
    a = get_family("binomial")
    b = get_family("binomial", "probit").with_link("logit")     # back through the factory
    assert a == b and hash(a) == hash(b)
    assert get_family("binomial", "probit") == get_family("binomial").with_link("probit")
    assert get_family("binomial", "probit") != a
    assert get_family("poisson") != get_family("negbinomial")
    # a Family passed in again is the same value, and so is one through an alias
    assert get_family(a) == a and get_family("gamma") == get_family("Gamma")


def test_a_changed_family_is_another_value():
    """replace() with another log-likelihood must not reuse the original's programs."""
    from dataclasses import replace
    pois = get_family("poisson")
    doubled = replace(pois, loglik=lambda y, eta, t, fp: 2 * pois.loglik(y, eta, t, fp))
    assert doubled != pois and hash(doubled) != hash(pois)


def test_a_hand_made_family_is_equal_only_to_itself():
    base = get_family("gaussian")
    mine = Family("gaussian", base.link, base.links, lambda y, eta, t, fp: -(y - eta) ** 2)
    assert mine != base and mine == mine


def test_a_passed_family_reuses_the_compiled_fit():
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(15), 8)
    df = pd.DataFrame({"g": g, "x": rng.normal(size=g.size)})
    df["y"] = rng.binomial(1, 1 / (1 + np.exp(-(0.3 + df.x + rng.normal(0, 1, 15)[g]))))
    jg.fit("y ~ x + (1 | g)", df, "bernoulli")
    before = cache.n_compiled()
    again = jg.fit("y ~ x + (1 | g)", df.assign(y=1 - df.y), get_family("bernoulli"))
    assert cache.n_compiled() == before and again.converged


def test_a_family_under_a_new_name_fits_as_the_one_it_copies():
    """Nothing branches on the name: gaussian registered as 'my_gaussian' is still fitted by
    exact REML, with sigma and the same answer to the last digits."""
    register_family("my_gaussian", glm._gaussian, "identity")
    try:
        df = jg.load_dataset("sleepstudy")
        ours = jg.fit("Reaction ~ Days + (Days | Subject)", df, "my_gaussian")
        ref = jg.fit("Reaction ~ Days + (Days | Subject)", df, "gaussian")
    finally:
        FAMILIES.pop("my_gaussian")
    assert ours.method == "reml" and ours.sigma == pytest.approx(ref.sigma, rel=1e-12)
    assert ours.loglik == pytest.approx(ref.loglik, rel=1e-12)
    assert "t value" in str(ours.summary())


@pytest.mark.parametrize("method", ["nuts", "vi", "map", "NUTS"])
def test_fit_many_and_refit_many_refuse_bayesian_methods(method):
    df = jg.load_dataset("sleepstudy")
    with pytest.raises(ValueError, match="cannot be batched yet"):
        jg.fit_many("Reaction ~ Days + (1 | Subject)", [df, df], method=method)
    model = jg.Model("Reaction ~ Days + (1 | Subject)", df)
    with pytest.raises(ValueError, match="cannot be batched yet"):
        jg.refit_many(model, np.stack([df.Reaction.to_numpy()] * 2), method=method)


def test_empty_data_says_it_has_no_rows():
    empty = jg.load_dataset("sleepstudy").iloc[:0]
    with pytest.raises(ValueError, match="^the data has no rows$"):
        jg.fit("Reaction ~ Days + (1 | Subject)", empty)


def test_density_and_predict_share_one_linear_predictor():
    """predict(type='link') at the fit equals the eta inside the log-density at the fitted
    parameters (the same function computes both)."""
    df = jg.load_dataset("cbpp")
    model = jg.Model("cbind(incidence, size - incidence) ~ period + (1 | herd)", df,
                     "binomial", categorical=["period"])
    fit = model.fit()
    theta = fit.optinfo["x"][:model.structure.n_theta]      # the optimizer's own signs
    eta = spherical_predictor(model.structure, model.arrays, jnp.asarray(fit.fixef.to_numpy()),
                              jnp.asarray(theta), jnp.asarray(fit.optinfo["u"]))
    np.testing.assert_allclose(fit.predict(type="link").to_numpy(), np.asarray(eta),
                               rtol=1e-12, atol=1e-12)
    # new data with the training rows give the same numbers
    np.testing.assert_allclose(fit.predict(df, type="link").to_numpy(), np.asarray(eta),
                               rtol=1e-12, atol=1e-12)
