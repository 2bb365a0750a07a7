"""lme4's vcov, fitted values and residuals (issue 13's basics), against lme4 fits with tight
tolerances (scripts/residuals_reference.R -> tests/data/residuals_reference.json)."""
import json
from pathlib import Path

import numpy as np
import pytest

import jaxglmm as jg
from reference_cases import r_name

REF = json.loads((Path(__file__).parent / "data" / "residuals_reference.json").read_text())
CASES = {
    "sleepstudy_reml": ("Reaction ~ Days + (Days | Subject)", "sleepstudy", "gaussian", "reml"),
    "sleepstudy_ml": ("Reaction ~ Days + (Days | Subject)", "sleepstudy", "gaussian", "ml"),
    "cbpp_laplace": ("cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbpp",
                     "binomial", "laplace"),
}


@pytest.fixture(scope="module")
def fits(shared_fit):
    return {case: shared_fit(f, d, fam, method) for case, (f, d, fam, method) in CASES.items()}


def rel(ours, theirs) -> float:
    """max |ours - theirs| relative to the largest |theirs| (elementwise relative errors of
    residuals that cross zero say nothing)."""
    ours, theirs = np.asarray(ours, float), np.asarray(theirs, float)
    assert ours.shape == theirs.shape
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


@pytest.mark.parametrize("case", list(CASES))
def test_vcov_matches_lme4(fits, case):
    fit, ref = fits[case], REF[case]
    v = fit.vcov()
    names = [r_name(n, ("period",)) for n in ref["vcov_names"]]
    assert list(v.index) == list(v.columns) == names
    # lme4's GLMM covariance comes from its own finite-difference Hessian (deriv12), good
    # to a few 1e-6; the LMM's is sigma^2 (R_X'R_X)^-1 at the optimum
    assert rel(v.to_numpy(), ref["vcov"]) < (5e-6 if case.startswith("cbpp") else 1e-6)
    v.iloc[0, 0] = -1.0                         # a copy: the fit is unchanged
    assert fit.vcov().iloc[0, 0] > 0


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", ["fitted", "response", "pearson", "deviance"])
def test_fitted_and_residuals_match_lme4(fits, case, kind):
    fit, ref = fits[case], REF[case]
    ours = fit.fitted() if kind == "fitted" else fit.residuals(kind)
    assert len(ours) == fit.nobs
    assert rel(ours, ref[kind]) < 1e-6, kind


@pytest.mark.parametrize("case", list(CASES))
def test_summary_blocks_match_lme4(fits, case):
    fit, ref = fits[case], REF[case]
    s = fit.summary()
    np.testing.assert_allclose(s.residuals.to_numpy(), ref["scaled_quantiles"], rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(s.correlation.to_numpy(), ref["fixef_correlation"], atol=1e-6)


def test_gaussian_residual_types_are_lme4s(fits):
    """lmer's Pearson and deviance residuals are its response residuals (weights 1)."""
    fit = fits["sleepstudy_reml"]
    r = fit.residuals("response")
    np.testing.assert_allclose(fit.residuals("pearson"), r, rtol=1e-12)
    np.testing.assert_allclose(fit.residuals("deviance"), r, rtol=1e-12)
    np.testing.assert_allclose(r + fit.fitted(), jg.load_dataset("sleepstudy")["Reaction"],
                               rtol=1e-12)


def test_residual_type_errors(fits):
    with pytest.raises(ValueError, match="type must be one of"):
        fits["cbpp_laplace"].residuals("working-ish")


def test_deviance_residuals_refused_where_r_has_none():
    df = jg.load_dataset("sleepstudy").assign(y=lambda d: d.Reaction / 100.0)
    fit = jg.Model("y ~ Days + (1 | Subject)", df, "student").fit("laplace")
    with pytest.raises(ValueError, match="deviance residuals are not defined for the student"):
        fit.residuals("deviance")
    assert np.all(np.isfinite(fit.residuals("pearson")))


def test_fitted_refused_for_categorical_responses():
    wine = jg.load_dataset("wine")
    fit = jg.Model("rating ~ temp + contact + (1 | judge)", wine, "cumulative").fit("laplace")
    with pytest.raises(ValueError, match="fitted\\(\\) needs one mean per row"):
        fit.fitted()
