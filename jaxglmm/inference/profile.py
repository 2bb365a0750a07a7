"""Profile-likelihood confidence intervals, as lme4's ``profile.merMod`` and
``confint(method = "profile")``.

Each parameter on lme4's "sdcor" scale (the random effects' SDs and correlations, the
residual SD, the fixed effects) is held at a grid of values while the others are
re-optimized; the signed root deviance ``zeta(x) = sign(x - x_hat) sqrt(dev(x) - dev_min)``
is interpolated by a spline of ``x`` in ``zeta`` and read at ``+-z_(1-alpha/2)``, then
each end is polished by one more round of constrained fits (a secant step on zeta).  As
lme4, a REML fit is profiled by its ML refit.  Every round's constrained fits (every
parameter, every grid value) run as one vmapped batch of BFGS fits."""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from scipy.interpolate import CubicSpline
from scipy.stats import norm

from ..core.laplace import GlmmModel
from ..core.lmm import lmm_data, marginal_loglik
from ..fit.likelihood import COMPILER_OPTIONS
from ..fit.optimize import minimize
from .params import of_fit

GRID = np.array([-3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
SD_FLOOR = 1e-8        # an SD "at zero": the profile's lower end when zeta stays above -z


def _layout(fit):
    """(names, kinds, v_hat, deviance(v) on the natural scale, to/from unconstrained)."""
    model = fit.model
    s = model.problem.structure
    lmm = model.family.exact_lmm and fit.method in ("ml", "laplace")
    names, kinds, slots = [], [], []
    for t in s.terms:
        for k, (r, c) in enumerate(zip(t.theta_rows, t.theta_cols)):
            a, b = t.names[c - t.col0], t.names[r - t.col0]
            names.append(f"sd_{t.label}__{b}" if r == c else f"cor_{t.label}__{a}__{b}")
            kinds.append("sd" if r == c else "cor")
            slots.append((t, k))
    if lmm:
        names.append("sigma")
        kinds.append("sd")
    fixed = list(fit.fixef.index)
    names += fixed
    kinds += ["beta"] * len(fixed)
    est = of_fit(fit)
    v_hat = [est[n] for n in names]
    n_theta, p = s.n_theta, len(fixed)
    if not lmm:        # the family's own parameters: re-optimized, on the optimizer's scale
        phi_hat = np.asarray(fit.optinfo["x"], float)[n_theta + p:]
        names += [f"_phi{i}" for i in range(phi_hat.size)]
        kinds += ["phi"] * phi_hat.size
        v_hat += list(phi_hat)
    v_hat = np.array(v_hat, float)

    def theta_of(v):
        """lme4's theta (relative to sigma for an LMM) from the SDs and correlations."""
        theta = [None] * n_theta
        scale = v[n_theta] if lmm else 1.0
        for t in s.terms:
            q = t.q
            pos = {(r - t.col0, c - t.col0): t.theta_start + k
                   for k, (r, c) in enumerate(zip(t.theta_rows, t.theta_cols))}
            sd = jnp.stack([v[pos[i, i]] for i in range(q)])
            cor = [[1.0 if i == j else (v[pos[max(i, j), min(i, j)]]
                                        if (max(i, j), min(i, j)) in pos else 0.0)
                    for j in range(q)] for i in range(q)]
            R = jnp.stack([jnp.stack([jnp.asarray(x, v.dtype) for x in row]) for row in cor])
            C = sd[:, None] * R * sd[None, :]
            L = jnp.linalg.cholesky(C + 1e-300 * jnp.eye(q)) if q > 1 else jnp.sqrt(C)
            for (i, j), k in pos.items():
                theta[k] = L[i, j] / scale
        return jnp.stack(theta) if theta else jnp.zeros(0)

    if lmm:
        d = lmm_data(s, model.problem.arrays)

        def deviance(v, aux):
            theta, sigma, beta = theta_of(v), v[n_theta], v[n_theta + 1:]
            return -2.0 * marginal_loglik(s, d, theta, beta, sigma), aux
        aux0 = jnp.zeros(0)
    else:
        gm = GlmmModel(s, model.family, model.problem.arrays, model.problem.n_phi)

        def deviance(v, aux):
            return gm.laplace_deviance(jnp.concatenate([theta_of(v), v[n_theta:]]), aux)
        aux0 = jnp.asarray(np.asarray(fit.optinfo["u"], float))
    kinds = np.array(kinds)

    def to_free(v):
        return jnp.where(kinds == "sd", jnp.log(jnp.maximum(v, 1e-300)),
                         jnp.where(kinds == "cor", jnp.arctanh(jnp.clip(v, -1 + 1e-15, 1 - 1e-15)), v))

    def from_free(z):
        return jnp.where(kinds == "sd", jnp.exp(z), jnp.where(kinds == "cor", jnp.tanh(z), z))

    return names, kinds, v_hat, deviance, aux0, to_free, from_free


def profile_intervals(fit, level: float, names_wanted) -> tuple[dict, dict]:
    """{name: (lower, upper)} and the profiles {name: (x, zeta)} of the named parameters."""
    if fit.method == "reml":
        fit = fit.model.fit("ml")               # lme4: profiles of the ML refit
    if not fit.converged:
        warnings.warn("profiling a fit that did not converge: the intervals may be off",
                      UserWarning, stacklevel=3)
    names, kinds, v_hat, deviance, aux0, to_free, from_free = _layout(fit)
    z_hat = np.asarray(to_free(jnp.asarray(v_hat)))
    # jitted: op by op, the deviance and its Hessian took 18 s the first time (sleepstudy)
    at_free = lambda z: deviance(from_free(z), aux0)[0]             # noqa: E731
    base, H = jax.jit(lambda z: (at_free(z), jax.hessian(at_free)(z)),
                      compiler_options=COMPILER_OPTIONS)(jnp.asarray(z_hat))
    base, H = float(base), np.asarray(H)
    k = len(names)

    def constrained(w, zw, z0):
        onehot = jnp.arange(k) == w

        def f(z, aux):
            val, aux = deviance(from_free(jnp.where(onehot, zw, z)), aux)
            return val, aux
        opt = minimize(f, z0, has_aux=True, aux0=aux0, hessian=False, maxiter=300)
        return opt.value, from_free(jnp.where(onehot, zw, opt.x))

    # XLA's backend optimizations off: the batch is small and its graph is loops of small
    # ops, where they cost most of the compile (sleepstudy: 2.1 s with them, see README)
    batch = jax.jit(jax.vmap(constrained), compiler_options=COMPILER_OPTIONS)
    todo = [names.index(n) for n in names_wanted if n in names]
    size = max(1, len(todo) * len(GRID))        # every round padded to one shape: one compile

    def run(ws, zws):
        m = len(ws)
        out_dev, out_v = [], []
        for lo in range(0, m, size):
            w = np.asarray(ws[lo:lo + size], np.int32)
            zw = np.asarray(zws[lo:lo + size], float)
            pad = size - w.size
            w, zw = np.concatenate([w, np.repeat(w[:1], pad)]), np.concatenate([zw, np.repeat(zw[:1], pad)])
            vals, vs = batch(jnp.asarray(w), jnp.asarray(zw), jnp.asarray(np.broadcast_to(z_hat, (size, k))))
            out_dev.append(np.asarray(vals)[:size - pad])
            out_v.append(np.asarray(vs)[:size - pad])
        dev = np.maximum(np.concatenate(out_dev) - base, 0.0)
        return dev, np.concatenate(out_v)

    # the quadratic approximation on the free scale sets the first grid
    with np.errstate(invalid="ignore"):
        se = np.sqrt(np.clip(np.diag(2.0 * np.linalg.pinv(H)), 1e-12, None))
    zcrit = norm.ppf(1 - (1 - level) / 2)
    ws, zws = [], []
    for w in todo:
        for g in GRID:
            ws.append(w)
            zws.append(z_hat[w] + g * se[w])
    prof = {w: (np.array([z_hat[w]]), np.zeros(1)) for w in todo}

    def add(ws, zws):
        dev, _ = run(ws, zws)
        for w, zw, d in zip(ws, zws, dev):
            x, zeta = prof[w]
            prof[w] = (np.append(x, zw), np.append(zeta, np.sign(zw - z_hat[w]) * np.sqrt(d)))

    add(ws, zws)
    # where the grid does not reach +-z (a skewed profile), go further out once
    ws, zws = [], []
    for w in todo:
        x, zeta = prof[w]
        if zeta.min() > -zcrit:
            far = [z_hat[w] - m * se[w] for m in (4.5, 7.0, 11.0, 17.0)]
            if kinds[w] == "sd":
                far.append(np.log(SD_FLOOR))
            ws += [w] * len(far)
            zws += far
        if zeta.max() < zcrit:
            ws += [w] * 4
            zws += [z_hat[w] + m * se[w] for m in (4.5, 7.0, 11.0, 17.0)]
    if ws:
        add(ws, zws)
    # read the ends off the spline, then one more round of fits at them
    ends = {}
    ws2, zws2 = [], []
    for w in todo:
        x, zeta = _monotone(*prof[w])
        spline = CubicSpline(zeta, x)
        for side, target in ((0, -zcrit), (1, zcrit)):
            if side == 0 and zeta[0] > -zcrit:
                ends[w, side] = None
                continue
            if side == 1 and zeta[-1] < zcrit:
                ends[w, side] = None
                continue
            ends[w, side] = float(spline(target))
            ws2.append(w)
            zws2.append(ends[w, side])
    if ws2:
        add(ws2, zws2)
    out, curves = {}, {}
    for w in todo:
        x, zeta = _monotone(*prof[w])
        spline = CubicSpline(zeta, x)
        lim = []
        for target in (-zcrit, zcrit):
            if zeta[0] <= target <= zeta[-1]:
                lim.append(float(np.asarray(from_free(_at(w, k, spline(target))))[w]))
            elif kinds[w] == "sd" and target < 0:
                lim.append(0.0)                     # the SD's boundary, as lme4's lower
            elif kinds[w] == "cor":
                lim.append(-1.0 if target < 0 else 1.0)
            else:
                lim.append(np.nan)
        out[names[w]] = tuple(lim)
        curves[names[w]] = (np.asarray(from_free(_at_many(w, k, x)))[:, w], zeta)
    return out, curves


def _monotone(x, zeta):
    """The profile's points in increasing zeta, without repeats (a spline needs them)."""
    order = np.argsort(zeta, kind="stable")
    x, zeta = x[order], zeta[order]
    keep = np.concatenate([[True], np.diff(zeta) > 1e-10])
    return x[keep], zeta[keep]


def _at(w, k, value):
    z = np.zeros(k)
    z[w] = value
    return jnp.asarray(z)


def _at_many(w, k, values):
    z = np.zeros((len(values), k))
    z[:, w] = values
    return jnp.asarray(z)
