"""Bayesian paths (NUTS, VI, MAP) on the one log-density, against brms's posteriors.

Rule (reference README): posterior means within 4 Monte Carlo standard errors (the larger of
ours and brms's) or 5% of brms's posterior SD, whichever is larger.  R-hat <= 1.01.
"""
import json

import numpy as np
import pytest

import jaxglmm as jg
from reference_cases import load_reference

# brms name -> ours
SLEEP = {"b_Intercept": "b_Intercept", "b_Days": "b_Days",
         "sd_Subject__Intercept": "sd_Subject__Intercept", "sd_Subject__Days": "sd_Subject__Days",
         "cor_Subject__Intercept__Days": "cor_Subject__Intercept__Days", "sigma": "sigma"}
WINE = {"b_Intercept[1]": "threshold[1]", "b_Intercept[2]": "threshold[2]",
        "b_Intercept[3]": "threshold[3]", "b_Intercept[4]": "threshold[4]",
        "b_tempwarm": "b_temp[warm]", "b_contactyes": "b_contact[yes]",
        "sd_judge__Intercept": "sd_judge__Intercept"}
NEGBIN = {"b_Intercept": "b_Intercept", "b_YEAR96": "b_YEAR[96]", "b_YEAR97": "b_YEAR[97]",
          "b_cHEIGHT": "b_cHEIGHT", "sd_LOCATION__Intercept": "sd_LOCATION__Intercept",
          "shape": "shape"}


def check_against_brms(fit, case, names):
    ref = {p["variable"]: p for p in load_reference(case)["posterior"]}
    table = fit.posterior_summary
    assert table["rhat"].max() <= 1.01, table
    for brms_name, ours in names.items():
        r = ref[brms_name]
        mcse = max(r["mcse_mean"], table.loc[ours, "mcse_mean"])
        tol = max(4 * mcse, 0.05 * r["sd"])
        assert abs(table.loc[ours, "mean"] - r["mean"]) <= tol, (brms_name, table.loc[ours, "mean"], r["mean"], tol)


# The brms comparisons run NUTS at full size (4 chains of 2000 draws, in parallel on four CPU
# devices: slow and multidevice); the tests of mechanics run a short sampler.
FULL = dict(seed=1, progress=False, draws=2000, target_accept=0.95)
SHORT = dict(seed=1, progress=False, chains=2, warmup=500, draws=500, target_accept=0.95)


@pytest.fixture(scope="module")
def sleep_nuts():
    model = jg.Model("Reaction ~ Days + (Days | Subject)", jg.load_dataset("sleepstudy"))
    return model.fit("nuts", **FULL)


@pytest.fixture(scope="module")
def short_nuts():
    model = jg.Model("Reaction ~ Days + (Days | Subject)", jg.load_dataset("sleepstudy"))
    return model.fit("nuts", **SHORT)


@pytest.mark.slow
@pytest.mark.multidevice
def test_nuts_sleepstudy_matches_brms(sleep_nuts):
    check_against_brms(sleep_nuts, "sleepstudy_nuts_brms", SLEEP)
    assert sleep_nuts.diagnostics["chain_method"] == "parallel"
    assert sleep_nuts.loglik is None and sleep_nuts.aic is None


