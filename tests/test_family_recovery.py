"""Every family as a mixed model: simulate from known parameters with the family's own
simulator, fit by Laplace, and recover the fixed effects (within 4 SE), the random-effect SD
and the family's parameters."""
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxglmm as jg
from jaxglmm.families import get_family

# family -> (true intercept, natural family parameters, tolerance on the family parameters)
CASES = {
    "poisson": (0.5, {}, None),
    "bernoulli": (0.2, {}, None),
    "negbinomial": (0.8, {"shape": 3.0}, 0.35),
    "Gamma": (0.5, {"shape": 4.0}, 0.2),
    "lognormal": (0.5, {"sigma": 0.6}, 0.1),
    "beta": (-0.3, {"phi": 8.0}, 0.2),
    "student": (1.0, {"sigma": 0.8, "nu": 6.0}, 0.5),
    "zero_inflated_poisson": (0.8, {"zi": 0.25}, 0.3),
    "zero_inflated_negbinomial": (0.8, {"shape": 4.0, "zi": 0.2}, 0.5),
    "hurdle_poisson": (0.8, {"hu": 0.3}, 0.2),
    "hurdle_negbinomial": (0.8, {"shape": 4.0, "hu": 0.3}, 0.5),
    "cumulative": (0.0, {"thresholds": np.array([-1.0, 0.3, 1.5])}, 0.25),
}
SLOPE, SD, GROUPS, PER = 0.6, 0.5, 60, 25


def simulate(name, seed=0):
    rng = np.random.default_rng(seed)
    intercept, fparams, _ = CASES[name]
    g = np.repeat(np.arange(GROUPS), PER)
    x = rng.normal(size=g.size)
    eta = (intercept if name != "cumulative" else 0.0) + SLOPE * x + rng.normal(0, SD, GROUPS)[g]
    fam = get_family(name)
    fp = {k: jnp.asarray(v) for k, v in fparams.items()}
    y = np.asarray(fam.simulate(jax.random.PRNGKey(seed), jnp.asarray(eta), jnp.ones(g.size), fp))
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{k}" for k in g]})


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_family_recovers_known_parameters(name):
    df = simulate(name)
    fit = jg.fit("y ~ x + (1 | g)", df, family=name)
    assert fit.converged, fit.messages
    assert abs(fit.fixef["x"] - SLOPE) < 4 * fit.fixef_se["x"]
    if name != "cumulative":
        assert abs(fit.fixef["Intercept"] - CASES[name][0]) < 4 * fit.fixef_se["Intercept"] + 0.05
    sd = fit.varcorr.set_index("group").sd_or_cor["g"]
    assert abs(sd - SD) < 0.2, sd
    _, truth, tol = CASES[name]
    params = dict(fit.family_params)
    if fit.sigma is not None:
        params["sigma"] = fit.sigma
    for key, value in truth.items():
        np.testing.assert_allclose(params[key], value, rtol=tol, err_msg=key)
