"""Shape buckets (jaxglmm.fit.buckets): a single fit runs the program of its rows and levels
rounded up, padded with zero-weight rows and empty levels, so that the next model of the
same form compiles nothing; the padded fit equals the unpadded one to 1e-10."""
import numpy as np
import pytest

import jaxglmm as jg
from jaxglmm.core.lazy import Deferred
from jaxglmm.fit import buckets, cache, likelihood
from jaxglmm.methods import get_method

CASES = {
    "sleepstudy-reml": ("Reaction ~ Days + (Days | Subject)", "sleepstudy", "gaussian", "reml"),
    "cbpp-laplace": ("cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbpp",
                     "binomial", "laplace"),
    "grouseticks-agq": ("TICKS ~ YEAR + (1 | LOCATION)", "grouseticks", "poisson", "agq"),
    # nested: two factors padded; its ML deviance rounds at 1e-12 (the optimizer's stall rule)
    "pastes-ml": ("strength ~ 1 + (1 | batch/cask)", "pastes", "gaussian", "ml"),
}


def _close(a, b, what, tol=1e-10):
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert a.shape == b.shape, what
    assert np.max(np.abs(a - b)) <= tol * max(1.0, np.max(np.abs(b))), (what, a, b)


@pytest.mark.parametrize("case", list(CASES))
def test_padded_fit_equals_unpadded(case):
    formula, data, family, method = CASES[case]
    problem = jg.Model(formula, jg.load_dataset(data), family=family).problem
    bucketed, levels = buckets.padded(problem)
    assert bucketed.arrays.y.shape[0] > problem.arrays.y.shape[0]      # rows were padded
    assert levels is not None                                           # and levels
    padded = likelihood.run(problem, get_method(method), {})
    plain = likelihood.run(problem, get_method(method), {}, pad=False)
    assert int(padded.status) == int(plain.status) == 0
    for name in ("theta", "beta", "deviance", "vcov", "u"):
        _close(getattr(padded, name), getattr(plain, name), name)
    # the optimizer's finite-difference Hessian (error about 1e-8), taken where each run
    # stopped before the closing Newton step: rounding can stop them 1e-6 apart
    _close(padded.hessian, plain.hessian, "hessian", 1e-5)
    for k, (x, y) in enumerate(zip(padded.b + padded.b_cov, plain.b + plain.b_cov)):
        _close(x, y, f"b/b_cov {k}")


def test_a_second_model_in_the_bucket_compiles_no_fit():
    """Another subset of the data, other column names: the same bucket, nothing compiled."""
    ss = jg.load_dataset("sleepstudy")
    jg.Model("Reaction ~ Days + (Days | Subject)", ss).fit("reml")
    keep = ss.Subject.astype(str) != str(ss.Subject.iloc[0])
    other = ss[keep].rename(columns={"Reaction": "r", "Days": "d", "Subject": "s"})
    model = jg.Model("r ~ d + (d | s)", other)
    before = cache.n_compiled()
    raw = likelihood.run(model.problem, get_method("reml"), {})
    assert cache.n_compiled() == before
    # the fit ran the padded host arrays: the problem's own never went to the device
    assert isinstance(model.problem.__dict__["arrays"], Deferred)
    assert np.asarray(raw.b[0]).shape == (17, 2)
    plain = likelihood.run(model.problem, get_method("reml"), {}, pad=False)
    _close(raw.beta, plain.beta, "beta")
    _close(raw.theta, plain.theta, "theta")


def test_bucket_sizes():
    assert [buckets.bucket_size(n) for n in (5, 8, 9, 17, 100, 1000)] == [5, 8, 10, 20, 112, 1024]
    problem = jg.Model("Reaction ~ Days + (Days | Subject)", jg.load_dataset("sleepstudy")).problem
    bucketed, levels = buckets.padded(problem)
    assert bucketed.arrays.y.shape[0] == 256 and levels == (18,)
    assert bucketed.structure.factors[0].n_levels == 32
    w = np.asarray(bucketed.arrays.weights)
    assert np.all(w[:180] == 1.0) and np.all(w[180:] == 0.0)
    # names are not part of the program: the anonymous structure drops them
    assert bucketed.structure.factors[0].group == "" and problem.structure.factors[0].group


def test_arrays_first_read_inside_a_trace_are_concrete():
    """A problem's device arrays are made when first read; read first inside a traced
    fit_fn, they are still concrete arrays (not the trace's, kept by the problem)."""
    import jax
    model = jg.Model("Reaction ~ Days + (1 | Subject)", jg.load_dataset("sleepstudy"))
    assert isinstance(model.problem.__dict__["arrays"], Deferred)
    out = jax.jit(model.fit_fn("reml", case_weights=True))()
    assert np.isfinite(np.asarray(out.beta)).all()
    assert isinstance(model.problem.arrays.y, jax.Array)
    assert not isinstance(model.problem.arrays.y, jax.core.Tracer)
    np.testing.assert_array_equal(np.asarray(model.arrays.index[0])[:3], [0, 0, 0])
