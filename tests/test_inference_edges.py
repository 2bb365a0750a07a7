"""Inference users expect (issue 22), against lme4 and lmerTest
(scripts/inference_edges_reference.R -> tests/data/inference_edges_reference.json):
anova with refit=False, non-nested and other-link comparisons, rows named by keyword;
residuals(type="working") and scaled=True; Cook's distance of leave-one-group-out refits;
Satterthwaite's df on a crossed LMM of 7,500 rows through the sparse system.  (The implicit
weight gradients against central differences of refits are test_differentiable.py's, in the
one compiled JVP program that checks y, the weights and the offset.)"""
import json
import time
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxglmm as jg
from jaxglmm.core.lmm import lmm_data
from jaxglmm.inference import ddf

DATA = Path(__file__).parent / "data"
REF = json.loads((DATA / "inference_edges_reference.json").read_text())
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


@pytest.fixture(scope="module")
def ss():
    return jg.load_dataset("sleepstudy")


@pytest.fixture(scope="module")
def fm(ss):
    return {"fm0": jg.Model("Reaction ~ Days + (1 | Subject)", ss).fit("reml"),
            "fm1": jg.Model("Reaction ~ Days + (Days | Subject)", ss).fit("reml")}


@pytest.fixture(scope="module")
def cbpp():
    cb = jg.load_dataset("cbpp")
    return {"logit": jg.fit(CBPP, cb, family="binomial", method="laplace"),
            "probit": jg.fit(CBPP, cb, family="binomial", link="probit", method="laplace")}


def _column(ref, key):
    return np.array([np.nan if v is None else v for v in ref[key]], float)


def test_anova_refit_false_compares_reml_fits_as_fitted(fm):
    ref = REF["anova_refit_false"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # no ML refit, no warning
        table = jg.anova(m1=fm["fm1"], m0=fm["fm0"], refit=False)
    assert list(table.index) == ["m0", "m1"]        # by keyword, ordered by npar as lme4
    assert table.attrs["refit"] is False
    assert list(table["npar"]) == ref["npar"]
    for col in ("AIC", "BIC", "logLik", "deviance", "Chisq"):
        np.testing.assert_allclose(table[col], _column(ref, col), rtol=1e-6, err_msg=col)
    np.testing.assert_allclose(table["Pr(>Chisq)"].iloc[1], ref["Pr(>Chisq)"][1], rtol=1e-4)
    assert table["Df"].iloc[1] == ref["Df"][1]


def test_anova_refit_false_refusals(ss, fm):
    ml = jg.Model("Reaction ~ Days + (Days | Subject)", ss).fit("ml")
    with pytest.raises(ValueError, match="not REML fits"):
        jg.anova(fm["fm0"], ml, refit=False)
    other = jg.Model("Reaction ~ 1 + (Days | Subject)", ss).fit("reml")
    with pytest.raises(ValueError, match="different fixed effects"):
        jg.anova(fm["fm1"], other, refit=False)
    with pytest.raises(ValueError, match="either by keyword"):
        jg.anova(a=fm["fm0"], b=fm["fm1"], names=["x", "y"])


def test_anova_non_nested_gives_information_criteria_only(ss):
    ref = REF["anova_non_nested"]
    a = jg.Model("Reaction ~ Days + (1 | Subject)", ss).fit("ml")
    b = jg.Model("Reaction ~ 1 + (Days | Subject)", ss).fit("ml")
    with pytest.warns(UserWarning, match="a is not nested in b"):
        table = jg.anova(a=a, b=b)
    assert list(table.index) == ["a", "b"]
    for col in ("AIC", "BIC", "logLik", "deviance"):
        np.testing.assert_allclose(table[col], ref[col], rtol=1e-6, err_msg=col)
    assert table[["Chisq", "Df", "Pr(>Chisq)"]].isna().all().all()   # lme4 tests; we do not
    assert "not nested" in table.attrs["notes"]["b"]


def test_anova_other_links_compared_as_non_nested(cbpp):
    ref = REF["anova_links"]
    with pytest.warns(UserWarning, match="different families or links"):
        table = jg.anova(logit=cbpp["logit"], probit=cbpp["probit"])
    for col in ("AIC", "BIC", "logLik"):
        got = table.loc[["logit", "probit"], col].to_numpy(float)
        np.testing.assert_allclose(got, ref[col], rtol=2e-6, err_msg=col)
    assert table["Chisq"].isna().all()


@pytest.mark.parametrize("kind", ["working", "response", "pearson", "deviance"])
@pytest.mark.parametrize("scaled", [False, True])
def test_residual_types_match_lme4(fm, cbpp, kind, scaled):
    key = kind + ("_scaled" if scaled else "")
    for fit, ref, tol in ((fm["fm1"], REF["residuals_ss"], 1e-6),
                          (cbpp["logit"], REF["residuals_cbpp"], 1e-6)):
        got = fit.residuals(kind, scaled=scaled).to_numpy(float)
        want = np.array(ref[key])
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.max(np.abs(want)))


