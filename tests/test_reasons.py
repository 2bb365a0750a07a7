"""Reasons, not numbers (issue 22): a dataset that cannot identify the model is not fitted
and says why; declared levels that never occur and factor levels seen once are warned of;
``categorical=None`` means none; a string confidence level is refused; ``||`` terms are
named as lme4 names them.  R references: scripts/reasons_reference.R."""
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxglmm as jg
from jaxglmm.fit.convergence import ConvergenceWarning
from jaxglmm.inference.params import variance_names
from jaxglmm.many.plan import failures_message

DATA = Path(__file__).parent / "data"
REF = json.loads((DATA / "reasons_reference.json").read_text())
FORMULA = "y ~ x + (1 | g)"
REFUSED = ("one", "rows", "rank")


def r_name(name: str) -> str:
    return "Intercept" if name == "(Intercept)" else name


@pytest.fixture(scope="module")
def long_table():
    return pd.read_csv(DATA / "reasons_many.csv", dtype={"sim": str, "g": str})


@pytest.fixture(scope="module")
def many(long_table):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fits = jg.fit_many(FORMULA, long_table, by="sim", progress=False)
    said = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    return fits, said


def test_datasets_lme4_fits_match_lme4(many):
    fits, _ = many
    for name, ref in REF["many"]["fits"].items():
        assert fits.converged[name], fits.messages[name]
        for r, value in ref["fixef"].items():
            np.testing.assert_allclose(fits.fixef.loc[name, r_name(r)], value, rtol=1e-5)
        np.testing.assert_allclose(fits.loglik[name], ref["logLik"], rtol=1e-7)
        np.testing.assert_allclose(fits.sigma[name], ref["sigma"], rtol=1e-5)


def test_unidentifiable_datasets_are_refused_the_same_way_with_a_reason(many, long_table):
    fits, _ = many
    for name in REFUSED:
        assert not fits.converged[name]
        assert fits.fixef.loc[name].isna().all() and np.isnan(fits.loglik[name])
        assert fits.messages[name].startswith("not fitted: "), fits.messages[name]
        with pytest.raises(ValueError, match="not fitted"):
            fits.result(list(fits.ids).index(name))
    refused = REF["many"]["refused"]
    # lme4's checkNlevels message, word for word, as a fit of that dataset alone gives it
    assert refused["rows"] in fits.messages["rows"]
    assert "single level ('g1')" in fits.messages["one"] and "'g'" in fits.messages["one"]
    assert "rank deficient" in refused["rank"] and "rank deficient" in fits.messages["rank"]
    for name in ("one", "rows"):
        alone = long_table[long_table.sim == name]
        with pytest.raises(ValueError) as err:
            jg.Model(FORMULA, alone)
        assert fits.messages[name] == f"not fitted: {err.value}"


def test_fit_many_warns_once_counting_the_refused(many):
    _, said = many
    assert len(said) == 1, said
    assert said[0].startswith("3 of 6 datasets were not fitted (one, rows, rank)"), said


def test_the_failure_line_counts_non_converged_and_refused_apart():
    ids = ["s1", "s2", "s3", "s4"]
    line = failures_message(ids, [True, False, False, False],
                            ["", "Hessian not positive definite", "not fitted: why", "no usable rows"],
                            "fits.csv")
    assert line == ("1 of 4 datasets did not converge (s2); 2 of 4 datasets were not fitted "
                    "(s3, s4): each message says why; see the 'converged' and 'message' "
                    "columns of fits.csv")
    assert failures_message(ids, [True] * 4, [""] * 4) is None
    many = [str(k) for k in range(30)]
    line = failures_message(many, [False] * 30, [""] * 30)
    assert "30 of 30 datasets did not converge" in line and "10 more" in line


