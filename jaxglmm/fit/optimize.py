"""The outer optimizer: one BFGS, a pure ``init``/``update`` pair with the line search as an
argument (optax's style), and the loops that drive it.

Every fit objective here is a smooth function of a short unconstrained vector (covariance
parameters, fixed effects, family parameters); dense BFGS on it converges superlinearly with
exact (autodiff or implicit) gradients.  One state (:class:`BfgsState`) and one update
(:func:`update`: ``state = update(vg, state, search)``) serve every fit; the line search is
a value:

* :class:`Backtracking`: each update halves the step from 1 until Armijo's condition holds
  (an inner loop), so an update is one BFGS iteration.  Single fits (:func:`minimize`) and
  the profile's constrained fits.
* :class:`OneTrial`: each update evaluates the objective once, and a rejected point
  shortens the step for the next update, so under ``vmap`` no member waits inside another's
  search: the batch engine (:mod:`jaxglmm.fit.batched`) and the many-rows Laplace fit.

The first update evaluates the start itself, so a loop over :func:`update` holds the
objective's graph at one call site (a Laplace objective holds a whole inner Newton solve,
compiled again at every call site).  :func:`run` is the ``lax.while_loop`` driver;
:func:`run_then_hessian` goes on, in the same loop, to the finite-difference Hessian at the
optimum (one call site for both: the batch engine).  Everything is pure and jittable.
Host (scipy) optimizers are in :mod:`jaxglmm.fit.host`.
"""
from __future__ import annotations

from dataclasses import dataclass
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


def newton_step(H: jnp.ndarray, x: jnp.ndarray, g: jnp.ndarray):
    """``(x - H^-1 g, H positive definite)``, by :mod:`jaxglmm.core.linalg`'s Cholesky (never
    a batched LAPACK kernel under vmap); the step is 0 where ``H`` is not positive definite.

    The optimizer stops at a gradient tolerance, some 1e-9 short of the stationary point by
    an amount that varies with the data, so finite differences of refits pick up the
    derivative of that gap (cbpp Laplace, d estimates / d weights: errors ~1e-3 relative).
    One Newton step with a Hessian good to ~1e-8 lands on the stationary point to rounding,
    as :func:`jaxglmm.inference.implicit.newton_polish` does for ``fit_fn``
    (:func:`run_then_hessian`'s ``polish``)."""
    k = x.shape[0]
    L = linalg.chol(H)
    pd = jnp.all(jnp.isfinite(L))
    L = jnp.where(pd, L, jnp.eye(k, dtype=x.dtype))
    dx = linalg.solve_upper_t(L, linalg.solve_lower(L, g[:, None]))[:, 0]
    return x - jnp.where(pd, dx, 0.0), pd


# ----------------------------------------------------------------------------- the core
class BfgsState(NamedTuple):
    """Where a BFGS run stands; a run can stop after some updates and go on later (the batch
    engine runs rounds and refills its slots)."""

    x: jnp.ndarray
    f: jnp.ndarray
    g: jnp.ndarray
    aux: object             # the objective's carried state at x (a GLMM's modes)
    Hinv: jnp.ndarray
    d: jnp.ndarray          # the direction being searched
    t: jnp.ndarray          # the step along it to try next
    scaled: jnp.ndarray     # whether Hinv has been scaled from a curvature pair (or given)
    it: jnp.ndarray         # updates made (the first evaluates the start)
    nev: jnp.ndarray        # objective evaluations
    nback: jnp.ndarray      # rejected trial points in a row
    stall: jnp.ndarray      # accepted steps in a row that lowered f by less than ftol
    status: jnp.ndarray     # -1 while running, else how it ended (CONVERGED, ...)
    x0: jnp.ndarray
    f0: jnp.ndarray


class Trial(NamedTuple):
    """What a line search found along the state's direction: the step, the objective there,
    and whether the point is accepted."""

    t: jnp.ndarray
    f: jnp.ndarray
    g: jnp.ndarray
    aux: object
    ok: jnp.ndarray
    nev: jnp.ndarray


def _armijo(c: BfgsState, t, ft, slack=0.0):
    return ft <= c.f + ARMIJO_C1 * t * jnp.dot(c.g, c.d) + slack


