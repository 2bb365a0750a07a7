"""The fit API: method checks, bad input, the result record, summary, prediction, simulation."""
import json

import numpy as np
import pandas as pd
import pytest

import jaxglmm as jg


@pytest.fixture(scope="module")
def small_binary():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(12), 15)
    x = rng.normal(size=g.size)
    y = rng.binomial(1, 1 / (1 + np.exp(-(0.3 + 0.8 * x + rng.normal(0, 0.7, 12)[g]))))
    return pd.DataFrame({"y": y, "x": x, "g": [f"s{k:02d}" for k in g]})


@pytest.mark.parametrize("family,response,message", [
    ("poisson", lambda n: -(np.arange(n) % 4) - 1.0, "negative"),
    ("poisson", lambda n: np.arange(n) % 4 + 0.5, "whole"),
    ("bernoulli", lambda n: 2.0 * (np.arange(n) % 2), "0/1"),
])
def test_response_outside_support_is_an_error(small_binary, family, response, message):
    df = small_binary.assign(y=response(len(small_binary)))
    with pytest.raises(ValueError, match=message):
        jg.Model("y ~ x + (1 | g)", df, family)


def test_successes_above_trials_is_an_error(small_binary):
    df = small_binary.assign(s=3, n=2)
    with pytest.raises(ValueError, match="exceed trials"):
        jg.Model("s | trials(n) ~ x + (1 | g)", df, "binomial")


@pytest.mark.parametrize("method,kwargs,exc,message", [
    ("reml", {}, ValueError, "gaussian"),
    ("bogus", {}, ValueError, "unknown method"),
    ("map", {"chains": 2}, ValueError, "unknown option"),
    ("laplace", {"chains": 2}, ValueError, "unknown option"),
])
def test_method_errors(small_binary, method, kwargs, exc, message):
    model = jg.Model("y ~ x + (1 | g)", small_binary, "bernoulli")
    with pytest.raises(exc, match=message):
        model.fit(method, **kwargs)


def test_agq_needs_one_scalar_term(small_binary):
    model = jg.Model("y ~ x + (1 + x | g)", small_binary, "bernoulli")
    with pytest.raises(ValueError, match="single grouping factor"):
        model.fit("agq", agq_points=5)


def test_no_random_effects_is_an_error(small_binary):
    with pytest.raises(ValueError, match="random-effects"):
        jg.Model("y ~ x", small_binary, "bernoulli")


def test_fit_json_record_follows_interface(small_binary):
    fit = jg.fit("y ~ x + (1 | g)", small_binary, family="bernoulli")
    rec = json.loads(json.dumps(fit.to_dict()))
    for key in ("formula", "family", "link", "method", "nobs", "fixef", "fixef_se", "varcorr",
                "sigma", "family_params", "loglik", "aic", "bic", "converged", "messages",
                "seconds"):
        assert key in rec
    assert rec["method"] == "laplace" and rec["link"] == "logit" and rec["sigma"] is None
    assert rec["varcorr"] == [{"group": "g", "var1": "Intercept", "var2": None,
                               "sd_or_cor": pytest.approx(fit.varcorr.sd_or_cor.iloc[0])}]
    assert rec["aic"] == pytest.approx(-2 * rec["loglik"] + 2 * 3)


def test_summary_reads_like_lme4(reference_fit):
    fit, _ = reference_fit("cbpp_laplace")
    text = str(fit.summary())
    for piece in ["Generalized linear mixed model fit by maximum likelihood (Laplace Approximation)",
                  "Family: binomial  ( logit )", "Random effects:", "herd", "Number of obs: 56",
                  "Fixed effects:", "period[2]", "Pr(>|z|)", "AIC", "logLik"]:
        assert piece in text, piece
    summary = fit.summary()
    assert summary.coefficients.loc["Intercept", "Estimate"] == fit.fixef["Intercept"]


