"""Outer optimizer: BFGS with a backtracking line search inside ``lax.while_loop``.

Every fit objective here is a smooth function of a short unconstrained vector (covariance
parameters, fixed effects, family parameters).  Dense BFGS on that vector converges
superlinearly with exact (autodiff or implicit) gradients.  The loop evaluates the objective
at exactly one call site, so the compiled program holds one copy of the objective's graph (a
Laplace objective contains a whole inner Newton solve; optax's zoom line search traced it
several times and compile time grew fivefold).  Everything is pure and jittable, so a fit can
be ``vmap``-ed over datasets (``fit_many``): the loop runs until every member has stopped.

The Hessian returned is central finite differences of the exact gradient at the optimum.
The run is split into :func:`bfgs_init`, :func:`bfgs_run` and :func:`bfgs_result` so a
batch can run it in rounds (:mod:`jaxglmm.fit.batched`).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ..core import linalg

# how the loop ended (the convergence verdict itself is made in convergence.py)
CONVERGED = 0
MAXITER = 1
NONFINITE = 2
LINESEARCH = 3

ARMIJO_C1 = 1e-4
F_ROUNDING = 1e-13
MAX_STEP = 5.0


class OptResult(NamedTuple):
    x: jnp.ndarray
    value: jnp.ndarray
    grad: jnp.ndarray
    hessian: jnp.ndarray
    aux: object
    n_iter: jnp.ndarray
    n_evals: jnp.ndarray
    status: jnp.ndarray
    x0: jnp.ndarray
    value0: jnp.ndarray


def fd_hessian(grad_fn: Callable, x: jnp.ndarray, rel_step: float = 1e-4) -> jnp.ndarray:
    """Symmetrized central finite differences of an exact gradient.

    The 2k gradients run one after another (``lax.map``), not batched (``vmap``): a batch
    would turn the dense block's single Cholesky into jaxlib's batched LAPACK kernel, which
    can deadlock XLA's CPU thread pool (:mod:`jaxglmm.core.linalg`)."""
    k = x.shape[0]
    h = rel_step * (1.0 + jnp.abs(x))
    E = jnp.eye(k, dtype=x.dtype) * h
    G = jax.lax.map(grad_fn, jnp.concatenate([x[None, :] + E, x[None, :] - E]))
    H = (G[:k] - G[k:]) / (2.0 * h[:, None])
    return 0.5 * (H + H.T)


def fd_hessian_newton(vg: Callable, x: jnp.ndarray, f, g, aux, rel_step: float = 1e-4):
    """:func:`fd_hessian` at the optimizer's stop ``(x, f, g, aux)``, then one guarded
    Newton step with it: ``(H, x, f, g, aux)``, the step's point where it was taken.

    The optimizer stops at a gradient tolerance, some 1e-9 short of the stationary point by
    an amount that varies with the data, so finite differences of refits pick up the
    derivative of that gap (cbpp Laplace, d estimates / d weights: errors ~1e-3 relative).
    One Newton step with a Hessian good to ~1e-8 lands on the stationary point to rounding,
    as :func:`jaxglmm.inference.implicit.newton_polish` does for ``fit_fn``.  Taken only where
    ``H`` is positive definite, the step finite and the objective not raised (beyond
    rounding).  ``vg`` is ``(x, aux) -> ((value, aux), grad)``; the 2k gradients and the
    step's evaluation are the one loop's 2k + 1 iterations, so the compiled program holds
    the objective's graph at one more call site only (as :func:`fd_hessian` alone)."""
    k = x.shape[0]
    h = rel_step * (1.0 + jnp.abs(x))
    E = jnp.eye(k, dtype=x.dtype) * h
    pts = jnp.concatenate([x[None, :] + E, x[None, :] - E])

    def hessian(G):
        H = (G[:k] - G[k:]) / (2.0 * h[:, None])
        return 0.5 * (H + H.T)

    def step(H):        # core.linalg: never a batched LAPACK kernel under vmap
        L = linalg.chol(H)
        pd = jnp.all(jnp.isfinite(L))
        L = jnp.where(pd, L, jnp.eye(k, dtype=x.dtype))
        dx = linalg.solve_upper_t(L, linalg.solve_lower(L, g[:, None]))[:, 0]
        return x - dx, pd

    def body(i, c):
        G, _, _, _ = c
        xn, _ = step(hessian(G))
        z = jnp.where(i < 2 * k, pts[jnp.minimum(i, 2 * k - 1)], xn)
        (fz, az), gz = vg(z, aux)
        G = jnp.where(i < 2 * k, G.at[jnp.minimum(i, 2 * k - 1)].set(gz), G)
        return G, fz, gz, az

    G0 = jnp.zeros((2 * k, k), x.dtype)
    G, fn, gn, auxn = jax.lax.fori_loop(0, 2 * k + 1, body, (G0, f, g, aux))
    H = hessian(G)
    xn, pd = step(H)
    ok = pd & jnp.all(jnp.isfinite(xn)) & jnp.isfinite(fn) & jnp.all(jnp.isfinite(gn)) & \
        (fn <= f + 1e-12 * (1.0 + jnp.abs(f)))
    pick = lambda a, b: jnp.where(ok, a, b)     # noqa: E731
    return H, pick(xn, x), pick(fn, f), pick(gn, g), jax.tree.map(pick, auxn, aux)