def test_default_residual_type_is_lme4s(fm, cbpp):
    np.testing.assert_allclose(fm["fm1"].residuals(), REF["residuals_ss"]["response"],
                               rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(cbpp["logit"].residuals(), REF["residuals_cbpp"]["deviance"],
                               rtol=1e-6, atol=1e-7)


def test_working_residuals_are_over_dmu_deta(cbpp):
    fit = cbpp["logit"]
    mu = fit.fitted().to_numpy(float)
    np.testing.assert_allclose(fit.residuals("working") * mu * (1 - mu),
                               fit.residuals("response"), rtol=1e-12)


@pytest.mark.slow
def test_scaled_refused_where_sigma_is_not_defined():
    gt = jg.load_dataset("grouseticks")
    fit = jg.fit("TICKS ~ cHEIGHT + (1 | LOCATION)", gt, family="negbinomial",
                 method="laplace")
    with pytest.raises(ValueError, match="scaled=True divides by lme4's sigma"):
        fit.residuals("pearson", scaled=True)


def test_group_cooks_distance_from_refits_matches_lme4(fm):
    ref = REF["cooks_subject"]
    fit = fm["fm1"]
    cooks = fit.cooks_distance("Subject")
    assert list(cooks.index) == ref["deleted"]
    np.testing.assert_allclose(cooks, ref["cooks_distance"], rtol=1e-5)
    np.testing.assert_allclose(cooks, ref["lme4_cooks_distance"], rtol=1e-4)
    loo = fit.leave_one_out("Subject")
    np.testing.assert_allclose(loo["cooks_distance"], cooks, rtol=1e-12)
    np.testing.assert_allclose(loo[list(fit.fixef.index)].to_numpy(),
                               np.array(ref["fixed_effects_deleted"]), rtol=1e-6)
    with pytest.raises(ValueError, match="from exact leave-one-level-out refits"):
        fit.cooks_distance("Subject", exact=False)


@pytest.fixture(scope="module")
def crossed():
    df = pd.read_csv(DATA / "crossed_7500.csv.gz")
    return jg.Model("y ~ x + (1 | a) + (1 | b)", df).fit("reml")


@pytest.mark.slow
def test_sparse_satterthwaite_equals_dense_on_penicillin():
    fit = jg.Model("diameter ~ 1 + (1 | plate) + (1 | sample)",
                   jg.load_dataset("penicillin")).fit("reml")
    s, p = fit.problem.structure, 1
    phi = jnp.asarray(np.append(fit.theta, fit.sigma))
    L = jnp.eye(1)
    sparse = ddf._satterthwaite(*ddf._phi_functions(s, p, ddf._lmm_data(fit.problem),
                                                    True), phi, L)
    dense = ddf._satterthwaite(*ddf._phi_functions(s, p, lmm_data(s, fit.problem.arrays), True),
                               phi, L)
    np.testing.assert_allclose(np.asarray(sparse), np.asarray(dense), rtol=1e-10)


@pytest.mark.slow
def test_satterthwaite_crossed_7500_matches_lmertest(crossed):
    ref = REF["satterthwaite_crossed"]
    fit = crossed
    np.testing.assert_allclose(fit.theta, ref["theta"], rtol=1e-5)
    table = fit.coef_table(ddf="satterthwaite")
    np.testing.assert_allclose(table["Std. Error"], ref["se"], rtol=1e-6)
    np.testing.assert_allclose(table["df"], ref["df"], rtol=1e-5)
    t0 = time.perf_counter()
    fit.coef_table(ddf="satterthwaite")
    warm = time.perf_counter() - t0
    # warm (compiled) cost well under lmerTest's own Hessian and Jacobian
    assert warm < 10 * ref["seconds"]["lmerTest_as_lmerModLmerTest"], warm
