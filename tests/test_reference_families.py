"""The generalized families against their R references: glmmTMB's nbinom2 and
ordinal::clmm's cumulative logit (reference README tolerances)."""
import numpy as np
import pytest

import jaxglmm as jg
from reference_cases import load_reference
from test_reference import close


@pytest.fixture(scope="module")
def negbin():
    ref = load_reference("grouseticks_negbinomial")
    return jg.fit(ref["formula"], jg.load_dataset("grouseticks"), family="negbinomial"), ref


@pytest.fixture(scope="module")
def wine():
    ref = load_reference("wine_cumulative")
    return jg.fit(ref["formula"], jg.load_dataset("wine"), family="cumulative"), ref


NB_NAMES = {"(Intercept)": "Intercept", "YEAR96": "YEAR[96]", "YEAR97": "YEAR[97]",
            "cHEIGHT": "cHEIGHT"}


def test_negbinomial_matches_glmmtmb(negbin):
    fit, ref = negbin
    assert fit.converged, fit.messages
    for r_name, ours in NB_NAMES.items():
        assert close(fit.fixef[ours], ref["fixef"][r_name], 1e-3), r_name
        assert close(fit.fixef_se[ours], ref["fixef_se"][r_name], 1e-3), r_name
    assert close(float(fit.family_params["shape"]), ref["dispersion"], 1e-3)
    sd = fit.varcorr.set_index("group").sd_or_cor["LOCATION"]
    assert close(sd, ref["re_sd"]["LOCATION"]["(Intercept)"], 1e-3)
    assert fit.loglik >= ref["logLik"] - 1e-4
    assert abs(fit.loglik - ref["logLik"]) < 1e-3
    assert fit.df == ref["df"]


def test_cumulative_matches_clmm(wine):
    fit, ref = wine
    assert fit.converged, fit.messages
    assert list(fit.fixef.index) == ["temp[warm]", "contact[yes]"]   # no intercept
    for r_name, ours in [("tempwarm", "temp[warm]"), ("contactyes", "contact[yes]")]:
        assert close(fit.fixef[ours], ref["beta"][r_name], 1e-3)
        assert close(fit.fixef_se[ours], ref["se"][r_name], 1e-3)
    np.testing.assert_allclose(fit.family_params["thresholds"], list(ref["thresholds"].values()),
                               rtol=1e-3, atol=1e-4)
    # threshold standard errors: clmm's, by the delta method on the outer Hessian
    np.testing.assert_allclose(fit.family_params_se["thresholds"],
                               [ref["se"][k] for k in ref["thresholds"]], rtol=1e-3)
    assert "Std. Error 0.6824" in str(fit.summary())
    sd = fit.varcorr.set_index("group").sd_or_cor["judge"]
    assert close(sd, ref["re_sd"]["judge"], 1e-3)
    assert fit.loglik >= ref["logLik"] - 1e-4
    assert fit.df == ref["df"]


def test_cumulative_predictions_are_probabilities_and_the_expected_label(wine):
    """brms's conventions: type="response" gives the category probabilities (one column per
    level), type="mean" the expected rating on the labels' own scale (1 to 5)."""
    fit, _ = wine
    eta = fit.predict(type="link").to_numpy()
    th = fit.family_params["thresholds"]
    cdf = 1 / (1 + np.exp(-(th[None, :] - eta[:, None])))
    probs = np.diff(np.concatenate([np.zeros((len(eta), 1)), cdf, np.ones((len(eta), 1))], axis=1), axis=1)
    np.testing.assert_allclose(fit.predict(type="response").to_numpy(), probs, rtol=1e-10)
    expected_label = probs @ np.arange(1, probs.shape[1] + 1)     # the labels "1".."5"
    np.testing.assert_allclose(fit.predict(type="mean"), expected_label, rtol=1e-10)
