"""Implicit derivatives in observation weights (issue 22): ``model.fit_fn``'s derivatives of
the estimates with respect to a few prior weights agree with central differences of full
``model.fit`` refits to 1e-6 relative, on cbpp Laplace.  Before the fits ended with a
guarded Newton step (fit.optimize.fd_hessian_newton), the refits stopped 1e-9 to 1e-8
short of the optimum by an amount that varies with the weights, and their differences
were off by 3e-4 to 2e-3 relative at every step size."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxglmm as jg
from jaxglmm.fit.likelihood import COMPILER_OPTIONS

# the library's compile options for small fits: these programs compile in about half the time
jit = functools.partial(jax.jit, compiler_options=COMPILER_OPTIONS)

FORMULA = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
ROWS = (0, 5, 20)
STEP = 1e-4          # relative to the weight (1): truncation ~1e-8, rounding ~1e-13 / STEP


def _estimates(beta, theta, loglik):
    return np.concatenate([np.asarray(beta), np.atleast_1d(np.asarray(theta)),
                           np.atleast_1d(np.asarray(loglik))])


@pytest.mark.slow
def test_weight_derivatives_match_model_fit_refits():
    data = jg.load_dataset("cbpp")
    data["w"] = 1.0
    model = jg.Model(FORMULA, data, family="binomial", weights="w")
    w0 = jnp.asarray(model.arrays.weights)
    f = model.fit_fn("laplace")

    def at(v):          # the estimates as a function of the chosen rows' weights
        out = f(weights=w0.at[jnp.asarray(ROWS)].set(v))
        return jnp.concatenate([out.beta, jnp.atleast_1d(out.theta),
                                jnp.atleast_1d(out.loglik)])
    v0 = w0[jnp.asarray(ROWS)]
    J = np.asarray(jit(jax.jacfwd(at))(v0))          # (estimates, rows)

    def refit(w):
        d = data.copy()
        d["w"] = w
        fit = jg.Model(FORMULA, d, family="binomial", weights="w").fit("laplace")
        return _estimates(fit.fixef.to_numpy(), fit.theta, fit.loglik)

    base = refit(np.asarray(w0))
    np.testing.assert_allclose(np.asarray(jit(at)(v0)), base, rtol=1e-10, atol=1e-10)
    errors = []
    for j, i in enumerate(ROWS):
        h = STEP * float(w0[i])
        e = np.zeros(w0.shape[0])
        e[i] = h
        fd = (refit(np.asarray(w0) + e) - refit(np.asarray(w0) - e)) / (2 * h)
        # relative, or absolute (on the scale of the row's largest derivative) near zero
        scale = np.maximum(np.abs(fd), 1e-3 * np.max(np.abs(fd)))
        err = np.max(np.abs(J[:, j] - fd) / scale)
        errors.append(err)
        assert err < 1e-6, (i, J[:, j], fd)
    print("d estimates / d weight, max relative error against model.fit refits:",
          [f"{e:.1e}" for e in errors])
