"""Profile-likelihood confidence intervals, as lme4's ``profile.merMod`` and
``confint(method = "profile")``.

Each parameter on lme4's "sdcor" scale (the random effects' SDs and correlations, the
residual SD, the fixed effects) is held at values while the others are re-optimized, and the
signed root deviance ``zeta(x) = sign(x - x_hat) sqrt(dev(x) - dev_min)`` is followed out to
``+-z_(1-alpha/2)``.  The objective is the one the fit maximized: the exact ML deviance of an
LMM (a REML fit is profiled by its ML refit, as lme4 does), the Laplace deviance, or the
adaptive Gauss-Hermite deviance with the fit's number of points; other methods are refused.

The profile is followed to the parameter's boundary: an SD's profile includes SD = 0 and a
correlation's the values next to +-1.  Each interval end is found by root-finding on zeta:
the first rounds of points (a grid from the quadratic approximation, then further out)
bracket the crossing, and each later round places one constrained fit per end at the
crossing of a monotone (PCHIP) interpolant through the points around it, until zeta there
is within ``ZETA_TOL`` of the cut-off.  An SD whose zeta at 0 stays above ``-z`` has the
lower end 0 exactly, as lme4's, and a correlation whose zeta next to the boundary stays
inside has the end +-1.  An end that the profile does not reach is NaN, with a warning
naming the parameter; so is an interval whose ends do not hold the estimate.

Every round's constrained fits run as one vmapped batch of BFGS fits, each started from the
nearest point's optimum moved along the first-order path, with the Hessian (central
differences of the exact gradient at the estimate) as its first inverse-Hessian matrix.
The batch is the one compiled program, cached (:func:`jaxglmm.fit.cache.program`) by the
structure, family and objective with the data as arguments; every round is padded to its
one shape."""
from __future__ import annotations

import warnings

import jax
from .._lazy import pandas as pd
import jax.numpy as jnp
import numpy as np

from ..core import linalg
from ..core.laplace import GlmmModel
from ..core.lmm import lmm_data, marginal_loglik
from ..fit.aot import AheadOfTime
from ..fit import cache
from ..fit.cache import program
from ..fit.likelihood import COMPILER_OPTIONS
from ..fit import optimize
from ..methods import METHODS, get_method
from ..model import fit_problem
from ..fit.optimize import BACKTRACKING, init as bfgs_init, run as bfgs_run
from .params import of_fit, select

GRID = np.array([-3.0, -2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 3.0])
FAR = (4.5, 7.0, 11.0, 17.0)     # multiples of the SE where the grid does not reach +-z
ZETA_TOL = 1e-5                  # an end's zeta within this of the cut-off is found
MAX_ROUNDS = 8                   # root-finding rounds after the bracketing ones
COR_EDGE = 1.0 - 1e-9            # a correlation "at" +-1
SD = ("sd", "sd1")
GTOL, MAX_BFGS = 1e-8, 400       # each constrained fit's BFGS
# the methods profiled as fitted (reml is profiled through its ML refit)
PROFILED = tuple(m.name for m in METHODS if not m.bayesian and m.ml_refit is None)


def _names(fit, lmm: bool):
    """(names, kinds, n_phi): the profiled parameters, their kinds, the family parameters."""
    s = fit.problem.structure
    names, kinds = [], []
    for t in s.terms:
        for r, c in zip(t.theta_rows, t.theta_cols):
            a, b = t.names[c - t.col0], t.names[r - t.col0]
            g = t.param_group or t.label
            names.append(f"sd_{g}__{b}" if r == c else f"cor_{g}__{a}__{b}")
            # a scalar term's SD is optimized on its own scale (the deviance is even in it,
            # and smooth through 0), a vector term's on the log scale
            kinds.append(("sd1" if t.q == 1 else "sd") if r == c else "cor")
    if lmm:
        names.append("sigma")
        kinds.append("sigma")
    fixed = list(fit.fixef.index)
    names += fixed
    kinds += ["beta"] * len(fixed)
    n_phi = 0 if lmm else np.asarray(fit.optinfo["x"]).size - s.n_theta - len(fixed)
    names += [f"_phi{i}" for i in range(n_phi)]
    kinds += ["phi"] * n_phi
    return names, tuple(kinds), n_phi


