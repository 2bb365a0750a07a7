"""The many-rows Laplace path (jaxglmm.core.glmm_sparse) against the blocked Laplace path of
jaxglmm.core.laplace, and against glmer on lme4's VerbAgg (crossed, 316 x 24).

VerbAgg reference: scripts/verbagg_reference.R (glmer at lme4's default control, and run to
convergence: bobyqa rhoend 1e-10, tolPwrss 1e-12); tolerances as tests/test_reference.py.
glmer's defaults stop short of the optimum here (logLik 3.9e-4 below it), so estimates are
checked against the converged fit and standard errors against the default one at 2e-2 (its
finite-difference Hessian moves them by that much), as test_reference does for cbpp.
"""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxglmm as jg
from jaxglmm.core.glmm_sparse import SparseLaplace
from jaxglmm.core.laplace import GlmmModel
from jaxglmm.families import get_family
from jaxglmm.fit import likelihood as L

DATA = Path(__file__).parent / "data"
VERBAGG = "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)"
FACTORS = {"GenderM": "Gender[M]", "btypescold": "btype[scold]", "btypeshout": "btype[shout]",
           "situself": "situ[self]", "(Intercept)": "Intercept"}


def simulated(n=4000, groups=40, seed=3, family="bernoulli"):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    x = rng.standard_normal(n)
    eta = -0.3 + 0.7 * x + 0.8 * rng.standard_normal(groups)[g]
    mu = 1.0 / (1.0 + np.exp(-eta))
    y = (rng.random(n) < mu).astype(float) if family == "bernoulli" else rng.poisson(np.exp(eta))
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{i}" for i in g],
                         "h": [f"h{i}" for i in rng.integers(0, 7, n)]})


def both_paths(formula, df, family):
    p = jg.Model(formula, df, family=family).problem
    out = []
    for sparse in (True, False):
        fn = jax.jit(lambda a, phi0, sparse=sparse: L.fit_glmm(
            p.structure, p.family, a, phi0, sparse=sparse), compiler_options=L.COMPILER_OPTIONS)
        out.append(jax.device_get(fn(p.arrays, p.starts[1])))
    return out


@pytest.mark.parametrize("formula,family", [
    ("y ~ x + (1 | g)", "bernoulli"),
    pytest.param("y ~ x + (1 + x | g)", "bernoulli", marks=pytest.mark.slow),
    pytest.param("y ~ x + (1 | g) + (1 | h)", "poisson", marks=pytest.mark.slow),
])
def test_sparse_path_equals_the_blocked_path(formula, family):
    sparse, blocked = both_paths(formula, simulated(family=family), family)
    assert int(sparse.status) == int(blocked.status) == 0
    np.testing.assert_allclose(sparse.loglik, blocked.loglik, rtol=0, atol=1e-6)
    np.testing.assert_allclose(sparse.beta, blocked.beta, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.abs(sparse.theta), np.abs(blocked.theta), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sparse.vcov, blocked.vcov, rtol=1e-4, atol=1e-9)
    for b1, b2 in zip(sparse.b, blocked.b):
        np.testing.assert_allclose(np.abs(b1), np.abs(b2), rtol=1e-5, atol=1e-6)


def test_gradient_is_the_derivative_of_the_objective():
    p = jg.Model("y ~ x + (1 + x | g)", simulated(), family="bernoulli").problem
    sl = SparseLaplace(p.structure, p.family, p.arrays, 0)
    x = jnp.array([0.7, 0.1, 0.3, -0.2, 0.6])
    u0 = jnp.zeros(p.structure.n_u)
    (f, u), g = jax.jit(sl.value_and_grad)(x, u0)
    # the blocked path's objective, differentiated by autodiff through its implicit mode
    ref = GlmmModel(p.structure, p.family, p.arrays, 0)
    f2, g2 = jax.jit(jax.value_and_grad(lambda z: ref.laplace_deviance(z, u0)[0]))(x)
    np.testing.assert_allclose(f, f2, rtol=1e-11)
    np.testing.assert_allclose(g, g2, rtol=1e-6, atol=1e-6)


