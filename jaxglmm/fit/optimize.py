"""Outer optimizer: BFGS with a backtracking line search inside ``lax.while_loop``.

Every fit objective here is a smooth function of a short unconstrained vector (covariance
parameters, fixed effects, family parameters).  Dense BFGS on that vector converges
superlinearly with exact (autodiff or implicit) gradients.  The loop evaluates the objective
at exactly one call site, so the compiled program holds one copy of the objective's graph (a
Laplace objective contains a whole inner Newton solve; optax's zoom line search traced it
several times and compile time grew fivefold).  Everything is pure and jittable, so a fit can
be ``vmap``-ed over datasets (``fit_many``): the loop runs until every member has stopped.

The Hessian returned is central finite differences of the exact gradient at the optimum.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

# how the loop ended (the convergence verdict itself is made in convergence.py)
CONVERGED = 0
MAXITER = 1
NONFINITE = 2
LINESEARCH = 3

ARMIJO_C1 = 1e-4


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
    """Symmetrized central finite differences of an exact gradient (one batched call)."""
    k = x.shape[0]
    h = rel_step * (1.0 + jnp.abs(x))
    E = jnp.eye(k, dtype=x.dtype) * h
    G = jax.vmap(grad_fn)(jnp.concatenate([x[None, :] + E, x[None, :] - E]))
    H = (G[:k] - G[k:]) / (2.0 * h[:, None])
    return 0.5 * (H + H.T)


def minimize(fun: Callable, x0: jnp.ndarray, *, has_aux: bool = False, maxiter: int = 500,
             gtol: float = 1e-8, ftol: float = 1e-15, hessian: bool = True,
             aux0=None) -> OptResult:
    """Minimize ``fun`` (``x -> value`` or ``x -> (value, aux)``) from a flat vector ``x0``.

    With ``aux0`` given, ``fun`` is ``(x, aux) -> (value, aux)``: each evaluation receives
    the aux of the current point (a warm start, e.g. the previous conditional mode of the
    random effects) and returns the new one.

    Stops when ``max|grad| <= gtol * (1 + |f|)``, when the relative decrease stays below
    ``ftol`` for three iterations, when the line search cannot decrease ``f``, or at
    ``maxiter`` iterations.
    """
    if aux0 is not None:
        f_aux = fun
    else:
        f_aux = (lambda x, _: fun(x)) if has_aux else (lambda x, _: (fun(x), None))
    vg = jax.value_and_grad(f_aux, has_aux=True)
    k = x0.shape[0]
    (f0, aux0), g0 = vg(x0, aux0)

    def converged(f, g):
        return jnp.max(jnp.abs(g)) <= gtol * (1.0 + jnp.abs(f))

    def line_search(x, f, g, d, aux):
        slope = jnp.dot(g, d)

        def cond(c):
            t, fn, _, _, it = c
            ok = jnp.isfinite(fn) & (fn <= f + ARMIJO_C1 * t * slope)
            return (it == 0) | (~ok & (it < 60))

        def body(c):
            t, _, _, _, it = c
            t = jnp.where(it == 0, t, 0.5 * t)
            (fn, auxn), gn = vg(x + t * d, aux)
            return t, fn, gn, auxn, it + 1

        init = (jnp.asarray(1.0, x.dtype), jnp.asarray(jnp.inf, x.dtype), g, aux, jnp.asarray(0))
        t, fn, gn, auxn, it = jax.lax.while_loop(cond, body, init)
        ok = jnp.isfinite(fn) & (fn <= f + ARMIJO_C1 * t * slope)
        return t, fn, gn, auxn, ok, it

    def cond(c):
        x, f, g, aux, Hinv, it, nev, stall, status = c
        return (it < maxiter) & (status < 0)

    def body(c):
        x, f, g, aux, Hinv, it, nev, stall, _ = c
        d = -Hinv @ g
        bad = ~(jnp.dot(d, g) < 0)
        Hinv = jnp.where(bad, jnp.eye(k, dtype=x.dtype), Hinv)
        d = jnp.where(bad, -g / jnp.maximum(1.0, jnp.max(jnp.abs(g))), d)
        t, fn, gn, auxn, ok, nls = line_search(x, f, g, d, aux)
        s = t * d
        y = gn - g
        sy = jnp.dot(s, y)
        # first step: scale the initial inverse Hessian (Nocedal & Wright 6.20)
        Hinv = jnp.where(it == 0, jnp.eye(k) * sy / jnp.maximum(jnp.dot(y, y), 1e-300), Hinv)
        rho = 1.0 / jnp.where(sy > 1e-300, sy, 1.0)
        V = jnp.eye(k) - rho * jnp.outer(s, y)
        Hnew = V @ Hinv @ V.T + rho * jnp.outer(s, s)
        Hinv = jnp.where(ok & (sy > 1e-300), Hnew, Hinv)
        xn = jnp.where(ok, x + s, x)
        fnew = jnp.where(ok, fn, f)
        gnew = jnp.where(ok, gn, g)
        auxnew = jax.tree.map(lambda a, b: jnp.where(ok, a, b), auxn, aux)
        small = (f - fnew) <= ftol * (1.0 + jnp.abs(fnew))
        stall = jnp.where(small, stall + 1, 0)
        status = jnp.where(~jnp.isfinite(fnew), NONFINITE,
                 jnp.where(converged(fnew, gnew) | (stall >= 3), CONVERGED,
                 jnp.where(~ok, LINESEARCH, -1)))
        return xn, fnew, gnew, auxnew, Hinv, it + 1, nev + nls, stall, status

    status0 = jnp.where(converged(f0, g0), CONVERGED, -1)
    init = (x0, f0, g0, aux0, jnp.eye(k, dtype=x0.dtype), jnp.asarray(0), jnp.asarray(1),
            jnp.asarray(0), status0)
    x, f, g, aux, _, it, nev, _, status = jax.lax.while_loop(cond, body, init)
    status = jnp.where(status < 0, MAXITER, status)
    if hessian:
        H = fd_hessian(lambda z: vg(z, aux)[1], x)
    else:
        H = jnp.full((k, k), jnp.nan)
    return OptResult(x, f, g, H, aux, it, nev, status, x0, f0)


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