def _theta_of(s, v, lmm: bool):
    """lme4's theta (relative to sigma for an LMM) from the SDs and correlations ``v``.

    Each term's Cholesky factor is ``diag(sd) chol(R)``, so an SD of exactly 0 (a profile at
    its boundary) has finite derivatives; ``R`` is the correlation matrix."""
    theta = [None] * s.n_theta
    scale = v[s.n_theta] if lmm else 1.0
    for t in s.terms:
        pos = {(r - t.col0, c - t.col0): t.theta_start + k
               for k, (r, c) in enumerate(zip(t.theta_rows, t.theta_cols))}
        sd = jnp.stack([v[pos[i, i]] for i in range(t.q)])
        if t.q == 1:
            L = sd[:, None]
        else:
            one, zero = jnp.ones((), v.dtype), jnp.zeros((), v.dtype)
            R = jnp.stack([jnp.stack([one if i == j else v[pos[max(i, j), min(i, j)]]
                                      if (max(i, j), min(i, j)) in pos else zero
                                      for j in range(t.q)]) for i in range(t.q)])
            L = sd[:, None] * linalg.chol(R)   # never a batched LAPACK call under vmap
        for (i, j), k in pos.items():
            theta[k] = L[i, j] / scale
    return jnp.stack(theta) if theta else jnp.zeros(0, v.dtype)


def _from_free(kinds, z):
    """The natural values of the free (optimizer's) vector: log for SDs (a scalar term's SD:
    its absolute value), atanh for correlations.  The exp's argument is 0 where the branch
    is not taken (a fixed effect in the hundreds would overflow it, and its NaN gradient
    would reach the taken branch)."""
    pos = np.array([k in ("sd", "sigma") for k in kinds])
    cor = np.array([k == "cor" for k in kinds])
    sd1 = np.array([k == "sd1" for k in kinds])
    return jnp.where(pos, jnp.exp(jnp.where(pos, z, 0.0)),
                     jnp.where(cor, jnp.tanh(z), jnp.where(sd1, jnp.abs(z), z)))


def _to_free(kinds, v):
    v = np.asarray(v, float)
    out = v.copy()
    for i, k in enumerate(kinds):
        if k in ("sd", "sigma"):
            out[i] = np.log(max(v[i], 1e-300))
        elif k == "cor":
            out[i] = np.arctanh(np.clip(v[i], -COR_EDGE, COR_EDGE))
    return out


def _deviance(s, family, lmm: bool, n_phi: int, n_agq: int):
    """``(arrays, v, aux) -> (deviance, aux)`` on the natural scale."""
    n_theta = s.n_theta

    if lmm:
        def deviance(arrays, v, aux):
            d = lmm_data(s, arrays)
            theta, sigma, beta = _theta_of(s, v, True), v[n_theta], v[n_theta + 1:]
            return -2.0 * marginal_loglik(s, d, theta, beta, sigma), aux
        return deviance

    def deviance(arrays, v, aux):
        gm = GlmmModel(s, family, arrays, n_phi)
        x = jnp.concatenate([_theta_of(s, v, False), v[n_theta:]])
        if n_agq > 1:
            return gm.agq_deviance(x, n_agq, aux)
        return gm.laplace_deviance(x, aux)
    return deviance


