"""The named parameters of a likelihood fit, for a batch of fits at once.

Names are brms's: the fixed effects by their names, ``sd_<group>__<term>``,
``cor_<group>__<term1>__<term2>``, ``sigma``, and the family's own parameters by name
(``shape``; a vector parameter as ``thresholds[1]``...).  The bootstrap's default statistic
and the rows of ``confint`` are these."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from .._lazy import pandas as pd

from ..methods import get_method


def variance_names(structure, sigma: bool, family_params: dict) -> list[str]:
    """Names of the variance parameters and the family's, in the order of :func:`named`."""
    names = []
    for t in structure.terms:
        names += [f"sd_{t.param_group}__{n}" for n in t.names]
        names += [f"cor_{t.param_group}__{t.names[i]}__{t.names[j]}"
                  for i in range(t.q) for j in range(i + 1, t.q)]
    if sigma:
        names.append("sigma")
    for k, v in family_params.items():
        names += [k] if np.ndim(v) == 0 else [f"{k}[{i + 1}]" for i in range(np.size(v))]
    return names


def named(structure, family, fixef_names, beta, theta, sigma, phi, lmm: bool) -> pd.DataFrame:
    """One row per fit: the fixed effects, SDs, correlations, sigma and family parameters.

    ``beta`` (B, p), ``theta`` (B, n_theta), ``sigma`` (B,) (an LMM's; ignored otherwise),
    ``phi`` (B, k) the family parameters on the optimizer's (unconstrained) scale."""
    beta, theta = np.atleast_2d(beta), np.atleast_2d(theta)
    B = beta.shape[0]
    cols = {name: beta[:, i] for i, name in enumerate(fixef_names)}
    scale = np.asarray(sigma, float).reshape(B) if lmm else np.ones(B)
    for t in structure.terms:
        L = np.zeros((B, t.q, t.q))
        for k, (r, c) in enumerate(zip(t.theta_rows, t.theta_cols)):
            L[:, r - t.col0, c - t.col0] = theta[:, t.theta_start + k]
        C = (L @ np.swapaxes(L, 1, 2)) * np.square(scale)[:, None, None]
        sd = np.sqrt(np.clip(np.diagonal(C, axis1=1, axis2=2), 0, None))
        for i, n in enumerate(t.names):
            cols[f"sd_{t.param_group}__{n}"] = sd[:, i]
        with np.errstate(invalid="ignore", divide="ignore"):
            for i in range(t.q):
                for j in range(i + 1, t.q):
                    cols[f"cor_{t.param_group}__{t.names[i]}__{t.names[j]}"] = \
                        C[:, i, j] / (sd[:, i] * sd[:, j])
    if lmm:
        cols["sigma"] = scale
    elif np.shape(phi)[-1]:
        phi = np.atleast_2d(phi)
        natural = [family.natural_params(jnp.asarray(row)) for row in phi]
        for k in natural[0]:
            v = np.stack([np.asarray(n[k], float) for n in natural])
            if k == family.residual:
                cols["sigma"] = v.reshape(B)
            elif v.ndim == 1:
                cols[k] = v
            else:
                for i in range(v.shape[1]):
                    cols[f"{k}[{i + 1}]"] = v[:, i]
    return pd.DataFrame(cols)


def of_fit(fit) -> pd.Series:
    """A likelihood FitResult's named parameters (one row of :func:`named`)."""
    problem = fit.problem
    lmm = fit.problem.family.exact_lmm and not get_method(fit.method).bayesian
    phi = np.asarray(fit.optinfo["x"], float)[problem.structure.n_theta + fit.problem.design.n_fixef:] \
        if not lmm else np.zeros(0)
    row = named(problem.structure, fit.problem.family, list(fit.fixef.index),
                fit.fixef.to_numpy(float)[None], np.asarray(fit.theta, float)[None],
                np.asarray([fit.sigma if fit.sigma is not None else np.nan]), phi[None], lmm)
    return row.iloc[0]


def select(parm, names: list[str], fixed: list[str]) -> list[str]:
    """The rows ``parm`` names: None (all of ``names``), a list of names, or lme4's
    ``"beta_"`` (the fixed effects ``fixed``) or ``"theta_"`` (the other parameters)."""
    if parm is None:
        return names
    if isinstance(parm, str):
        if parm == "beta_":
            return [n for n in names if n in fixed]
        if parm == "theta_":
            return [n for n in names if n not in fixed]
        parm = [parm]
    missing = [p for p in parm if p not in names]
    if missing:
        raise ValueError(f"unknown parameter(s) {missing}; the fit has {names}")
    return list(parm)
