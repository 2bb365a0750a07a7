"""Host-side optimizers and finite differences of values, for objectives whose every
evaluation is a large factorization (the sparse crossed LMM): scipy's COBYQA on values, or
L-BFGS-B with an exact gradient, calling one compiled evaluation per point.

A fit chooses its optimizer by its ``optimizer`` option (:func:`choose_optimizer`), not by a
process-wide switch.
"""
from __future__ import annotations

import sys
from typing import Callable

import jax.numpy as jnp
import numpy as np

from .optimize import CONVERGED, MAXITER

# The outer optimizers a likelihood fit can name (option ``optimizer``): the compiled BFGS
# of jaxglmm.fit.optimize (every fit's default but the sparse crossed LMM's), and the host's
# L-BFGS-B (exact gradient; the sparse crossed LMM's default with scalar random effects) and
# COBYQA (derivative-free; its default otherwise).
OPTIMIZERS = ("bfgs", "lbfgsb", "cobyqa")


def choose_optimizer(name, allowed: tuple, default: str, what: str) -> str:
    """The optimizer a fit runs: ``name`` (None: ``default``) if ``allowed`` holds it, else
    a one-line error naming the ones this fit (``what``) can use."""
    if name is None:
        return default
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: choose one of "
                         + ", ".join(repr(o) for o in OPTIMIZERS))
    if name not in allowed:
        raise ValueError(f"optimizer {name!r} does not apply to {what}: choose "
                         + " or ".join(repr(o) for o in allowed))
    return name


def fd_points(x: jnp.ndarray, rel_step: float = 1e-4) -> jnp.ndarray:
    """The points :func:`fd_derivatives` needs: x, x +- h e_i, and x + h e_i + h e_j (i < j);
    1 + 2k + k(k-1)/2 evaluations of the objective give its gradient and Hessian."""
    k = x.shape[0]
    h = rel_step * (1.0 + jnp.abs(x))
    E = jnp.eye(k, dtype=x.dtype) * h
    i, j = jnp.triu_indices(k, 1)
    return jnp.concatenate([x[None], x + E, x - E, x + E[i] + E[j]])


def fd_derivatives(f: jnp.ndarray, x: jnp.ndarray, rel_step: float = 1e-4):
    """Gradient (central differences) and Hessian (second differences) from the values
    ``f`` at :func:`fd_points`; for objectives whose exact gradient costs more than a
    few values (a large Cholesky factor)."""
    k = x.shape[0]
    h = rel_step * (1.0 + jnp.abs(x))
    f0, fp, fm, fij = f[0], f[1:k + 1], f[k + 1:2 * k + 1], f[2 * k + 1:]
    g = (fp - fm) / (2.0 * h)
    H = jnp.diag((fp - 2.0 * f0 + fm) / (h * h))
    i, j = jnp.triu_indices(k, 1)
    off = (fij - fp[i] - fp[j] + f0) / (h[i] * h[j])
    H = H.at[i, j].set(off).at[j, i].set(off)
    return g, H


def _host_progress():
    """The evaluation counter of a host optimizer and its per-iteration printer (scipy's
    ``callback``): ``iteration K: objective F (N evaluations)`` on stderr."""
    count = [0]

    def report(intermediate_result):
        print(f"iteration {report.k:4d}: objective {intermediate_result.fun:.10g} "
              f"({count[0]} evaluations)", file=sys.stderr)
        report.k += 1
    report.k = 1
    return count, report


def minimize_host(fun: Callable, x0, lower, *, verbose: bool = False, maxfev: int = 1000,
                  rhobeg: float = 1.0, rhoend: float = 1e-6):
    """Derivative-free minimization of ``fun`` (host float -> float) within lower bounds,
    by Powell's model-based trust-region method (scipy's COBYQA, the successor of the
    BOBYQA lme4 and MixedModels.jl use), one compiled evaluation per point.

    For objectives whose every evaluation is a large factorization (the sparse crossed
    LMM), where the exact gradient costs several evaluations.  Returns ``(x, f, n_evals,
    status)`` with status CONVERGED or MAXITER.  ``verbose`` prints the objective at each
    iteration on stderr."""
    from scipy.optimize import Bounds, minimize as sp_minimize

    x0 = np.asarray(x0, float)
    lo = np.asarray(lower, float)
    count, report = _host_progress()

    def f(x):
        count[0] += 1
        return float(fun(x))

    res = sp_minimize(f, x0, method="COBYQA", bounds=Bounds(lo, np.full_like(lo, np.inf)),
                      callback=report if verbose else None,
                      options={"maxfev": maxfev, "initial_tr_radius": rhobeg,
                               "final_tr_radius": rhoend})
    status = CONVERGED if res.success or count[0] < maxfev else MAXITER
    return np.asarray(res.x, float), float(res.fun), count[0], status


def minimize_host_gradient(fun_grad: Callable, x0, lower, *, verbose: bool = False,
                           maxfev: int = 1000, gtol: float = 1e-6, ftol: float = 1e-15,
                           scale=None):
    """:func:`minimize_host` for an objective with an exact gradient (``fun_grad(x) -> (f,
    g)``): scipy's L-BFGS-B within the lower bounds.  Stops where the projected gradient's
    largest entry is below ``gtol`` or the relative decrease below ``ftol``.  ``scale``
    (per entry): the optimizer works in ``x / scale``, so its first step, of length 1,
    moves x by about ``scale`` (from a good start, a small scale saves the first line
    search's backtracking).  Returns ``(x, f, n_evals, status)``."""
    from scipy.optimize import minimize as sp_minimize

    sc = np.ones(np.shape(x0)) if scale is None else np.asarray(scale, float)
    x0 = np.asarray(x0, float) / sc
    lo = np.asarray(lower, float) / sc
    count, report = _host_progress()

    def fg(z):
        count[0] += 1
        f, g = fun_grad(z * sc)
        return f, np.asarray(g) * sc

    bounds = [(None if not np.isfinite(b) else float(b), None) for b in lo]
    res = sp_minimize(fg, x0, method="L-BFGS-B", jac=True, bounds=bounds,
                      callback=report if verbose else None,
                      options={"maxfun": maxfev, "maxiter": maxfev, "gtol": gtol,
                               "ftol": ftol})
    status = CONVERGED if res.success or count[0] < maxfev else MAXITER
    return np.asarray(res.x, float) * sc, float(res.fun), count[0], status