@dataclass(frozen=True)
class Backtracking:
    """Armijo backtracking inside each update: the step halves from 1 until the objective
    falls by ``ARMIJO_C1`` of the predicted decrease, at most ``max_evals`` evaluations.
    An update is one BFGS iteration; a search that fails ends the run (LINESEARCH, or
    CONVERGED after two stalled steps: the failure counts as a third)."""

    max_evals: int = 60
    max_rejections = 1
    failure_stalls = True
    evals_per_update = None

    def first_step(self, d):
        return jnp.ones((), d.dtype)

    next_step = first_step

    def shorter(self, c: BfgsState, ft):
        return c.t              # unused: the run has ended

    def trial(self, vg: Callable, c: BfgsState) -> Trial:
        fresh = c.it == 0
        active = c.status < 0   # under vmap: a stopped member must not search

        def accepted(t, ft):
            return jnp.isfinite(ft) & (fresh | _armijo(c, t, ft))

        def cond(s):
            t, ft, _, _, n = s
            return active & ((n == 0) | (~fresh & ~accepted(t, ft) & (n < self.max_evals)))

        def body(s):
            t, _, _, _, n = s
            t = jnp.where(n == 0, t, 0.5 * t)
            (ft, auxt), gt = vg(c.x + t * c.d, c.aux)
            return t, ft, gt, auxt, n + 1

        init = (c.t, jnp.asarray(jnp.inf, c.f.dtype), c.g, c.aux, jnp.zeros_like(c.nev))
        t, ft, gt, auxt, n = jax.lax.while_loop(cond, body, init)
        return Trial(t, ft, gt, auxt, accepted(t, ft), n)


@dataclass(frozen=True)
class OneTrial:
    """One evaluation per update: an accepted point (Armijo's test, up to the objective's
    rounding) makes the BFGS update; a rejected one shortens the step for the next update
    (to the minimizer of the quadratic through f(0), f'(0) and f(t), kept within
    [0.1 t, 0.5 t]; Nocedal & Wright 3.5), ``max_rejections`` times at most.  Under
    ``vmap`` an inner backtracking loop runs until the longest search in the batch ends, for
    every member; here no member waits for another's search.

    Steps move at most ``MAX_STEP`` in any coordinate (a trust region: in a direction of
    almost no curvature, a quasi-separated binomial dataset, BFGS steps can reach 700, where
    one member's mode search holds up the batch), and the first, unscaled gradient step at
    most 0.5 (with a step of 1, lme4's start, a variance factor of 1, lands a one-parameter
    term on exactly 0, a stationary point of the even deviance, and stops there)."""

    max_rejections: int = 40
    failure_stalls = False
    evals_per_update = 1

    def first_step(self, d):
        return 0.5 / jnp.maximum(1.0, jnp.max(jnp.abs(d)))

    def next_step(self, d):
        return jnp.minimum(1.0, MAX_STEP / jnp.maximum(jnp.max(jnp.abs(d)), 1e-300))

    def shorter(self, c: BfgsState, ft):
        slope = jnp.dot(c.g, c.d)
        tq = -slope * c.t * c.t / (2.0 * (ft - c.f - slope * c.t))
        tq = jnp.clip(jnp.where(jnp.isfinite(tq), tq, 0.1 * c.t), 0.1 * c.t, 0.5 * c.t)
        return jnp.where(jnp.isfinite(ft), tq, 0.1 * c.t)

    def trial(self, vg: Callable, c: BfgsState) -> Trial:
        (ft, auxt), gt = vg(c.x + c.t * c.d, c.aux)
        # Armijo's test up to the objective's rounding (Hager and Zhang's approximate Wolfe
        # condition): near the optimum the predicted decrease falls below the rounding of
        # f, and vectorized arithmetic rounds differently from a single fit's
        rounding = F_ROUNDING * (1.0 + jnp.abs(c.f))
        slack = jnp.where(jnp.abs(c.t * jnp.dot(c.g, c.d)) <= 10.0 * rounding, rounding, 0.0)
        ok = jnp.isfinite(ft) & ((c.it == 0) | _armijo(c, c.t, ft, slack))
        return Trial(c.t, ft, gt, auxt, ok, jnp.ones_like(c.nev))


