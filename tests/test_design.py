"""build_design on small frames: every column name and value written out."""

import numpy as np
import pandas as pd
import pytest

import jaxglmm  # noqa: F401  (enables float64)
from jaxglmm.io.datasets import list_datasets, load_dataset, read_table
from jaxglmm.design import Design, NewData, build_design
from jaxglmm.families import get_family
from jaxglmm.formula import FormulaError

# build_design asks the family (a Family value) how to code the response, never its name
CUMULATIVE = get_family("cumulative")
CATEGORICAL = get_family("categorical")


@pytest.fixture
def df():
    return pd.DataFrame({
        "y": [1.0, 2.0, 3.0, 5.0, 4.0, 7.0],
        "x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "z": [2.0, 0.0, 1.0, 3.0, 1.0, 2.0],
        "f": ["p", "q", "p", "q", "r", "r"],
        "k": [1, 2, 3, 1, 2, 3],
        "g": ["a", "a", "b", "b", "c", "c"],
        "h": ["u", "v", "u", "v", "u", "v"],
        "n": [10.0, 12.0, 8.0, 9.0, 11.0, 10.0],
        "s": [3.0, 5.0, 1.0, 2.0, 7.0, 4.0],
    })


def X_of(design):
    return pd.DataFrame(design.X, columns=list(design.fixef_names))