def _crossed(n=3000, g1=200, g2=60, seed=0):
    rng = np.random.default_rng(seed)
    a, b, x = rng.integers(0, g1, n), rng.integers(0, g2, n), rng.normal(size=n)
    eta = (-0.3 + 0.5 * x + 0.8 * rng.normal(size=g1)[a] + 0.5 * rng.normal(size=g2)[b]
           + 0.3 * rng.normal(size=7)[b % 7])
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"y": y, "x": x, "a": a.astype(str), "b": b.astype(str),
                         "c": (b % 7).astype(str)})


@pytest.mark.parametrize("formula", [
    "y ~ x + (1 | a) + (1 | b) + (1 | c)",        # crossed, c nested in b
    "y ~ x + (1 + x | a) + (1 | b)",              # slopes in the first factor
    "y ~ x + (1 | a) + (x || b)"])                # two terms in a dense factor
def test_sparse_blocks_equal_the_dense_blocks(formula):
    """The Laplace Hessian with L21 sparse (design.sparse.sparse_pattern) against the
    dense blocks: deviance, conditional mode and exact gradient to 1e-10."""
    from jaxglmm.design.sparse import sparse_pattern
    p = jg.Model(formula, _crossed(), family="binomial").problem
    s, a = p.structure, p.arrays
    dense = SparseLaplace(s, p.family, a, 0)
    sparse = SparseLaplace(s, p.family, a, 0, pattern=sparse_pattern(s, a))
    x = jnp.concatenate([jnp.asarray(np.random.default_rng(1).uniform(0.3, 1.0, s.n_theta)),
                         jnp.array([-0.2, 0.4])])
    u0 = jnp.zeros(s.n_u)
    (f1, u1), g1 = jax.jit(dense.value_and_grad)(x, u0)
    (f2, u2), g2 = jax.jit(sparse.value_and_grad)(x, u0)
    assert abs(float(f1 - f2)) <= 1e-10 * abs(float(f1))
    np.testing.assert_allclose(u2, u1, rtol=0, atol=1e-10)
    np.testing.assert_allclose(g2, g1, rtol=1e-10, atol=1e-10 * float(jnp.max(jnp.abs(g1))))


def test_large_crossed_glmm_takes_the_sparse_blocks(monkeypatch):
    """Past SPARSE_MIN_WORK a crossed Laplace fit runs on the sparse pattern, to the dense
    blocks' fit."""
    from jaxglmm.core import glmm_sparse, sparse as sps
    df = _crossed()
    m = jg.Model("y ~ x + (1 | a) + (1 | b)", df, family="binomial")
    assert not glmm_sparse.uses_sparse_blocks(m.problem.structure)     # 200 * 60^2: small
    dense = m.fit("laplace")
    monkeypatch.setattr(sps, "SPARSE_MIN_WORK", 1e5)
    m = jg.Model("y ~ x + (1 | a) + (1 | b)", df, family="binomial")
    assert glmm_sparse.uses_sparse_blocks(m.problem.structure)
    sparse = m.fit("laplace")
    assert m.problem in L._SPARSE_PATTERN
    assert abs(sparse.loglik - dense.loglik) < 1e-8
    np.testing.assert_allclose(sparse.fixef.values, dense.fixef.values, atol=1e-6)
    np.testing.assert_allclose(np.abs(sparse.theta), np.abs(dense.theta), atol=1e-6)


def test_canonical_kernels_are_the_families_kernels():
    rng = np.random.default_rng(0)
    eta = jnp.asarray(rng.normal(0, 4, 200))
    for name in ("bernoulli", "binomial", "poisson"):
        fam = get_family(name)
        trials = jnp.asarray(rng.integers(1, 6, 200), float) if name == "binomial" else jnp.ones(200)
        y = jnp.asarray(rng.binomial(np.asarray(trials, int), 0.4), float) if name != "poisson" \
            else jnp.asarray(rng.poisson(2.0, 200), float)
        ours, _ = fam.canonical_parts()
        theirs, _ = fam.loglik_parts()
        np.testing.assert_allclose(ours(y, eta, trials, {}), theirs(y, eta, trials, {}),
                                   rtol=1e-14, atol=1e-13)