class BfgsState(NamedTuple):
    """Where a BFGS run stands: a run can stop after some iterations and go on later (the
    batch engine runs rounds and compacts the members that have not stopped)."""

    x: jnp.ndarray
    f: jnp.ndarray
    g: jnp.ndarray
    aux: object
    Hinv: jnp.ndarray
    it: jnp.ndarray
    nev: jnp.ndarray
    stall: jnp.ndarray
    status: jnp.ndarray      # -1 while running, else how it ended (CONVERGED, ...)
    x0: jnp.ndarray
    f0: jnp.ndarray


def _value_and_grad(fun: Callable, has_aux: bool, aux0):
    """``(x, aux) -> ((value, aux), grad)`` for any of :func:`minimize`'s objective forms."""
    if aux0 is not None:
        f_aux = fun
    else:
        f_aux = (lambda x, _: fun(x)) if has_aux else (lambda x, _: (fun(x), None))
    return jax.value_and_grad(f_aux, has_aux=True)


def _converged(f, g, gtol):
    return jnp.max(jnp.abs(g)) <= gtol * (1.0 + jnp.abs(f))


def bfgs_init(vg: Callable, x0: jnp.ndarray, aux0=None, gtol: float = 1e-8) -> BfgsState:
    """The state before the first iteration (the first step is the gradient's; the inverse
    Hessian is then scaled from the first curvature pair)."""
    (f0, aux0), g0 = vg(x0, aux0)
    k = x0.shape[0]
    status0 = jnp.where(_converged(f0, g0, gtol), CONVERGED, -1)
    return BfgsState(x0, f0, g0, aux0, jnp.eye(k, dtype=x0.dtype), jnp.asarray(0),
                     jnp.asarray(1), jnp.asarray(0), status0, x0, f0)


