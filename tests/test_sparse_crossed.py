"""The sparse crossed LMM path (design.sparse.SparseSystem, core.sparse, fit.likelihood.fit_lmm_sparse)
against the dense blocked path: the same deviance at any theta, the same fit."""
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxglmm as jg
from jaxglmm.core import lmm
from jaxglmm.core import blocked, restructure as rs, sparse as sps
from jaxglmm.design.sparse import lapack_cholesky_inverse, sparse_lmm_data, sparse_theta_start
from jaxglmm.fit import likelihood
from jaxglmm.methods import get_method

CASES = [
    ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),          # crossed
    ("pastes", "strength ~ 1 + (1 | batch/cask)"),                         # nested
    ("sleepstudy", "Reaction ~ Days + (Days | Subject) + (1 | Dayf)"),     # slopes in factor 1
    ("sleepstudy", "Reaction ~ Days + (1 | Subject) + (Days || Dayf)"),    # q = 2 in factor 2
    ("partially_crossed", "y ~ x + (1 | a) + (1 | b)"),                   # partially crossed
]


def _partially_crossed():
    """Classes (a) each meeting a few of the teachers (b) of its own school's window: a
    partially crossed design (most (a, b) pairs never occur), with a covariate."""
    rng = np.random.default_rng(11)
    n = 900
    a = rng.integers(0, 60, n)
    b = (a // 4) * 2 + rng.integers(0, 5, n)          # overlapping windows of 5 teachers
    x = rng.normal(size=n)
    y = (rng.normal(size=60)[a] * 0.6 + rng.normal(size=b.max() + 1)[b] * 0.4 + 0.3 * x
         + rng.normal(size=n))
    return pd.DataFrame({"y": y, "x": x, "a": a.astype(str), "b": b.astype(str)})


def _model(name, formula):
    if name == "partially_crossed":
        return jg.Model(formula, _partially_crossed())
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
    d, sd = lmm.lmm_data(s, a), sparse_lmm_data(s, a)

    @jax.jit
    def both(theta):
        P = lmm.profiled_parts(s, d.cp, theta, d.n, p, reml, d.sum_log_w, full=True)
        Q = lmm.sparse_profiled_parts(s, sd, theta, p, reml, full=True)
        return (P, Q, blocked.conditional_covariances(P.chol, s),
                sps.sparse_conditional_covariances(Q.chol, sd.sp, s, rs.lambdas(s, theta)))

    def close(x, y):        # to 1e-10 relative to the quantity's size
        x, y = np.asarray(x), np.asarray(y)
        assert np.max(np.abs(x - y)) <= 1e-10 * (1.0 + np.max(np.abs(x)))

    for seed in range(2):
        P, Q, cp, cq = both(jnp.asarray(np.random.default_rng(seed).uniform(0.2, 1.5, s.n_theta)))
        close(P.deviance, Q.deviance)
        close(P.beta, Q.beta)
        close(P.u, Q.u)
        close(P.vcov, Q.vcov)
        for x, y in zip(cp, cq):
            close(x, y)


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
    assert not likelihood.uses_sparse_lmm(small.problem, get_method("ml"))
    big = jg.Model("y ~ x + (1 | a) + (1 | b)", _crossed(20_000, 3000, 400, 1))
    assert likelihood.uses_sparse_lmm(big.problem, get_method("ml"))
    assert not likelihood.uses_sparse_lmm(big.problem, get_method("laplace")) \
        or big.problem.exact_lmm


@pytest.mark.slow
def test_sparse_large_crossed_equals_dense():
    """A crossed and partly nested design large enough to take the sparse path by default,
    against the dense path's compiled fit."""
    m = jg.Model("y ~ x + (1 | a) + (1 | b) + (1 | c)", _crossed(20_000, 3000, 400, 20))
    assert likelihood.uses_sparse_lmm(m.problem, get_method("ml"))
    sparse = m.fit("ml")
    raw = likelihood._program(m.problem, True, False, 1)(m.problem.arrays,
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


@pytest.mark.parametrize("formula,weights", [
    ("y ~ x + (1 | a) + (1 | b) + (1 | c)", None),       # crossed, c nested in b
    ("y ~ x + (1 | a) + (1 | b)", "w"),                   # prior weights
    ("y ~ 1 + (1 | a) + (1 | b/c)", None)])               # nested b:c first
@pytest.mark.parametrize("reml", [False, True])
def test_closed_form_gradient_equals_central_differences(formula, weights, reml):
    """The scalar-block deviance gradient (lmm.sparse_deviance_gradient), on the device and
    through LAPACK on the host (the CPU's staged program), against central differences."""
    df = _crossed(600, 40, 15, 5, seed=3)
    df["w"] = np.random.default_rng(4).uniform(0.5, 2.0, len(df))
    m = jg.Model(formula, df, weights=weights) if weights else jg.Model(formula, df)
    s, a = m.problem.structure, m.problem.arrays
    assert sps.scalar_blocks(s)
    sd, p = sparse_lmm_data(s, a), a.X.shape[1]
    dev = jax.jit(lambda th: lmm.sparse_profiled_parts(s, sd, th, p, reml, full=False))
    device = jax.jit(lambda th: lmm.sparse_deviance_gradient(s, sd, th, p, reml))
    staged = likelihood._sparse_lmm_gradient_program(s, reml)
    h = 1e-5
    for seed in range(2):
        th = jnp.asarray(np.random.default_rng(seed).uniform(0.2, 1.5, s.n_theta))
        fd = np.array([(dev(th.at[i].add(h)) - dev(th.at[i].add(-h))) / (2 * h)
                       for i in range(s.n_theta)])
        for f, g in (device(th), staged(sd, th)[:2]):
            assert abs(float(f) - float(dev(th))) < 1e-9
            np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-6, atol=1e-6)
    # at theta_j = 0 the deviance is even in theta_j: the gradient there is 0
    f, g = device(th.at[1].set(0.0))
    assert float(g[1]) == 0.0 and np.all(np.isfinite(np.asarray(g)))


def test_scalar_blocks_only_take_the_gradient():
    assert sps.scalar_blocks(_model(*CASES[0]).problem.structure)
    assert not sps.scalar_blocks(_model(*CASES[2]).problem.structure)
    assert not sps.scalar_blocks(_model(*CASES[3]).problem.structure)


def test_moment_start_lands_near_the_optimum():
    """design.sparse.sparse_theta_start (the gradient path's start) against the fitted theta, on a
    crossed design with a small third factor, and the floor for a factor with no variance."""
    df = _crossed(6000, 400, 120, 12, seed=5)
    m = jg.Model("y ~ x + (1 | a) + (1 | b) + (1 | c)", df)
    s = m.problem.structure
    start = sparse_theta_start(s, sparse_lmm_data(s, m.problem.arrays))
    fit = m.fit("ml")
    ratio = start / np.maximum(np.abs(fit.optinfo["x"]), 0.05)     # theta is sign-free
    assert np.all((ratio > 0.5) & (ratio < 2.0)), (start, fit.optinfo["x"])
    rng = np.random.default_rng(6)
    df["noise"] = rng.integers(0, 50, len(df)).astype(str)       # no variance of its own
    df["y"] = rng.normal(size=len(df))
    m = jg.Model("y ~ 1 + (1 | a) + (1 | noise)", df)
    s = m.problem.structure
    start = sparse_theta_start(s, sparse_lmm_data(s, m.problem.arrays))
    assert np.all(start >= 0.05) and np.all(start < 0.3)


@pytest.mark.parametrize("reml", [False, True])
def test_finish_with_the_hosts_factor_equals_the_devices(reml):
    """The sparse fit's last step takes LAPACK's factor and inverse on the CPU; on other
    devices it factors itself: both give the same estimates and covariances."""
    m = _model(*CASES[0])
    s, a = m.problem.structure, m.problem.arrays
    sd = sparse_lmm_data(s, a)
    _, _, finish = likelihood._sparse_lmm_programs(s, reml)
    x = jnp.asarray([0.9, 2.1])
    S = likelihood._sparse_schur_program(s)(sd, x)
    L22, Sig = lapack_cholesky_inverse(np.asarray(S), s.p2)
    host = finish(sd, x, jnp.asarray(L22), jnp.asarray(Sig))
    device = finish(sd, x)
    for h, dv in zip(jax.tree_util.tree_leaves(host), jax.tree_util.tree_leaves(device)):
        np.testing.assert_allclose(np.asarray(h), np.asarray(dv), rtol=1e-9, atol=1e-10)