@pytest.fixture(scope="module")
def wine_declared():
    data = jg.load_dataset("wine")
    ref = REF["wine_declared_level"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = jg.fit("rating ~ temp + contact + (1 | judge)", data, family="cumulative",
                     levels={"rating": ref["declared"]})
    return fit, [str(w.message) for w in caught]


@pytest.mark.slow      # a cumulative Laplace fit: about 70 s on two busy cores
def test_a_declared_response_level_that_never_occurs_is_warned_of(wine_declared):
    fit, said = wine_declared
    absent = sorted(set(REF["wine_declared_level"]["declared"])
                    - set(REF["wine_declared_level"]["observed"]))
    hits = [s for s in said if "never takes the declared level" in s]
    assert len(hits) == 1 and str(absent) in hits[0], said
    assert any(str(absent) in m for m in fit.messages)


@pytest.mark.slow
def test_the_absent_level_is_left_out_as_clmm_leaves_it_out(wine_declared):
    fit, _ = wine_declared
    ref = REF["wine_declared_level"]
    assert len(fit.family_params["thresholds"]) == len(ref["threshold_names"])
    np.testing.assert_allclose(fit.family_params["thresholds"], ref["thresholds"],
                               rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose([fit.fixef["temp[warm]"], fit.fixef["contact[yes]"]],
                               [ref["beta"]["tempwarm"], ref["beta"]["contactyes"]], rtol=2e-3)


def test_an_ordered_categorical_response_with_an_unused_category_is_warned_of(long_table):
    data = long_table[long_table.sim == "a"].copy()
    data["r"] = pd.Categorical(pd.qcut(data.y, 3, labels=["lo", "mid", "hi"]).astype(str),
                               categories=["lo", "mid", "top", "hi"], ordered=True)
    model = jg.Model("r ~ x + (1 | g)", data, family="cumulative")
    assert any("['top']" in w and "'r'" in w for w in model.design.warnings)
    assert model.design.response_levels == ("lo", "mid", "hi")


def test_a_predictor_level_seen_once_and_a_declared_absent_one_are_warned_of(long_table):
    data = long_table[long_table.sim == "a"].reset_index(drop=True)
    data["f"] = ["u"] * 20 + ["v"] * 19 + ["w"]
    model = jg.Model("y ~ x + f + (1 | g)", data, levels={"f": ["u", "v", "w", "z"]})
    with warnings.catch_warnings(record=True) as caught:     # the fit says them
        warnings.simplefilter("always")
        fit = model.fit()
    said = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert any("['w']" in s and "one row" in s and "'f'" in s for s in said), said
    assert any("['z']" in s and "never occur" in s for s in said), said
    assert set(model.design.warnings) <= set(fit.messages)
    assert "f[z]" not in model.design.fixef_names and "f[w]" in model.design.fixef_names
    # a factor whose levels all repeat is not warned of
    data["f"] = ["u"] * 20 + ["v"] * 20
    assert not jg.Model("y ~ x + f + (1 | g)", data).design.warnings


def test_categorical_none_means_none_and_one_name_is_one_column(long_table):
    data = long_table[long_table.sim == "a"].assign(k=lambda d: np.arange(len(d)) % 3)
    plain = jg.Model("y ~ x + k + (1 | g)", data)
    assert jg.Model("y ~ x + k + (1 | g)", data, categorical=None).design.fixef_names \
        == plain.design.fixef_names == ("Intercept", "x", "k")
    as_factor = jg.Model("y ~ x + k + (1 | g)", data, categorical="k").design.fixef_names
    assert as_factor == jg.Model("y ~ x + k + (1 | g)", data,
                                 categorical=["k"]).design.fixef_names
    assert as_factor == ("Intercept", "x", "k[1]", "k[2]")
    with pytest.raises(TypeError, match="categorical must be a column name"):
        jg.Model("y ~ x + (1 | g)", data, categorical=5)


def test_a_confidence_level_given_as_text_is_refused(many):
    fits, _ = many
    fit = fits.result(0)
    for level in ("0.95", True):
        with pytest.raises(ValueError, match="level must be a probability") as err:
            fit.confint(level=level)
        assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def uncorrelated(shared_fit):
    return shared_fit("Reaction ~ Days + (Days || Subject)", "sleepstudy", "gaussian", "reml")


def test_double_bar_terms_are_named_as_lme4_names_them(uncorrelated):
    ref = REF["uncorrelated"]
    fit = uncorrelated
    assert list(fit.varcorr["group"]) == ref["grp"]            # Subject, Subject.1, Residual
    np.testing.assert_allclose(fit.varcorr["sd_or_cor"], ref["sdcor"], rtol=1e-5)
    # parameter names take the group of lme4's theta names ("Subject.Days"), brms's style
    expected = [f"sd_{t.split('.', 1)[0]}__{r_name(t.split('.', 1)[1])}"
                for t in ref["theta_names"]]
    assert expected == ["sd_Subject__Intercept", "sd_Subject__Days"]
    names = list(fit.confint().index)
    assert names[2:4] == expected and not any(".1" in n for n in names), names
    # the summary counts the grouping factor once, as lme4's ngrps
    line = next(s for s in str(fit.summary()).splitlines() if s.startswith("Number of obs"))
    assert line.endswith("groups:  " + "; ".join(f"{k}, {v}" for k, v in ref["ngrps"].items()))


def test_repeated_terms_of_one_factor_keep_unique_names(long_table):
    data = long_table[long_table.sim == "a"]
    model = jg.Model("y ~ x + (1 | g) + (1 | g)", data)
    names = variance_names(model.structure, True, {})
    assert names == ["sd_g__Intercept", "sd_g.1__Intercept", "sigma"]
    model = jg.Model("y ~ x + (1 | g) + (0 + x | g)", data)
    assert variance_names(model.structure, True, {}) == ["sd_g__Intercept", "sd_g__x", "sigma"]


def test_fit_many_checks_rank_per_linear_predictor():
    """A parameter formula's own intercept is not confounded with the main one: fit_many
    fits a zero-inflated model with ``dpars={"zi": "~ 1"}`` (each channel's columns need
    full rank only among themselves), and a dataset's result rebuilds its model."""
    rng = np.random.default_rng(7)
    parts = []
    for d in range(2):
        g = np.repeat(np.arange(10), 8)
        x = rng.normal(size=g.size)
        mu = np.exp(0.4 + 0.3 * x + rng.normal(0, 0.5, 10)[g])
        y = rng.poisson(mu) * (rng.random(g.size) > 0.3)
        parts.append(pd.DataFrame({"y": y, "x": x, "g": g.astype(str), "sim": d}))
    long = pd.concat(parts, ignore_index=True)
    kw = dict(family="zero_inflated_poisson", dpars={"zi": "~ 1"})
    fits = jg.fit_many("y ~ x + (1 | g)", long, by="sim", **kw)
    assert fits.converged.all()
    alone = jg.Model("y ~ x + (1 | g)", long[long.sim == 1], **kw).fit()
    assert fits.result(1).loglik == pytest.approx(alone.loglik, abs=1e-6)
