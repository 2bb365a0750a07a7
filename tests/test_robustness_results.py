"""What a demanding lme4/brms user found wrong in results and the fit call (the robustness
issue's items 2, 3, 8, 10, 11, 12, 14, 15 and 16).  lme4's values come from
scripts/robustness_results_reference.R (stored in tests/data/robustness_results.json)."""
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxglmm as jg

REF = json.loads((Path(__file__).parent / "data" / "robustness_results.json").read_text())
SLEEP = "Reaction ~ Days + (Days | Subject)"
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
GROUSE = "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)"


@pytest.fixture(scope="module")
def wine():
    return jg.fit("rating ~ temp + contact + (1 | judge)", jg.load_dataset("wine"), "cumulative")


@pytest.fixture(scope="module")
def grouse():
    return jg.fit(GROUSE, jg.load_dataset("grouseticks"), "poisson", categorical=["YEAR"])


@pytest.fixture(scope="module")
def sleep(shared_fit):
    return shared_fit(SLEEP, "sleepstudy", "gaussian", "reml")


# ----------------------------------------------------------------------------- 2: ordinal
def test_ordinal_response_predictions_are_category_probabilities(wine):
    probs = wine.predict()
    assert isinstance(probs, pd.DataFrame) and list(probs.columns) == ["1", "2", "3", "4", "5"]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    # the same probabilities the family gives at the linear predictor and thresholds
    eta = wine.predict(type="link").to_numpy()
    thr = np.asarray(wine.family_params["thresholds"])
    link = 1 / (1 + np.exp(-(thr[None, :] - eta[:, None])))
    cum = np.concatenate([link, np.ones((len(eta), 1))], axis=1)
    np.testing.assert_allclose(probs.to_numpy(), np.diff(cum, prepend=0.0, axis=1), atol=1e-10)


def test_ordinal_mean_is_on_the_label_scale(wine):
    mean = wine.predict(type="mean")
    probs = wine.predict().to_numpy()
    np.testing.assert_allclose(mean.to_numpy(), probs @ np.arange(1, 6), rtol=1e-12)
    assert mean.min() > 1.0 and mean.max() < 5.0


def test_ordinal_mean_needs_numeric_labels():
    df = jg.load_dataset("wine")
    df["grade"] = df["rating"].map({"1": "e", "2": "d", "3": "c", "4": "b", "5": "a"})
    fit = jg.fit("grade ~ temp + (1 | judge)", df, "cumulative",
                 levels={"grade": ["e", "d", "c", "b", "a"]})
    with pytest.raises(ValueError, match="numeric category labels"):
        fit.predict(type="mean")


def test_ordinal_simulate_returns_the_labels_as_an_ordered_categorical(wine):
    sims = wine.simulate(3, seed=2)
    for col in sims.columns:
        assert isinstance(sims[col].dtype, pd.CategoricalDtype) and sims[col].cat.ordered
        assert list(sims[col].cat.categories) == ["1", "2", "3", "4", "5"]
    # a simulated response can be fed back as the response
    df = jg.load_dataset("wine").assign(rating=sims["sim_1"])
    again = jg.fit("rating ~ temp + contact + (1 | judge)", df, "cumulative")
    assert again.converged and len(again.family_params["thresholds"]) == 4


# ----------------------------------------------------------------------------- 3: warnings
def test_singular_fit_warns_with_a_convergence_warning():
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(10), 6)
    df = pd.DataFrame({"g": g, "x": rng.normal(size=60)})
    df["y"] = 1 + df.x + rng.normal(size=60)                    # no group variation at all
    with pytest.warns(jg.ConvergenceWarning, match="singular"):
        fit = jg.fit("y ~ x + (1 | g)", df)
    assert fit.singular


def test_rank_deficient_design_warns():
    df = jg.load_dataset("sleepstudy").assign(Days2=lambda d: 2 * d.Days)
    with pytest.warns(jg.ConvergenceWarning, match="rank deficient"):
        jg.fit("Reaction ~ Days + Days2 + (1 | Subject)", df)