def test_fast_kernel_is_declared_by_the_family_not_its_name(monkeypatch):
    """The closed-form kernel is the family's attribute: a binomial re-registered under
    another name keeps it; a family that declares none (a probit link, a binomial with its
    own log-likelihood) takes the general path, the family's own kernel."""
    from dataclasses import replace

    from jaxglmm.families import registry
    factory = registry.FAMILIES["binomial"]
    monkeypatch.setitem(registry.FAMILIES, "my_binomial",
                        lambda link: replace(factory(link), name="my_binomial"))
    monkeypatch.setitem(registry.DEFAULT_LINKS, "my_binomial", "logit")
    p = jg.Model("y ~ x + (1 | g)", simulated(n=200, groups=10), family="binomial").problem
    renamed = get_family("my_binomial")
    fast = SparseLaplace(p.structure, renamed, p.arrays, 0)
    assert fast.canonical and fast.kernel is get_family("binomial").canonical_parts()[0]
    base = get_family("binomial")
    own = replace(base, loglik=lambda y, eta, trials, fp: base.loglik(y, eta, trials, fp))
    for fam in (get_family("my_binomial", "probit"), own):
        general = SparseLaplace(p.structure, fam, p.arrays, 0)
        assert not general.canonical and fam.canonical_parts() is None
        assert general.kernel is fam.loglik_parts()[0]


def test_verbose_prints_the_objective_at_each_evaluation(capfd):
    p = jg.Model("y ~ x + (1 | g)", simulated(n=600, groups=12), family="bernoulli").problem
    fit = jax.jit(lambda a, phi0: L.fit_glmm(p.structure, p.family, a, phi0, sparse=True,
                                             verbose=True))(p.arrays, p.starts[1])
    jax.block_until_ready(fit)
    lines = [ln for ln in capfd.readouterr().out.splitlines() if ln.startswith("laplace: deviance")]
    # every optimizer evaluation, then the 2k finite-difference Hessian's
    # the start's evaluation, n_iter updates, then the Hessian's 2k
    assert len(lines) == 1 + int(fit.n_iter) + 2 * fit.x.shape[0], lines
    last = lines[int(fit.n_iter)]            # the last optimizer evaluation: the optimum
    assert abs(float(last.split()[2]) - float(fit.deviance)) <= 1e-9 * abs(float(fit.deviance))


@pytest.fixture(scope="module")
def verbagg_fit():
    df = pd.read_csv(DATA / "verbagg.csv.gz", dtype={"id": str, "item": str})
    return jg.Model(VERBAGG, df, family="binomial").fit("laplace")


@pytest.mark.slow
def test_verbagg_matches_glmer(verbagg_fit):
    ref = json.loads((DATA / "verbagg_glmer.json").read_text())
    fit, tight, default = verbagg_fit, ref["tight"], ref["default"]
    assert fit.converged, fit.messages
    assert fit.nobs == default["nobs"] == 7584
    for name, value in tight["fixef"].items():
        ours = fit.fixef[FACTORS.get(name, name)]
        assert abs(ours - value) <= max(1e-3 * abs(value), 1e-4), (name, ours, value)
    for name, value in tight["fixef_se"].items():
        ours = fit.fixef_se[FACTORS.get(name, name)]
        assert abs(ours - value) <= 1e-3 * value, (name, ours, value)
    for name, value in default["fixef_se"].items():
        assert abs(fit.fixef_se[FACTORS.get(name, name)] - value) <= 2e-2 * value
    vc = fit.varcorr.set_index("group").sd_or_cor
    for row in tight["varcorr"]:
        assert abs(vc[row["group"]] - row["sd_or_cor"]) <= 1e-3 * row["sd_or_cor"], row
    assert fit.loglik >= default["logLik"] - 1e-4, "worse optimum than glmer"
    assert fit.loglik >= tight["logLik"] - 1e-6
    assert abs(fit.loglik - tight["logLik"]) <= 1e-3
    assert fit.df == default["df"]


@pytest.mark.slow
def test_cli_verbose_prints_the_objective(tmp_path, capfd):
    from jaxglmm.cli import main
    simulated(n=300, groups=10).to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "run.yaml").write_text("data: d.csv\nformula: y ~ x + (1 | g)\n"
                                       "family: bernoulli\noutput: out\n")
    assert main(["fit", "--verbose", str(tmp_path / "run.yaml")]) == 0
    out = capfd.readouterr().out.splitlines()
    devs = [float(ln.split()[2]) for ln in out if ln.startswith("laplace: deviance")]
    record = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert len(devs) >= 3 and min(devs) == pytest.approx(-2 * record["loglik"], rel=1e-9)