@pytest.mark.slow
@pytest.mark.multidevice
def test_collapsed_and_joint_nuts_agree(sleep_nuts):
    """The default for a gaussian model samples (beta, theta, sigma) with u integrated out
    and draws u from its exact conditional; marginalize=False samples u jointly
    (non-centred).  Same posterior: population means within the MCSE rule, random-effect
    means within a fifth of their posterior SD."""
    model = jg.Model("Reaction ~ Days + (Days | Subject)", jg.load_dataset("sleepstudy"))
    joint = model.fit("nuts", marginalize=False, seed=2, progress=False, target_accept=0.9)
    assert sleep_nuts.diagnostics["marginalized"] and not joint.diagnostics["marginalized"]
    a, b = sleep_nuts.posterior_summary, joint.posterior_summary
    assert b.loc[list(SLEEP.values()), "rhat"].max() <= 1.01
    for name in SLEEP.values():
        tol = max(4 * np.hypot(a.loc[name, "mcse_mean"], b.loc[name, "mcse_mean"]),
                  0.05 * a.loc[name, "sd"])
        assert abs(a.loc[name, "mean"] - b.loc[name, "mean"]) <= tol, name
    ra, rb = sleep_nuts.ranef["Subject"], joint.ranef["Subject"]
    for col in ("Intercept", "Days"):
        assert np.all(np.abs(ra[col] - rb[col]) <= 0.2 * ra[f"{col}_sd"]), col
        # and near the REML conditional modes (shrinkage differs a little under the priors)
    reml = model.fit("reml").ranef["Subject"]
    assert np.all(np.abs(ra["Intercept"] - reml["Intercept"]) <= 0.5 * ra["Intercept_sd"])
    with pytest.raises(ValueError, match="marginalize=True integrates"):
        jg.Model("TICKS ~ YEAR + (1 | LOCATION)", jg.load_dataset("grouseticks"),
                 family="poisson").fit("nuts", marginalize=True)


def test_nuts_result_accessors_and_record(short_nuts):
    fit = short_nuts
    draws = fit.posterior.posterior
    assert draws["b_Days"].shape == (2, 500)
    assert fit.fixef["Days"] == pytest.approx(float(draws["b_Days"].mean()))
    assert fit.fixef_se["Days"] == pytest.approx(float(draws["b_Days"].std(ddof=1)), rel=1e-6)
    rec = json.loads(json.dumps(fit.to_dict()))
    assert rec["loglik"] is None and rec["aic"] is None
    assert set(rec["posterior"]["b_Days"]) == {"mean", "sd", "q2.5", "q97.5", "rhat", "ess_bulk"}
    assert any("student_t(3, 288.7, 59.3)" in p for p in rec["priors"])
    assert fit.ranef["Subject"].shape == (18, 4)
    text = str(fit.summary())
    assert "NUTS" in text and "Priors:" in text and "rhat" in text


@pytest.mark.slow
@pytest.mark.multidevice
def test_nuts_wine_cumulative_matches_brms():
    fit = jg.fit("rating ~ temp + contact + (1 | judge)", jg.load_dataset("wine"),
                 family="cumulative", method="nuts", seed=2, progress=False, target_accept=0.9)
    check_against_brms(fit, "wine_cumulative_nuts_brms", WINE)


@pytest.mark.slow
@pytest.mark.multidevice
def test_nuts_grouseticks_negbinomial_matches_brms():
    fit = jg.fit("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", jg.load_dataset("grouseticks"),
                 family="negbinomial", method="nuts", seed=3, progress=False)
    check_against_brms(fit, "grouseticks_negbinomial_nuts_brms", NEGBIN)


@pytest.mark.slow
@pytest.mark.multidevice
@pytest.mark.parametrize("method", ["vi", "map"])
def test_vi_and_map_land_near_nuts(method, sleep_nuts):
    model = jg.Model("Reaction ~ Days + (Days | Subject)", jg.load_dataset("sleepstudy"))
    fit = model.fit(method, seed=0, **({"progress": False} if method == "vi" else {}))
    assert fit.converged, fit.messages
    for name in ("Intercept", "Days"):
        assert abs(fit.fixef[name] - sleep_nuts.fixef[name]) < sleep_nuts.fixef_se[name]


def test_user_priors_by_class_and_name_change_the_fit():
    model = jg.Model("Reaction ~ Days + (Days | Subject)", jg.load_dataset("sleepstudy"))
    fit = model.fit("map", priors={"b_Days": "normal(0, 0.5)"})
    assert "b_Days ~ normal(0, 0.5)" in fit.priors
    assert abs(fit.fixef["Days"]) < 2.0          # shrunk hard towards 0 from 10.5
    with pytest.raises(ValueError, match="no parameter or class 'b_Dayz'"):
        model.fit("map", priors={"b_Dayz": "normal(0, 1)"})
    with pytest.raises(ValueError, match="unknown prior distribution"):
        model.fit("map", priors={"b": "norma(0, 1)"})
    with pytest.raises(ValueError, match="unknown option"):
        model.fit("nuts", chain=2)


