"""Profile intervals at the edges (issue 22): an SD whose interval reaches 0, singular LMM and
GLMM fits, a large intercept, a correlation reaching +1, an AGQ fit, against lme4's
``confint(profile(m))`` from tight fits
(``scripts/profile_reference.R`` -> ``tests/data/profile_reference.json``); and, over random
small designs, every interval holds its estimate."""
import dataclasses
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxglmm as jg
from jaxglmm.fit import cache
from jaxglmm.inference.profile import profile_intervals

DATA = Path(__file__).parent / "data"
REF = json.loads((DATA / "profile_reference.json").read_text())


def jg_name(lme4: str) -> str:
    """lme4's row names (``sd_(Intercept)|g``, ``(Intercept)``, ``period2``) as jaxglmm's."""
    lme4 = lme4.replace("(Intercept)", "Intercept")
    m = re.fullmatch(r"sd_(.+)\|(.+)", lme4)
    if m:
        return f"sd_{m.group(2)}__{m.group(1)}"
    m = re.fullmatch(r"cor_(.+)\.(.+)\|(.+)", lme4)
    if m:
        return f"cor_{m.group(3)}__{m.group(2)}__{m.group(1)}"
    if lme4 == "Intercept":
        return "Intercept"
    m = re.fullmatch(r"period(\d)", lme4)
    return f"period[{m.group(1)}]" if m else lme4


def fit_case(case: str):
    r = REF[case]
    data = jg.load_dataset("cbpp") if r["data"] == "cbpp" else pd.read_csv(DATA / r["data"])
    opts = {"agq_points": r["extra"]["agq_points"]} if r["method"] == "agq" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # the singular fit's warning
        return jg.Model(r["formula"], data, r["family"]).fit(r["method"], **opts)


def check_against_lme4(case: str, ci: pd.DataFrame):
    r = REF[case]
    for name, lo, hi in zip(r["rows"], r["lower"], r["upper"]):
        got = ci.loc[jg_name(name)].to_numpy(float)
        for g, want in zip(got, (lo, hi)):
            if name.startswith(("sd_", "cor_")) and want in (0, 1, -1):
                assert g == want, (name, got)       # lme4's boundary end, exactly
            else:
                np.testing.assert_allclose(g, want, rtol=1e-3, err_msg=name)
        est = ci.attrs["estimates"][jg_name(name)]
        assert got[0] <= est <= got[1]


@pytest.fixture(scope="module")
def pastes():
    fit = fit_case("pastes_ml")
    return fit, fit.confint("profile")


def test_sd_whose_interval_reaches_zero(pastes):
    fit, ci = pastes
    check_against_lme4("pastes_ml", ci)
    assert ci.loc["sd_batch__Intercept", "lower"] == 0.0
    # the profile was followed to the boundary: SD = 0 is one of its points
    x, zeta = ci.attrs["profiles"]["sd_batch__Intercept"]
    assert x[0] == 0.0 and -1.96 < zeta[0] < 0


def test_profile_programs_are_cached(pastes):
    """A second profile of same-shape data compiles nothing (the data are arguments)."""
    fit, _ = pastes
    d = pd.read_csv(DATA / "profile_pastes.csv")
    d["strength"] = d["strength"] + np.random.default_rng(1).normal(0, 0.3, len(d))
    other = jg.Model(REF["pastes_ml"]["formula"], d).fit("ml")
    before = cache.n_compiled()
    ci = other.confint("profile", parm="theta_")
    assert cache.n_compiled() == before
    est = ci.attrs["estimates"][ci.index]
    assert (ci["lower"] <= est).all() and (est <= ci["upper"]).all()


@pytest.mark.parametrize("case, sd", [("dyestuff2_ml", "sd_Batch__Intercept"),
                                      ("pois_singular", "sd_g__Intercept")])
def test_singular_fit(case, sd):
    """An SD estimated at 0 (LMM; Poisson GLMM): the spline had too few points and raised."""
    fit = fit_case(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ci = fit.confint("profile")
    check_against_lme4(case, ci)
    assert ci.loc[sd, "lower"] == 0.0


def test_large_intercept():
    """|beta| about 754: exp() of it in an untaken branch overflowed, and the SVD failed."""
    fit = fit_case("sleep_big_ml")
    assert abs(fit.fixef["Intercept"]) > 700
    check_against_lme4("sleep_big_ml", fit.confint("profile"))


def test_correlation_reaching_one():
    fit = fit_case("sleep6_cor_ml")
    ci = fit.confint("profile")
    check_against_lme4("sleep6_cor_ml", ci)
    assert ci.loc["cor_Subject__Intercept__Days", "upper"] == 1.0


@pytest.mark.slow
def test_agq_fit_profiles_its_own_objective():
    fit = fit_case("cbpp_agq9")
    ci = fit.confint("profile")
    check_against_lme4("cbpp_agq9", ci)


def test_methods_it_cannot_profile_are_refused(pastes):
    fit, _ = pastes
    with pytest.raises(ValueError, match="cannot profile method 'nuts'"):
        profile_intervals(dataclasses.replace(fit, method="nuts"), 0.95, ["sigma"])


@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), sd_g=st.sampled_from([0.0, 0.3, 1.5]))
def test_every_interval_holds_its_estimate(seed, sd_g):
    """Random small designs (one shape: one compile), some with no group variation at all."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(6), 5)
    x = rng.normal(size=g.size)
    y = 2.0 + 0.5 * x + sd_g * rng.normal(size=6)[g] + rng.normal(size=g.size)
    d = pd.DataFrame({"y": y, "x": x, "g": [f"g{i}" for i in g]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = jg.Model("y ~ x + (1 | g)", d).fit("ml")
        ci = fit.confint("profile")
    est = ci.attrs["estimates"]
    for name, (lo, hi) in ci.iterrows():
        assert np.isfinite(lo) and np.isfinite(hi), name
        assert lo <= est[name] <= hi, (name, lo, est[name], hi)
    assert ci.loc["sd_g__Intercept", "lower"] >= 0.0
