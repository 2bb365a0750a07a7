"""Parametric bootstrap, lme4's ``bootMer``: simulate from the fit, refit every simulated
response in one batch (:func:`jaxglmm.refit_many`), and tabulate a statistic per replicate."""
from __future__ import annotations

import time
import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from .._lazy import pandas as pd

from ..many.batch import prepare_refits, refit_many
from ..methods import get_method
from .params import named

USE_RE = {"sample": "~0", "conditional": None}


class Replicates(NamedTuple):
    """What a user's bootstrap statistic receives: one refit's arrays (stacked over the
    replicates and vmapped, so the statistic sees one replicate's).  ``theta`` is relative
    to ``sigma`` for an LMM (lme4's scale); ``family_params`` holds the family's natural
    parameters by name; ``fixef`` the fixed effects in the fit's order."""

    fixef: jnp.ndarray
    theta: jnp.ndarray
    sigma: jnp.ndarray
    family_params: dict
    loglik: jnp.ndarray


def bootstrap(fit, n: int = 1000, statistic: Callable | None = None, seed: int | None = None,
              use_re: str = "sample", progress: bool | None = None) -> pd.DataFrame:
    """``n`` parametric bootstrap replicates of a likelihood fit, one row each.

    ``use_re="sample"`` draws new random effects for every replicate (lme4's default
    ``use.u = FALSE``); ``"conditional"`` keeps the fitted modes (``use.u = TRUE``).  The
    default statistic is every named parameter (fixed effects, ``sd_*``, ``cor_*``,
    ``sigma``, family parameters); a ``statistic`` is a function of a :class:`Replicates`
    record returning an array or a dict of arrays, vmapped over the replicates.  Column
    ``converged`` says which refits converged; ``attrs["seconds"]`` holds the simulation
    and refit times (the refits compile while the responses are simulated: "compile"
    overlaps "simulate")."""
    if getattr(fit, "draws", None) is not None:
        raise ValueError(f"bootstrap refits likelihood fits; this is a {fit.method!r} fit, "
                         "whose posterior draws (fit.draws) already give its uncertainty")
    if use_re not in USE_RE:
        raise ValueError(f"use_re must be 'sample' or 'conditional', got {use_re!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be a positive number of replicates, got {n}")
    start = time.perf_counter()
    # the refits' programs compile in the background while the responses are simulated
    # (docs/benchmarks.md)
    compiling = prepare_refits(fit, n)
    Y = np.asarray(fit.simulate(n=n, seed=seed, re_form=USE_RE[use_re]), float).T
    simulated = time.perf_counter() - start
    compiled = compiling.result()   # its errors are the refits' own: raised here, not lost
    fits = refit_many(fit, Y, progress=progress)
    problem = fit.problem
    lmm = problem.family.exact_lmm and not get_method(fit.method).bayesian
    k = problem.n_params - problem.structure.n_theta - problem.design.n_fixef
    phi = fits._stacked("family_params", (k,)) if not lmm and k else np.zeros((n, 0))
    beta = fits.fixef.to_numpy(float)
    sigma = fits.sigma.to_numpy(float)
    if statistic is None:
        out = named(problem.structure, problem.family, list(fit.fixef.index), beta, fits.theta,
                    sigma, phi, lmm)
    else:
        fp = jax.vmap(problem.family.natural_params)(jnp.asarray(phi)) if phi.shape[1] else {}
        rec = Replicates(jnp.asarray(beta), jnp.asarray(fits.theta), jnp.asarray(sigma), fp,
                         jnp.asarray(fits.loglik.to_numpy(float)))
        out = _table(jax.vmap(statistic)(rec), n)
    out["converged"] = fits.converged.to_numpy()
    failed = int(np.sum(~out["converged"].to_numpy()))
    if failed:
        warnings.warn(f"{failed} of {n} bootstrap refits did not converge (column "
                      "'converged'); their rows are kept", stacklevel=2)
    out.index = pd.RangeIndex(n, name="replicate")
    seconds = dict(fits.seconds)
    seconds["compile"] += compiled      # the refits' compile, overlapping "simulate"
    out.attrs["seconds"] = {"simulate": simulated, **seconds,
                            "total": time.perf_counter() - start}
    return out


def _table(value, n: int) -> pd.DataFrame:
    if isinstance(value, dict):
        cols = {}
        for k, v in value.items():
            v = np.asarray(v).reshape(n, -1)
            cols.update({k: v[:, 0]} if v.shape[1] == 1 else
                        {f"{k}[{i + 1}]": v[:, i] for i in range(v.shape[1])})
        return pd.DataFrame(cols)
    v = np.asarray(value).reshape(n, -1)
    return pd.DataFrame(v, columns=[f"t{i + 1}" for i in range(v.shape[1])])