def test_predict_matches_fitted_and_handles_new_levels(reference_fit):
    fit, _ = reference_fit("sleepstudy_reml")
    data = jg.load_dataset("sleepstudy")
    fitted = fit.predict()
    b = fit.ranef["Subject"]
    row = data.iloc[5]
    manual = (fit.fixef["Intercept"] + b.loc[row.Subject, "Intercept"]
              + (fit.fixef["Days"] + b.loc[row.Subject, "Days"]) * row.Days)
    assert fitted.iloc[5] == pytest.approx(manual, rel=1e-10)
    new = pd.DataFrame({"Days": [0.0, 5.0], "Subject": ["308", "new-subject"]})
    pred = fit.predict(new)
    population = fit.predict(new, re_form="~0")
    assert pred.iloc[1] == pytest.approx(population.iloc[1])       # unseen level: b = 0
    assert pred.iloc[0] != pytest.approx(population.iloc[0])
    with pytest.raises(ValueError):
        fit.predict(new, allow_new_levels=False)


def test_predict_response_scale_is_probability(reference_fit):
    fit, _ = reference_fit("cbpp_laplace")
    p = fit.predict(type="response")
    eta = fit.predict(type="link")
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-eta)), rtol=1e-12)


def test_simulate_has_the_fitted_moments(reference_fit):
    fit, _ = reference_fit("sleepstudy_reml")
    sims = fit.simulate(400, seed=3)
    assert sims.shape == (180, 400)
    # marginal SD of a simulated response: sqrt(var(b0 + b1*Days) + sigma^2); Days = 0 rows
    day0 = jg.load_dataset("sleepstudy").Days.to_numpy() == 0
    sd = sims.to_numpy()[day0].std()
    expected = np.sqrt(fit.varcorr.sd_or_cor.iloc[0] ** 2 + fit.sigma ** 2)
    assert abs(sd - expected) / expected < 0.1


def test_simulate_counts_share_one_program(reference_fit):
    """simulate(n) runs the program compiled for n's bucket (the first n keys of a longer
    chain): 300 and 400 simulations share it and draw the same first 300 columns."""
    from jaxglmm.fit import cache
    fit, _ = reference_fit("sleepstudy_reml")
    full = fit.simulate(400, seed=3)
    before = cache.n_compiled()
    part = fit.simulate(300, seed=3)
    assert cache.n_compiled() == before
    assert list(part.columns) == [f"sim_{k}" for k in range(1, 301)]
    pd.testing.assert_frame_equal(part, full.iloc[:, :300])


def test_log_density_is_the_joint_density(small_binary):
    import jax
    model = jg.Model("y ~ x + (1 | g)", small_binary, "bernoulli")
    params = model.init_params()
    params["beta"] = params["beta"] + 0.1
    ld = jax.jit(model.log_density)(params)
    eta = 0.1 + 0.1 * small_binary.x.to_numpy()
    p = 1 / (1 + np.exp(-eta))
    y = small_binary.y.to_numpy()
    expected = np.sum(y * np.log(p) + (1 - y) * np.log1p(-p)) - 0.5 * 12 * np.log(2 * np.pi)
    assert float(ld) == pytest.approx(expected, rel=1e-10)


def test_options_of_other_methods_are_rejected(small_binary):
    model = jg.Model("y ~ x + (1 | g)", small_binary, "bernoulli")
    with pytest.raises(ValueError, match="agq_points"):
        model.fit("laplace", agq_points=5)


@pytest.mark.parametrize("kwargs", [{"categorical": ["nothere"]}, {"levels": {"nothere": ["a"]}}])
def test_factor_options_must_name_data_columns(small_binary, kwargs):
    with pytest.raises(ValueError, match="nothere"):
        jg.Model("y ~ x + (1 | g)", small_binary, "bernoulli", **kwargs)


def test_binomial_proportion_with_weights_is_lme4s_trials():
    # glmer(prop ~ ..., weights = size, family = binomial) is the cbind() model
    df = jg.load_dataset("cbpp").assign(prop=lambda d: d.incidence / d["size"])
    prop = jg.fit("prop ~ period + (1 | herd)", df, family="binomial", weights="size")
    counts = jg.fit("cbind(incidence, size - incidence) ~ period + (1 | herd)", df,
                    family="binomial")
    np.testing.assert_allclose(prop.fixef, counts.fixef, rtol=1e-8)
    assert prop.loglik == pytest.approx(counts.loglik, abs=1e-8)
    with pytest.raises(ValueError, match="whole number of successes"):
        jg.Model("prop ~ period + (1 | herd)", df.assign(w=1.5), "binomial", weights="w")
