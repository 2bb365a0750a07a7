"""Inference as free functions of a fit (jg.confint(fit), jg.bootstrap(fit, n)...): the same
values as FitResult's one-line conveniences; jaxglmm.results imports on its own; the
influence program is cached by the model's shape, with the data as its arguments."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import jaxglmm as jg
from jaxglmm.fit import cache

SLEEP = "Reaction ~ Days + (Days | Subject)"
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


def _same(a, b):
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    else:
        pd.testing.assert_series_equal(a, b)


def test_results_imports_alone():
    """``import jaxglmm.results`` in a fresh process (it used to raise through the registry
    of inference methods)."""
    code = ("import jaxglmm.results as r; from jaxglmm.results import FitResult; "
            "assert callable(FitResult.confint)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_free_functions_are_exported():
    for name in ("confint", "bootstrap", "profile", "power", "influence", "cooks_distance",
                 "hatvalues", "leave_one_out", "sensitivity", "coef_table", "anova"):
        assert name in jg.__all__ and callable(getattr(jg, name)), name


def test_sleepstudy_free_functions_match_methods(shared_fit):
    fit = shared_fit(SLEEP, "sleepstudy")
    _same(jg.confint(fit), fit.confint())
    _same(jg.confint(fit, "wald", 0.9, parm="beta_"), fit.confint("wald", 0.9, parm="beta_"))
    _same(jg.coef_table(fit, ddf="satterthwaite"), fit.coef_table(ddf="satterthwaite"))
    _same(jg.hatvalues(fit), fit.hatvalues())
    _same(jg.cooks_distance(fit), fit.cooks_distance())
    _same(jg.influence(fit), fit.influence())
    _same(jg.influence(fit, "Subject"), fit.influence("Subject"))
    a = jg.bootstrap(fit, 8, seed=3)
    b = fit.bootstrap(8, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 8
    a = jg.power(fit, "Days", nsim=4, test="wald", seed=2)
    b = fit.power("Days", nsim=4, test="wald", seed=2)
    pd.testing.assert_frame_equal(pd.DataFrame(a), pd.DataFrame(b))
    with pytest.raises(ValueError, match="sensitivity is for MAP fits"):
        jg.sensitivity(fit)


def test_profile_is_confints_profile(shared_fit):
    """jg.profile: the (value, zeta) points confint(method="profile") interpolates, and the
    same intervals."""
    fit = shared_fit(SLEEP, "sleepstudy")
    prof = jg.profile(fit, parm="Days")
    ci = jg.confint(fit, "profile", parm="Days")
    assert list(prof.columns) == ["parameter", "value", "zeta"]
    assert set(prof["parameter"]) == {"Days"}
    assert prof["zeta"].min() < -1.96 and prof["zeta"].max() > 1.96
    np.testing.assert_allclose(prof.attrs["intervals"].loc["Days"].to_numpy(),
                               ci.loc["Days"].to_numpy(), rtol=1e-10)
    values, zeta = ci.attrs["profiles"]["Days"]
    np.testing.assert_allclose(prof["value"], values, rtol=1e-10)
    with pytest.raises(ValueError, match="unknown parameter"):
        jg.profile(fit, parm="nope")


def test_cbpp_free_functions_match_methods(shared_fit):
    fit = shared_fit(CBPP, "cbpp", "binomial", "laplace")
    _same(jg.confint(fit), fit.confint())
    _same(jg.coef_table(fit), fit.coef_table())
    _same(jg.hatvalues(fit), fit.hatvalues())
    _same(jg.cooks_distance(fit), fit.cooks_distance())
    pd.testing.assert_frame_equal(jg.bootstrap(fit, 6, seed=1), fit.bootstrap(6, seed=1))


def test_influence_program_is_reused_for_same_shape_data(shared_fit):
    """A second model of the same shape reuses the compiled influence program (nothing
    compiles), and its data are the program's arguments, not constants of the first: the
    response 2 y + 5 doubles every dfbeta of an LMM and every change in an SD or sigma."""
    fit = shared_fit(SLEEP, "sleepstudy")
    first = jg.influence(fit)
    data = jg.load_dataset("sleepstudy")
    data = data.assign(Reaction=2.0 * data["Reaction"] + 5.0)
    other = jg.Model(SLEEP, data).fit()
    before = cache.n_compiled()
    second = jg.influence(other)
    assert cache.n_compiled() == before
    np.testing.assert_allclose(second.to_numpy(), np.column_stack(
        [2.0 * first[c] if c != "cooks_distance" and not c.startswith("d_cor") else first[c]
         for c in first.columns]), rtol=1e-3, atol=1e-6)