def _program(s, family, lmm: bool, n_phi: int, n_agq: int, kinds: tuple):
    """The cached batch of constrained fits for one model shape and objective (ahead of
    time: it compiles in the background while the caller prepares the first round)."""
    deviance = _deviance(s, family, lmm, n_phi, n_agq)
    k = len(kinds)

    def constrained(arrays, aux, w, vw, z0, hinv0, until):
        """The fit with parameter w held at vw, from z0 (free scale) and the mode aux, BFGS
        started from the inverse Hessian hinv0 rather than a scaled identity.  With
        ``until = 1`` no step is taken: the deviance and gradient at z0 (w = -1: none held)."""
        onehot = jnp.arange(k) == w

        def f(z, a):
            return deviance(arrays, jnp.where(onehot, vw, _from_free(kinds, z)), a)
        vg = jax.value_and_grad(f, has_aux=True)
        # the first update evaluates z0; the next step is the Newton step of hinv0
        state = bfgs_run(vg, bfgs_init(z0, aux, Hinv0=hinv0), BACKTRACKING, until, gtol=GTOL)
        return (state.f, jnp.where(onehot, vw, _from_free(kinds, state.x)), state.x, state.aux,
                state.status, state.it - 1, state.g)

    # XLA's backend optimizations off: the batch's graph is loops of small ops, where they
    # cost most of the compile (docs/benchmarks.md)
    return program(("profile", s, family, lmm, n_phi, n_agq, kinds), lambda: AheadOfTime(
        cache.jit(jax.vmap(constrained, in_axes=(None, 0, 0, 0, 0, 0, None)),
                compiler_options=COMPILER_OPTIONS)))


def _exact(fit) -> bool:
    """Whether the fit is profiled on the exact LMM deviance; a refusal naming the method
    when it cannot be profiled."""
    spec = get_method(fit.method)
    if spec.bayesian:
        raise ValueError(f"profile intervals are for likelihood fits ({', '.join(PROFILED)}, "
                         f"or reml through its ML refit); cannot profile method {fit.method!r}")
    return bool(fit.problem.family.exact_lmm and not spec.quadrature)


def _objective(fit):
    """(the fit to profile, lmm, number of AGQ points), or a refusal naming the method."""
    lmm = _exact(fit)
    refit = get_method(fit.method).ml_refit
    if refit:
        fit = fit_problem(fit.problem, fit.spec, refit)  # lme4: profiles of the ML refit
    return fit, lmm, get_method(fit.method).points(fit.options)


def profile(fit, parm=None, level: float = 0.95) -> pd.DataFrame:
    """The likelihood profile of a fit, lme4's ``profile.merMod`` (as
    ``as.data.frame(profile(fit))``) and MixedModels.jl's ``profile(m)``: one row per
    profiled point, with columns ``parameter``, ``value`` (on lme4's "sdcor" scale) and
    ``zeta``, the signed root deviance, followed past the ends of the ``level`` interval.

    ``parm``: as :func:`~jaxglmm.inference.confint.confint`'s (None: every SD, correlation,
    sigma and fixed effect; the family's own parameters are not profiled).
    ``attrs["intervals"]`` holds the ``level`` intervals (lower, upper), as
    ``confint(fit, "profile")``, and ``attrs["estimates"]`` the estimates (of the ML refit
    for a REML fit, as lme4's)."""
    if not (isinstance(level, (int, float)) and 0 < level < 1):
        raise ValueError(f"level must be a probability between 0 and 1, got {level!r}")
    if getattr(fit, "draws", None) is not None:
        raise ValueError(f"profile is for likelihood fits; this is a {fit.method!r} fit")
    profiled = [n for n in _names(fit, _exact(fit))[0] if not n.startswith("_phi")]
    est = of_fit(fit)
    wanted = select(parm, [n for n in est.index if n in profiled], list(fit.fixef.index))
    limits, curves, estimates = profile_intervals(fit, level, wanted)
    rows = [(n, x, z) for n in wanted for x, z in zip(*curves[n])]
    out = pd.DataFrame(rows, columns=["parameter", "value", "zeta"])
    out.attrs["intervals"] = pd.DataFrame([limits[n] for n in wanted], index=wanted,
                                          columns=["lower", "upper"])
    out.attrs["estimates"] = pd.Series(estimates)
    return out