def test_non_converged_fit_warns(monkeypatch):
    from jaxglmm.fit import convergence
    from jaxglmm.results import build
    stopped = convergence.Verdict(False, False, ("optimizer stopped at its iteration limit",))
    monkeypatch.setattr(build, "judge", lambda *a, **k: stopped)
    with pytest.warns(jg.ConvergenceWarning, match="iteration limit"):
        fit = jg.fit("Reaction ~ Days + (1 | Subject)", jg.load_dataset("sleepstudy"))
    assert not fit.converged


def test_a_clean_fit_does_not_warn(sleep):
    with warnings.catch_warnings():
        warnings.simplefilter("error", jg.ConvergenceWarning)
        jg.fit(SLEEP, jg.load_dataset("sleepstudy"))


# ----------------------------------------------------------------------------- 8: dict newdata
def test_predict_takes_a_mapping(grouse):
    new = {"YEAR": [96, 97], "cHEIGHT": [0.0, 5.0], "BROOD": ["501", "new"], "LOCATION": ["2", "2"]}
    got = grouse.predict(new)
    assert np.allclose(got.to_numpy(), grouse.predict(pd.DataFrame(new)).to_numpy(), rtol=1e-14)
    with pytest.raises(TypeError, match="DataFrame or a mapping"):
        grouse.predict([[96, 0.0, "501", "2"]])


# ----------------------------------------------------------------------------- 10: proportions
def test_proportion_response_simulates_proportions():
    cb = jg.load_dataset("cbpp").assign(prop=lambda d: d["incidence"] / d["size"])
    fit = jg.fit("prop ~ period + (1 | herd)", cb, "binomial", weights="size",
                 categorical=["period"])
    sims = fit.simulate(5, seed=1)
    assert REF["prop_simulate"]["all_in_unit"] and REF["prop_simulate"]["whole_counts"]
    assert ((sims >= 0) & (sims <= 1)).all().all()
    counts = sims.to_numpy() * cb["size"].to_numpy()[:, None]
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)
    again = jg.fit("prop ~ period + (1 | herd)", cb.assign(prop=sims["sim_1"]), "binomial",
                   weights="size", categorical=["period"])
    assert again.converged


# ----------------------------------------------------------------------------- 11: re_form
def test_re_form_conditions_on_some_terms_as_lme4(grouse):
    ref = REF["grouse_reform"]
    for form, key in (("~(1 | LOCATION)", "location_only"), ("~(1|BROOD)", "brood_only"),
                      (None, "all"), ("~0", "none")):
        got = grouse.predict(re_form=form, type="link").to_numpy()
        np.testing.assert_allclose(got, ref[key], rtol=2e-3, atol=2e-3, err_msg=form)
    # exactly: the fixed part plus the chosen term's modes
    loc = grouse.ranef["LOCATION"]["Intercept"]
    df = jg.load_dataset("grouseticks")
    fixed = grouse.predict(re_form="~0", type="link").to_numpy()
    chosen = grouse.predict(re_form="~(1 | LOCATION)", type="link").to_numpy()
    np.testing.assert_allclose(chosen - fixed, loc.loc[df.LOCATION.astype(str)].to_numpy(),
                               atol=1e-12)


def test_re_form_term_not_in_the_model_is_refused(grouse):
    with pytest.raises(ValueError, match=r"\(1 \| YEAR\) is not a random-effect term"):
        grouse.predict(re_form="~(1 | YEAR)")
    with pytest.raises(ValueError, match="only random-effect terms"):
        grouse.predict(re_form="~ cHEIGHT + (1 | BROOD)")