@dataclass(frozen=True)
class StepHalving(OneTrial):
    """:class:`Backtracking`'s steps, one evaluation per update: each direction is tried
    from a step of 1, and a rejected point halves the step for the next update, 60 times at
    most (a search that fails stalls, as Backtracking's).  Single fits: their loop then
    holds the objective at one call site (:func:`run_then_hessian`), and the steps are
    Backtracking's, bounded only by ``MAX_STEP`` (not :class:`OneTrial`'s first step of at
    most 0.5, so a one-parameter variance is not walked towards zero from lme4's start in
    half steps: a weighted LMM whose first steps were bounded so ended on the stationary
    point at zero)."""

    max_rejections: int = 60
    failure_stalls = True

    # Each direction is tried from a step of 1, or less where that moves a coordinate more
    # than MAX_STEP: a binomial GLMM's unscaled first gradient step (300 groups, 3000 rows)
    # reached x = -200, and its four halvings back cost 1.5 s of a 1.85 s fit in mode searches
    # far from any mode (scripts/bench_peers.py --grid); bounded, it costs 0.3 s.
    first_step = OneTrial.next_step
    next_step = OneTrial.next_step

    def shorter(self, c: BfgsState, ft):
        return 0.5 * c.t


BACKTRACKING = Backtracking()
ONE_TRIAL = OneTrial()
STEP_HALVING = StepHalving()


def init(x0: jnp.ndarray, aux0=None, Hinv0=None) -> BfgsState:
    """The state before the first update (which evaluates ``x0``).

    ``aux0``: the objective's carried state at the start (None for objectives without).
    ``Hinv0`` (optional): a starting inverse Hessian, e.g. that of a similar dataset's
    optimum; where it holds a NaN it is ignored, and the inverse Hessian is then scaled from
    the first curvature pair (Nocedal & Wright 6.20)."""
    k = x0.shape[0]
    eye = jnp.eye(k, dtype=x0.dtype)
    given = jnp.asarray(False) if Hinv0 is None else jnp.all(jnp.isfinite(Hinv0))
    Hinv = eye if Hinv0 is None else jnp.where(given, Hinv0, eye)
    zero, i0 = jnp.zeros((), x0.dtype), jnp.asarray(0)
    return BfgsState(x0, jnp.asarray(jnp.inf, x0.dtype), jnp.zeros_like(x0), aux0, Hinv,
                     jnp.zeros_like(x0), zero, given, i0, i0, i0, i0, jnp.asarray(-1), x0,
                     zero)


def _converged(f, g, gtol):
    return jnp.max(jnp.abs(g)) <= gtol * (1.0 + jnp.abs(f))


def _direction(Hinv, g):
    """The quasi-Newton direction; where it is not one of descent, the (bounded) gradient's,
    with the inverse Hessian reset."""
    d = -Hinv @ g
    bad = ~(jnp.dot(d, g) < 0)
    eye = jnp.eye(g.shape[0], dtype=g.dtype)
    return (jnp.where(bad, eye, Hinv),
            jnp.where(bad, -g / jnp.maximum(1.0, jnp.max(jnp.abs(g))), d))