def profile_intervals(fit, level: float, names_wanted) -> tuple[dict, dict, dict]:
    """{name: (lower, upper)}, the profiles {name: (x, zeta)} and the estimates {name: x}
    (of the ML refit for a REML fit) of the named parameters."""
    fit, lmm, n_agq = _objective(fit)
    if not fit.converged:
        warnings.warn("profiling a fit that did not converge: the intervals may be off",
                      UserWarning, stacklevel=3)
    problem = fit.problem
    s = problem.structure
    names, kinds, n_phi = _names(fit, lmm)
    est = of_fit(fit)
    phi_hat = np.asarray(fit.optinfo["x"], float)[s.n_theta + len(fit.fixef):]
    v_hat = np.array([est[n] for n in names if not n.startswith("_phi")] + list(phi_hat), float)
    aux0 = jnp.zeros(0) if lmm else jnp.asarray(np.asarray(fit.optinfo["u"], float))
    k = len(names)
    kind = np.array(kinds)
    # the optimizer's start: SDs at 0 (a singular fit) are moved off the boundary, where the
    # log scale's gradient vanishes and the SD could not leave 0 when the profile needs it to
    scale = v_hat[kind == "sigma"][0] if lmm else 1.0
    v_start = v_hat.copy()
    sd = np.isin(kind, SD)
    v_start[sd] = np.maximum(v_start[sd], 1e-2 * scale)
    z_start = _to_free(kinds, v_start)
    # every round is padded to one shape (one fit per end of every parameter): one compile
    # for any parameters wanted
    size = 2 * k
    batch = _program(s, fit.problem.family, lmm, n_phi, n_agq, kinds)
    arrays = problem.arrays
    aux_b = jnp.broadcast_to(aux0, (size,) + aux0.shape)
    eye = jnp.broadcast_to(jnp.eye(k), (size, k, k))
    none = jnp.full(size, -1, jnp.int32)

    def evaluate(Z):
        """Deviances and gradients at the rows of Z (free scale), nothing held."""
        out = batch(arrays, aux_b, none, jnp.zeros(size), jnp.asarray(Z), eye, 1)
        return np.asarray(out[0]), np.asarray(out[6])

    base = float(evaluate(np.broadcast_to(_to_free(kinds, v_hat), (size, k)))[0][0])
    # the Hessian at the start by central differences of the exact gradient
    h = 1e-4 * (1.0 + np.abs(z_start))
    _, G = evaluate(np.concatenate([z_start + np.diag(h), z_start - np.diag(h)]))
    H = (G[:k] - G[k:]) / (2.0 * h[:, None])
    H = 0.5 * (H + H.T)
    with np.errstate(invalid="ignore"):
        se = np.sqrt(np.clip(np.diag(2.0 * np.linalg.pinv(H)), 1e-12, None))
    se = np.where(np.isfinite(se), se, 1.0)
    se[sd & (v_hat < 1e-2 * scale)] = 1.5       # at the boundary: no curvature to go by
    # the grid's scale: log for SDs, atanh for correlations
    se = se * np.where(kind == "sd1", 1.0 / np.maximum(v_start, 1e-300), 1.0)
    bounded = np.isin(kind, ("sd", "sd1", "sigma", "cor"))
    se[bounded] = np.clip(se[bounded], 0.05, 1.5)
    # the Hessian made positive definite: each constrained fit's first BFGS matrix, and
    # the first-order path of the other parameters as one is moved
    lam, vec = np.linalg.eigh(np.where(np.isfinite(H), H, 0.0))
    H_pd = (vec * np.maximum(lam, max(1e-2, 1e-8 * lam.max()))) @ vec.T
    hinv, path = np.zeros((k, k, k)), np.zeros((k, k))
    for w in range(k):
        rest = np.arange(k) != w
        Hw = np.eye(k)
        Hw[np.ix_(rest, rest)] = H_pd[np.ix_(rest, rest)]
        hinv[w] = np.linalg.inv(Hw)
        path[w, rest] = -np.linalg.solve(H_pd[np.ix_(rest, rest)], H_pd[rest, w])
    from scipy.stats import norm  # loads when first used (import time)
    zcrit = norm.ppf(1 - (1 - level) / 2)
    todo = [names.index(n) for n in names_wanted if n in names]
    points = {w: [(v_hat[w], 0.0)] for w in todo}
    sols = {w: [(v_hat[w], z_start, aux0)] for w in todo}     # (x, optimum, mode) per point
    low_dev, failed = [], []

    def start(w, x):
        """The warm start for parameter w at x: the nearest point's optimum, moved along
        the first-order path."""
        fx = _to_free(kinds, np.full(k, x))[w]
        near = min(sols[w], key=lambda s: abs(_to_free(kinds, np.full(k, s[0]))[w] - fx))
        step = np.clip(fx - _to_free(kinds, np.full(k, near[0]))[w], -4 * se[w], 4 * se[w])
        return near[1] + step * path[w], near[2]

    def run(ws, vws):
        """Constrained fits at natural values vws of parameters ws; points recorded."""
        for lo in range(0, len(ws), size):
            w = np.asarray(ws[lo:lo + size], np.int32)
            vw = np.asarray(vws[lo:lo + size], float)
            pad = size - w.size
            w_p = np.concatenate([w, np.repeat(w[:1], pad)])
            vw_p = np.concatenate([vw, np.repeat(vw[:1], pad)])
            starts = [start(int(a), b) for a, b in zip(w_p, vw_p)]
            out = batch(arrays, jnp.stack([s[1] for s in starts]), jnp.asarray(w_p),
                        jnp.asarray(vw_p), jnp.asarray(np.stack([s[0] for s in starts])),
                        jnp.asarray(hinv[w_p]), MAX_BFGS + 1)
            vals, _, zs, auxs, status, _, _ = jax.device_get(out)
            for i, (wi, x) in enumerate(zip(w, vw)):
                d = vals[i] - base
                if not np.isfinite(d):
                    failed.append(names[wi])
                    continue
                if status[i] in (optimize.MAXITER, optimize.NONFINITE):
                    failed.append(names[wi])        # (a line search ending at the optimum is not)
                if d < -1e-6 * (1 + abs(base)):
                    low_dev.append(names[wi])
                wi = int(wi)
                points[wi].append((float(x), float(np.sign(x - v_hat[wi]) * np.sqrt(max(d, 0.0)))))
                sols[wi].append((float(x), zs[i], jnp.asarray(auxs[i])))

    def natural(w, g):
        """The value g SEs from the estimate (an SD at 0: from the start) on the grid's
        scale (log for SDs, atanh for correlations)."""
        c = kinds[w]
        if c in ("sd", "sd1", "sigma"):
            return float(np.exp(np.log(v_start[w]) + g * se[w]))
        if c == "cor":
            return float(np.tanh(np.arctanh(np.clip(v_start[w], -COR_EDGE, COR_EDGE)) + g * se[w]))
        return float(v_start[w] + g * se[w])

    # round 1: the grid, plus each SD's boundary 0
    ws, vws = [], []
    for w in todo:
        for g in GRID:
            ws.append(w)
            vws.append(natural(w, g))
        if kinds[w] in SD and v_hat[w] > 0:
            ws.append(w)
            vws.append(0.0)
    run(ws, vws)
    # round 2: further out where the grid does not reach +-z; a correlation's boundary
    ws, vws = [], []
    for w in todo:
        for side in (-1, 1):
            if _reached(points[w], side, zcrit) or _at_boundary(kinds[w], side, points[w]):
                continue
            far = [natural(w, side * m) for m in FAR]
            if kinds[w] == "cor":
                far.append(side * COR_EDGE)
            ws += [w] * len(far)
            vws += far
    run(ws, vws)
    # root-finding rounds: one fit per unfinished end
    ends, done = {}, {}
    for _ in range(MAX_ROUNDS + 1):
        ws, vws = [], []
        for w in todo:
            for side in (-1, 1):
                if done.get((w, side)):
                    continue
                x = _crossing(points[w], v_hat[w], side * zcrit)
                ends[w, side] = x
                if x is None or _close(points[w], side * zcrit):
                    done[w, side] = True
                    continue
                ws.append(w)
                vws.append(x)
        if not ws:
            break
        run(ws, vws)
    if failed:
        warnings.warn(f"some constrained fits of the profile did not converge, for "
                      f"{sorted(set(failed))}: their intervals may be off", UserWarning,
                      stacklevel=3)
    if low_dev:
        warnings.warn(f"profiling found a deviance below the fit's for {sorted(set(low_dev))}: "
                      "the fit is not at the optimum, and the intervals may be off",
                      UserWarning, stacklevel=3)
    out, curves, flat = {}, {}, []
    for w in todo:
        lim = []
        for side in (-1, 1):
            x = ends.get((w, side))
            if x is None:
                x = _boundary_end(kinds[w], side, points[w], zcrit)
            if x is None:
                flat.append(f"{names[w]} ({'lower' if side < 0 else 'upper'})")
                x = np.nan
            lim.append(float(x))
        lo, hi = lim
        if not (np.isnan(lo) or np.isnan(hi)) and not (lo <= v_hat[w] <= hi):
            flat.append(f"{names[w]} (the ends {lo:.6g}, {hi:.6g} do not hold the estimate)")
            lo = hi = np.nan
        out[names[w]] = (lo, hi)
        pts = np.array(sorted(points[w]))
        curves[names[w]] = (pts[:, 0], pts[:, 1])
    if flat:
        warnings.warn(f"the profile does not reach the cut-off for: {flat}; those ends are NaN",
                      UserWarning, stacklevel=3)
    return out, curves, {names[w]: float(v_hat[w]) for w in todo}


