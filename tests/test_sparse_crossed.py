"""The sparse crossed LMM path (core.resystem.SparseSystem, fit.likelihood.fit_lmm_sparse)
against the dense blocked path: the same deviance at any theta, the same fit."""
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxglmm as jg
from jaxglmm.core import lmm
from jaxglmm.core import resystem as rs
from jaxglmm.fit import likelihood

CASES = [
    ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),          # crossed
    ("pastes", "strength ~ 1 + (1 | batch/cask)"),                         # nested
    ("sleepstudy", "Reaction ~ Days + (Days | Subject) + (1 | Dayf)"),     # slopes in factor 1
    ("sleepstudy", "Reaction ~ Days + (1 | Subject) + (Days || Dayf)"),    # q = 2 in factor 2
]


def _model(name, formula):
    df = jg.load_dataset(name)
    if name == "sleepstudy":
        df = df.assign(Dayf=df["Days"].astype(str))
    return jg.Model(formula, df)


@pytest.mark.parametrize("name,formula", CASES)
@pytest.mark.parametrize("reml", [True, False])
def test_sparse_deviance_and_parts_equal_dense(name, formula, reml):
    m = _model(name, formula)
    s, a = m.problem.structure, m.problem.arrays
    p = a.X.shape[1]
    d, sd = lmm.lmm_data(s, a), lmm.sparse_lmm_data(s, a)

    @jax.jit
    def both(theta):
        P = lmm.profiled_parts(s, d.cp, theta, d.n, p, reml, d.sum_log_w, full=True)
        Q = lmm.sparse_profiled_parts(s, sd, theta, p, reml, full=True)
        return (P, Q, rs.conditional_covariances(P.chol, s),
                rs.sparse_conditional_covariances(Q.chol, sd.sp, s, rs.lambdas(s, theta)))

    for seed in range(2):
        P, Q, cp, cq = both(jnp.asarray(np.random.default_rng(seed).uniform(0.2, 1.5, s.n_theta)))
        assert abs(float(P.deviance - Q.deviance)) < 1e-8
        np.testing.assert_allclose(Q.beta, P.beta, atol=1e-9)
        np.testing.assert_allclose(Q.u, P.u, atol=1e-9)
        np.testing.assert_allclose(Q.vcov, P.vcov, atol=1e-9)
        for x, y in zip(cp, cq):
            np.testing.assert_allclose(y, x, atol=1e-9)


@pytest.mark.parametrize("name,formula,method", [
    CASES[0] + ("reml",), CASES[1] + ("ml",),
    pytest.param(*CASES[0], "ml", marks=pytest.mark.slow),
    pytest.param(*CASES[2], "ml", marks=pytest.mark.slow)])
def test_sparse_fit_equals_dense_fit(name, formula, method):
    m = _model(name, formula)
    dense = m.fit(method)
    raw = likelihood.fit_lmm_sparse(m.problem, method == "reml")
    assert int(raw.status) == 0
    assert abs(-0.5 * float(raw.deviance) - dense.loglik) < 1e-7
    np.testing.assert_allclose(np.asarray(raw.beta), dense.fixef.values, atol=1e-6)
    s = m.problem.structure
    np.testing.assert_allclose(rs.canonical_theta(s, np.asarray(raw.theta)),
                               rs.canonical_theta(s, dense.optinfo["x"]), atol=1e-4)
    np.testing.assert_allclose(float(raw.sigma), dense.sigma, rtol=1e-6)
    # the finite-difference gradient and Hessian of values against the dense fit's
    # (up to the signs of theta's columns: the deviance is even in each)
    np.testing.assert_allclose(np.abs(raw.hessian), np.abs(dense.optinfo["hessian"]),
                               rtol=1e-3, atol=1e-3 * np.abs(dense.optinfo["hessian"]).max())
    assert np.max(np.abs(np.asarray(raw.grad))) < 1e-2


def test_verbose_prints_the_objective(capfd):
    """A small crossed LMM stays on the dense path with verbose=True (the same optimizer,
    the same fit), printing each deviance it evaluates."""
    m = _model("penicillin", CASES[0][1])
    fit = m.fit("ml", verbose=True)
    out = capfd.readouterr().out
    devs = [float(ln.split()[2]) for ln in out.splitlines() if ln.startswith("ml: deviance")]
    assert len(devs) > 5
    assert min(devs) == pytest.approx(-2 * fit.loglik, rel=1e-9)
    assert abs(fit.loglik - m.fit("ml").loglik) < 1e-9


def _crossed(n_rows, g1, g2, g3, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, g1, n_rows)
    b = rng.integers(0, g2, n_rows)
    c = b % g3
    y = (rng.normal(size=g1)[a] * 0.5 + rng.normal(size=g2)[b] * 0.3
         + rng.normal(size=g3)[c] * 0.2 + rng.normal(size=n_rows))
    x = rng.integers(0, 2, n_rows)
    return pd.DataFrame({"y": y + 0.1 * x, "x": x.astype(str), "a": a.astype(str),
                         "b": b.astype(str), "c": c.astype(str)})


def test_path_is_picked_by_size():
    small = _model(*CASES[0])
    assert not likelihood.uses_sparse_lmm(small.problem, "ml")
    big = jg.Model("y ~ x + (1 | a) + (1 | b)", _crossed(20_000, 3000, 400, 1))
    assert likelihood.uses_sparse_lmm(big.problem, "ml")
    assert not likelihood.uses_sparse_lmm(big.problem, "laplace") or big.problem.exact_lmm


@pytest.mark.slow
def test_sparse_large_crossed_equals_dense():
    """A crossed and partly nested design large enough to take the sparse path by default,
    against the dense path's compiled fit."""
    m = jg.Model("y ~ x + (1 | a) + (1 | b) + (1 | c)", _crossed(20_000, 3000, 400, 20))
    assert likelihood.uses_sparse_lmm(m.problem, "ml")
    sparse = m.fit("ml")
    raw = likelihood._program(m.problem, "ml", 1)(m.problem.arrays,
                                             m.problem.starts[0])
    assert abs(sparse.loglik + 0.5 * float(raw.deviance)) < 1e-6
    np.testing.assert_allclose(sparse.fixef.values, np.asarray(raw.beta), atol=1e-6)


def test_the_sparse_path_prints_its_objective_when_verbose(capfd):
    m = _model("penicillin", CASES[0][1])
    raw = likelihood.fit_lmm_sparse(m.problem, False, verbose=True)
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("iteration")]
    assert len(lines) > 5 and "objective" in lines[-1]
    assert abs(float(raw.loglik) - m.fit("ml").loglik) < 1e-7