def bfgs_run(vg: Callable, state: BfgsState, until, *, gtol: float = 1e-8,
             ftol: float = 1e-15) -> BfgsState:
    """Iterate until ``state.it`` reaches ``until`` (traced) or the run stops."""
    k = state.x.shape[0]
    eye = jnp.eye(k, dtype=state.x.dtype)

    def line_search(x, f, g, d, aux, active):
        slope = jnp.dot(g, d)

        # ``active``: under vmap the loop runs until every member's search ends; a member
        # that has stopped must not search.
        def cond(c):
            t, fn, _, _, it = c
            ok = jnp.isfinite(fn) & (fn <= f + ARMIJO_C1 * t * slope)
            return active & ((it == 0) | (~ok & (it < 60)))

        def body(c):
            t, fn, _, _, it = c
            t = jnp.where(it == 0, t, 0.5 * t)
            (fn, auxn), gn = vg(x + t * d, aux)
            return t, fn, gn, auxn, it + 1

        init = (jnp.asarray(1.0, x.dtype), jnp.asarray(jnp.inf, x.dtype), g, aux, jnp.asarray(0))
        t, fn, gn, auxn, it = jax.lax.while_loop(cond, body, init)
        ok = jnp.isfinite(fn) & (fn <= f + ARMIJO_C1 * t * slope)
        return t, fn, gn, auxn, ok, it

    def cond(c: BfgsState):
        return (c.it < until) & (c.status < 0)

    def body(c: BfgsState):
        x, f, g, aux, Hinv, it, nev, stall, status = c[:9]
        d = -Hinv @ g
        bad = ~(jnp.dot(d, g) < 0)
        Hinv = jnp.where(bad, eye, Hinv)
        d = jnp.where(bad, -g / jnp.maximum(1.0, jnp.max(jnp.abs(g))), d)
        active = (it < until) & (status < 0)
        t, fn, gn, auxn, ok, nls = line_search(x, f, g, d, aux, active)
        s = t * d
        y = gn - g
        sy = jnp.dot(s, y)
        # first step: scale the initial inverse Hessian (Nocedal & Wright 6.20)
        Hinv = jnp.where(it == 0, eye * sy / jnp.maximum(jnp.dot(y, y), 1e-300), Hinv)
        rho = 1.0 / jnp.where(sy > 1e-300, sy, 1.0)
        V = eye - rho * jnp.outer(s, y)
        Hnew = V @ Hinv @ V.T + rho * jnp.outer(s, s)
        Hinv = jnp.where(ok & (sy > 1e-300), Hnew, Hinv)
        xn = jnp.where(ok, x + s, x)
        fnew = jnp.where(ok, fn, f)
        gnew = jnp.where(ok, gn, g)
        auxnew = jax.tree.map(lambda a, b: jnp.where(ok, a, b), auxn, aux)
        small = (f - fnew) <= ftol * (1.0 + jnp.abs(fnew))
        stall = jnp.where(small, stall + 1, 0)
        status = jnp.where(~jnp.isfinite(fnew), NONFINITE,
                 jnp.where(_converged(fnew, gnew, gtol) | (stall >= 3), CONVERGED,
                 jnp.where(~ok, LINESEARCH, -1)))
        return c._replace(x=xn, f=fnew, g=gnew, aux=auxnew, Hinv=Hinv, it=it + 1,
                          nev=nev + nls, stall=stall, status=status)

    return jax.lax.while_loop(cond, body, state)


def bfgs_result(vg: Callable, state: BfgsState, hessian: bool = True,
                polish: bool = False) -> OptResult:
    """The run's result; ``hessian``: central differences of the exact gradient at the end;
    ``polish`` (with ``hessian``): then one guarded Newton step (:func:`fd_hessian_newton`;
    the Hessian stays the one at the optimizer's stop)."""
    status = jnp.where(state.status < 0, MAXITER, state.status)
    k = state.x.shape[0]
    if hessian and polish:
        H, x, f, g, aux = fd_hessian_newton(vg, state.x, state.f, state.g, state.aux)
        return OptResult(x, f, g, H, aux, state.it, state.nev, status,
                         state.x0, state.f0)
    if hessian:
        H = fd_hessian(lambda z: vg(z, state.aux)[1], state.x)
    else:
        H = jnp.full((k, k), jnp.nan)
    return OptResult(state.x, state.f, state.g, H, state.aux, state.it,
                     state.nev, status, state.x0, state.f0)


# ----------------------------------------------------------------------------- batches
class FlatState(NamedTuple):
    """A BFGS run that evaluates the objective exactly once per iteration (see
    :func:`flat_run`); ``it`` counts evaluations."""

    x: jnp.ndarray
    f: jnp.ndarray
    g: jnp.ndarray
    aux: object
    Hinv: jnp.ndarray
    d: jnp.ndarray          # the direction being searched
    t: jnp.ndarray          # the step along it to try next
    scaled: jnp.ndarray     # whether Hinv has been scaled (or was given)
    it: jnp.ndarray
    nback: jnp.ndarray      # backtracks along d so far
    stall: jnp.ndarray
    status: jnp.ndarray     # -1 while running
    x0: jnp.ndarray
    f0: jnp.ndarray
    phase: jnp.ndarray      # after the optimizer stops: Hessian evaluations done (of 2k or k)
    hess_g: jnp.ndarray     # (2k, k) gradients at x + h e_j, then x - h e_j; (k, k) forward


def _direction(Hinv, g):
    d = -Hinv @ g
    bad = ~(jnp.dot(d, g) < 0)
    eye = jnp.eye(g.shape[0], dtype=g.dtype)
    return (jnp.where(bad, eye, Hinv),
            jnp.where(bad, -g / jnp.maximum(1.0, jnp.max(jnp.abs(g))), d))