def accept(c: BfgsState, tr: Trial, search, *, gtol: float = 1e-8, ftol: float = 1e-15,
           maxiter: int | None = None, damped: bool = False) -> BfgsState:
    """The state after a line search's :class:`Trial` (:func:`update` without the search).

    Accepted: the BFGS update (none at the start) and the next direction; rejected: the
    search's shorter step, or the run's end.  Stops when ``max|grad| <= gtol * (1 + |f|)``,
    when three accepted steps in a row lower f by less than ``ftol`` (relative) or predict
    a decrease within the objective's rounding, when the search gives up, or (``maxiter``)
    at that many updates.

    ``damped``: Powell's damped update (Nocedal & Wright 18.2): where the curvature along a
    step is negative or small (``s'y < s'Bs / 5``; the deviance is not convex between
    lme4's start and a variance near 0), ``y`` is moved towards ``Bs`` so the update still
    learns, instead of being skipped and leaving a tiny inverse Hessian to crawl with; the
    first scaling then takes ``|s'y|``."""
    k = c.x.shape[0]
    eye = jnp.eye(k, dtype=c.x.dtype)
    fresh = c.it == 0
    ok = tr.ok
    ft, gt = tr.f.astype(c.f.dtype), tr.g.astype(c.g.dtype)
    s, y = tr.t * c.d, gt - c.g
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
    learn = ~fresh & (sy > 1e-300)
    rho = 1.0 / jnp.where(learn, sy, 1.0)
    V = eye - rho * jnp.outer(s, y)
    H = jnp.where(learn, V @ H @ V.T + rho * jnp.outer(s, s), H)
    H, d_new = _direction(H, gt)
    t_new = jnp.where(fresh & ~c.scaled, search.first_step(d_new), search.next_step(d_new))
    # a step lowering f by under ftol, or one whose predicted decrease is within 10x the
    # objective's rounding, makes no progress: near the optimum of an objective whose
    # rounding is larger than F_ROUNDING (an LMM whose y'y dwarfs its residual sum of
    # squares: pastes' ML deviance rounds at 1e-12), such steps otherwise go on for ever,
    # lowering and raising f by its rounding
    in_noise = -jnp.dot(c.g, s) <= 10.0 * F_ROUNDING * (1.0 + jnp.abs(c.f))
    small = ~fresh & (((c.f - ft) <= ftol * (1.0 + jnp.abs(ft))) | in_noise)
    stall = jnp.where(small, c.stall + 1, 0)
    done = jnp.where(_converged(ft, gt, gtol) | (stall >= 3), CONVERGED, -1)
    nback = jnp.where(ok, 0, c.nback + 1)
    gave_up = nback >= search.max_rejections
    stall_failed = jnp.where(gave_up & search.failure_stalls, c.stall + 1, c.stall)
    failed = jnp.where(fresh, NONFINITE,
                       jnp.where(gave_up, jnp.where(stall_failed >= 3, CONVERGED, LINESEARCH),
                                 -1))
    status = jnp.where(ok, done, failed)
    if maxiter is not None:
        status = jnp.where((status < 0) & (c.it + 1 >= maxiter), MAXITER, status)
    pick = lambda a, b: jax.tree.map(lambda u, v: jnp.where(ok, u, v), a, b)  # noqa: E731
    return c._replace(
        x=pick(c.x + s, c.x), f=pick(ft, c.f), g=pick(gt, c.g), aux=pick(tr.aux, c.aux),
        Hinv=pick(H, c.Hinv), d=pick(d_new, c.d),
        t=jnp.where(ok, t_new, search.shorter(c, ft)).astype(c.t.dtype),
        scaled=c.scaled | (ok & ~fresh), it=c.it + 1, nev=c.nev + tr.nev, nback=nback,
        stall=jnp.where(ok, stall, stall_failed), status=status,
        f0=jnp.where(fresh, ft, c.f0))


def update(vg: Callable, state: BfgsState, search=BACKTRACKING, **options) -> BfgsState:
    """One BFGS update: ``search`` (:class:`Backtracking` or :class:`OneTrial`) along the
    state's direction, then :func:`accept` (``options``: its keywords).  ``vg`` is ``(x,
    aux) -> ((value, aux), grad)``.  The first update evaluates the start."""
    return accept(state, search.trial(vg, state), search, **options)


def run(vg: Callable, state: BfgsState, search=BACKTRACKING, until=None,
        **options) -> BfgsState:
    """Update until the run stops or ``state.it`` reaches ``until`` (traced or static)."""
    def cond(c):
        more = c.status < 0
        return more if until is None else more & (c.it < until)

    return jax.lax.while_loop(cond, lambda c: update(vg, c, search, **options), state)


def result(state: BfgsState) -> OptResult:
    """A run's result without a Hessian (NaN); ``n_iter`` and ``n_evals`` as
    :func:`hessian_result`'s."""
    k = state.x.shape[0]
    status = jnp.where(state.status < 0, MAXITER, state.status)
    return OptResult(state.x, state.f, state.g, jnp.full((k, k), jnp.nan, state.x.dtype),
                     state.aux, jnp.maximum(state.it - 1, 0), state.nev, status, state.x0,
                     state.f0)


# ----------------------------------------------------------------------------- + Hessian
class HessianRun(NamedTuple):
    """A BFGS run followed, in the same loop, by the finite-difference Hessian at its
    optimum and optionally one Newton step with it (:func:`run_then_hessian`)."""

    opt: BfgsState
    phase: jnp.ndarray      # Hessian evaluations made (of 2k or k), then the Newton step's
    hess_g: jnp.ndarray     # (2k, k) gradients at x + h e_j, then x - h e_j; (k, k) forward
    newton: tuple | None    # polish: (x, f, g, aux) at the Newton step's point, else None