def _compile_seconds(caplog, fit_fn):
    """Seconds of each XLA compilation while ``fit_fn`` runs, with a positive control (a
    fresh function compiled first) so that an empty list means nothing compiled."""
    import logging

    import jax
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING, logger="jax"):
            jax.jit(lambda x: x * 1.2345 + 0.5)(np.arange(7.0))      # the control
            result = fit_fn()
    finally:
        jax.config.update("jax_log_compiles", False)
    # JAX logs "Finished XLA compilation of NAME in SECONDS sec"
    seconds = [float(r.getMessage().split(" in ")[-1].split()[0]) for r in caplog.records
               if r.getMessage().startswith("Finished XLA compilation")]
    assert seconds, "compile logging did not work"
    return seconds[1:], result


def test_nuts_reuses_its_compiled_sampler_for_a_same_shape_dataset(short_nuts, caplog):
    from jaxglmm.fit import cache
    df = jg.load_dataset("sleepstudy")
    before = cache.n_compiled()
    seconds, fit = _compile_seconds(caplog, lambda: jg.Model(
        "Reaction ~ Days + (Days | Subject)",
        df.assign(Reaction=df.Reaction * 1.1 + 3)).fit("nuts", **SHORT))
    # the sampler takes seconds to compile, the small helpers around it milliseconds
    # n_compiled counts every XLA compile of the process: here only _compile_seconds's control
    assert cache.n_compiled() == before + 1 and max(seconds, default=0.0) < 0.5, seconds
    # the posterior moved with the data: intercept ~ 1.1 * 251 + 3
    assert abs(fit.fixef["Intercept"] - (1.1 * short_nuts.fixef["Intercept"] + 3)) < 2.0


def test_map_reuses_its_compiled_optimizer_for_a_same_shape_dataset(caplog):
    df = jg.load_dataset("sleepstudy")
    first = jg.Model("Reaction ~ Days + (Days | Subject)", df).fit("map")
    seconds, second = _compile_seconds(caplog, lambda: jg.Model(
        "Reaction ~ Days + (Days | Subject)", df.assign(Reaction=df.Reaction * 1.1 + 3)).fit("map"))
    assert max(seconds, default=0.0) < 0.5, seconds
    assert abs(second.fixef["Intercept"] - (1.1 * first.fixef["Intercept"] + 3)) < 2.0


def test_vi_reuses_its_compiled_program_for_a_same_shape_dataset(caplog):
    df = jg.load_dataset("sleepstudy")
    opts = dict(steps=3000, progress=False, seed=0)
    first = jg.Model("Reaction ~ Days + (Days | Subject)", df).fit("vi", **opts)
    seconds, second = _compile_seconds(caplog, lambda: jg.Model(
        "Reaction ~ Days + (Days | Subject)", df.assign(Reaction=df.Reaction * 1.1 + 3)).fit("vi", **opts))
    assert max(seconds, default=0.0) < 0.5, seconds
    assert abs(second.fixef["Intercept"] - (1.1 * first.fixef["Intercept"] + 3)) < 3.0
    assert second.diagnostics["elbo_trace"].shape == (3000,)


def test_map_optax_and_bfgs_reach_the_same_mode():
    """MAP's default optimizer is optax L-BFGS (zoom line search); the project's BFGS is the
    faster-compiling alternative.  Same mode and Hessian, so (same seed) the same draws."""
    model = jg.Model("Reaction ~ Days + (Days | Subject)", jg.load_dataset("sleepstudy"))
    a = model.fit("map")
    b = model.fit("map", optimizer="bfgs")
    assert a.diagnostics["optimizer"] == "optax" and b.diagnostics["optimizer"] == "bfgs"
    assert a.converged and b.converged
    np.testing.assert_allclose(a.fixef, b.fixef, rtol=1e-5)
    np.testing.assert_allclose(a.varcorr.sd_or_cor, b.varcorr.sd_or_cor, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        model.fit("map", optimizer="adam")