def flat_init(x0: jnp.ndarray, aux0=None, Hinv0=None, sides: int = 2) -> FlatState:
    """The state before the first evaluation of :func:`flat_run` (which evaluates ``x0``
    first: this costs nothing, so a batch compiles the objective once, in the loop).

    ``Hinv0`` (optional) is a starting inverse Hessian, e.g. that of a similar dataset's
    optimum; where it holds a NaN it is ignored (the first step is then the gradient's,
    at most 0.5 in every coordinate, and the inverse Hessian is scaled from the first
    curvature pair).

    ``sides`` chooses the finite-difference Hessian made after the optimizer stops: 2,
    central differences (2k gradients, error O(h^2)); 1, forward differences from the
    optimum's own gradient (k gradients, error O(h)).  The state's ``hess_g`` holds one
    row per gradient, so :func:`flat_run` and :func:`flat_result` read the choice from its
    shape."""
    if sides not in (1, 2):
        raise ValueError(f"sides must be 1 (forward) or 2 (central differences), got {sides!r}")
    k = x0.shape[0]
    eye = jnp.eye(k, dtype=x0.dtype)
    given = jnp.asarray(False) if Hinv0 is None else jnp.all(jnp.isfinite(Hinv0))
    Hinv = eye if Hinv0 is None else jnp.where(given, Hinv0, eye)
    zero = jnp.zeros((), x0.dtype)
    return FlatState(x0, jnp.asarray(jnp.inf, x0.dtype), jnp.zeros_like(x0), aux0, Hinv,
                     jnp.zeros_like(x0), zero, given, jnp.asarray(0), jnp.asarray(0),
                     jnp.asarray(0), jnp.asarray(-1), x0, zero, jnp.asarray(0),
                     jnp.zeros((sides * k, k), x0.dtype))