# ----------------------------------------------------------------------------- 12: new data
def test_predict_gives_nan_for_rows_with_missing_values(grouse):
    df = jg.load_dataset("grouseticks").head(6).copy()
    full = grouse.predict(df).to_numpy()
    df.loc[df.index[2], "cHEIGHT"] = np.nan
    df.loc[df.index[4], "BROOD"] = None
    got = grouse.predict(df)
    assert np.isnan(got.iloc[2]) and np.isnan(got.iloc[4])
    keep = [0, 1, 3, 5]
    np.testing.assert_allclose(got.to_numpy()[keep], full[keep], rtol=1e-14)
    # population level: the grouping column is not used, so row 4 is predicted
    assert np.isfinite(grouse.predict(df, re_form="~0").iloc[4])


def test_simulate_for_new_data(grouse, sleep):
    new = pd.DataFrame({"Days": np.tile(np.arange(10.0), 3),
                        "Subject": np.repeat(["308", "new1", "new2"], 10)})
    sims = sleep.simulate(2000, seed=4, newdata=new)
    assert sims.shape == (30, 2000) and list(sims.index) == list(new.index)
    # re_form="~0": every subject, seen or not, gets fresh effects: each row's spread is
    # the marginal SD sqrt(var(b0 + b1 Days) + sigma^2)
    vc = sleep.varcorr
    sd0, sd1 = vc.sd_or_cor.iloc[0], vc.sd_or_cor.iloc[1]
    cor, sigma = vc.sd_or_cor.iloc[2], sleep.sigma
    for day in (0, 9):
        sd = np.sqrt(sd0 ** 2 + (day * sd1) ** 2 + 2 * day * cor * sd0 * sd1 + sigma ** 2)
        rows = sims.to_numpy()[new.Days.to_numpy() == day]
        assert abs(rows.std() / sd - 1) < 0.06, (day, rows.std(), sd)
    # conditioned on the fitted modes: subject 308 centres on its own prediction
    cond = sleep.simulate(2000, seed=5, newdata=new, re_form=None)
    np.testing.assert_allclose(cond.to_numpy()[:10].mean(axis=1),
                               sleep.predict(new.head(10)).to_numpy(), atol=3.0)
    counts = grouse.simulate(2, seed=1, newdata=jg.load_dataset("grouseticks").head(5))
    assert counts.shape == (5, 2) and (counts >= 0).all().all()


def test_simulate_new_binomial_data_needs_the_trials():
    fit = jg.fit(CBPP, jg.load_dataset("cbpp"), "binomial", categorical=["period"])
    new = jg.load_dataset("cbpp").head(3)
    assert fit.simulate(1, newdata=new).shape == (3, 1)
    with pytest.raises(ValueError, match="needs its trials"):
        fit.simulate(1, newdata=new.drop(columns="size"))


# ----------------------------------------------------------------------------- 14: log link
def test_binomial_log_link_finds_valid_starting_values():
    fit = jg.fit(CBPP, jg.load_dataset("cbpp"), "binomial", link="log", categorical=["period"])
    ref = REF["cbpp_log"]
    assert np.isfinite(fit.loglik) and fit.converged
    np.testing.assert_allclose(fit.fixef.to_numpy(), ref["fixef"], rtol=1e-3, atol=1e-3)
    assert fit.loglik >= ref["loglik"] - 1e-4


# ----------------------------------------------------------------------------- 15: summary
def test_summary_has_lme4s_blocks(sleep, grouse):
    text = str(sleep.summary())
    assert "   Data: sleepstudy" in text
    ref = REF["sleep_summary"]
    block = text.split("Scaled residuals:")[1].splitlines()[2].split()
    np.testing.assert_allclose([float(v) for v in block], ref["resid_quantiles"], atol=2e-4)
    assert "Correlation of Fixed Effects:" in text
    cor = sleep.summary().correlation.to_numpy()
    np.testing.assert_allclose(cor, ref["fixef_cor"], atol=1e-3)
    assert "Days -0.138" in " ".join(text.split()[-3:]) or "-0.138" in text
    assert "Correlation of Fixed Effects" not in str(sleep.summary(correlation=False))
    assert "groups:  BROOD, 118; LOCATION, 63" in str(grouse.summary())


