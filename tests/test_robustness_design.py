"""Robustness of the design stage: data lme4 refuses, R's level order, duplicated columns,
binomial rows with zero trials, dotted column names.

lme4's and R's values are in tests/data/robustness_design.json, written by
scripts/robustness_design_reference.R (the tests never call R).
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxglmm as jg
from jaxglmm.design import build_design
from jaxglmm.design.matrices import factor_levels
from jaxglmm.families import get_family

REF = json.loads((Path(__file__).parent / "data" / "robustness_design.json").read_text())
CATEGORICAL = get_family("categorical")
CUMULATIVE = get_family("cumulative")


# ----------------------------------------------------------------------------- 1. identifiability
IDENT = REF["identifiability"]


@pytest.fixture(scope="module")
def ident_data():
    return pd.DataFrame(IDENT["data"])


@pytest.mark.parametrize("case", IDENT["cases"], ids=lambda c: c["formula"])
def test_unidentifiable_designs_are_refused_as_lme4_refuses_them(ident_data, case):
    # lmer (a residual variance: allow.n = FALSE) and glmer (allow.n = TRUE): checkNlevels
    # and checkZdims, with lme4's own messages
    # (a Model refuses; build_design builds any design, for inspection)
    family = get_family(case["family"])
    if case["error"] is None:
        jg.Model(case["formula"], ident_data, family)
    else:
        build_design(case["formula"], ident_data, family)
        with pytest.raises(ValueError) as err:
            jg.Model(case["formula"], ident_data, family)
        assert str(err.value) == case["error"]


def test_observation_level_effect_in_a_gaussian_fit_is_an_error():
    # this used to "converge" with theta stuck at its start
    d = jg.load_dataset("sleepstudy")
    with pytest.raises(ValueError, match=r"must be < number of observations \(problems: gid\)"):
        jg.fit("Reaction ~ Days + (1 | gid)", d.assign(gid=np.arange(len(d))))


def test_identifiability_counts_the_rows_left_after_missing_values(ident_data):
    d = ident_data.copy()
    d.loc[1, "gid"] = "o01"          # 11 levels in 12 rows: lmer accepts it
    jg.Model("y ~ x + (1 | gid)", d)
    d.loc[0, "x"] = np.nan           # 11 complete rows, still 11 levels: refused
    with pytest.raises(ValueError, match=r"\(problems: gid\)"):
        jg.Model("y ~ x + (1 | gid)", d)


def test_single_level_check_is_kept(ident_data):
    with pytest.raises(ValueError, match="single level"):
        build_design("y ~ x + (1 | one)", ident_data.assign(one="a"))


# ----------------------------------------------------------------------------- 4. level order
@pytest.mark.parametrize("name", sorted(REF["levels"]))
def test_string_levels_sort_as_r_factor(name):
    case = REF["levels"][name]
    assert list(factor_levels(pd.Series(case["values"], name="f"))) == case["levels"]


def test_reference_level_is_rs_for_mixed_case_strings():
    df = pd.DataFrame({"y": [1.0, 2, 3, 4, 5, 6], "f": ["cherry", "Banana", "apple"] * 2,
                       "g": ["Gb", "ga", "gB", "Ga", "ga", "gb"]})
    d = build_design("y ~ f + (1 | g)", df)
    assert d.fixef_names == ("Intercept", "f[Banana]", "f[cherry]")
    assert d.terms[0].levels == ("ga", "Ga", "gb", "gB", "Gb")


def test_string_responses_are_ordered_as_r_factor():
    digits = REF["levels"]["digits"]
    df = pd.DataFrame({"r": digits["values"], "x": np.arange(8.0)})
    assert list(build_design("r ~ x", df, CATEGORICAL).response_levels) == digits["levels"]
    assert list(build_design("r ~ x", df, CUMULATIVE).response_levels) == digits["levels"]
    case = REF["levels"]["case"]
    df = pd.DataFrame({"r": case["values"] * 2, "x": np.arange(6.0)})
    assert list(build_design("r ~ x", df, CATEGORICAL).response_levels) == case["levels"]


def test_numeric_and_categorical_columns_keep_their_order():
    df = pd.DataFrame({"y": np.arange(6.0), "k": [10, 9, 1, 10, 9, 1],
                       "c": pd.Categorical(list("bBaBab"), categories=["b", "a", "B"])})
    d = build_design("y ~ k + c", df, categorical=["k"])
    assert d.fixef_names == ("Intercept", "k[9]", "k[10]", "c[a]", "c[B]")


# ----------------------------------------------------------------------------- 5. duplicated columns
@pytest.fixture
def small():
    return pd.DataFrame({"y": [1.0, 2, 3, 5, 4, 7], "x": [1.0, 2, 3, 4, 5, 6],
                         "w": [1.0, 2, 1, 2, 1, 2], "f": list("pqpqrr"), "g": list("aabbcc"),
                         "z": [0.0] * 6})


@pytest.mark.parametrize("formula,kwargs,column", [
    ("y ~ x + (1 | g)", {}, "x"),
    ("y ~ log(x) + (1 | g)", {}, "x"),
    ("y ~ 1 + (1 | g)", {}, "g"),
    ("y ~ 1 + (1 | g)", {}, "y"),
    ("y ~ 1 + (1 | g)", {"weights": "w"}, "w"),
    ("y ~ 1 + (1 | g)", {"categorical": ["z"]}, "z"),
    ("y ~ 1 + (1 | g)", {"levels": {"f": ["r", "q", "p"]}}, "f"),
])
def test_a_used_column_appearing_twice_is_an_error(small, formula, kwargs, column):
    data = pd.concat([small, small[[column]]], axis=1)
    with pytest.raises(ValueError, match=f"column '{column}' appears twice in the data"):
        build_design(formula, data, **kwargs)


def test_an_unused_duplicated_column_is_harmless(small):
    data = pd.concat([small, small[["z"]]], axis=1)
    d = build_design("y ~ x + (1 | g)", data)
    assert d.fixef_names == ("Intercept", "x")


def test_duplicated_column_in_new_data_is_an_error(small):
    d = build_design("y ~ x + (1 | g)", small)
    with pytest.raises(ValueError, match="column 'x' appears twice"):
        d.new_data(pd.concat([small, small[["x"]]], axis=1))


# ----------------------------------------------------------------------------- 9. zero trials
ZERO = REF["zero_trials"]
FORMULA = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


@pytest.fixture(scope="module")
def zero_fits():
    cbpp = jg.load_dataset("cbpp")
    rows = ZERO["zero_rows_0based"]
    zeroed = cbpp.copy()
    zeroed.loc[rows, ["incidence", "size"]] = 0
    return (jg.fit(FORMULA, zeroed, family="binomial"),
            jg.fit(FORMULA, cbpp.drop(index=rows), family="binomial"), zeroed)


def test_zero_trial_rows_add_nothing_to_the_fit(zero_fits):
    with_zero, without, _ = zero_fits
    assert with_zero.converged and without.converged
    assert with_zero.nobs == ZERO["with_zero"]["nobs"]
    np.testing.assert_allclose(with_zero.fixef, without.fixef, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(with_zero.theta, without.theta, rtol=1e-8, atol=1e-8)
    assert with_zero.loglik == pytest.approx(without.loglik, abs=1e-8)
    # the same rows as proportions of zero weights (lme4's prop ~ ..., weights = size)
    zeroed = zero_fits[2]
    prop = jg.fit("prop ~ period + (1 | herd)",
                  zeroed.assign(prop=np.where(zeroed["size"] > 0,
                                              zeroed.incidence / zeroed["size"].clip(1), 0.0)),
                  family="binomial", weights="size")
    np.testing.assert_allclose(prop.fixef, without.fixef, rtol=1e-8, atol=1e-8)
    assert prop.loglik == pytest.approx(without.loglik, abs=1e-8)


def test_zero_trial_fit_matches_lme4(zero_fits):
    with_zero = zero_fits[0]
    ref = ZERO["with_zero"]
    np.testing.assert_allclose(with_zero.fixef.to_numpy(), list(ref["fixef"].values()),
                               atol=2e-4)
    np.testing.assert_allclose(with_zero.theta, np.atleast_1d(ref["theta"]), atol=2e-4)
    assert with_zero.loglik == pytest.approx(ref["logLik"], abs=1e-5)


def test_zero_trial_rows_are_noted_and_negative_trials_refused(zero_fits):
    zeroed = zero_fits[2]
    d = build_design(FORMULA, zeroed, get_family("binomial"))
    assert "2 rows with zero trials add nothing to the likelihood" in d.messages
    assert np.all(np.isfinite(get_family("binomial").fisher_weight(
        np.zeros(len(d.y)), d.trials, {})))
    with pytest.raises(ValueError, match="trials must be non-negative"):
        jg.Model("s | trials(n) ~ 1 + (1 | g)",
                 pd.DataFrame({"s": [0, 1, 0, 2], "n": [-1, 2, 3, 4], "g": list("aabb")}),
                 "binomial")


# ----------------------------------------------------------------------------- 13. dotted names
@pytest.fixture
def dotted():
    rng = np.random.default_rng(3)
    n = 12
    return pd.DataFrame({
        "y.val": rng.normal(size=n) + 3, "x.pos": rng.uniform(0.5, 3, size=n),
        "n.obs": rng.integers(1, 9, size=n).astype(float), "g.id": list("abcd") * 3,
        "h.k": list("uv") * 6, "s.a": [1.0, 0, 2, 1] * 3, "x pos": np.arange(1.0, n + 1),
        "z.w": rng.normal(size=n)})


def _col(design, name):
    return design.X[:, design.fixef_names.index(name)]


def test_dotted_names_inside_math_functions_and_I(dotted):
    x = dotted["x.pos"].to_numpy()
    d = build_design("y.val ~ log(x.pos) + I(`x.pos`^2) + sqrt(x.pos + 1) + np.exp(x.pos)"
                     " + (1 | g.id)", dotted)
    assert d.fixef_names == ("Intercept", "log(x.pos)", "I(x.pos^2)", "sqrt(x.pos + 1)",
                             "np.exp(x.pos)")
    np.testing.assert_allclose(_col(d, "log(x.pos)"), np.log(x))
    np.testing.assert_allclose(_col(d, "I(x.pos^2)"), x ** 2)
    np.testing.assert_allclose(_col(d, "sqrt(x.pos + 1)"), np.sqrt(x + 1))
    np.testing.assert_allclose(_col(d, "np.exp(x.pos)"), np.exp(x))
    d2 = build_design("y.val ~ log(x.pos, 2)", dotted)                # R's log(x, base)
    np.testing.assert_allclose(_col(d2, "log(x.pos, 2)"), np.log2(x))
    np.testing.assert_allclose(d.y, dotted["y.val"])
    assert d.terms[0].levels == ("a", "b", "c", "d")


def test_non_syntactic_names_in_calls_keep_their_backticks(dotted):
    d = build_design("y.val ~ log(`x pos`) + I(`x pos`^2)", dotted)
    assert d.fixef_names == ("Intercept", "log(`x pos`)", "I(`x pos`^2)")
    np.testing.assert_allclose(_col(d, "I(`x pos`^2)"), dotted["x pos"] ** 2)


def test_dotted_names_in_scale_poly_offset_and_response(dotted):
    x = dotted["x.pos"].to_numpy()
    z = dotted["z.w"].to_numpy()
    d = build_design("log(y.val) ~ scale(z.w) + poly(`x.pos`, 2, raw = TRUE)"
                     " + offset(log(n.obs)) + (1 | g.id)", dotted)
    np.testing.assert_allclose(d.y, np.log(dotted["y.val"]))
    np.testing.assert_allclose(_col(d, "scale(z.w)"), (z - z.mean()) / z.std(ddof=1))
    raw = [c for c in d.fixef_names if c.startswith("poly(")]
    np.testing.assert_allclose(d.X[:, [d.fixef_names.index(c) for c in raw]],
                               np.column_stack([x, x ** 2]))
    np.testing.assert_allclose(d.offset, np.log(dotted["n.obs"]))
    plain = build_design("y ~ poly(x, 2)", dotted.rename(columns={"x.pos": "x", "y.val": "y"}))
    orth = build_design("y.val ~ poly(x.pos, 2)", dotted)
    np.testing.assert_allclose(orth.X, plain.X)
    assert orth.fixef_names == tuple(c.replace("(x,", "(x.pos,") for c in plain.fixef_names)


def test_dotted_names_in_random_terms_and_grouping_factors(dotted):
    x = dotted["x.pos"].to_numpy()
    d = build_design("y.val ~ 1 + (1 + log(x.pos) | g.id) + (1 | g.id:h.k)", dotted)
    by = {t.group: t for t in d.terms}
    np.testing.assert_allclose(by["g.id"].Z, np.column_stack([np.ones(12), np.log(x)]))
    assert by["g.id"].names == ("Intercept", "log(x.pos)")
    assert by["g.id:h.k"].levels == ("a:u", "b:v", "c:u", "d:v")
    # data are refused identically whatever the spelling: a dotted response of cbind()
    b = build_design("cbind(s.a, n.obs - s.a) ~ log(x.pos) + (1 | g.id)",
                     dotted.assign(**{"n.obs": dotted["n.obs"] + 2}), get_family("binomial"))
    np.testing.assert_allclose(b.trials, dotted["n.obs"] + 2)
    np.testing.assert_allclose(b.y, dotted["s.a"])