def flat_run(vg: Callable, state: FlatState, until, *, gtol: float = 1e-8,
             ftol: float = 1e-15, max_backtracks: int = 40, maxiter: int = 500,
             rel_step: float = 1e-4, damped: bool = False) -> FlatState:
    """BFGS for a batch under ``vmap``: each iteration evaluates one trial point, so no
    member waits inside another's line search.

    ``damped``: Powell's damped update (Nocedal & Wright 18.2), for one heavy fit
    (:func:`jaxglmm.fit.likelihood.fit_glmm_sparse`): where the curvature along a step is
    negative or small (``s'y < s'Bs / 5``; the deviance is not convex between lme4's start
    and a variance near 0), ``y`` is moved towards ``Bs`` so the update still learns, instead
    of being skipped and leaving a tiny inverse Hessian to crawl with; the first scaling
    then takes ``|s'y|``.  Off by default (the batch engine's answers stay as they were).

    :func:`minimize` backtracks in an inner loop; under ``vmap`` that loop runs until the
    longest search in the batch ends, for every member (sleepstudy REML over 1,000
    datasets: 4 evaluations an iteration on average, 28 us a member-iteration against
    3 us for one evaluation).  Here a rejected trial point shrinks the step for the next
    iteration instead (to the minimizer of the quadratic through f(0), f'(0) and f(t),
    kept within [0.1 t, 0.5 t]; Nocedal & Wright 3.5), and an accepted one makes the BFGS
    update and the next direction.  Same stopping rule as :func:`minimize` (at most
    ``maxiter`` evaluations); iterates until ``state.it`` (evaluations) reaches ``until``
    (traced: rounds compile once).

    Once the optimizer stops, the next 2k iterations evaluate the gradient at ``x +- h e_j``
    (``h = rel_step (1 + |x_j|)``, as :func:`fd_hessian`, with the optimum's aux), or the
    next k at ``x + h e_j`` only (a state made with ``flat_init(sides=1)``): the
    finite-difference Hessian comes from the loop's own evaluation, so the batch compiles
    the objective's gradient once, not again for the Hessian.
    """
    k = state.x.shape[0]
    n_hess = state.hess_g.shape[0]
    eye = jnp.eye(k, dtype=state.x.dtype)

    def cond(c: FlatState):
        return (c.it < until) & ((c.status < 0) | (c.phase < n_hess))

    def body(c: FlatState):
        hess = c.status >= 0               # the optimizer has stopped: a Hessian point
        j = c.phase % k
        h = rel_step * (1.0 + jnp.abs(c.x[j]))
        shift = jnp.where(c.phase < k, h, -h) * eye[j]
        fresh = (c.it == 0) & ~hess        # the first evaluation: at x0 itself
        xt = jnp.where(hess, c.x + shift, c.x + c.t * c.d)
        (ft, auxt), gt = vg(xt, c.aux)
        stored = c.hess_g.at[jnp.minimum(c.phase, n_hess - 1)].set(gt)
        c = c._replace(hess_g=jnp.where(hess, stored, c.hess_g),
                       phase=jnp.where(hess, c.phase + 1, c.phase))
        slope = jnp.dot(c.g, c.d)
        # Armijo's test, up to the objective's rounding (Hager and Zhang's approximate
        # Wolfe condition): near the optimum the predicted decrease falls below the
        # rounding of f, and vectorized arithmetic rounds differently from a single fit's
        # (only there: where the predicted decrease is itself below the rounding)
        rounding = F_ROUNDING * (1.0 + jnp.abs(c.f))
        slack = jnp.where(jnp.abs(c.t * slope) <= 10.0 * rounding, rounding, 0.0)
        armijo = ft <= c.f + ARMIJO_C1 * c.t * slope + slack
        ok = jnp.isfinite(ft) & (fresh | armijo)
        # accepted: the BFGS update (none at x0) and the next direction
        s, y = c.t * c.d, gt - c.g
        sy = jnp.dot(s, y)
        scale = (jnp.abs(sy) if damped else sy) / jnp.maximum(jnp.dot(y, y), 1e-300)
        H = jnp.where(c.scaled | fresh, c.Hinv, eye * scale)
        if damped:
            Bs = linalg.dense_solve(H, s)
            sBs = jnp.dot(s, Bs)
            mix = jnp.where(sy >= 0.2 * sBs, 1.0, 0.8 * sBs / jnp.maximum(sBs - sy, 1e-300))
            mix = jnp.where(jnp.isfinite(sBs) & (sBs > 0), mix, 1.0)
            y = mix * y + (1.0 - mix) * Bs
            sy = jnp.dot(s, y)
        update = ~fresh & (sy > 1e-300)
        rho = 1.0 / jnp.where(update, sy, 1.0)
        V = eye - rho * jnp.outer(s, y)
        H = jnp.where(update, V @ H @ V.T + rho * jnp.outer(s, s), H)
        H, d_new = _direction(H, gt)
        # the first, unscaled gradient step moves at most 0.5 in any coordinate: with a
        # step of 1, lme4's start (a variance factor of 1) lands a one-parameter term on
        # exactly 0, a stationary point of the (even) deviance, and stops there
        # every step moves at most MAX_STEP in any coordinate (a trust region): in a
        # direction of almost no curvature (a quasi-separated binomial dataset) the first
        # BFGS steps can reach 700, where one member's mode search holds up the batch
        t_new = jnp.where(fresh & ~c.scaled,
                          0.5 / jnp.maximum(1.0, jnp.max(jnp.abs(d_new))),
                          jnp.minimum(1.0, MAX_STEP / jnp.maximum(jnp.max(jnp.abs(d_new)), 1e-300)))
        small = ~fresh & ((c.f - ft) <= ftol * (1.0 + jnp.abs(ft)))
        stall = jnp.where(small, c.stall + 1, 0)
        done = jnp.where(_converged(ft, gt, gtol) | (stall >= 3), CONVERGED, -1)
        # rejected: a shorter step along the same direction
        tq = -slope * c.t * c.t / (2.0 * (ft - c.f - slope * c.t))
        tq = jnp.clip(jnp.where(jnp.isfinite(tq), tq, 0.1 * c.t), 0.1 * c.t, 0.5 * c.t)
        t_back = jnp.where(jnp.isfinite(ft), tq, 0.1 * c.t)
        nback = jnp.where(ok, 0, c.nback + 1)
        failed = jnp.where(fresh, NONFINITE,
                           jnp.where(nback >= max_backtracks, LINESEARCH, -1))
        pick = lambda a, b: jax.tree.map(lambda u, v: jnp.where(ok, u, v), a, b)
        status = jnp.where(ok, done, failed)
        status = jnp.where((status < 0) & (c.it + 1 >= maxiter), MAXITER, status)
        moved = c._replace(
            x=pick(xt, c.x), f=pick(ft, c.f), g=pick(gt, c.g), aux=pick(auxt, c.aux),
            Hinv=pick(H, c.Hinv), d=pick(d_new, c.d), t=jnp.where(ok, t_new, t_back),
            scaled=c.scaled | (ok & ~fresh), nback=nback,
            stall=jnp.where(ok, stall, c.stall), status=status,
            f0=jnp.where(fresh, ft, c.f0))
        out = jax.tree.map(lambda a, b: jnp.where(hess, a, b), c, moved)
        return out._replace(it=c.it + 1)

    return jax.lax.while_loop(cond, body, state)


