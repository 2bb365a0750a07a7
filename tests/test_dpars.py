"""Formulas for a family's own parameters (brms's zi ~ ..., hu ~ ...)."""
import numpy as np
import pandas as pd
import pytest

import jaxglmm as jg


def simulate_counts(rng, hurdle=False, G=80, m=20):
    g = np.repeat(np.arange(G), m)
    x, z = rng.normal(size=g.size), rng.normal(size=g.size)
    mu = np.exp(0.5 + 0.4 * x + rng.normal(0, 0.5, G)[g])
    p0 = 1 / (1 + np.exp(-(-0.8 + 1.0 * z)))
    if hurdle:   # zero with probability p0, else a zero-truncated poisson draw
        draws = rng.poisson(mu[:, None], size=(g.size, 50))
        positive = np.array([row[row > 0][0] if np.any(row > 0) else 1 for row in draws])
        y = np.where(rng.random(g.size) < p0, 0, positive)
    else:
        y = np.where(rng.random(g.size) < p0, 0, rng.poisson(mu))
    return pd.DataFrame({"y": y, "x": x, "z": z, "g": g.astype(str)})


@pytest.mark.parametrize("family,dpar", [
    ("zero_inflated_poisson", "zi"),
    pytest.param("hurdle_poisson", "hu", marks=pytest.mark.slow)])
def test_recovers_parameter_formula(family, dpar):
    df = simulate_counts(np.random.default_rng(1), hurdle=dpar == "hu")
    fit = jg.fit("y ~ x + (1 | g)", df, family=family, dpars={dpar: f"{dpar} ~ z"})
    assert fit.converged, fit.messages
    truth = {"Intercept": 0.5, "x": 0.4, f"{dpar}_Intercept": -0.8, f"{dpar}_z": 1.0}
    for name, value in truth.items():
        assert abs(fit.fixef[name] - value) < 4 * fit.fixef_se[name], name
    assert dpar not in fit.family_params
    assert f"{dpar} ~ z" in str(fit.summary())
    # the intercept-only model is nested in it: the formula can only raise the likelihood
    fit0 = jg.fit("y ~ x + (1 | g)", df, family=family)
    assert fit.loglik > fit0.loglik
    assert fit.predict(df.head(4)).shape == (4,)


def test_parameter_formula_errors():
    df = simulate_counts(np.random.default_rng(2), G=10, m=5)
    with pytest.raises(ValueError, match="has no parameter 'zi'"):
        jg.Model("y ~ x + (1 | g)", df, "poisson", dpars={"zi": "~ z"})
    with pytest.raises(ValueError, match="no formula can be given"):
        jg.Model("y ~ x + (1 | g)", df, "zero_inflated_poisson", dpars={"phi": "~ z"})
    with pytest.raises(ValueError, match="must read 'zi ~"):
        jg.Model("y ~ x + (1 | g)", df, "zero_inflated_poisson", dpars={"zi": "hu ~ z"})
    with pytest.raises(ValueError, match="'w'"):
        jg.Model("y ~ x + (1 | g)", df, "zero_inflated_poisson", dpars={"zi": "~ w"})
