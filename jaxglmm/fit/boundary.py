"""Fits that start or stop at a zero variance.

A diagonal entry of lme4's theta (the relative or absolute SD of a random effect, or a
Cholesky diagonal) enters the deviance only through ``Lambda Lambda'``, which is even in it
when the rest of its row is fixed: at zero the deviance's derivative in that entry is exactly
zero, whatever the data.  A fit started at zero therefore never leaves it, and a fit can
also stop at zero where the deviance decreases in the variance (a zero that is a stationary
point but not a minimum).  Every batch that starts its members at one fit's estimates (a
bootstrap or ``refit_many`` from a singular fit, a pilot member that came out singular)
hit this: the members stayed at zero and reported ``converged``.

Two remedies, both used by the batch engine (:func:`jaxglmm.fit.batched.fit_batch`):

* :func:`floor_start`: a start with a diagonal entry at zero has that entry moved to
  ``START_FLOOR`` (and its inverse Hessian dropped: it was made at the boundary);
* :func:`boundary_probe`: at the end of a fit, each diagonal entry within ``AT_ZERO`` of
  zero is set to ``PROBE`` and the optimizer restarted there (its first step the gradient's);
  the restarted fit runs to its end and is kept where it reaches a lower deviance than the
  fit at zero, and the fit at zero is kept (converged, with a non-negative derivative in the
  variance) where not.
"""
from __future__ import annotations

import numpy as np

# a start's diagonal entry within AT_ZERO of zero starts here instead (lme4's own start is 1;
# theta is relative to sigma for an LMM, on the link scale otherwise)
START_FLOOR = 0.1
# a fitted diagonal entry this close to zero is probed (judge's singular check is at 1e-4;
# a fit started near zero can stop a little above it where the gradient is below gtol)
AT_ZERO = 1e-3
# the probed entry is restarted from here
PROBE = 0.05
# how many times one fit may be restarted off the boundary
MAX_PROBES = 1
# a restart is kept where it lowers the deviance by more than this (relative to 1 + |f|)
IMPROVEMENT = 1e-11


def diagonal_mask(n_x: int, theta_diagonal: np.ndarray) -> np.ndarray:
    """Which entries of an optimizer vector of length ``n_x`` are diagonal theta entries
    (theta comes first: an LMM's vector is theta, a GLMM's (theta, beta, phi))."""
    mask = np.zeros(n_x, bool)
    diag = np.asarray(theta_diagonal, bool)
    mask[:diag.size] = diag
    return mask


def floor_start(x0, Hinv0, mask: np.ndarray):
    """``(x0, Hinv0)`` with each diagonal entry within ``AT_ZERO`` of zero moved to
    ``START_FLOOR`` (and then ``Hinv0`` all NaN: not used).  A non-finite ``x0`` (the
    caller's "start where a single fit starts") is returned as it is."""
    x = np.array(x0, float)
    if not np.all(np.isfinite(x)):
        return x0, Hinv0
    low = mask & (np.abs(x) < AT_ZERO)
    if not low.any():
        return x0, Hinv0
    x[low] = START_FLOOR
    H = None if Hinv0 is None else np.full(np.shape(Hinv0), np.nan)
    return x, H


def at_zero(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per row of ``x`` (members, n_x): whether a diagonal entry is within AT_ZERO of 0."""
    x = np.asarray(x)
    return np.any(mask & (np.abs(x) < AT_ZERO), axis=-1) & np.all(np.isfinite(x), axis=-1)


def boundary_probe(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``x`` (members, n_x) with every diagonal entry within AT_ZERO of 0 set to PROBE."""
    x = np.array(x, float)
    low = mask & (np.abs(x) < AT_ZERO)
    x[low] = PROBE
    return x


def improved(f_new: np.ndarray, f_old: np.ndarray) -> np.ndarray:
    """Whether a restart's deviance is lower than the boundary fit's (beyond rounding)."""
    f_new, f_old = np.asarray(f_new, float), np.asarray(f_old, float)
    with np.errstate(invalid="ignore"):
        return np.isfinite(f_new) & (f_new < f_old - IMPROVEMENT * (1.0 + np.abs(f_old)))