def flat_result(state: FlatState) -> OptResult:
    """The run's result, as :func:`bfgs_result`, its Hessian from the run's own
    finite-difference evaluations (NaN where they were not all made)."""
    k = state.x.shape[0]
    h = 1e-4 * (1.0 + jnp.abs(state.x))
    G = state.hess_g
    if G.shape[0] == k:         # forward differences from the optimum's gradient
        H = (G - state.g[None, :]) / h[:, None]
    else:
        H = (G[:k] - G[k:]) / (2.0 * h[:, None])
    H = jnp.where(state.phase >= G.shape[0], 0.5 * (H + H.T), jnp.nan)
    status = jnp.where(state.status < 0, MAXITER, state.status)
    n_opt = state.it - state.phase
    return OptResult(state.x, state.f, state.g, H, state.aux, n_opt, n_opt, status,
                     state.x0, state.f0)


def minimize(fun: Callable, x0: jnp.ndarray, *, has_aux: bool = False, maxiter: int = 500,
             gtol: float = 1e-8, ftol: float = 1e-15, hessian: bool = True,
             aux0=None, polish: bool = False) -> OptResult:
    """Minimize ``fun`` (``x -> value`` or ``x -> (value, aux)``) from a flat vector ``x0``.

    With ``aux0`` given, ``fun`` is ``(x, aux) -> (value, aux)``: each evaluation receives
    the aux of the current point (a warm start, e.g. the previous conditional mode of the
    random effects) and returns the new one.

    Stops when ``max|grad| <= gtol * (1 + |f|)``, when the relative decrease stays below
    ``ftol`` for three iterations, when the line search cannot decrease ``f``, or at
    ``maxiter`` iterations.  ``polish`` (with ``hessian``): then one guarded Newton step
    with the finite-difference Hessian (:func:`fd_hessian_newton`), so the result is the
    stationary point to rounding rather than to the gradient tolerance.
    """
    vg = _value_and_grad(fun, has_aux, aux0)
    state = bfgs_init(vg, x0, aux0, gtol=gtol)
    state = bfgs_run(vg, state, maxiter, gtol=gtol, ftol=ftol)
    return bfgs_result(vg, state, hessian, polish=polish)


def minimize_optax(fun: Callable, x0: jnp.ndarray, *, maxiter: int = 500, gtol: float = 1e-8,
                   hessian: bool = True) -> OptResult:
    """Minimize ``fun`` with optax's L-BFGS and its zoom line search (strong Wolfe
    conditions), in one ``lax.while_loop``; same stopping rule and result as
    :func:`minimize`.  The line search evaluates the objective at a second call site, so
    a heavy objective (a Laplace solve) compiles about twice as long as with
    :func:`minimize`."""
    import optax
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fun)
    f0, g0 = jax.value_and_grad(fun)(x0)

    def cond(c):
        x, state, f, g, it, status = c
        return (it < maxiter) & (status < 0)

    def body(c):
        x, state, _, _, it, _ = c
        f, g = value_and_grad(x, state=state)
        updates, state = opt.update(g, state, x, value=f, grad=g, value_fn=fun)
        x = optax.apply_updates(x, updates)
        fn, gn = optax.tree.get(state, "value"), optax.tree.get(state, "grad")
        status = jnp.where(~jnp.isfinite(fn), NONFINITE,
                           jnp.where(jnp.max(jnp.abs(gn)) <= gtol * (1.0 + jnp.abs(fn)),
                                     CONVERGED, -1))
        return x, state, fn, gn, it + 1, status

    status0 = jnp.where(jnp.max(jnp.abs(g0)) <= gtol * (1.0 + jnp.abs(f0)), CONVERGED, -1)
    init = (x0, opt.init(x0), f0, g0, jnp.asarray(0), status0)
    x, _, f, g, it, status = jax.lax.while_loop(cond, body, init)
    status = jnp.where(status < 0, MAXITER, status)
    grad_fn = jax.grad(fun)
    H = fd_hessian(grad_fn, x) if hessian else jnp.full((x0.shape[0],) * 2, jnp.nan)
    return OptResult(x, f, g, H, None, it, it, status, x0, f0)


# ----------------------------------------------------------------------------- host loop
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
    import sys
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
    import numpy as np
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
    import numpy as np
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
