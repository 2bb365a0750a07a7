"""Simulating responses from a likelihood fit (``FitResult.simulate``, lme4's
``simulate.merMod``): the n simulations drawn at once, from the keys a loop over
simulations would use, in one compiled program per model shape (cached by
:func:`jaxglmm.fit.cache.program`; timings in docs/benchmarks.md)."""
from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from .._lazy import pandas as pd

from ..core.predictor import random_predictor
from ..core.problem import prediction_arrays
from ..core.restructure import term_covariances
from ..design import group_labels, new_design, re_selection
from ..fit import cache
from ..fit.cache import program

# simulate_bounded draws rows x bound x n uniforms at once: used up to this bound and size
BOUNDED_MAX_TRIALS = 64
BOUNDED_MAX_DRAWS = 1 << 26


def simulate_responses(fit, n: int, seed: int | None, re_form, newdata: pd.DataFrame | None
                       ) -> pd.DataFrame:
    """:meth:`FitResult.simulate <jaxglmm.results.FitResult.simulate>` of ``fit`` (its
    docstring says what is drawn); ``newdata`` a DataFrame or None."""
    problem = fit.problem
    fam = problem.family
    if fam.simulate is None:
        raise NotImplementedError(f"family {fam.name!r} has no simulator")
    if fit.draws is not None:
        raise NotImplementedError(
            f"simulate from a {fit.method} fit would draw from the posterior predictive "
            "distribution (brms's posterior_predict), which is not built yet; simulate "
            "from a likelihood fit (reml, ml, laplace, agq)")
    if seed is None:
        seed = int(np.random.default_rng().integers(2 ** 31))
    key = jax.random.PRNGKey(seed)
    design = problem.design
    mask = re_selection(problem.design, problem.structure.factors, re_form)
    conditioned = fit.linear_predictor(newdata, re_form=re_form)
    if newdata is None:
        arrays = problem.arrays
        w = np.asarray(design.weights, float)
        codes = [(np.asarray(i), f.n_levels) for i, f in zip(arrays.index, problem.structure.factors)]
        index = design.row_index
    else:
        if len(newdata) == 0:
            raise ValueError("newdata for simulate has no rows")
        if not fit._complete(newdata, True).all():
            raise ValueError("newdata for simulate has missing values in columns the "
                             "model uses (the grouping columns included)")
        arrays = prediction_arrays(new_design(problem.design, newdata))
        w = np.ones(len(newdata))
        codes = [pd.factorize(lv)[0] for lv in group_labels(problem.design, newdata,
                                                            problem.structure.factors)]
        codes = [(c, int(c.max()) + 1) for c in codes]
        index = newdata.index
    if fam.needs_trials and newdata is not None and _trials_missing(fit, newdata):
        raise ValueError("simulating a binomial model for new data needs its trials: "
                         "the columns of cbind(...) or trials(...) (or the weights of a "
                         "proportion response) must be in newdata")
    weighted = bool(np.any(w != 1.0))
    precision = weighted and fam.exact_lmm
    if weighted and not precision:
        warnings.warn(f"simulate ignores the prior weights of this {fam.name} model: they "
                      "are frequency weights, and each row gets one simulated response",
                      stacklevel=3)
    draw_all = mask is None or not all(np.all(m == 1) for m in mask)
    fp = fit._natural_family_params()
    trials = arrays.trials
    # the program is compiled for a bucket of simulation counts (the first n keys of a
    # longer chain are the n keys): fit.simulate(10) and fit.simulate(12) share it
    k_re, k_y = _key_chain(key, n_bucket(n))
    terms = _term_draws(fit, codes) if draw_all else ()
    chols = tuple(L for *_, L in terms)
    spec = tuple((k, col0, levels, q) for k, col0, levels, q, _ in terms)
    masks = None if mask is None else tuple(jnp.asarray(m) for m in mask)
    sizes = tuple(levels for _, levels in codes)
    bound = trials_bound(fam, trials, k_re.shape[0])
    structure = problem.structure
    run = program(("simulate", structure, fam, spec, sizes, masks is None, bound),
                  lambda: cache.jit(functools.partial(_simulate, structure, fam, spec, sizes,
                                                      bound)))
    index_arr = tuple(jnp.asarray(c, jnp.int32) for c, _ in codes)
    Y, eta = run(k_re, k_y, jnp.asarray(conditioned), chols, index_arr, arrays.Z, trials,
                 fp, masks)
    Y = np.asarray(Y)[:n]
    eta = np.asarray(eta)[:n]
    if precision:
        with np.errstate(divide="ignore", invalid="ignore"):
            Y = np.where(w > 0, eta + (Y - eta) / np.sqrt(w), np.nan)
    if design.proportion:
        with np.errstate(divide="ignore", invalid="ignore"):
            Y = Y / np.asarray(trials)
    cols = {f"sim_{k + 1}": _as_labels(fit, Y[k]) for k in range(n)}
    return pd.DataFrame(cols, index=index)


