"""Nested designs through the nested factor (jaxglmm.core.nested): lme4's fits (tight
refits) and glmmTMB's Laplace fit (scripts/nested_reference.R), the same deviance, gradient
and conditional covariances as the dense blocked factor at any point, and which designs
count as nested."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxglmm as jg
from jaxglmm.core import lmm, nested, restructure as rs
from jaxglmm.core.glmm_sparse import SparseLaplace
from jaxglmm.core.lmm import lmm_data, nested_lmm_data, nested_profiled_parts, profiled_parts
from jaxglmm.core.problem import host_arrays
from jaxglmm.fit import likelihood

DATA = Path(__file__).parent / "data"
REF = json.loads((DATA / "nested_reference.json").read_text())


@pytest.fixture(scope="module")
def data():
    return pd.read_csv(DATA / "nested_small.csv")


@pytest.mark.parametrize("case", sorted(REF))
def test_nested_fits_match_r(case, data):
    ref = REF[case]
    m = jg.Model(ref["formula"], data, family=ref["family"])
    assert likelihood.nested_parent(m.problem) is not None      # the nested factor's path
    fit = m.fit(ref["method"])
    assert fit.converged
    np.testing.assert_allclose(fit.loglik, ref["loglik"], rtol=1e-9, atol=0)
    np.testing.assert_allclose(fit.fixef.values, ref["fixef"], rtol=2e-6)
    se = fit.coef_table().iloc[:, 1].values
    np.testing.assert_allclose(se, ref["se"], rtol=2e-5)
    np.testing.assert_allclose(fit.varcorr.sd_or_cor.values, ref["sd_or_cor"], rtol=2e-5,
                               atol=2e-6)
    for group, key in (("a:b", "ranef_ab"), ("a", "ranef_a")):
        frame = fit.ranef[group].loc[ref[key]["levels"]]
        names = [c for c in frame.columns if not c.endswith("_sd")]
        values = np.asarray(ref[key]["values"]).reshape(5, -1)
        sd = np.asarray(ref[key]["sd"])
        sd = sd.reshape(5, -1) if sd.shape[0] == 5 else sd.T
        np.testing.assert_allclose(frame[names].values, values, rtol=1e-4, atol=1e-5)
        if ref["family"] == "gaussian":
            # lme4's condVar (conditional on the estimates); glmmTMB's adds their uncertainty,
            # so the Laplace fit's are checked against the dense factor's below
            np.testing.assert_allclose(frame[[f"{n}_sd" for n in names]].values, sd,
                                       rtol=1e-4)


def _problem(data, formula, family="gaussian"):
    m = jg.Model(formula, data, family=family)
    parent = likelihood.nested_parent(m.problem)
    assert parent is not None
    return m.problem, jnp.asarray(parent)


@pytest.mark.parametrize("formula", ["y ~ x + (1 | a) + (1 | a:b)",
                                     "y ~ x + (1 + x | a) + (1 | a:b)"])
def test_nested_deviance_equals_dense(formula, data):
    problem, parent = _problem(data, formula)
    s, a = problem.structure, problem.arrays
    p = a.X.shape[1]
    dense = jax.jit(lambda th, reml: profiled_parts(s, lmm_data(s, a).cp, th,
                                                    lmm_data(s, a).n, p, reml,
                                                    lmm_data(s, a).sum_log_w, full=True),
                    static_argnums=1)
    ours = jax.jit(lambda th, reml: nested_profiled_parts(s, nested_lmm_data(s, a, parent), th,
                                                          p, reml, full=True), static_argnums=1)
    rng = np.random.default_rng(3)
    for reml in (True, False):
        for _ in range(3):
            th = jnp.asarray(np.abs(s.theta_init() + rng.normal(0, 0.3, s.n_theta)))
            want, got = dense(th, reml), ours(th, reml)
            np.testing.assert_allclose(got.deviance, want.deviance, rtol=1e-12)
            np.testing.assert_allclose(got.beta, want.beta, rtol=1e-10)
            np.testing.assert_allclose(got.vcov, want.vcov, rtol=1e-10)
            np.testing.assert_allclose(got.u, want.u, rtol=1e-8, atol=1e-10)


def test_nested_laplace_equals_dense(data):
    problem, parent = _problem(data, "yb ~ x + (1 + x | a) + (1 | a:b)", "binomial")
    s, fam, a = problem.structure, problem.family, problem.arrays
    dense = SparseLaplace(s, fam, a, 0)
    ours = SparseLaplace(s, fam, a, 0, pattern=nested.NestedPattern(parent))
    rng = np.random.default_rng(5)
    x = jnp.concatenate([jnp.asarray(s.theta_init()) * 0.5, jnp.asarray([0.4, 0.2])])
    u0 = jnp.asarray(rng.normal(0, 0.1, s.n_u))

    def run(model):
        (dev, u), g = jax.jit(model.value_and_grad)(x, u0)
        cov = jax.jit(model.conditional_cov)(x, u)
        return dev, u, g, cov
    want, got = run(dense), run(ours)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    np.testing.assert_allclose(got[1], want[1], atol=1e-8)
    np.testing.assert_allclose(got[2], want[2], rtol=1e-7, atol=1e-7)
    for v_got, v_want in zip(got[3], want[3]):
        np.testing.assert_allclose(v_got, v_want, rtol=1e-9, atol=1e-12)


def test_which_designs_are_nested():
    s2 = rs.ReStructure((rs.FactorSpec("ab", 4, 1, ()), rs.FactorSpec("a", 2, 1, ())), 2)
    i1 = np.array([0, 0, 1, 2, 3, 3])
    i2 = np.array([0, 0, 0, 1, 1, 1])
    w = np.ones(6)
    np.testing.assert_array_equal(nested.nested_parent(s2, (i1, i2), w), [0, 0, 1, 1])
    crossed = np.array([0, 1, 0, 1, 1, 1])          # level 0 of ab meets both levels of a
    assert nested.nested_parent(s2, (i1, crossed), w) is None
    # a row of weight zero (a padded row, a dropped observation) does not count
    assert nested.nested_parent(s2, (i1, crossed), np.array([1, 0, 1, 1, 1, 1.0])) is not None
    s3 = rs.ReStructure(s2.factors + (rs.FactorSpec("c", 2, 1, ()),), 3)
    assert nested.nested_parent(s3, (i1, i2, i2), w) is None      # three factors


def test_crossed_design_keeps_the_sparse_path(data):
    crossed = data.assign(c=[f"c{i % 97}" for i in range(len(data))])
    m = jg.Model("y ~ x + (1 | a:b) + (1 | c)", crossed)
    assert likelihood.nested_parent(m.problem) is None
    host = host_arrays(m.problem)
    assert nested.nested_parent(m.problem.structure, host.index, host.weights) is None
