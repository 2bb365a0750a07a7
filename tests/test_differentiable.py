"""Differentiable fits (model.fit_fn): implicit derivatives against central finite
differences of full refits, in y, the weights and an offset, for an LMM (sleepstudy), a
Laplace binomial GLMM (cbpp) and a negative-binomial GLMM (grouseticks); jit, vmap, jvp,
grad and jacobian; one compile of jit(grad(loss)); refusals."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxglmm as jg
from jaxglmm.fit.likelihood import COMPILER_OPTIONS

# The library's own compile options for small fits (XLA's backend optimizations off, the older
# CPU fusion emitters): the implicit-derivative programs here compile in half the time with
# them (grouseticks negative-binomial JVP: 46 s against 92 s) and compute the same numbers.
jit = functools.partial(jax.jit, compiler_options=COMPILER_OPTIONS)

FIELDS = ("beta", "theta", "loglik", "se")
STEP = 1e-3          # central differences: truncation ~STEP^2, rounding ~1e-13 / STEP


@pytest.fixture(scope="module")
def sleep():
    return jg.Model("Reaction ~ Days + (Days | Subject)", jg.load_dataset("sleepstudy"))


def _directions(model, interior):
    """A direction for each input, random on the rows where the likelihood is smooth in y
    (``interior``: a binomial's 0 < y < n, a count's y > 0: the kernels switch at the
    boundary)."""
    rng = np.random.default_rng(3)
    n = model.design.nobs
    v = rng.standard_normal(n)
    return {"y": v * interior, "weights": 0.2 * rng.standard_normal(n),
            "offset": 0.05 * rng.standard_normal(n)}


def _check_gradients(model, method, interior, tol=1e-5, se_tol=1e-4):
    f = model.fit_fn(method)
    base = {"y": model.arrays.y, "weights": model.arrays.weights, "offset": model.arrays.offset}
    # one compiled program (the fit's and its JVP's are each minutes of compiling): the
    # refits are its primal outputs at the moved data
    jvp = jit(lambda y, w, o, t: jax.jvp(lambda *a: f(*a), (y, w, o), t))
    zero = {k: jnp.zeros_like(v) for k, v in base.items()}
    errors = {}
    for name, v in _directions(model, interior).items():
        tangents = tuple(jnp.asarray(v) if k == name else zero[k] for k in base)
        tan = jvp(*base.values(), tangents)[1]
        moved = lambda s: jvp(*(base[k] + s * STEP * (v if k == name else 0.0)   # noqa: E731
                                for k in base), tangents)[0]
        up, down = moved(1.0), moved(-1.0)
        for field in FIELDS:
            a = np.atleast_1d(np.asarray(getattr(tan, field)))
            b = np.atleast_1d((np.asarray(getattr(up, field)) - np.asarray(getattr(down, field)))
                              / (2 * STEP))
            err = np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)
            errors[(name, field)] = err
            assert err < (se_tol if field == "se" else tol), (name, field, a, b)
    print(f"{method} max relative error of the JVP against central differences of refits:",
          {f"{k[0]}/{k[1]}": f"{v:.1e}" for k, v in errors.items()})
    return errors


@pytest.mark.slow
def test_lmm_gradients_match_refits(sleep):
    errors = _check_gradients(sleep, "reml", np.ones(sleep.design.nobs))
    assert len(errors) == 12


@pytest.mark.slow
def test_binomial_laplace_gradients_match_refits():
    model = jg.Model("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                     jg.load_dataset("cbpp"), family="binomial")
    y, n = np.asarray(model.arrays.y), np.asarray(model.arrays.trials)
    errors = _check_gradients(model, "laplace", (y > 0) & (y < n))
    # issue 22: the implicit derivatives in the prior weights to 1e-6 of refits (about 1e-8)
    assert max(errors["weights", f] for f in ("beta", "theta", "se")) < 1e-6, errors


@pytest.mark.slow
def test_negbinomial_gradients_match_refits():
    model = jg.Model("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", jg.load_dataset("grouseticks"),
                     family="negbinomial", categorical=["YEAR"])
    _check_gradients(model, "laplace", np.asarray(model.arrays.y) > 0)


@pytest.mark.slow
def test_estimates_equal_fit_and_grad_compiles_once(sleep):
    """The forward values are the fit's; jit(grad(loss)) traces once for two datasets;
    jacobian agrees with grad and vmap with single fits (jvp: the finite-difference tests)."""
    fit = sleep.fit("ml")
    f = sleep.fit_fn("ml")
    fwd = jit(lambda y: f(y=y))
    y0 = sleep.arrays.y
    out = fwd(y0)
    np.testing.assert_allclose(out.beta, fit.fixef.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(out.se, fit.fixef_se.to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(out.loglik, fit.loglik, rtol=1e-9)
    np.testing.assert_allclose(out.sigma, fit.sigma, rtol=1e-6)
    traces = []

    def loss(y):
        traces.append(1)
        return f(y=y).se[1]
    grad = jit(jax.grad(loss))
    g0 = grad(y0)
    g1 = grad(y0 + 1.0)
    assert len(traces) == 1 and np.all(np.isfinite(g1))
    v = jnp.asarray(np.random.default_rng(0).standard_normal(y0.shape))
    jac = jit(jax.jacobian(lambda y: f(y=y).se))(y0)        # reverse mode, every output
    np.testing.assert_allclose(jac[1], g0, rtol=1e-10)
    ys = jnp.stack([y0, y0 + v])
    batch = jit(jax.vmap(lambda y: f(y=y)))(ys)
    np.testing.assert_allclose(batch.beta[1], fwd(y0 + v).beta, rtol=1e-8)
    np.testing.assert_allclose(batch.se[0], out.se, rtol=1e-10)


def test_refusals(sleep):
    with pytest.raises(ValueError, match="fit_fn takes method"):
        sleep.fit_fn("nuts")
    with pytest.raises(ValueError, match="unknown option"):
        sleep.fit_fn("ml", agq_points=3)
    cbpp = jg.Model("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                    jg.load_dataset("cbpp"), family="binomial")
    with pytest.raises(ValueError, match="gaussian models"):
        cbpp.fit_fn("reml")
    f = sleep.fit_fn("ml")
    with pytest.raises(ValueError, match="priors= is for method='map'"):
        f(priors={"b": jnp.zeros(0)})
    with pytest.raises(ValueError, match=r"y must have shape \(180,\)"):
        f(y=jnp.zeros(3))