def _reached(points, side, zcrit) -> bool:
    return any(side * z >= zcrit for _, z in points)


def _at_boundary(kind, side, points) -> bool:
    """Whether the boundary itself is among the points (an SD's 0)."""
    return kind in SD and side < 0 and any(x == 0.0 for x, _ in points)


def _close(points, target) -> bool:
    return any(abs(z - target) < ZETA_TOL for _, z in points)


def _crossing(points, x_hat, target):
    """Where a monotone interpolant of zeta through the points crosses ``target``, inside
    the nearest bracketing pair of points; None when no pair brackets it."""
    side = 1 if target > 0 else -1
    pts = sorted({(x, z) for x, z in points if side * (x - x_hat) >= 0}, key=lambda p: p[0])
    xs = np.array([p[0] for p in pts])
    zs = np.array([p[1] for p in pts])
    order = np.argsort(side * xs)           # outwards from the estimate
    xs, zs = xs[order], zs[order]
    beyond = np.nonzero(side * zs >= side * target)[0]
    if beyond.size == 0 or beyond[0] == 0:
        return None
    j = beyond[0]
    x_in, x_out = xs[j - 1], xs[j]
    # a monotone interpolant through the points up to two beyond the bracket on each side
    sel = slice(max(0, j - 3), min(xs.size, j + 2))
    X, Zs = xs[sel], zs[sel]
    inc = np.argsort(X)
    X, Zs = X[inc], Zs[inc]
    keep = np.concatenate([[True], np.diff(X) > 0])
    X, Zs = X[keep], Zs[keep]
    lo, hi = min(x_in, x_out), max(x_in, x_out)
    from scipy.interpolate import PchipInterpolator  # loads when first used (import time)
    from scipy.optimize import brentq
    try:
        f = PchipInterpolator(X, Zs - target)
        if f(lo) * f(hi) > 0:
            raise ValueError
        return float(brentq(f, lo, hi, xtol=1e-14 * (1 + abs(lo) + abs(hi)), rtol=1e-15))
    except ValueError:                       # interpolant not bracketing: the secant step
        z_in, z_out = zs[j - 1], zs[j]
        return float(x_in + (target - z_in) * (x_out - x_in) / (z_out - z_in))


def _boundary_end(kind, side, points, zcrit):
    """The end at the parameter's boundary when zeta there stays inside the cut-off."""
    if kind in SD and side < 0 and any(x == 0.0 and z > -zcrit for x, z in points):
        return 0.0
    if kind == "cor" and any(abs(x) == COR_EDGE and side * x > 0 and abs(z) < zcrit
                             for x, z in points):
        return float(side)
    return None