def hessian_run(state: BfgsState, sides: int = 2, polish: bool = False) -> HessianRun:
    """``state`` with room for its Hessian: ``sides`` 2, central differences (2k
    gradients, error O(h^2)); 1, forward differences from the optimum's own gradient (k
    gradients, error O(h)).  The choice is read from ``hess_g``'s shape.  ``polish``: then
    one guarded Newton step with that Hessian (:func:`newton_step`)."""
    if sides not in (1, 2):
        raise ValueError(f"sides must be 1 (forward) or 2 (central differences), got {sides!r}")
    k = state.x.shape[0]
    newton = (state.x, state.f, state.g, state.aux) if polish else None
    return HessianRun(state, jnp.asarray(0), jnp.zeros((sides * k, k), state.x.dtype), newton)


def _fd_matrix(G: jnp.ndarray, x: jnp.ndarray, g: jnp.ndarray, rel_step: float):
    """The symmetrized Hessian from the gradients ``G`` at ``x +- h e_j`` (or ``x + h e_j``
    with ``g`` the gradient at ``x``)."""
    k = x.shape[0]
    h = rel_step * (1.0 + jnp.abs(x))
    if G.shape[0] == k:
        H = (G - g[None, :]) / h[:, None]
    else:
        H = (G[:k] - G[k:]) / (2.0 * h[:, None])
    return 0.5 * (H + H.T)


def run_then_hessian(vg: Callable, c: HessianRun, search=ONE_TRIAL, until=None, *,
                     rel_step: float = 1e-4, **options) -> HessianRun:
    """:func:`run` with a search of one evaluation per update, going on once the optimizer
    stops to evaluate the gradient at ``x +- h e_j`` (``h = rel_step (1 + |x_j|)``, as
    :func:`fd_hessian`, with the optimum's aux; or at ``x + h e_j`` only), and, with
    ``polish``, at the Newton step's point, so the loop evaluates the objective at one call
    site for all: the compiled program holds the objective's graph once (cbpp's Laplace
    fit compiles in about half the time of a backtracking loop plus a separate Hessian
    loop).  Loop iterations (``opt.it + phase``) run until ``until`` (traced: a batch's
    rounds compile once)."""
    if search.evals_per_update != 1:
        raise ValueError("run_then_hessian needs a line search of one evaluation per update "
                         "(OneTrial)")
    k = c.opt.x.shape[0]
    n_hess = c.hess_g.shape[0]
    n_total = n_hess + (c.newton is not None)
    eye = jnp.eye(k, dtype=c.opt.x.dtype)

    def cond(c: HessianRun):
        more = (c.opt.status < 0) | (c.phase < n_total)
        return more if until is None else more & (c.opt.it + c.phase < until)

    def body(c: HessianRun):
        o = c.opt
        hess = o.status >= 0               # the optimizer has stopped: a Hessian point
        j = c.phase % k
        h = rel_step * (1.0 + jnp.abs(o.x[j]))
        point = o.x + jnp.where(c.phase < k, h, -h) * eye[j]
        if c.newton is not None:
            stepped, _ = newton_step(_fd_matrix(c.hess_g, o.x, o.g, rel_step), o.x, o.g)
            point = jnp.where(c.phase < n_hess, point, stepped)
        tr = search.trial(lambda z, aux: vg(jnp.where(hess, point, z), aux), o)
        moved = accept(o, tr, search, **options)
        stored = c.hess_g.at[jnp.minimum(c.phase, n_hess - 1)].set(tr.g.astype(c.hess_g.dtype))
        newton = c.newton
        if newton is not None:
            last = hess & (c.phase == n_hess)
            newton = jax.tree.map(lambda a, b: jnp.where(last, a, b),
                                  (point, tr.f.astype(o.f.dtype), tr.g.astype(o.g.dtype),
                                   tr.aux), newton)
        return HessianRun(jax.tree.map(lambda a, b: jnp.where(hess, a, b), o, moved),
                          jnp.where(hess, c.phase + 1, c.phase),
                          jnp.where(hess & (c.phase < n_hess), stored, c.hess_g), newton)

    return jax.lax.while_loop(cond, body, c)


