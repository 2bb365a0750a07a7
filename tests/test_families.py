"""Families: log-likelihoods against scipy, moments, simulation, gradients, ML recovery."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special as sps
from scipy import stats

import jaxglmm  # noqa: F401  (float64)
from jaxglmm.families import FAMILIES, get_family

logit = lambda p: float(np.log(p / (1 - p)))  # noqa: E731
expit = sps.expit


def _zi_ref(dist):
    def ref(y, mu, fp):
        d = dist(mu, fp)
        return np.where(y == 0, np.log(fp["zi"] + (1 - fp["zi"]) * d.pmf(0)),
                        np.log1p(-fp["zi"]) + d.logpmf(y))
    return ref


def _hu_ref(dist):
    def ref(y, mu, fp):
        d = dist(mu, fp)
        return np.where(y == 0, np.log(fp["hu"]),
                        np.log1p(-fp["hu"]) + d.logpmf(y) - np.log(d.sf(0)))
    return ref


def _pois(mu, fp):
    return stats.poisson(mu)


def _nb(mu, fp):
    k = fp["shape"]
    return stats.nbinom(k, k / (k + mu))


def _cum_ref(cdf, sf):
    """log P(Y = y) = log(F(hi) - F(lo)), taken as S(lo) - S(hi) in the upper tail."""
    def ref(y, eta, fp):
        thr = np.concatenate([[-np.inf], fp["thresholds"], [np.inf]])
        y = y.astype(int)
        lo, hi = thr[y] - eta, thr[y + 1] - eta
        return np.log(np.where(cdf(hi) < sf(lo), cdf(hi) - cdf(lo), sf(lo) - sf(hi)))
    return ref


def _cloglog_cdf(x):
    return -np.expm1(-np.exp(x))


def _cloglog_sf(x):
    return np.exp(-np.exp(x))


@dataclass
class Case:
    """A family with known parameters and scipy's reading of its density.

    ``inv`` is the inverse link written out in NumPy; ``ref(y, mu, fp)`` the scipy log
    density at ``mu = inv(eta)``; ``dist(mu, fp)`` a frozen scipy distribution for
    continuous families (used for moments and quantile grids); ``support`` the points summed
    over for discrete families; ``a, b`` the linear predictor used in ML recovery.
    """

    name: str
    link: str
    phi: list
    inv: Callable
    ref: Callable
    y: list
    eta: list
    a: float = 0.5
    b: float = 0.4
    dist: Callable | None = None
    support: int | None = None
    trials: float | None = None

    @property
    def id(self):
        return f"{self.name}-{self.link}"


CASES = [
    Case("gaussian", "identity", [np.log(1.5)], lambda e: e,
         lambda y, mu, fp: stats.norm.logpdf(y, mu, fp["sigma"]),
         [-1.0, 0.3, 2.5], [0.0, 1.0, -2.0], dist=lambda mu, fp: stats.norm(mu, fp["sigma"])),
    Case("bernoulli", "logit", [], expit,
         lambda y, mu, fp: stats.bernoulli.logpmf(y, mu), [0.0, 1.0, 1.0], [0.3, -2.0, 4.0],
         support=2),
    Case("binomial", "logit", [], expit,
         lambda y, mu, fp: stats.binom.logpmf(y, 7, mu), [0.0, 3.0, 7.0], [0.3, -2.0, 1.0],
         support=8, trials=7.0),
    Case("poisson", "log", [], np.exp,
         lambda y, mu, fp: stats.poisson.logpmf(y, mu), [0.0, 2.0, 11.0], [0.1, 1.2, -1.0],
         support=80),
    Case("negbinomial", "log", [np.log(2.0)], np.exp,
         lambda y, mu, fp: _nb(mu, fp).logpmf(y), [0.0, 3.0, 17.0], [0.2, 1.5, -0.7], support=400),
    Case("negbinomial", "sqrt", [np.log(3.0)], np.square,
         lambda y, mu, fp: _nb(mu, fp).logpmf(y), [0.0, 3.0, 17.0], [1.2, 2.0, 0.7], a=1.5, b=0.3,
         support=400),
    Case("Gamma", "log", [np.log(3.0)], np.exp,
         lambda y, mu, fp: stats.gamma.logpdf(y, fp["shape"], scale=mu / fp["shape"]),
         [0.2, 1.0, 6.0], [0.0, 1.0, -0.5],
         dist=lambda mu, fp: stats.gamma(fp["shape"], scale=mu / fp["shape"])),
    Case("Gamma", "inverse", [np.log(2.0)], lambda e: 1 / e,
         lambda y, mu, fp: stats.gamma.logpdf(y, fp["shape"], scale=mu / fp["shape"]),
         [0.2, 1.0, 6.0], [0.5, 1.0, 2.0], a=1.0, b=0.2,
         dist=lambda mu, fp: stats.gamma(fp["shape"], scale=mu / fp["shape"])),
    Case("lognormal", "identity", [np.log(0.6)], lambda e: e,
         lambda y, mu, fp: stats.lognorm.logpdf(y, fp["sigma"], scale=np.exp(mu)),
         [0.2, 1.0, 6.0], [0.0, 1.0, -0.5],
         dist=lambda mu, fp: stats.lognorm(fp["sigma"], scale=np.exp(mu))),
    Case("beta", "logit", [np.log(8.0)], expit,
         lambda y, mu, fp: stats.beta.logpdf(y, mu * fp["phi"], (1 - mu) * fp["phi"]),
         [0.05, 0.5, 0.97], [0.0, 1.5, -2.0],
         dist=lambda mu, fp: stats.beta(mu * fp["phi"], (1 - mu) * fp["phi"])),
    Case("beta", "probit", [np.log(5.0)], stats.norm.cdf,
         lambda y, mu, fp: stats.beta.logpdf(y, mu * fp["phi"], (1 - mu) * fp["phi"]),
         [0.05, 0.5, 0.97], [0.0, 0.8, -1.2], a=0.3, b=0.5,
         dist=lambda mu, fp: stats.beta(mu * fp["phi"], (1 - mu) * fp["phi"])),
    Case("student", "identity", [np.log(1.2), np.log(7.0)], lambda e: e,
         lambda y, mu, fp: stats.t.logpdf(y, fp["nu"], loc=mu, scale=fp["sigma"]),
         [-3.0, 0.4, 9.0], [0.0, 1.0, -0.5],
         dist=lambda mu, fp: stats.t(fp["nu"], loc=mu, scale=fp["sigma"])),
    Case("zero_inflated_poisson", "log", [logit(0.3)], np.exp, _zi_ref(_pois),
         [0.0, 1.0, 9.0], [0.5, 1.5, -1.0], support=120),
    Case("zero_inflated_negbinomial", "log", [np.log(2.0), logit(0.25)], np.exp, _zi_ref(_nb),
         [0.0, 1.0, 9.0], [0.5, 1.5, -1.0], support=400),
    Case("hurdle_poisson", "log", [logit(0.35)], np.exp, _hu_ref(_pois),
         [0.0, 1.0, 9.0], [0.5, 1.5, -1.0], support=120),
    # eta[0] = -2.5 draws the truncated part at mu < 1 (size-biased proposal)
    Case("hurdle_negbinomial", "log", [np.log(1.5), logit(0.3)], np.exp, _hu_ref(_nb),
         [0.0, 1.0, 9.0], [-2.5, 1.5, -1.0], support=500),
    Case("cumulative", "logit", [-1.0, np.log(1.3), np.log(1.2)], lambda e: e,
         _cum_ref(sps.expit, lambda x: sps.expit(-x)), [0.0, 1.0, 3.0], [0.0, 1.5, -2.0],
         a=0.0, b=0.8, support=4),
    Case("cumulative", "probit", [-0.8, np.log(0.5), np.log(0.9), np.log(0.4)], lambda e: e,
         _cum_ref(stats.norm.cdf, stats.norm.sf), [0.0, 2.0, 4.0], [0.0, 1.5, -2.0],
         a=0.0, b=0.6, support=5),
    Case("cumulative", "cloglog", [-1.0, np.log(1.3), np.log(1.2)], lambda e: e,
         _cum_ref(_cloglog_cdf, _cloglog_sf), [0.0, 1.0, 3.0], [0.0, 1.5, -2.0],
         a=0.0, b=0.8, support=4),
]
IDS = [c.id for c in CASES]
# the heavier checks (simulation, gradients, information, ML) run once per family, default link
_first = {}
for _c in CASES:
    _first.setdefault(_c.name, _c)
HEAVY = list(_first.values())
HEAVY_IDS = [c.id for c in HEAVY]
# simulation and ML recovery cover the families beyond the core four (compiling the samplers
# is what this file spends most of its time on)
NEW = [c for c in HEAVY if c.name not in ("gaussian", "bernoulli", "binomial", "poisson")]
NEW_IDS = [c.id for c in NEW]


def family(case):
    return get_family(case.name, case.link)


def natural(case):
    """The family and its natural parameters (NumPy) at ``case.phi``."""
    fam, fp = _fp(case)
    return fam, {k: np.asarray(v) for k, v in fp.items()}


def _trials(case, n):
    return None if case.trials is None else jnp.full(n, case.trials)


def _mu(case, eta):
    return np.asarray(eta) if case.name == "cumulative" else case.inv(np.asarray(eta))


def _fp(case):
    fam = family(case)
    return fam, fam.natural_params(jnp.asarray(case.phi, float))


# ----------------------------------------------------------------------------- batched work
# Compiling is what costs time here, so the jitted work for all families is traced into a
# few functions (one compile each) in module-scoped fixtures; the tests then read their case.
N_MOMENT, N_ML, N_QUANT = 25_000, 5_000, 8_000
# XLA's backend optimisation costs ~40% of the compile and buys little for these small
# workloads (the samplers excepted)
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


@pytest.fixture(scope="module")
def forward():
    """Under one ``jit``, per case: loglik at the scipy points (also vmapped over two eta
    vectors), ``mean``/``variance``/``fisher_weight`` at ``case.eta``, and for discrete
    families the pmf over the support at each ``case.eta``."""
    def one(case):
        fam, fp = _fp(case)
        y, eta = jnp.asarray(case.y, float), jnp.asarray(case.eta, float)
        t3 = _trials(case, 3)
        out = {"ll": fam.loglik(y, eta, t3, fp),
               "vmapped": jax.vmap(lambda e: fam.loglik(y, e, t3, fp))(jnp.stack([eta, eta + 0.1])),
               "mean": fam.mean(eta, fp), "variance": fam.variance(eta, fp)}
        if fam.fisher_weight is not None:
            out["fisher"] = fam.fisher_weight(eta, t3, fp)
        if case.support is not None:
            ys = jnp.arange(float(case.support))
            out["pmf"] = jax.vmap(lambda e: jnp.exp(fam.loglik(
                ys, jnp.full(ys.shape, e), _trials(case, ys.size), fp)))(eta)
        return out

    out = jax.jit(lambda: [one(c) for c in CASES], compiler_options=_FAST_COMPILE)()
    return {i: jax.tree_util.tree_map(np.asarray, o) for i, o in zip(IDS, out)}


def _quantile_grid(case, eta):
    u = (np.arange(N_QUANT) + 0.5) / N_QUANT
    _, fp = natural(case)
    return case.dist(case.inv(eta), fp).ppf(u)


def _batched(fun, cases=HEAVY, options=_FAST_COMPILE):
    """``jit`` of ``fun(case, *args)`` mapped over ``cases``: one compile for all of them."""
    return jax.jit(lambda *cols: [fun(c, *args) for c, *args in zip(cases, *cols)],
                   compiler_options=options)


def _fd_hessian(grad_all, thetas, h=1e-5):
    """Central differences of the (exact, batched) gradient: one call per coordinate."""
    p = max(t.size for t in thetas)
    cols = [[] for _ in thetas]
    for j in range(p):
        shift = [h * (np.arange(t.size) == j) for t in thetas]
        up = grad_all([t + s for t, s in zip(thetas, shift)])
        down = grad_all([t - s for t, s in zip(thetas, shift)])
        for i, t in enumerate(thetas):
            if j < t.size:
                cols[i].append((np.asarray(up[i]) - np.asarray(down[i])) / (2 * h))
    return [0.5 * (np.array(c).T + np.array(c)) for c in cols]


def _fd(f, h=1e-4):
    """Fourth-order central difference of ``f(t)`` at ``t = 0``."""
    return (8 * (f(h) - f(-h)) - (f(2 * h) - f(-2 * h))) / (12 * h)


@pytest.fixture(scope="module")
def first_order():
    """Per family, at the points of the support (discrete) or a quantile grid (continuous)
    for ``eta[0]`` and ``eta[1]``: the scores ``d loglik / d eta`` (for the expected
    information), the gradient in phi, and central differences of ``sum(loglik)`` along two
    random eta directions and along each phi coordinate.  One compiled function (the sum and
    its gradient) serves all of it."""
    ys = [jnp.asarray(np.stack([_quantile_grid(c, e) for e in c.eta[:2]])) if c.support is None
          else jnp.broadcast_to(jnp.arange(float(c.support)), (2, c.support)) for c in HEAVY]
    etas = [jnp.broadcast_to(jnp.asarray(c.eta[:2])[:, None], y.shape) for c, y in zip(HEAVY, ys)]
    phis = [jnp.asarray(c.phi, float) for c in HEAVY]

    def with_grad(case, y, eta, phi):
        def total(eta, phi):
            fam = family(case)
            t = None if case.trials is None else jnp.full(y.shape, case.trials)
            return jnp.sum(fam.loglik(y, eta, t, fam.natural_params(phi)))
        return jax.value_and_grad(total, argnums=(0, 1))(eta, phi)

    run = _batched(with_grad)
    base = run(ys, etas, phis)
    rng = np.random.default_rng(5)
    dirs = [rng.standard_normal((2,) + y.shape) for y in ys]
    out = {}
    for i, c in enumerate(HEAVY):
        g_eta, g_phi = (np.asarray(g) for g in base[i][1])
        out[c.id] = {"score": g_eta, "g_phi": g_phi, "fd_dir": [], "fd_phi": [],
                     "g_dir": [float(np.sum(g_eta * d)) for d in dirs[i]]}
    for k in range(2):
        fd = _fd(lambda t: np.array([float(r[0]) for r in run(
            ys, [e + t * d[k] for e, d in zip(etas, dirs)], phis)]))
        for c, v in zip(HEAVY, fd):
            out[c.id]["fd_dir"].append(v)
    for j in range(max(p.size for p in phis)):
        fd = _fd(lambda t: np.array([float(r[0]) for r in run(
            ys, etas, [p + t * (np.arange(p.size) == j) for p in phis])]))
        for c, p, v in zip(HEAVY, phis, fd):
            if j < p.size:
                out[c.id]["fd_phi"].append(v)
    return out


@pytest.fixture(scope="module")
def simulated():
    """Per family: ``N_MOMENT`` draws at each of ``eta[0]`` and ``eta[1]``, then ``N_ML``
    draws at ``eta = a + b x``; one simulate call per family, all under one ``jit``."""
    x = jnp.asarray(np.random.default_rng(11).standard_normal(N_ML))

    def one(case, key):
        fam, fp = _fp(case)
        eta = jnp.concatenate([jnp.full(N_MOMENT, case.eta[0]), jnp.full(N_MOMENT, case.eta[1]),
                               case.a + case.b * x])
        return fam.simulate(key, eta, _trials(case, eta.size), fp)

    keys = jax.random.split(jax.random.PRNGKey(2026), len(NEW))
    out = _batched(one, NEW, options=None)(list(keys))  # samplers run slowly unoptimised
    return {case.id: (np.asarray(y[:N_MOMENT]), np.asarray(y[N_MOMENT:2 * N_MOMENT]),
                      np.asarray(y[2 * N_MOMENT:]), np.asarray(x)) for case, y in zip(NEW, out)}


@pytest.fixture(scope="module")
def ml_fits(simulated):
    """Maximum likelihood of ``(a, b, phi)`` (``(b, phi)`` without intercept) for every family
    by damped Newton (Levenberg-Marquardt) steps from ``(a + 0.1, b - 0.1, init_params(y))``.
    Values and gradients of all families come from one jitted function; the Hessian from
    central differences of the gradient."""
    data, starts, truths = [], [], []
    for case in NEW:
        fam = family(case)
        y, x = simulated[case.id][2], simulated[case.id][3]
        fam.validate(y, None if case.trials is None else np.full(y.size, case.trials))
        ab = [case.a, case.b] if fam.has_intercept else [case.b]
        truths.append(np.concatenate([ab, case.phi]))
        starts.append(np.concatenate([np.array(ab) + [0.1, -0.1][:len(ab)],
                                      fam.init_params(y, None)]))
        data.append((jnp.asarray(y), jnp.asarray(x)))

    def nll(case, theta, data):
        y, x = data
        k = 2 if family(case).has_intercept else 1
        a, b = (theta[0], theta[1]) if k == 2 else (0.0, theta[0])
        fam = family(case)
        t = None if case.trials is None else jnp.full(y.shape, case.trials)
        return -jnp.sum(fam.loglik(y, a + b * x, t, fam.natural_params(theta[k:])))

    vg = _batched(jax.value_and_grad(nll, argnums=1), NEW)

    def derivs(thetas):
        f, g = zip(*[tuple(map(np.asarray, r)) for r in vg(thetas, data)])
        H = _fd_hessian(lambda ts: [r[1] for r in vg(ts, data)], thetas)
        return list(zip(f, g, H))

    thetas = [np.asarray(s, float) for s in starts]
    lam = [1e-3] * len(NEW)
    cur = derivs(thetas)
    for _ in range(60):
        trial = [t - np.linalg.solve(H + lam_i * np.diag(np.abs(np.diag(H)) + 1.0), g)
                 for t, (f, g, H), lam_i in zip(thetas, cur, lam)]
        new = derivs(trial)
        done = True
        for i in range(len(NEW)):
            if np.isfinite(new[i][0]) and new[i][0] <= cur[i][0]:
                thetas[i], cur[i], lam[i] = trial[i], new[i], max(lam[i] / 10, 1e-12)
            else:
                lam[i] *= 10
            g, H = cur[i][1], cur[i][2]
            done &= bool(g @ np.linalg.lstsq(H, g, rcond=None)[0] < 1e-12)
        if done:
            break
    return {case.id: (thetas[i], truths[i], cur[i][1], cur[i][2]) for i, case in enumerate(NEW)}


# ----------------------------------------------------------------------------- registry
def test_every_family_registered_with_default_link_and_param_names():
    expected = {"negbinomial": ("log", ("shape",)), "Gamma": ("log", ("shape",)),
                "lognormal": ("identity", ("sigma",)), "beta": ("logit", ("phi",)),
                "student": ("identity", ("sigma", "nu")),
                "zero_inflated_poisson": ("log", ("zi",)),
                "zero_inflated_negbinomial": ("log", ("shape", "zi")),
                "hurdle_poisson": ("log", ("hu",)), "hurdle_negbinomial": ("log", ("shape", "hu")),
                "cumulative": ("logit", ("thresholds",))}
    for name, (link, names) in expected.items():
        assert name in FAMILIES
        fam = get_family(name)
        assert fam.link.name == link and fam.param_names == names
        assert fam.simulate is not None and fam.mean is not None and fam.variance is not None
    assert get_family("cumulative").has_intercept is False
    assert get_family("gamma").name == "Gamma" and get_family("nbinom2").name == "negbinomial"


def test_with_link_rebuilds_closures():
    fam = get_family("binomial", "probit")
    assert fam.link.name == "probit"
    y, eta, n = np.array([0.0, 2.0, 5.0]), np.array([-0.7, 0.1, 1.3]), np.full(3, 5.0)
    got = jax.jit(fam.loglik)(jnp.asarray(y), jnp.asarray(eta), jnp.asarray(n), {})
    np.testing.assert_allclose(got, stats.binom.logpmf(y, n, stats.norm.cdf(eta)), rtol=1e-12)
    assert not np.allclose(got, stats.binom.logpmf(y, n, expit(eta)))
    np.testing.assert_allclose(jax.jit(fam.mean)(jnp.asarray(eta), {}), stats.norm.cdf(eta),
                               rtol=1e-12)
    nb = get_family("negbinomial").with_link("identity")
    got = jax.jit(nb.loglik)(jnp.array([3.0]), jnp.array([2.5]), None, {"shape": 2.0})
    np.testing.assert_allclose(got, stats.nbinom.logpmf(3, 2.0, 2.0 / 4.5), rtol=1e-12)
    cum = get_family("cumulative", "probit")
    thr = jnp.array([-0.5, 0.7])
    probs = jax.jit(cum.category_probs)(jnp.array([0.2]), {"thresholds": thr})[0]
    np.testing.assert_allclose(probs, np.diff(stats.norm.cdf([-np.inf, -0.7, 0.5, np.inf])),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="not available"):
        get_family("beta", "log")


# ----------------------------------------------------------------------------- logliks
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_loglik_matches_scipy(case, forward):
    """Jitted, and vmapped over two linear predictors, against scipy's log density."""
    _, fp = natural(case)
    y, eta = np.array(case.y, float), np.array(case.eta, float)
    want = case.ref(y, _mu(case, eta), fp)
    r = forward[case.id]
    np.testing.assert_allclose(r["ll"], want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(r["vmapped"][0], want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(r["vmapped"][1], case.ref(y, _mu(case, eta + 0.1), fp),
                               rtol=1e-10, atol=1e-12)


def test_loglik_stable_in_the_tails():
    nb = get_family("negbinomial")
    got = jax.jit(nb.loglik)(jnp.array([0.0, 40.0]), jnp.array([-30.0, 3.0]), None,
                             {"shape": 1e3})
    # log P(0) = -k log1p(mu / k), which scipy's logpmf rounds
    want = [-1e3 * np.log1p(np.exp(-30.0) / 1e3),
            stats.nbinom.logpmf(40, 1e3, 1e3 / (1e3 + np.exp(3.0)))]
    np.testing.assert_allclose(got, want, rtol=1e-9)
    cum = get_family("cumulative")
    fp = {"thresholds": jnp.array([-1.0, 0.5, 2.0])}
    # far in either tail the extreme categories keep their (tiny) log-probabilities
    got = jax.jit(cum.loglik)(jnp.array([3.0, 0.0, 1.0]), jnp.array([-40.0, 40.0, -30.0]), None,
                              fp)
    want = [-42.0 - np.log1p(np.exp(-42.0)), -41.0 - np.log1p(np.exp(-41.0)),
            np.log(expit(-29.0) - expit(-30.5))]
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_zero_probability_may_arrive_per_observation():
    y, eta = jnp.array([0.0, 0.0, 3.0]), jnp.array([0.5, 0.5, 0.5])
    zi = jnp.array([0.1, 0.6, 0.6])
    for name, key, ref in [("zero_inflated_poisson", "zi", _zi_ref(_pois)),
                           ("hurdle_poisson", "hu", _hu_ref(_pois))]:
        got = jax.jit(get_family(name).loglik)(y, eta, None, {key: zi})
        np.testing.assert_allclose(got, ref(np.asarray(y), np.exp(0.5), {key: np.asarray(zi)}),
                                   rtol=1e-12)


# ----------------------------------------------------------------------------- moments
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_mean_and_variance_match_density(case, forward):
    """``mean``/``variance`` against sums over the family's own pmf (discrete) or scipy's
    moments (continuous); per trial for binomial."""
    r = forward[case.id]
    _, fp = natural(case)
    scale = case.trials or 1.0
    for i, eta in enumerate(case.eta):
        if case.support is not None:
            p, ys = r["pmf"][i], np.arange(case.support)
            assert abs(p.sum() - 1) < 1e-9
            m = p @ ys
            v = p @ (ys - m) ** 2
        else:
            d = case.dist(case.inv(eta), fp)
            m, v = d.mean(), d.var()
        np.testing.assert_allclose(r["mean"][i] * scale, m, rtol=1e-8)
        np.testing.assert_allclose(r["variance"][i] * scale, v, rtol=1e-7)


@pytest.mark.parametrize("case", NEW, ids=NEW_IDS)
def test_simulate_matches_moments(case, simulated, forward):
    """Sample mean and variance within 5 standard errors of the family's moments."""
    fam = family(case)
    r = forward[case.id]
    scale = case.trials or 1.0
    for i, y in enumerate(simulated[case.id][:2]):
        n = y.size
        fam.validate(y, None if case.trials is None else np.full(n, case.trials))
        m, v = r["mean"][i] * scale, r["variance"][i] * scale
        c = y - y.mean()
        se_m = np.sqrt(v / n)
        se_v = np.sqrt(max(np.mean(c ** 4) - np.mean(c ** 2) ** 2, 1e-300) / n)
        assert abs(y.mean() - m) < 5 * se_m, (case.eta[i], y.mean(), m, se_m)
        assert abs(y.var() - v) < 5 * se_v, (case.eta[i], y.var(), v, se_v)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("case", HEAVY, ids=HEAVY_IDS)
def test_gradient_matches_finite_differences(case, first_order):
    """``sum(loglik)``: gradient along random eta directions and in each phi coordinate."""
    r = first_order[case.id]
    np.testing.assert_allclose(r["g_dir"], r["fd_dir"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(r["g_phi"], r["fd_phi"], rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(r["score"]))


# ----------------------------------------------------------------------------- fisher weights
FISHER = [c for c in HEAVY if family(c).fisher_weight is not None]


@pytest.mark.parametrize("case", FISHER, ids=[c.id for c in FISHER])
def test_fisher_weight_is_expected_information(case, first_order, forward):
    """``fisher_weight`` equals ``E[(d loglik / d eta)^2]``: a sum over the support, or the
    midpoint rule on the quantile scale for continuous families."""
    r = first_order[case.id]
    for i in range(2):
        score = r["score"][i]
        info = (forward[case.id]["pmf"][i] @ score ** 2 if case.support is not None
                else np.mean(score ** 2))
        # exact sums for discrete families; the quadrature's error is ~5e-4 at N_QUANT
        np.testing.assert_allclose(forward[case.id]["fisher"][i], info,
                                   rtol=1e-9 if case.support is not None else 2e-3)


# ----------------------------------------------------------------------------- ML recovery
@pytest.mark.parametrize("case", NEW, ids=NEW_IDS)
def test_maximum_likelihood_recovers_parameters(case, ml_fits):
    """n = 5000 draws at ``eta = a + b x``: the MLE lies within 4 standard errors (inverse
    observed information) of the truth in every coordinate."""
    theta, truth, grad, hess = ml_fits[case.id]
    assert np.max(np.abs(grad)) < 1e-4, grad
    se = np.sqrt(np.diag(np.linalg.inv(hess)))
    z = (theta - truth) / se
    assert np.all(np.abs(z) < 4), (theta, truth, se)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("name", ["poisson", "negbinomial", "zero_inflated_poisson",
                                  "zero_inflated_negbinomial", "hurdle_poisson",
                                  "hurdle_negbinomial"])
def test_count_families_reject_non_integers_and_negatives(name):
    fam = get_family(name)
    fam.validate(np.array([0.0, 1.0, 5.0]), None)
    with pytest.raises(ValueError, match="whole-number"):
        fam.validate(np.array([0.0, 1.5, 2.0]), None)
    with pytest.raises(ValueError, match="negative"):
        fam.validate(np.array([0.0, -1.0]), None)


@pytest.mark.parametrize("y", [[0.2, 0.0], [0.5, 1.0], [1.3, 0.4]])
def test_beta_rejects_values_outside_unit_interval(y):
    with pytest.raises(ValueError, match=r"strictly inside \(0, 1\)"):
        get_family("beta").validate(np.array(y), None)


@pytest.mark.parametrize("name", ["Gamma", "lognormal"])
@pytest.mark.parametrize("bad", [0.0, -2.0])
def test_positive_families_reject_non_positive(name, bad):
    fam = get_family(name)
    fam.validate(np.array([0.5, 2.0]), None)
    with pytest.raises(ValueError, match="strictly positive"):
        fam.validate(np.array([0.5, bad]), None)


def test_cumulative_validation():
    fam = get_family("cumulative")
    with pytest.raises(ValueError, match="bernoulli"):
        fam.validate(np.array([0.0, 1.0, 1.0]), None)
    with pytest.raises(ValueError, match="bernoulli"):
        fam.init_params(np.array([0.0, 1.0, 1.0]), None)
    with pytest.raises(ValueError, match="whole-number"):
        fam.validate(np.array([0.0, 1.5, 2.0]), None)
    with pytest.raises(ValueError, match=r"categories \[1\]"):
        fam.validate(np.array([0.0, 2.0, 3.0]), None)
    y = np.array([0.0, 1.0, 1.0, 2.0, 3.0, 3.0])
    phi = fam.init_params(y, None)
    assert phi.shape == (3,) and fam.n_params(y) == 3
    thr = np.asarray(fam.natural_params(jnp.asarray(phi))["thresholds"])
    np.testing.assert_allclose(expit(thr), [1 / 6, 3 / 6, 4 / 6], rtol=1e-10)
    probs = jax.jit(fam.category_probs)(jnp.array([0.0, 2.0]), {"thresholds": jnp.asarray(thr)})
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-12)


def test_bounded_binomial_sampler_is_binomial():
    """The binomial's bounded-trials sampler (sums of Bernoulli draws, used by simulate for
    small integer trials) has the binomial's pmf: chi-square against it, trials 0 to 7;
    simulate picks it for cbpp's trials and falls back to jax's sampler past the bound."""
    from scipy.stats import binom, chisquare
    from jaxglmm.results.simulate import trials_bound as _trials_bound
    fam = get_family("binomial")
    trials = np.repeat(np.arange(8.0), 5000)
    eta = np.full(trials.size, -0.4)
    y = np.asarray(jax.jit(lambda k: fam.simulate_bounded(k, jnp.asarray(eta),
                                                          jnp.asarray(trials), {}, 8))(
        jax.random.PRNGKey(1)))
    p = 1 / (1 + np.exp(0.4))
    for n in range(8):
        got = np.bincount(y[trials == n].astype(int), minlength=n + 1)
        assert got.size == n + 1                          # never above the trials
        if n:
            assert chisquare(got, 5000 * binom.pmf(np.arange(n + 1), n, p)).pvalue > 1e-4
    assert _trials_bound(fam, np.array([1.0, 34.0]), 1000) == 64
    assert _trials_bound(fam, np.array([1.0, 200.0]), 10) is None
    assert _trials_bound(fam, np.array([1.5, 3.0]), 10) is None
    assert _trials_bound(get_family("poisson"), None, 10) is None