def _trials_missing(fit, newdata: pd.DataFrame) -> bool:
    design = fit.problem.design
    response = design.spec.parsed.response
    if design.proportion:
        return fit.spec.weights not in newdata
    if response.kind not in ("cbind", "trials"):
        return False
    exprs = response.exprs if response.kind == "cbind" else response.exprs[1:]
    return not all(n in newdata.columns for e in exprs for n in e.names)


def _as_labels(fit, y: np.ndarray):
    """Category codes -> the response's labels (ordered for ordinal models)."""
    fam, levels = fit.problem.family, fit.problem.design.response_levels
    if fam.response not in ("ordered", "unordered") or levels is None:
        return y
    return pd.Categorical.from_codes(np.asarray(y, int), categories=list(levels),
                                     ordered=fam.response == "ordered")


def _term_draws(fit, codes) -> list:
    """Per design term (in the design's order): its factor, first column, number of
    levels, size and the Cholesky factor of its fitted covariance."""
    problem = fit.problem
    s = problem.structure
    # Lambda is relative to sigma only for the exact gaussian (LMM) fits
    scale = fit.sigma if problem.exact_lmm else 1.0
    covs = term_covariances(s, fit.theta, scale)
    where = {(t.label, t.names): (k, t.col0) for k, f in enumerate(s.factors) for t in f.terms}
    out = []
    for t in problem.design.terms:
        k, col0 = where[(t.label, tuple(t.names))]
        L = np.linalg.cholesky(covs[(t.label, tuple(t.names))] + 1e-12 * np.eye(t.q))
        out.append((k, col0, codes[k][1], t.q, jnp.asarray(L)))
    return out


def n_bucket(n: int) -> int:
    """The number of simulations a program is compiled for: ``n`` rounded up to a power of
    two up to 1024, then to a multiple of 256 (at most twice the draws for small ``n``,
    where they cost microseconds, and under 25% more past 1024)."""
    if n <= 1024:
        return 1 << max(0, n - 1).bit_length()
    return -(-n // 256) * 256


def _key_chain(key, n: int):
    """The keys of n simulations, as a loop of ``key, k_re, k_y = split(key, 3)`` makes
    them, in one compiled scan (a loop would dispatch one split at a time)."""
    def chain(key):
        def body(k, _):
            k, a, b = jax.random.split(k, 3)
            return k, (a, b)
        return jax.lax.scan(body, key, None, length=n)[1]
    return program(("simulate-keys", int(n)), lambda: cache.jit(chain))(key)


def trials_bound(fam, trials, n: int) -> int | None:
    """The static bound on the trials for ``fam.simulate_bounded`` (a power of two), or
    None to use ``fam.simulate``."""
    if fam.simulate_bounded is None or trials is None:
        return None
    t = np.asarray(trials, float)
    if t.size == 0 or not np.all(np.isfinite(t)) or np.any(t != np.round(t)) or t.min() < 0:
        return None
    bound = 1 << max(0, int(t.max()) - 1).bit_length()
    if bound > BOUNDED_MAX_TRIALS or t.size * bound * n > BOUNDED_MAX_DRAWS:
        return None
    return bound


def _simulate(structure, fam, spec, sizes, bound, k_re, k_y, conditioned, chols, index, Z,
              trials, fp, masks):
    """Responses (n, rows) and their linear predictors: new random effects drawn from the
    fitted covariances (``chols``, one draw per term in ``spec`` for each of the n keys
    ``k_re``; columns ``masks`` conditions on get none) added to ``conditioned``, then the
    family's draw with the keys ``k_y``."""
    def one(kr, ky):
        eta = conditioned
        if spec:
            parts = [[None] * f.q for f in structure.factors]
            key = kr
            for (k, col0, levels, q), L in zip(spec, chols):
                key, sub = jax.random.split(key)
                draw = jax.random.normal(sub, (levels, q)) @ L.T
                for j in range(q):
                    parts[k][col0 + j] = draw[:, j]
            b = [jnp.stack([c if c is not None else jnp.zeros(n) for c in cols], axis=1)
                 for cols, n in zip(parts, sizes)]
            if masks is not None:
                b = [bf * (1.0 - m) for bf, m in zip(b, masks)]
            eta = eta + random_predictor(structure, b, index, Z)
        if bound is not None:
            return fam.simulate_bounded(ky, eta, trials, fp, bound), eta
        return fam.simulate(ky, eta, trials, fp), eta

    return jax.vmap(one)(k_re, k_y)