def test_summary_residuals_of_a_glmm_match_lme4():
    fit = jg.fit(CBPP, jg.load_dataset("cbpp"), "binomial", categorical=["period"])
    ref = REF["cbpp_summary"]
    np.testing.assert_allclose(fit.summary().residuals.to_numpy(), ref["resid_quantiles"],
                               atol=2e-3)
    np.testing.assert_allclose(fit.summary().correlation.to_numpy(), ref["fixef_cor"], atol=2e-3)


def test_predictors_on_very_different_scales_warn_as_lme4():
    df = jg.load_dataset("sleepstudy").assign(big=lambda d: d.Days * 1e4)
    with pytest.warns(jg.ConvergenceWarning) as record:
        jg.fit("Reaction ~ big + (1 | Subject)", df)
    assert REF["scale_warning"] in [str(r.message) for r in record]


# ----------------------------------------------------------------------------- 16: lme4 names
def test_lme4_spellings_of_the_method():
    df = jg.load_dataset("sleepstudy")
    assert jg.fit(SLEEP, df, REML=False).method == "ml"
    assert jg.fit(SLEEP, df, REML=True).method == "reml"
    cb = jg.load_dataset("cbpp")
    agq = jg.fit(CBPP, cb, "binomial", nAGQ=9, categorical=["period"])
    direct = jg.fit(CBPP, cb, "binomial", method="agq", agq_points=9, categorical=["period"])
    assert agq.method == "agq" and agq.loglik == pytest.approx(direct.loglik, rel=1e-12)
    assert jg.fit(CBPP, cb, "binomial", nAGQ=1, categorical=["period"]).method == "laplace"
    with pytest.raises(ValueError, match="contradicts"):
        jg.fit(SLEEP, df, method="reml", REML=False)
    with pytest.raises(ValueError, match="REML applies to gaussian"):
        jg.fit(CBPP, cb, "binomial", REML=False, categorical=["period"])
    with pytest.raises(ValueError, match="nAGQ=0"):
        jg.fit(CBPP, cb, "binomial", nAGQ=0, categorical=["period"])


def test_family_names_are_not_case_sensitive():
    gt = jg.load_dataset("grouseticks")
    a = jg.fit("TICKS ~ cHEIGHT + (1 | LOCATION)", gt, "Poisson")
    b = jg.fit("TICKS ~ cHEIGHT + (1 | LOCATION)", gt, "poisson")
    assert a.family == "poisson" and a.loglik == b.loglik
    assert jg.get_family("GAMMA").name == "Gamma" and jg.get_family("Gaussian").name == "gaussian"
    with pytest.raises(ValueError, match="unknown family 'poison'"):
        jg.get_family("poison")


# ----------------------------------------------------------------------------- review fixes
def _zi_data():
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(30), 12)
    df = pd.DataFrame({"g": g.astype(str), "x": rng.normal(size=g.size), "z": rng.normal(size=g.size)})
    mu = np.exp(0.4 + 0.3 * df.x + rng.normal(0, 0.5, 30)[g])
    zi = 1 / (1 + np.exp(-(-0.5 + rng.normal(0, 0.8, 30)[g])))
    df["y"] = rng.poisson(mu) * (rng.random(g.size) > zi)
    return df


