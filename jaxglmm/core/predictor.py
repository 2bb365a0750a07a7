"""The linear predictor: the one function from coefficients and random effects to eta.

The log-density (:func:`joint_log_density`, and through it every fitter) and prediction on
new data (:meth:`jaxglmm.results.FitResult.predict`) both call :func:`linear_predictor`, so
the two cannot drift apart.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from . import restructure as rs
from .ops import gather_levels
from .problem import ProblemArrays


def fixed_predictor(structure: rs.ReStructure, a: ProblemArrays, beta):
    """offset + X beta: (n,), or (n, C) where each coefficient feeds its own channel.  The
    offset is (n,) (shared by every channel, as categorical) or (n, C) (one per predictor, as
    a parameter formula)."""
    if structure.n_channels == 1:
        return a.offset + a.X @ beta
    onehot = np.eye(structure.n_channels)[np.array(structure.fixef_channels)]   # (p, C)
    offset = a.offset if a.offset.ndim == 2 else a.offset[:, None]     # per channel or shared
    return offset + (a.X * beta) @ onehot


def random_predictor(structure: rs.ReStructure, b, index, Z):
    """sum_f Z_f[i] . b_f[g_f[i]] per observation, from per-factor effects ``b`` (each
    (levels, q_f)): (n,), or (n, C) with C channels.  An index of -1 (a level not seen in
    training) contributes zero."""
    eta = 0.0
    for f, bf, idx, z in zip(structure.factors, b, index, Z):
        contrib = z * gather_levels(jnp.asarray(bf), idx)
        if structure.n_channels == 1:
            eta = eta + jnp.sum(contrib, axis=-1)
        else:
            onehot = np.eye(structure.n_channels)[np.array(f.channels)]      # (q, C)
            eta = eta + contrib @ onehot
    return eta


def linear_predictor(structure: rs.ReStructure, a: ProblemArrays, beta, b):
    """eta = offset + X beta + Z b for one dataset's arrays and per-factor effects ``b``."""
    return fixed_predictor(structure, a, beta) + random_predictor(structure, b, a.index, a.Z)


def spherical_predictor(structure: rs.ReStructure, a: ProblemArrays, beta, theta, u):
    """eta from spherical random effects ``u`` (``b = Lambda(theta) u``)."""
    b = rs.random_effects(structure, rs.lambdas(structure, theta), u)
    return linear_predictor(structure, a, beta, b)


def joint_log_density(structure: rs.ReStructure, family, a: ProblemArrays, params: dict):
    """``log p(y, u | beta, theta, phi)`` for one dataset's arrays: ``params`` holds ``beta``,
    ``theta`` (absolute scale), ``phi`` (the family's unconstrained parameters) and ``u``
    (spherical random effects, N(0, I) a priori)."""
    eta = spherical_predictor(structure, a, params["beta"], params["theta"], params["u"])
    fp = family.natural_params(params["phi"])
    ll = jnp.sum(a.weights * family.loglik(a.y, eta, a.trials, fp))
    u = params["u"]
    return ll - 0.5 * jnp.dot(u, u) - 0.5 * u.shape[0] * jnp.log(2 * jnp.pi)