def hessian_result(c: HessianRun, rel_step: float = 1e-4) -> OptResult:
    """The run's result, its Hessian from the run's own finite-difference evaluations (NaN
    where they were not all made); ``n_iter``: the optimizer's updates after the start's
    evaluation, ``n_evals``: its evaluations (the Hessian's not counted).  With ``polish``, the Newton step's point where it was taken:
    ``H`` positive definite, the point finite, and :func:`_newton_kept`; the Hessian stays
    the one at the optimizer's stop."""
    o = c.opt
    G = c.hess_g
    H = jnp.where(c.phase >= G.shape[0], _fd_matrix(G, o.x, o.g, rel_step), jnp.nan)
    status = jnp.where(o.status < 0, MAXITER, o.status)
    x, f, g, aux = o.x, o.f, o.g, o.aux
    if c.newton is not None:
        xn, fn, gn, auxn = c.newton
        ok = (c.phase > G.shape[0]) & jnp.all(jnp.isfinite(H)) & \
            jnp.all(jnp.isfinite(linalg.chol(H))) & jnp.all(jnp.isfinite(xn)) & \
            jnp.isfinite(fn) & jnp.all(jnp.isfinite(gn)) & _newton_kept(f, g, fn, gn)
        pick = lambda a, b: jnp.where(ok, a, b)     # noqa: E731
        x, f, g, aux = pick(xn, x), pick(fn, f), pick(gn, g), jax.tree.map(pick, auxn, aux)
    return OptResult(x, f, g, H, aux, jnp.maximum(o.it - 1, 0), o.nev, status, o.x0, o.f0)


def _newton_kept(f, g, fn, gn):
    """Whether the Newton step's point replaces the optimizer's: its objective is not above
    the optimizer's beyond rounding, or it cut the gradient tenfold and the objective rose
    by no more than its noise.  (A deviance's rounding noise can reach 1e-12 relative; where
    the optimizer stopped 1e-6 short in a flat direction, pastes' nested ML deviance, the
    step that lands on the stationary point can then look 3e-10 worse.)"""
    scale = 1.0 + jnp.abs(f)
    return (fn <= f + 1e-12 * scale) | (
        (jnp.max(jnp.abs(gn)) <= 0.1 * jnp.max(jnp.abs(g))) & (fn <= f + 1e-9 * scale))


# ----------------------------------------------------------------------------- drivers
def value_and_grad(fun: Callable, has_aux: bool = False, aux0=None):
    """``(x, aux) -> ((value, aux), grad)`` for any of :func:`minimize`'s objective forms."""
    if aux0 is not None:
        f_aux = fun
    else:
        f_aux = (lambda x, _: fun(x)) if has_aux else (lambda x, _: (fun(x), None))
    return jax.value_and_grad(f_aux, has_aux=True)


def minimize(fun: Callable, x0: jnp.ndarray, *, has_aux: bool = False, maxiter: int = 500,
             gtol: float = 1e-8, ftol: float = 1e-15, hessian: bool = True,
             aux0=None, polish: bool = False) -> OptResult:
    """Minimize ``fun`` (``x -> value`` or ``x -> (value, aux)``) from a flat vector ``x0``,
    by BFGS with one evaluation per update (:data:`STEP_HALVING`).

    With ``aux0`` given, ``fun`` is ``(x, aux) -> (value, aux)``: each evaluation receives
    the aux of the current point (a warm start, e.g. the previous conditional mode of the
    random effects) and returns the new one.

    Stops as :func:`accept` says, or at ``maxiter`` updates (evaluations).  ``hessian``:
    central differences of the exact gradient at the end, in the same loop
    (:func:`run_then_hessian`); ``polish`` (with ``hessian``): then one guarded Newton step
    with it, so the result is the stationary point to rounding rather than to the gradient
    tolerance.
    """
    vg = value_and_grad(fun, has_aux, aux0)
    if aux0 is None and has_aux:        # the carried aux's shape, for the loop's state
        aux0 = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(fun, x0)[1])
    state = init(x0, aux0)
    if not hessian:
        return result(run(vg, state, STEP_HALVING, maxiter, gtol=gtol, ftol=ftol))
    start = hessian_run(state, polish=polish)
    k = x0.shape[0]
    done = run_then_hessian(vg, start, STEP_HALVING, maxiter + 2 * k + 1, maxiter=maxiter,
                            gtol=gtol, ftol=ftol)
    return hessian_result(done)


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
