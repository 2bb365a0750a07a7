"""Power by simulation (issue 13): simr's powerSim/powerCurve on the batch engine."""
import json
from pathlib import Path

import numpy as np
import pytest

import jaxglmm as jg

REF = json.loads((Path(__file__).parent / "data" / "inference_reference.json").read_text())
LMM = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def ss_fit(shared_fit):
    return shared_fit(LMM, "sleepstudy", "gaussian", "ml")


def test_zero_weight_levels_leave_the_others_fit_alone():
    """The curve's smaller sizes are the largest design with the extra levels' rows at
    weight 0: the same likelihood as those rows fitted alone (LMM and Laplace GLMM)."""
    ss = jg.load_dataset("sleepstudy")
    keep = ss.Subject.isin(ss.Subject.unique()[:10])
    alone = jg.Model(LMM, ss[keep]).fit("ml")
    weighted = jg.Model(LMM, ss.assign(w=keep.astype(float)), weights="w").fit("ml")
    assert abs(alone.loglik - weighted.loglik) < 1e-9
    np.testing.assert_allclose(weighted.fixef, alone.fixef, rtol=1e-9)
    np.testing.assert_allclose(weighted.theta, alone.theta, rtol=1e-6)
    cb = jg.load_dataset("cbpp")
    k = cb.herd.isin(cb.herd.unique()[:10])
    f = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    a = jg.Model(f, cb[k], "binomial").fit()
    b = jg.Model(f, cb.assign(w=k.astype(float)), "binomial", weights="w").fit()
    assert abs(a.loglik - b.loglik) < 1e-8
    np.testing.assert_allclose(b.fixef, a.fixef, rtol=1e-7)


def test_power_agrees_with_the_r_loop(ss_fit):
    """At the data's own size, the LRT power for Days = 2 agrees with lme4's loop of
    simulate + two refits (scripts/inference_reference.R) within Monte Carlo error."""
    ref = REF["power"]["days_effect_2"]
    pw = ss_fit.power("Days", effect=2, nsim=1000, seed=11)
    assert list(pw.columns) == ["size", "power", "lower", "upper", "nsim"]
    assert pw["nsim"].iloc[0] == 1000 and pw["size"].iloc[0] == 180
    p, q = pw["power"].iloc[0], ref["power"]
    se = np.sqrt(p * (1 - p) / 1000 + q * (1 - q) / ref["nsim"])
    assert abs(p - q) < 3 * se, (p, q, se)
    assert pw["lower"].iloc[0] < p < pw["upper"].iloc[0]


def test_power_curve_grows_with_the_groups(ss_fit):
    pw = ss_fit.power("Days", effect=2, along="Subject", sizes=[6, 18, 36], nsim=300, seed=2)
    assert list(pw["size"]) == [6, 18, 36]
    assert pw["power"].iloc[0] < pw["power"].iloc[2]
    assert pw.attrs["tested"] == ["Days"] and pw.attrs["along"] == "Subject"
    wald = ss_fit.power("Days", effect=2, nsim=300, seed=2, test="wald")
    assert 0 < wald["power"].iloc[0] < 1
    fig = pw.plot()
    assert fig.axes[0].get_xlabel() == "Subject"


def test_power_of_the_fitted_effect_is_one(ss_fit):
    assert REF["power"]["fitted_effect"]["power"] == 1
    assert ss_fit.power("Days", nsim=100, seed=3)["power"].iloc[0] == 1.0


def test_power_errors(ss_fit):
    with pytest.raises(ValueError, match="is not a fixed-effect term"):
        ss_fit.power("Dayz", nsim=10)
    with pytest.raises(ValueError, match="test must be one of"):
        ss_fit.power("Days", nsim=10, test="score")
    with pytest.raises(ValueError, match="sizes needs along="):
        ss_fit.power("Days", nsim=10, sizes=[5])
    with pytest.raises(ValueError, match="is not a column"):
        ss_fit.power("Days", nsim=10, along="Patient", sizes=[5])
    cb = jg.Model("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                  jg.load_dataset("cbpp"), "binomial").fit()
    with pytest.raises(ValueError, match="effect sets one coefficient"):
        cb.power("period", effect=1.0, nsim=10)


def test_satterthwaite_power_uses_each_refits_lmertest_df():
    """test='satterthwaite': each simulated refit's t test with its own Satterthwaite df,
    in one vmapped program; each df equals that dataset fitted alone and passed through
    coef_table(ddf='satterthwaite') (which matches lmerTest, test_inference_ddf.py)."""
    from jaxglmm.inference.ddf import satterthwaite_many
    ss = jg.load_dataset("sleepstudy")
    model = jg.Model(LMM, ss)
    fit = model.fit()                                          # REML, as lmerTest tests
    Y = np.asarray(fit.simulate(n=4, seed=8), float).T
    fits = jg.refit_many(model, Y, "reml", progress=False)
    var, df = satterthwaite_many(model, "reml", Y, fits.theta, fits.sigma.to_numpy(),
                                 np.array([0.0, 1.0]))
    for i in range(2):
        alone = jg.Model(LMM, ss.assign(Reaction=Y[i])).fit().coef_table(ddf="satterthwaite")
        assert abs(df[i] / alone.loc["Days", "df"] - 1) < 1e-5
        assert abs(np.sqrt(var[i]) / alone.loc["Days", "Std. Error"] - 1) < 1e-5
    curve = fit.power("Days", effect=2.0, nsim=200, test="satterthwaite", seed=4,
                      progress=False)
    lrt = fit.power("Days", effect=2.0, nsim=200, test="lrt", seed=4, progress=False)
    assert curve.attrs["test"] == "satterthwaite" and curve["nsim"].iloc[0] == 200
    # same simulations: the t test and the LRT reject in most of the same datasets
    assert abs(curve["power"].iloc[0] - lrt["power"].iloc[0]) < 0.1
    cb = jg.Model("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                  jg.load_dataset("cbpp"), "binomial").fit()
    with pytest.raises(ValueError, match="satterthwaite.*linear mixed models"):
        cb.power("period", nsim=10, test="satterthwaite")