def test_re_form_tells_a_parameter_formulas_terms_from_the_mains():
    df = _zi_data()
    fit = jg.fit("y ~ x + (1 | g)", df, "zero_inflated_poisson", dpars={"zi": "~ z + (1 | g)"})
    eta_all = fit.predict(type="link")
    assert list(eta_all.columns) == ["mu", "zi"]
    eta_main = fit.predict(type="link", re_form="~(1 | g)")
    # the same text names both formulas' (1 | g): brms's re_formula applies it to each
    np.testing.assert_allclose(eta_main.to_numpy(), eta_all.to_numpy(), atol=1e-12)
    fit2 = jg.fit("y ~ x + (x | g)", df, "zero_inflated_poisson", dpars={"zi": "~ z + (1 | g)"})
    mu_only = fit2.predict(type="link", re_form="~(x | g)").to_numpy()
    none = fit2.predict(type="link", re_form="~0").to_numpy()
    full = fit2.predict(type="link").to_numpy()
    np.testing.assert_allclose(mu_only[:, 0], full[:, 0], atol=1e-12)   # mu keeps its effects
    np.testing.assert_allclose(mu_only[:, 1], none[:, 1], atol=1e-12)   # zi's (1 | g) is left out


def test_bayesian_simulate_is_refused_not_garbage():
    fit = jg.fit("Reaction ~ Days + (1 | Subject)", jg.load_dataset("sleepstudy"), method="map")
    with pytest.raises(NotImplementedError, match="posterior predictive"):
        fit.simulate(1)


def test_refit_many_results_describe_their_own_response(sleep):
    model = jg.Model(SLEEP, jg.load_dataset("sleepstudy"))
    Y = sleep.simulate(3, seed=1).to_numpy().T
    fits = jg.refit_many(model, Y)
    alone = jg.fit(SLEEP, jg.load_dataset("sleepstudy").assign(Reaction=Y[1]))
    np.testing.assert_allclose(fits.result(1).summary().residuals.to_numpy(),
                               alone.summary().residuals.to_numpy(), atol=1e-5)


def test_training_predictions_keep_the_data_index():
    df = jg.load_dataset("sleepstudy").copy()
    df.index = df.index + 100
    df.loc[103, "Days"] = np.nan                       # dropped from the fit
    fit = jg.fit(SLEEP, df)
    pred = fit.predict()
    assert 103 not in pred.index and pred.index[0] == 100 and len(pred) == len(df) - 1
    np.testing.assert_allclose(pred.to_numpy(), fit.predict(df.drop(index=103)).to_numpy(),
                               rtol=1e-12)
    assert list(fit.simulate(1, seed=0).index) == list(pred.index)


def test_simulate_newdata_with_a_missing_group_is_an_error(sleep):
    new = pd.DataFrame({"Days": [1.0, 2.0], "Subject": ["308", None]})
    with pytest.raises(ValueError, match="missing values"):
        sleep.simulate(1, newdata=new)


def test_poisson_sqrt_link_starts_from_mustart():
    fit = jg.fit("TICKS ~ cHEIGHT + (1 | LOCATION)", jg.load_dataset("grouseticks"), "poisson",
                 link="sqrt")
    assert fit.converged and np.isfinite(fit.loglik)


def test_re_form_subset_needs_only_its_own_columns():
    """As lme4: predicting with re.form = ~(1 | batch) reads batch, not cask."""
    pastes = jg.load_dataset("pastes")
    fit = jg.fit("strength ~ 1 + (1 | batch/cask)", pastes)
    head = pastes.head(6)
    with_cask = fit.predict(head, re_form="~(1 | batch)").to_numpy()
    without = fit.predict(head.drop(columns="cask"), re_form="~(1 | batch)").to_numpy()
    np.testing.assert_allclose(without, with_cask, rtol=1e-14)
    expected = fit.fixef["Intercept"] + fit.ranef["batch"]["Intercept"].loc[head.batch.astype(str)]
    np.testing.assert_allclose(without, expected.to_numpy(), rtol=1e-12)
    with pytest.raises(Exception, match="cask"):
        fit.predict(head.drop(columns="cask"))


def test_two_level_categorical_response_points_to_bernoulli():
    cl = jg.load_dataset("classroom")
    two = cl[cl.favorite_subject.isin(["reading", "math"])]
    with pytest.raises(ValueError, match="is a bernoulli model"):
        jg.fit("favorite_subject ~ student_age_s + (1 | teacher_id)", two, family="categorical")
