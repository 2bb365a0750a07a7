"""Benchmark: ``jax.jit(jax.grad(loss))`` over a differentiable fit against one warm fit.

    python scripts/bench_grad.py [--cases sleepstudy cbpp] [--repeat 20] [--optimistix]

For each case, the loss is the standard error of the last fixed effect as a function of the
response (its gradient needs the implicit derivatives to second order).  Prints compile
seconds (first call, minus the warm time) and warm seconds (median of ``--repeat`` calls)
of: the library's own fit (``model.fit``), the fit_fn forward pass (``jit(f)``) and
``jit(grad(loss))``, and the ratio of the gradient's warm time to the warm fit's (goal:
at most 3).  ``--optimistix`` adds the same gradient with optimistix's BFGS and
``ImplicitAdjoint`` on the same objective, where optimistix is installed.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import jaxglmm as jg

CASES = {
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", "sleepstudy", "gaussian", "reml"),
    "cbpp": ("cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbpp", "binomial",
             "laplace"),
}


def timed(fn, repeat: int):
    """(first call seconds, median warm seconds)."""
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    warm = []
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        warm.append(time.perf_counter() - t)
    med = statistics.median(warm)
    return max(first - med, 0.0), med


def optimistix_grad(model):
    """jit(grad) of the same loss with optimistix.minimise(BFGS, ImplicitAdjoint) on the
    profiled LMM objective (the custom-JVP alternative this project measured)."""
    import optimistix as optx
    from jaxglmm.inference.implicit import _inputs, _lmm
    problem = model.problem
    objective, _, _, report = _lmm(problem, reml=True)
    theta0 = jnp.asarray(problem.structure.theta_init())
    solver = optx.BFGS(rtol=1e-10, atol=1e-10)

    def loss(y):
        p = _inputs(problem, y, None, None)
        sol = optx.minimise(lambda th, q: objective(th, q), solver, theta0, args=p,
                            adjoint=optx.ImplicitAdjoint(), max_steps=500, throw=False)
        return report(sol.value, p).se[-1]
    return jax.jit(jax.grad(loss))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--optimistix", action="store_true")
    args = ap.parse_args()
    for name in args.cases:
        formula, data, family, method = CASES[name]
        model = jg.Model(formula, jg.load_dataset(data), family=family)
        fit_c, fit_w = timed(lambda: model.fit(method).fixef.to_numpy(), args.repeat)
        f = model.fit_fn(method)
        y = model.arrays.y
        fwd = jax.jit(lambda y: f(y=y))
        fwd_c, fwd_w = timed(lambda: fwd(y), args.repeat)
        grad = jax.jit(jax.grad(lambda y: f(y=y).se[-1]))
        grad_c, grad_w = timed(lambda: grad(y), args.repeat)
        print(f"{name} ({method}): model.fit compile {fit_c:.2f} s, warm {fit_w * 1e3:.2f} ms; "
              f"jit(f) compile {fwd_c:.2f} s, warm {fwd_w * 1e3:.2f} ms; "
              f"jit(grad(se)) compile {grad_c:.2f} s, warm {grad_w * 1e3:.2f} ms; "
              f"grad / fit warm = {grad_w / fit_w:.2f}")
        if args.optimistix and method == "reml":
            try:
                og = optimistix_grad(model)
            except ImportError:
                print("  optimistix: not installed (pip install optimistix)")
                continue
            oc, ow = timed(lambda: og(y), args.repeat)
            diff = float(jnp.max(jnp.abs(og(y) - grad(y))))
            print(f"  optimistix ImplicitAdjoint: jit(grad(se)) compile {oc:.2f} s, warm "
                  f"{ow * 1e3:.2f} ms (max |difference| {diff:.2e})")


if __name__ == "__main__":
    main()