def check(design, expected: dict):
    assert list(design.fixef_names) == list(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(X_of(design)[name], values, err_msg=name)


X = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
Z = [2.0, 0.0, 1.0, 3.0, 1.0, 2.0]
ONES = [1.0] * 6


# ----------------------------------------------------------------------------- fixed effects
def test_automatic_intercept(df):
    d = build_design("y ~ x", df)
    check(d, {"Intercept": ONES, "x": X})
    np.testing.assert_allclose(d.y, df.y)
    assert d.X.dtype == np.float64 and d.terms == ()
    np.testing.assert_allclose(d.offset, 0.0)
    np.testing.assert_allclose(d.weights, 1.0)


@pytest.mark.parametrize("formula", ["y ~ 0 + x", "y ~ x - 1", "y ~ -1 + x"])
def test_no_intercept(df, formula):
    check(build_design(formula, df), {"x": X})


def test_star_and_colon(df):
    xz = [a * b for a, b in zip(X, Z)]
    check(build_design("y ~ x*z", df), {"Intercept": ONES, "x": X, "z": Z, "x:z": xz})
    check(build_design("y ~ x:z", df), {"Intercept": ONES, "x:z": xz})


@pytest.fixture
def wide():
    rng = np.random.default_rng(0)
    return pd.DataFrame(rng.normal(size=(12, 4)), columns=["y", "a", "b", "c"])


def test_redundant_terms_added_once(wide):
    d = build_design("y ~ a*b + a*c", wide)
    assert d.fixef_names == ("Intercept", "a", "b", "c", "a:b", "a:c")   # R's order
    np.testing.assert_allclose(X_of(d)["a:c"], wide.a * wide.c)


def test_power_of_sum_gives_interactions_up_to_order(wide):
    d = build_design("y ~ (a + b + c)^2", wide)
    assert d.fixef_names == ("Intercept", "a", "b", "c", "a:b", "a:c", "b:c")
    np.testing.assert_allclose(X_of(d)["b:c"], wide.b * wide.c)


def test_string_factor_treatment_coding(df):
    check(build_design("y ~ f", df), {
        "Intercept": ONES, "f[q]": [0, 1, 0, 1, 0, 0], "f[r]": [0, 0, 0, 0, 1, 1]})


def test_factor_without_intercept_is_coded_in_full(df):
    check(build_design("y ~ 0 + f", df), {
        "f[p]": [1, 0, 1, 0, 0, 0], "f[q]": [0, 1, 0, 1, 0, 0], "f[r]": [0, 0, 0, 0, 1, 1]})


def test_factor_by_numeric_interaction(df):
    check(build_design("y ~ x*f", df), {
        "Intercept": ONES, "x": X, "f[q]": [0, 1, 0, 1, 0, 0], "f[r]": [0, 0, 0, 0, 1, 1],
        "x:f[q]": [0, 2, 0, 4, 0, 0], "x:f[r]": [0, 0, 0, 0, 5, 6]})


def test_levels_set_the_reference(df):
    check(build_design("y ~ f", df, levels={"f": ["r", "p", "q"]}), {
        "Intercept": ONES, "f[p]": [1, 0, 1, 0, 0, 0], "f[q]": [0, 1, 0, 1, 0, 0]})


def test_categorical_dtype_keeps_its_level_order(df):
    df["f"] = pd.Categorical(df["f"], categories=["q", "r", "p"])
    check(build_design("y ~ f", df), {
        "Intercept": ONES, "f[r]": [0, 0, 0, 0, 1, 1], "f[p]": [1, 0, 1, 0, 0, 0]})


def test_numeric_column_named_categorical(df):
    check(build_design("y ~ k", df, categorical=["k"]), {
        "Intercept": ONES, "k[2]": [0, 1, 0, 0, 1, 0], "k[3]": [0, 0, 1, 0, 0, 1]})
    check(build_design("y ~ C(k)", df), {
        "Intercept": ONES, "C(k)[2]": [0, 1, 0, 0, 1, 0], "C(k)[3]": [0, 0, 1, 0, 0, 1]})
    check(build_design("y ~ factor(k)", df), {
        "Intercept": ONES, "factor(k)[2]": [0, 1, 0, 0, 1, 0],
        "factor(k)[3]": [0, 0, 1, 0, 0, 1]})


def test_r_transforms(df):
    x = np.array(X)
    sd = np.std(x, ddof=1)  # R's scale() uses the sample SD
    check(build_design("y ~ scale(x) + log(x) + exp(z) + sqrt(x) + center(z)", df), {
        "Intercept": ONES, "scale(x)": (x - 3.5) / sd, "log(x)": np.log(x),
        "exp(z)": np.exp(Z), "sqrt(x)": np.sqrt(x), "center(z)": np.array(Z) - 1.5})


def test_I_is_a_power_as_in_r(df):
    x = np.array(X)
    check(build_design("y ~ x + I(x^2)", df), {"Intercept": ONES, "x": x, "I(x^2)": x ** 2})
    # formulae's own I() would drop the minus here
    check(build_design("y ~ I(-x^2)", df), {"Intercept": ONES, "I(-x^2)": -x ** 2})
    check(build_design("y ~ 0 + I((x + 1)^2)", df), {"I((x + 1)^2)": (x + 1) ** 2})


def test_poly_is_r_orthogonal_polynomial(df):
    # R: poly(1:6, 2)
    d = build_design("y ~ poly(x, 2)", df)
    assert d.fixef_names == ("Intercept", "poly(x, 2)[1]", "poly(x, 2)[2]")
    np.testing.assert_allclose(d.X[:, 1], [-0.5976143, -0.3585686, -0.1195229, 0.1195229,
                                           0.3585686, 0.5976143], atol=1e-7)
    np.testing.assert_allclose(d.X[:, 2], [0.5455447, -0.1091089, -0.4364358, -0.4364358,
                                           -0.1091089, 0.5455447], atol=1e-7)
    raw = build_design("y ~ poly(x, 2, raw=TRUE)", df)
    np.testing.assert_allclose(raw.X[:, 2], np.array(X) ** 2)


def test_offset(df):
    d = build_design("y ~ x + offset(log(n))", df)
    check(d, {"Intercept": ONES, "x": X})
    np.testing.assert_allclose(d.offset, np.log(df.n))


# ----------------------------------------------------------------------------- responses
def test_cbind_response(df):
    d = build_design("cbind(s, n - s) ~ x", df, get_family("binomial"))
    np.testing.assert_allclose(d.y, df.s)
    np.testing.assert_allclose(d.trials, df.n)
    assert d.response_name == "cbind(s, n - s)"


def test_trials_response(df):
    d = build_design("s | trials(n) ~ x", df, get_family("binomial"))
    np.testing.assert_allclose(d.y, df.s)
    np.testing.assert_allclose(d.trials, df.n)


def test_binomial_with_binary_response_has_one_trial(df):
    df["b"] = [0, 1, 1, 0, 1, 0]
    d = build_design("b ~ x", df, get_family("binomial"))
    np.testing.assert_allclose(d.y, df.b)
    np.testing.assert_allclose(d.trials, 1.0)
    with pytest.raises(ValueError, match="must be 0/1"):
        build_design("s ~ x", df, get_family("binomial"))
    with pytest.raises(ValueError, match="only a binomial family takes"):
        build_design("cbind(s, n - s) ~ x", df, get_family("poisson"))


def test_bernoulli_boolean_and_two_level_responses(df):
    df["ok"] = [True, False, True, True, False, False]
    d = build_design("ok ~ x", df, get_family("bernoulli"))
    np.testing.assert_allclose(d.y, [1, 0, 1, 1, 0, 0])
    assert d.trials is None
    d = build_design("h ~ x", df, get_family("bernoulli"))
    np.testing.assert_allclose(d.y, [0, 1, 0, 1, 0, 1])  # the second level is success
    assert d.response_levels == ("u", "v")
    d = build_design("h ~ x", df, get_family("bernoulli"), levels={"h": ["v", "u"]})
    np.testing.assert_allclose(d.y, [1, 0, 1, 0, 1, 0])
    assert d.response_levels == ("v", "u")
    with pytest.raises(ValueError, match="exactly two levels"):
        build_design("f ~ x", df, get_family("bernoulli"))
    with pytest.raises(ValueError, match="not numeric"):
        build_design("f ~ x", df)


def test_cumulative_response_and_x_without_intercept(df):
    df["r"] = pd.Categorical(["lo", "hi", "mid", "lo", "hi", "mid"],
                             categories=["lo", "mid", "hi"], ordered=True)
    d = build_design("r ~ x + f", df, CUMULATIVE)
    np.testing.assert_allclose(d.y, [0, 2, 1, 0, 2, 1])
    assert d.response_levels == ("lo", "mid", "hi")
    # no intercept column, but f keeps treatment coding (as ordinal::clmm)
    check(d, {"x": X, "f[q]": [0, 1, 0, 1, 0, 0], "f[r]": [0, 0, 0, 0, 1, 1]})
    d = build_design("k ~ x", df, CUMULATIVE)
    np.testing.assert_allclose(d.y, [0, 1, 2, 0, 1, 2])
    assert d.response_levels == ("1", "2", "3")
    d = build_design("f ~ x", df, CUMULATIVE, levels={"f": ["r", "q", "p"]})
    np.testing.assert_allclose(d.y, [2, 1, 2, 1, 0, 0])
    assert d.response_levels == ("r", "q", "p")


def test_categorical_response_first_level_is_reference(df):
    d = build_design("f ~ x", df, CATEGORICAL)
    np.testing.assert_allclose(d.y, [0, 1, 0, 1, 2, 2])
    assert d.response_levels == ("p", "q", "r")
    assert d.fixef_names == ("Intercept", "x")


def test_wine_cumulative():
    d = build_design("rating ~ temp + contact + (1 | judge)", load_dataset("wine"), CUMULATIVE)
    assert d.fixef_names == ("temp[warm]", "contact[yes]")
    assert d.response_levels == ("1", "2", "3", "4", "5")
    assert d.terms[0].n_levels == 9 and d.nobs == 72


# ----------------------------------------------------------------------------- random effects
def test_correlated_random_term(df):
    d = build_design("y ~ x + (1 + x | g)", df)
    (t,) = d.terms
    assert (t.group, t.label, t.names, t.correlated) == ("g", "g", ("Intercept", "x"), True)
    assert t.levels == ("a", "b", "c")
    assert t.group_index.dtype == np.int32 and t.group_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert t.Z.dtype == np.float64
    np.testing.assert_allclose(t.Z, np.column_stack([ONES, X]))


def test_uncorrelated_random_terms(df):
    d = build_design("y ~ x + (x || g)", df)
    assert [(t.group, t.label, t.names, t.correlated) for t in d.terms] == [
        ("g", "g", ("Intercept",), False), ("g", "g.1", ("x",), False)]
    np.testing.assert_allclose(d.terms[1].Z[:, 0], X)


def test_zero_intercept_random_slope(df):
    (t,) = build_design("y ~ x + (0 + x | g)", df).terms
    assert t.names == ("x",)
    np.testing.assert_allclose(t.Z[:, 0], X)


def test_nested_random_terms(df):
    d = build_design("y ~ 1 + (1 | g/h)", df)
    assert [(t.group, t.label, t.n_levels) for t in d.terms] == [("g:h", "g:h", 6), ("g", "g", 3)]
    assert d.terms[0].levels == ("a:u", "a:v", "b:u", "b:v", "c:u", "c:v")


def test_interaction_grouping_and_crossed_terms(df):
    d = build_design("y ~ (1 | f:h)", df)
    assert d.terms[0].group == "f:h"
    assert d.terms[0].levels == ("p:u", "q:v", "r:u", "r:v")
    assert d.terms[0].group_index.tolist() == [0, 1, 0, 1, 2, 3]
    d = build_design("y ~ (1 | h) + (1 | g)", df)
    # lme4 puts the factor with more levels first
    assert [(t.group, t.n_levels) for t in d.terms] == [("g", 3), ("h", 2)]


def test_factor_covariates_in_random_terms(df):
    (t,) = build_design("y ~ (1 + f | g)", df).terms
    assert t.names == ("Intercept", "f[q]", "f[r]")
    np.testing.assert_allclose(t.Z, [[1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 1],
                                     [1, 0, 1]])
    (t,) = build_design("y ~ (0 + f | g)", df).terms
    assert t.names == ("f[p]", "f[q]", "f[r]")  # full dummy coding, as R does
    np.testing.assert_allclose(t.Z, [[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1],
                                     [0, 0, 1]])


def test_several_terms_per_grouping_factor(df):
    d = build_design("y ~ (1 | g) + (0 + x | g) + (0 + z | g)", df)
    assert [(t.label, t.names) for t in d.terms] == [
        ("g", ("Intercept",)), ("g.1", ("x",)), ("g.2", ("z",))]


def test_term_order_follows_lme4():
    # lme4's mkReTrms reorders by rev(order(nl)) when some term has more levels than the one
    # before it: decreasing levels, ties reversed.
    df = pd.DataFrame({"y": np.arange(12.0), "a": list("aabbaabbaabb"),
                       "b": list("abcdefabcdef"), "c": list("abcdefabcdef")})
    d = build_design("y ~ (1 | a) + (1 | b) + (1 | c)", df)
    assert [t.group for t in d.terms] == ["c", "b", "a"]
    d = build_design("y ~ (1 | b) + (1 | c) + (1 | a)", df)  # no increase: kept as written
    assert [t.group for t in d.terms] == ["b", "c", "a"]


# ----------------------------------------------------------------------------- data checks
def test_missing_values_are_dropped_and_reported(df):
    df = pd.concat([df, df], ignore_index=True)
    df.loc[0, "x"] = np.nan        # predictor
    df.loc[1, "g"] = None          # grouping factor
    df.loc[2, "n"] = np.nan        # offset
    df.loc[3, "y"] = np.nan        # response
    df["w"] = [1.0, 2, 1, 1, np.nan] + [1.0] * 7  # weights
    d = build_design("y ~ x + offset(log(n)) + (1 | g)", df, weights="w")
    assert d.nobs == 7 and d.n_dropped == 5
    assert d.messages == ("dropped 5 row(s) with missing values in the columns the model "
                          "uses",)
    np.testing.assert_allclose(d.y, [7.0, 1, 2, 3, 5, 4, 7])
    np.testing.assert_allclose(d.weights, 1.0)
    assert d.terms[0].group_index.tolist() == [2, 0, 0, 1, 1, 2, 2]
    df2 = pd.DataFrame({"s": [1.0, np.nan, 2, 3], "n": [4.0, 4, np.nan, 5], "x": [1.0, 2, 3, 4]})
    d = build_design("s | trials(n) ~ x", df2, get_family("binomial"))
    assert d.n_dropped == 2
    np.testing.assert_allclose(d.trials, [4.0, 5.0])


def test_rank_deficient_columns_are_dropped(df):
    df["x2"] = 2 * df["x"]
    d = build_design("y ~ x + x2 + z", df)
    assert d.fixef_names == ("Intercept", "x", "z")
    assert "fixed-effect model matrix is rank deficient so dropping 1 columns: x2" in d.messages


def test_unknown_column(df):
    with pytest.raises(FormulaError, match="unknown column 'xx'; did you mean 'x'"):
        build_design("y ~ xx + (1 | g)", df)
    with pytest.raises(FormulaError, match="unknown column 'gg'"):
        build_design("y ~ x + (1 | gg)", df)
    with pytest.raises(FormulaError, match="unknown column 'ww'"):
        build_design("y ~ x", df, weights="ww")


def test_malformed_formulas_fail_before_data_is_touched(df):
    with pytest.raises(FormulaError, match="unclosed '\\('"):
        build_design("y ~ (x + (1 | g)", df)
    with pytest.raises(FormulaError, match="empty term after"):
        build_design("y ~ x + ", df)
    with pytest.raises(FormulaError, match="nothing on the right of '\\|'"):
        build_design("y ~ x + (1 | )", df)
    with pytest.raises(FormulaError, match="unknown function 'lg'"):
        build_design("y ~ lg(x)", df)


def test_single_level_grouping_factor_is_an_error(df):
    df["one"] = "only"
    with pytest.raises(ValueError, match="grouping factor 'one' .* has a single level"):
        build_design("y ~ x + (1 | one)", df)


def test_grouping_factor_with_a_level_per_row_is_built_and_refused_by_a_model(df):
    """A level per row confounds the group's variance with the residual's: the design is
    built (for inspection), a gaussian model refuses it as lme4 does."""
    df = df.assign(id=[f"o{i}" for i in range(len(df))])
    d = build_design("y ~ x + (1 | id)", df)
    assert d.terms[0].n_levels == len(df)
    with pytest.raises(ValueError, match="number of levels of each grouping factor"):
        jaxglmm.Model("y ~ x + (1 | id)", df)


def test_non_finite_transform_is_an_error(df):
    with pytest.raises(ValueError, match="'log\\(z\\)' has 1 non-finite value"):
        build_design("y ~ log(z)", df)


# ----------------------------------------------------------------------------- new data
def test_new_data_rebuilds_x_and_z(df):
    d = build_design("y ~ scale(x) + f + offset(log(n)) + (1 + x | g)", df)
    new = pd.DataFrame({"x": [3.5, 10.0], "f": ["r", "p"], "n": [1.0, np.e],
                        "g": ["b", "zz"]})
    nd = d.new_data(new)
    assert isinstance(nd, NewData) and nd.fixef_names == d.fixef_names
    sd = np.std(X, ddof=1)
    np.testing.assert_allclose(nd.X, [[1, 0.0, 0, 1], [1, 6.5 / sd, 0, 0]])  # training scale
    np.testing.assert_allclose(nd.offset, [0.0, 1.0])
    (t,) = nd.terms
    assert t.label == "g" and t.group_index.tolist() == [1, -1]
    np.testing.assert_allclose(t.Z, [[1, 3.5], [1, 10.0]])
    with pytest.raises(ValueError, match="new level\\(s\\) \\['zz'\\] of grouping factor 'g'"):
        d.new_data(new, allow_new_levels=False)
    with pytest.raises(ValueError, match="level\\(s\\) \\['s'\\] of 'f' were not in the data"):
        d.new_data(new.assign(f=["s", "p"]))
    with pytest.raises(FormulaError, match="unknown column 'n'"):
        d.new_data(new.drop(columns="n"))
    population = d.new_data(new.drop(columns="g"), random_effects=False)
    assert population.terms == ()
    np.testing.assert_allclose(population.X, nd.X)


def test_new_data_keeps_dropped_columns_out_and_poly_basis(df):
    df["x2"] = 2 * df["x"]
    d = build_design("y ~ poly(x, 2) + x2", df)
    nd = d.new_data(df)
    np.testing.assert_allclose(nd.X, d.X)
    assert nd.fixef_names == ("Intercept", "poly(x, 2)[1]", "poly(x, 2)[2]")


def test_new_data_for_cumulative_has_no_intercept(df):
    d = build_design("k ~ f + (1 | g)", df, CUMULATIVE)
    nd = d.new_data(pd.DataFrame({"f": ["q"], "g": ["a"]}))
    assert nd.fixef_names == ("f[q]", "f[r]")
    np.testing.assert_allclose(nd.X, [[1, 0]])


def test_new_data_trials(df):
    d = build_design("cbind(s, n - s) ~ x", df, get_family("binomial"))
    np.testing.assert_allclose(d.new_data(df).trials, df.n)
    assert d.new_data(df[["x"]]).trials is None


# ----------------------------------------------------------------------------- seed formula
SEED = ("student_reading_score ~ student_age_s + student_female + "
        "student_re_black*teacher_re_black + student_re_black*class_prop_black + "
        "(1 + student_re_black | teacher_id)")


def test_seed_formula_on_classroom():
    data = load_dataset("classroom")
    d = build_design(SEED, data, get_family("gaussian"))
    assert isinstance(d, Design)
    assert d.fixef_names == (
        "Intercept", "student_age_s", "student_female", "student_re_black", "teacher_re_black",
        "class_prop_black", "student_re_black:teacher_re_black",
        "student_re_black:class_prop_black")         # R's order: by degree
    np.testing.assert_allclose(X_of(d)["student_re_black:class_prop_black"],
                               data.student_re_black * data.class_prop_black)
    (t,) = d.terms
    assert (t.group, t.names, t.n_levels, t.correlated) == (
        "teacher_id", ("Intercept", "student_re_black"), 60, True)
    assert t.Z.shape == (1317, 2) and d.nobs == 1317


def test_seed_formula_with_missing_plus_names_the_place():
    broken = SEED.replace("student_female + ", "student_female ")
    column = broken.index("student_re_black*") + 1
    with pytest.raises(FormulaError, match="missing operator between 'student_female' and "
                                           f"'student_re_black' at column {column}"):
        build_design(broken, load_dataset("classroom"))


def test_reference_datasets_build():
    d = build_design("strength ~ 1 + (1 | batch/cask)", load_dataset("pastes"))
    assert [(t.group, t.n_levels) for t in d.terms] == [("batch:cask", 30), ("batch", 10)]
    d = build_design("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                     load_dataset("cbpp"), get_family("binomial"))
    assert d.fixef_names == ("Intercept", "period[2]", "period[3]", "period[4]")
    assert d.terms[0].n_levels == 15
    d = build_design("Reaction ~ Days + (Days || Subject)", load_dataset("sleepstudy"))
    assert [t.label for t in d.terms] == ["Subject", "Subject.1"]


# ----------------------------------------------------------------------------- datasets
def test_bundled_datasets_keep_r_factors_as_strings():
    assert list_datasets() == ["cbpp", "classroom", "grouseticks", "pastes", "penicillin",
                               "sleepstudy", "wine"]
    cbpp = load_dataset("cbpp")
    assert cbpp.shape == (56, 4)
    assert cbpp.loc[0, "herd"] == "1" and cbpp.loc[0, "period"] == "1"
    assert cbpp["size"].dtype.kind == "i"
    sleep = load_dataset("sleepstudy")
    assert sleep.loc[0, "Subject"] == "308" and sleep["Days"].dtype.kind == "i"
    grouse = load_dataset("grouseticks")
    assert {grouse.loc[0, c] for c in ("BROOD", "YEAR", "LOCATION")} == {"501", "95", "32"}
    wine = load_dataset("wine")
    assert wine.loc[0, "rating"] == "2" and wine.loc[0, "judge"] == "1"
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("nope")


def test_read_table_on_a_user_csv(tmp_path):
    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as fh:
        fh.write('"id","x","label"\n"1",2.5,"a, b"\n"2",NA,"c ""q"""\nNA,3,NA\n')
    t = read_table(path)
    assert t["id"].tolist()[:2] == ["1", "2"] and pd.isna(t["id"][2])
    assert t["x"].dtype == float and pd.isna(t["x"][1])
    assert t["label"].tolist()[:2] == ["a, b", 'c "q"']
    with pytest.raises(FileNotFoundError, match="data file not found"):
        read_table(tmp_path / "missing.csv")


# ----------------------------------------------------------------------------- a model's design
def test_a_model_design_rebuilds_its_own_data_and_reads_re_form():
    """design.model_design assembles a parameter formula as linear predictor 1 (a correlation
    ID merging its term with the main one) and a categorical response per category; rebuilt
    on the training rows (design.new_design, core's prediction_arrays) it gives the fit's
    own X, offset and group indices.  re_form picks terms by (formula, label)."""
    from jaxglmm.core.problem import make_problem, prediction_arrays
    from jaxglmm.design import model_design, new_design, re_masks, re_terms, used_columns
    rng = np.random.default_rng(3)
    n = 60
    data = pd.DataFrame({"x": rng.normal(size=n), "z": rng.normal(size=n),
                         "g": rng.choice(list("abcde"), n), "h": rng.choice(list("uvw"), n),
                         "y": rng.poisson(1.0, n), "c": rng.choice(list("pqr"), n)})
    zip_family = get_family("zero_inflated_poisson")
    design, family = model_design("y ~ x + (1 | p | g) + (1 | h)", data, zip_family,
                                  dpars={"zi": "~ z + (1 | p | g)"})
    assert design.n_channels == 2 and design.fixef_channels == (0, 0, 1, 1)
    assert design.fixef_names == ("Intercept", "x", "zi_Intercept", "zi_z")
    assert ("dpar", "zi") in family.variant and len(design.parts) == 2
    problem = make_problem(design, family)
    assert problem.structure.n_channels == 2
    again = prediction_arrays(new_design(design, data))
    np.testing.assert_array_equal(np.asarray(again.X), np.asarray(problem.arrays.X))
    np.testing.assert_array_equal(np.asarray(again.offset), np.asarray(problem.arrays.offset))
    for a, b in zip(again.index, problem.arrays.index):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    chosen = re_terms(design, "~(1 | p | g)")
    assert chosen == {(0, "g"), (1, "g")}
    masks = re_masks(design, problem.structure.factors, chosen)
    assert [m.tolist() for m in masks] == [[1.0, 1.0], [0.0]]
    assert used_columns(design, None) == ["x", "z"]
    assert re_terms(design, "~0") is None and re_terms(design, None) == "all"
    with pytest.raises(ValueError, match="not a random-effect term"):
        re_terms(design, "~(1 | x)")
    cat, _ = model_design("c ~ x + (1 | g)", data, CATEGORICAL)
    assert cat.n_channels == 2 and cat.fixef_names == ("q:Intercept", "q:x", "r:Intercept", "r:x")
    np.testing.assert_array_equal(new_design(cat, data.head(7), True, False).X, cat.X[:7])
