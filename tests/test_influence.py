"""Influence diagnostics against lme4 (tests/data/inference_reference.json from
scripts/inference_reference.R, tests/data/influence_reference.json from
scripts/influence_reference.R): hat values, Cook's distances, exact leave-one-group-out
refits (one batch); first-order dfbeta against finite differences of refits; MAP prior
sensitivity against refits with moved priors; refusals."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxglmm as jg
from jaxglmm.fit.likelihood import COMPILER_OPTIONS

DATA = Path(__file__).parent / "data"
REF = json.loads((DATA / "inference_reference.json").read_text())
FRESH = json.loads((DATA / "influence_reference.json").read_text())


@pytest.fixture(scope="module")
def sleep_fit(shared_fit):
    return shared_fit("Reaction ~ Days + (Days | Subject)", "sleepstudy", "gaussian", "reml")


@pytest.fixture(scope="module")
def cbpp_fit(shared_fit):
    return shared_fit("cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbpp",
                      "binomial", "laplace")


def _close(a, b, tol):
    """Agreement to ``tol`` relative to the largest reference value (the fits agree with
    lme4's to about 1e-6, so a tiny distance has a larger relative error)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert np.max(np.abs(a - b)) <= tol * np.max(np.abs(b)), np.max(np.abs(a - b))


def test_sleepstudy_hatvalues_and_cooks(sleep_fit):
    ref = REF["cooks_distance"]["ss_reml"]
    _close(sleep_fit.hatvalues(), ref["hatvalues"], 1e-5)
    _close(sleep_fit.cooks_distance(), ref["values"], 1e-4)
    _close(sleep_fit.cooks_distance(), FRESH["ss_reml"]["cooks_distance"], 1e-4)


def test_cbpp_hatvalues_and_cooks(cbpp_fit):
    ref = FRESH["cbpp"]
    _close(cbpp_fit.hatvalues(), ref["hatvalues"], 1e-5)
    _close(cbpp_fit.cooks_distance(), ref["cooks_distance"], 1e-4)


def test_leave_one_out_matches_lme4(sleep_fit):
    ref = REF["influence"]["ss_reml_lme4"]
    loo = sleep_fit.leave_one_out("Subject")
    assert list(loo.index) == ref["deleted"]
    R = np.array(ref["fixed_effects_deleted"]["values"])
    np.testing.assert_allclose(loo[["Intercept", "Days"]].to_numpy(), R, rtol=1e-5)
    hand = REF["influence"]["ss_reml_refit_by_hand"]
    np.testing.assert_allclose(loo["sigma"], [hand["sigma"][k] for k in ref["deleted"]],
                               rtol=1e-5)
    assert loo["converged"].all()
    np.testing.assert_allclose(sleep_fit.cooks_distance("Subject", exact=True),
                               ref["cooks_distance_groups"]["values"], rtol=1e-4)


def test_leave_one_herd_out_matches_lme4(cbpp_fit):
    ref = FRESH["cbpp_influence_herd"]
    loo = cbpp_fit.leave_one_out("herd")
    assert list(loo.index) == list(cbpp_fit.ranef["herd"].index)      # the model's level order
    np.testing.assert_allclose(loo.loc[ref["deleted"], list(cbpp_fit.fixef.index)].to_numpy(),
                               np.array(ref["fixed_effects_deleted"]), rtol=1e-5, atol=1e-6)
    cooks = cbpp_fit.cooks_distance("herd", exact=True)
    np.testing.assert_allclose(cooks.loc[ref["deleted"]], ref["cooks_distance"], rtol=1e-4)


@pytest.mark.slow
def test_first_order_influence(sleep_fit):
    """dfbeta of influence() is minus the derivative in the deleted rows' case weight:
    checked against central differences of refits that down-weight one subject, and
    (loosely) against the exact deletion, which it only approximates."""
    inf = sleep_fit.influence("Subject")
    loo = sleep_fit.leave_one_out("Subject")
    f = jax.jit(jg.Model.of(sleep_fit.problem, sleep_fit.spec).fit_fn("reml", case_weights=True))
    idx = np.asarray(sleep_fit.problem.arrays.index[0])
    h = 1e-4
    for g in (0, 7):
        e = jnp.asarray((idx == g).astype(float))
        up, down = f(weights=1.0 + h * e), f(weights=1.0 - h * e)
        fd = -(np.asarray(up.beta) - np.asarray(down.beta)) / (2 * h)
        first = inf.iloc[g][["dfbeta_Intercept", "dfbeta_Days"]].to_numpy(float)
        np.testing.assert_allclose(first, fd, rtol=1e-5, atol=1e-8)
        exact = np.asarray(f(weights=1.0 - e).beta) - sleep_fit.fixef.to_numpy()
        # case weight 0 is the exact deletion: the batch refit's
        np.testing.assert_allclose(exact, loo.iloc[g][["Intercept", "Days"]].to_numpy(float)
                                   - sleep_fit.fixef.to_numpy(), rtol=1e-6)
        assert np.sign(first[0]) == np.sign(exact[0])
    obs = sleep_fit.influence("obs")
    assert obs.shape[0] == 180 and "d_sigma" in obs.columns
    np.testing.assert_allclose(obs["cooks_distance"], sleep_fit.cooks_distance())
    exact_obs = np.asarray(f(weights=1.0 - jnp.eye(180)[5]).beta) - sleep_fit.fixef.to_numpy()
    np.testing.assert_allclose(obs.iloc[5][["dfbeta_Intercept", "dfbeta_Days"]].to_numpy(float),
                               exact_obs, rtol=0.1)


@pytest.mark.slow
def test_map_sensitivity_matches_refits():
    model = jg.Model("Reaction ~ Days + (Days | Subject)", jg.load_dataset("sleepstudy"))
    fit = model.fit("map", priors={"b": "normal(0, 20)"})
    sens = fit.sensitivity("b")
    assert list(sens.columns) == ["b:location", "b:scale"]
    f = jax.jit(model.fit_fn("map", priors={"b": "normal(0, 20)"}),
                compiler_options=COMPILER_OPTIONS)       # the library's small-fit options
    h = 1e-3
    for j, col in enumerate(sens.columns):
        step = np.zeros(2)
        step[j] = h
        up = f(priors={"b": jnp.asarray([0.0, 20.0] + step)})
        down = f(priors={"b": jnp.asarray([0.0, 20.0] - step)})
        fd = (np.asarray(up.beta) - np.asarray(down.beta)) / (2 * h)
        np.testing.assert_allclose(sens[col].iloc[:2].to_numpy(), fd, rtol=1e-5, atol=1e-9)


def test_refusals(sleep_fit):
    with pytest.raises(ValueError, match="not a grouping factor"):
        sleep_fit.leave_one_out("Subjekt")
    with pytest.raises(ValueError, match="sensitivity is for MAP fits"):
        sleep_fit.sensitivity()
    with pytest.raises(ValueError, match="give level=<group name>"):
        sleep_fit.cooks_distance("obs", exact=True)
