"""Likelihood fits: exact REML/ML for linear mixed models, Laplace and adaptive Gauss-Hermite
quadrature for the rest, each one pure jittable function of a dataset's arrays.

:func:`fit_lmm` and :func:`fit_glmm` return a :class:`RawFit` (the same record for both, so
nothing downstream guesses which one made it); :func:`run` compiles them once per problem
shape through the one program cache (:func:`jaxglmm.fit.cache.program`), for a single
dataset or ``vmap``-ed over a stacked batch.
"""
from __future__ import annotations

import weakref
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..core import blocked, linalg, lmm, nested, restructure as rs, sparse as sps
from ..core.glmm_sparse import SparseLaplace, uses_sparse_blocks
from ..core.laplace import GlmmModel, Layout, glm_start
from ..core.lmm import LmmData, lmm_data, profiled_parts, sparse_profiled_parts
from ..core.nested import NestedPattern
from ..core.problem import LARGE_N, Problem, ProblemArrays, host_arrays
from ..design.sparse import (lapack_cholesky_inverse, sparse_lmm_data, sparse_pattern,
                             sparse_theta_start)
from . import buckets, cache, stored
from .cache import CPU_OPTIONS, program
from .host import (choose_optimizer, fd_derivatives, fd_points, minimize_host,
                   minimize_host_gradient)
from .optimize import ONE_TRIAL, hessian_result, hessian_run, init, minimize, run_then_hessian

# Compile with XLA's backend optimizations off: the fit graphs are many small ops in loops,
# where optimization level 0 halves compile time and changes run time little (measured on
# sleepstudy: 2.2 s vs 3.5 s cold, 1.0 ms vs 0.7 ms warm).  Small problems only: from
# core.problem.LARGE_N rows on, run time dominates and XLA's fusion pays (200k-row
# bernoulli, (1 + x | g): 29 s vs 79 s warm).  The batch engine (fit/batched.py) does the
# same by the size of a batch's arguments (SMALL_BATCH): fusing the vmapped elementwise work
# matters in a large batch (cbpp, 1,000 refits: 0.4 s vs 1.4 s warm at level 0, for 1.5 s
# vs 2.8 s of compile).
# XLA's older (non-MLIR) CPU fusion emitters too (fit.cache.CPU_OPTIONS; an xla_cpu_ debug
# option, not yet checked on a GPU backend): a REML fit of one q = 5 block on 300 groups
# compiles in 3.8 s instead of 10.4 s.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, **CPU_OPTIONS}


class RawFit(NamedTuple):
    """What a likelihood fit returns, for one dataset (or stacked over a batch).

    ``sigma`` is the residual SD of a linear mixed model (NaN otherwise: a GLMM's family
    parameters are in ``family_params``); ``theta`` is relative to sigma for an LMM (lme4's
    scale) and absolute otherwise.  ``b`` and ``b_cov`` hold per grouping factor the
    conditional modes (levels, q) and their covariances (levels, q, q); ``x``, ``grad`` and
    ``hessian`` are the outer optimizer's vector, gradient and Hessian (deviance scale).
    """

    theta: jnp.ndarray
    beta: jnp.ndarray
    sigma: jnp.ndarray
    family_params: jnp.ndarray
    u: jnp.ndarray
    b: tuple
    b_cov: tuple
    vcov: jnp.ndarray
    deviance: jnp.ndarray
    loglik: jnp.ndarray
    x: jnp.ndarray
    grad: jnp.ndarray
    hessian: jnp.ndarray
    n_iter: jnp.ndarray
    status: jnp.ndarray
    objective0: jnp.ndarray


def lmm_objective(structure: rs.ReStructure, d: LmmData, p: int, reml: bool):
    """The profiled REML/ML deviance of one dataset's cross-products, a function of theta."""
    return lambda th: profiled_parts(structure, d.cp, th, d.n, p, reml, d.sum_log_w, full=False)


def lmm_finish(structure: rs.ReStructure, d: LmmData, p: int, reml: bool, opt) -> RawFit:
    """The fit at the optimizer's theta: beta, sigma, the random effects and their covariances."""
    parts = profiled_parts(structure, d.cp, opt.x, d.n, p, reml, d.sum_log_w, full=True)
    return lmm_result(structure, parts, blocked.conditional_covariances(parts.chol, structure),
                      opt)


def lmm_result(structure: rs.ReStructure, parts: lmm.LmmParts, ucov, opt) -> RawFit:
    """The fit from the estimates at the optimum (``parts``) and the conditional covariances
    of u per level (``ucov``, sigma = 1)."""
    lams = rs.lambdas(structure, opt.x)
    s2 = jnp.square(parts.sigma)
    b = rs.random_effects(structure, lams, parts.u)
    bcov = [s2 * jnp.einsum("qr,grs,ts->gqt", lam, v, lam) for lam, v in zip(lams, ucov)]
    return RawFit(theta=opt.x, beta=parts.beta, sigma=parts.sigma, family_params=jnp.zeros(0),
                  u=parts.u, b=tuple(b), b_cov=tuple(bcov), vcov=parts.vcov,
                  deviance=parts.deviance, loglik=-0.5 * parts.deviance, x=opt.x,
                  grad=opt.grad, hessian=opt.hessian, n_iter=opt.n_iter, status=opt.status,
                  objective0=opt.value0)


def fit_lmm(structure: rs.ReStructure, a: ProblemArrays, reml: bool, theta0: jnp.ndarray,
            maxiter: int = 500, verbose: bool = False) -> RawFit:
    """Fit a gaussian LMM by REML or ML.  Pure and jittable (``structure``/``reml`` static).
    ``verbose``: print the deviance at each evaluation."""
    p = a.X.shape[1]
    d = lmm_data(structure, a)
    objective = lmm_objective(structure, d, p, reml)
    if verbose:
        objective = _printing(objective, "reml" if reml else "ml")
    opt = minimize(objective, theta0, maxiter=maxiter, polish=True)
    return lmm_finish(structure, d, p, reml, opt)


def fit_lmm_nested(structure: rs.ReStructure, a: ProblemArrays, parent, reml: bool,
                   theta0: jnp.ndarray, maxiter: int = 500, verbose: bool = False) -> RawFit:
    """:func:`fit_lmm` for a nested design (:mod:`jaxglmm.core.nested`: the second factor's
    block of the factor stays block-diagonal); ``parent``: each first-factor level's level of
    the second factor (:func:`jaxglmm.core.nested.nested_parent`).  Pure and jittable."""
    p = a.X.shape[1]
    d = lmm.nested_lmm_data(structure, a, parent)

    def objective(th):
        return lmm.nested_profiled_parts(structure, d, th, p, reml, full=False)
    if verbose:
        objective = _printing(objective, "reml" if reml else "ml")
    opt = minimize(objective, theta0, maxiter=maxiter, polish=True)
    parts = lmm.nested_profiled_parts(structure, d, opt.x, p, reml, full=True)
    return lmm_result(structure, parts, nested.conditional_covariances(parts.chol, parent), opt)


# The sparse crossed LMM path (MixedModels.jl's blocks, L21 sparse; design.sparse's
# SparseSystem, core.sparse's factor): taken where the dense Schur update of the trailing
# block passes core.sparse.SPARSE_MIN_WORK.
# the sparse system of each problem fitted (its host-built pattern), while the problem lives
_SPARSE_DATA: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
# the sparse Laplace Hessian's pattern of each crossed GLMM fitted (core.glmm_sparse)
_SPARSE_PATTERN: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
# the padded problem each problem fitted is run as (fit.buckets), and its own levels
_PADDED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


# each nested problem's parent map (core.nested.nested_parent; None: not nested), while the
# problem lives
_NESTED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def uses_sparse_lmm(problem: Problem, method) -> bool:
    """Whether an LMM fit takes the sparse crossed path (two or more grouping factors and a
    trailing block large enough that the dense update dominates, not nested)."""
    return uses_lmm(problem, method) and _sparse_pays(problem) and nested_parent(problem) is None


def nested_parent(problem: Problem):
    """The problem's nesting (:func:`jaxglmm.core.nested.nested_parent`) where its dense
    trailing block would be large (:func:`_sparse_pays`), else None: such designs take the
    nested factor (LMM and Laplace)."""
    if problem not in _NESTED:
        parent = None
        if _sparse_pays(problem) or uses_sparse_blocks(problem.structure):
            a = host_arrays(problem)
            parent = nested.nested_parent(problem.structure, a.index, a.weights)
        # on the device once: a warm refit transfers nothing
        _NESTED[problem] = None if parent is None else jax.device_put(parent)
    return _NESTED[problem]


def _sparse_pays(problem: Problem) -> bool:
    return sps.sparse_schur_pays(problem.structure, problem.design.n_fixef + 1)


def _sparse_lmm_programs(s: rs.ReStructure, reml: bool):
    """The compiled pieces of the sparse LMM path: the deviance; its value at the points of
    a finite-difference gradient and Hessian (one ``lax.map``: one factor in memory at a
    time); the estimates at the optimum."""
    def build():
        def dev(d, th):
            return sparse_profiled_parts(s, d, th, d.sp.dE.shape[2] - 1, reml, full=False)

        def derivs(d, x):
            f = jax.lax.map(lambda z: dev(d, z), fd_points(x))
            g, H = fd_derivatives(f, x)
            return f[0], g, H

        def finish(d, x, L22=None, Sig=None):
            lams = rs.lambdas(s, x)
            ch = None if L22 is None else sps.SparseCholesky(
                *sps.sparse_schur(s, lams, d.sp)[:3], L22)
            parts = sparse_profiled_parts(s, d, x, d.sp.dE.shape[2] - 1, reml, full=True,
                                          ch=ch)
            ucov = sps.sparse_conditional_covariances(parts.chol, d.sp, s, lams, sigma22=Sig)
            s2 = jnp.square(parts.sigma)
            b = rs.random_effects(s, lams, parts.u)
            bcov = [s2 * jnp.einsum("qr,grs,ts->gqt", lam, v, lam) for lam, v in zip(lams, ucov)]
            return parts._replace(chol=None), tuple(b), tuple(bcov)

        return cache.jit(dev), cache.jit(derivs), cache.jit(finish)
    return program(("lmm_sparse", s, reml), build)


def _sparse_schur_program(s: rs.ReStructure):
    """The compiled Schur complement of the sparse factor's dense block (before its
    Cholesky): ``(d, theta) -> S``."""
    return program(("lmm_sparse_schur", s),
                   lambda: cache.jit(lambda d, th: sps.sparse_schur(s, rs.lambdas(s, th), d.sp)[3]))


def _sparse_lmm_gradient_program(s: rs.ReStructure, reml: bool):
    """``(d, theta) -> (deviance, gradient, factors)`` by
    :func:`core.lmm.sparse_deviance_gradient` (scalar blocks only).  On the CPU in three
    steps: the compiled Schur complement, LAPACK's factor and inverse on the host
    (:func:`design.sparse.lapack_cholesky_inverse`), the compiled rest, with ``factors`` the
    host's ``(L22, Sigma)``; elsewhere one compiled program (``factors`` None)."""
    cpu = jax.default_backend() == "cpu"

    def build():
        def devgrad(d, th):
            p = d.sp.dE.shape[2] - 1
            return lmm.sparse_deviance_gradient(s, d, th, p, reml)
        if not cpu:
            devgrad = cache.jit(devgrad)
            return lambda d, th: devgrad(d, th) + (None,)
        import numpy as np

        schur = _sparse_schur_program(s)

        def rest(d, th, L22, Sig):
            p = d.sp.dE.shape[2] - 1
            return lmm.sparse_deviance_gradient(s, d, th, p, reml,
                                                dense_inverse=lambda S, k: (L22, Sig))
        rest = cache.jit(rest)

        def staged(d, th):
            k = s.p2 + (d.sp.dE.shape[2] - 1 if reml else 0)
            L22, Sig = lapack_cholesky_inverse(np.asarray(schur(d, th)), k)
            L22, Sig = jnp.asarray(L22), jnp.asarray(Sig)
            return rest(d, th, L22, Sig) + ((L22, Sig),)
        return staged
    return program(("lmm_sparse_grad", s, reml, cpu), build)


def sparse_lmm_optimizer(problem: Problem, name: str | None = None) -> str:
    """The host optimizer of the sparse crossed LMM: ``name`` (option ``optimizer``), by
    default L-BFGS-B on the closed-form gradient where every random effect is scalar, else
    COBYQA on values (``scripts/bench_scale.py --derivative-free`` measures the two)."""
    scalar = sps.scalar_blocks(problem.structure)
    allowed = ("lbfgsb", "cobyqa") if scalar else ("cobyqa",)
    return choose_optimizer(name, allowed, allowed[0], "the sparse crossed LMM"
                            + ("" if scalar else " with vector random effects"))


def fit_lmm_sparse(problem: Problem, reml: bool, verbose: bool = False,
                   maxfev: int = 1000, optimizer: str | None = None) -> RawFit:
    """Fit a gaussian LMM by REML or ML through the sparse blocked factor: the system is
    built on the host once, then a host optimizer (:func:`sparse_lmm_optimizer`) calls the
    compiled deviance (and gradient); the gradient and Hessian at the optimum are finite
    differences of values (1 + 2k + k(k-1)/2 of them), as lme4's convergence checks."""
    import numpy as np
    s = problem.structure
    d = _SPARSE_DATA.get(problem)
    if d is None:           # once per dataset: a refit of the same problem reuses it
        d = _SPARSE_DATA[problem] = sparse_lmm_data(s, problem.arrays)
    dev, derivs, finish = _sparse_lmm_programs(s, reml)
    theta0 = np.asarray(s.theta_init(), float)
    lower = np.where(s.theta_diagonal(), 0.0, -np.inf)
    last = {}            # the latest gradient evaluation: its point, value and factors
    if sparse_lmm_optimizer(problem, optimizer) == "lbfgsb":
        # closed-form gradient + L-BFGS-B
        devgrad = _sparse_lmm_gradient_program(s, reml)

        def fg(th):
            th = np.asarray(th, float)
            if "x" not in last or not np.array_equal(last["x"], th):
                f, g, factors = devgrad(d, jnp.asarray(th))
                last.update(x=th.copy(), fg=(float(f), np.asarray(g, float)),
                            factors=factors)
            return last["fg"]
        # from the moments' start (design.sparse.sparse_theta_start), not lme4's theta = 1:
        # InstEval 11 gradient evaluations against 30
        theta0 = sparse_theta_start(s, d)
        f0 = jnp.asarray(fg(theta0)[0])
        # first steps of about a tenth of the start (powers of 2: x / scale * scale == x)
        scale = 2.0 ** np.round(np.log2(0.1 * theta0))
        x, _, nev, status = minimize_host_gradient(
            fg, theta0, lower, verbose=verbose, maxfev=maxfev,
            gtol=1e-8 * max(1.0, abs(float(f0))), ftol=1e-12, scale=scale)
    else:
        f0 = dev(d, jnp.asarray(theta0))
        x, _, nev, status = minimize_host(lambda th: dev(d, jnp.asarray(th)), theta0, lower,
                                          verbose=verbose, maxfev=maxfev)
    _, g, H = derivs(d, jnp.asarray(x))
    if jax.default_backend() == "cpu":
        # the factor and the inverse of its Z2 block by LAPACK (:func:`design.sparse.
        # lapack_cholesky_inverse`; MovieLens' finish 3.3 s through XLA, 1.0 s so), the
        # latest gradient evaluation's where it was at x and its inverse the Z2 block's (ML)
        if "x" in last and np.array_equal(last["x"], x) and not reml:
            L22, Sig = last["factors"]
        else:
            S = _sparse_schur_program(s)(d, jnp.asarray(x))
            L22, Sig = (jnp.asarray(a) for a in
                        lapack_cholesky_inverse(np.asarray(S), s.p2))
        parts, b, bcov = finish(d, jnp.asarray(x), L22, Sig)
    else:
        parts, b, bcov = finish(d, jnp.asarray(x))
    x = jnp.asarray(x)
    return RawFit(theta=x, beta=parts.beta, sigma=parts.sigma, family_params=jnp.zeros(0),
                  u=parts.u, b=b, b_cov=bcov, vcov=parts.vcov, deviance=parts.deviance,
                  loglik=-0.5 * parts.deviance, x=x, grad=g, hessian=H,
                  n_iter=jnp.asarray(nev), status=jnp.asarray(status), objective0=f0)


def glmm_objective(model: GlmmModel, n_agq: int):
    """The Laplace (``n_agq == 1``) or adaptive Gauss-Hermite deviance ``(x, u0) ->
    (deviance, mode)``: each evaluation starts the mode search at the previous point's mode."""
    if n_agq > 1:
        return lambda x, u0: model.agq_deviance(x, n_agq, u0)
    return model.laplace_deviance


def glmm_start(model: GlmmModel, phi0: jnp.ndarray) -> jnp.ndarray:
    """The outer starting vector: theta = lme4's start, beta from the GLM, phi0."""
    s = model.s
    beta0 = glm_start(s, model.family, model.a, phi0)
    return jnp.concatenate([jnp.asarray(s.theta_init()), beta0, phi0])


def glmm_finish(model: GlmmModel, opt, conditional_cov=None) -> RawFit:
    """The fit at the optimum; ``conditional_cov``: ``(x, u) -> `` the per-level
    covariances of b (default: the model's own, through the dense blocked factor)."""
    theta, beta, phi = model.layout.unpack(opt.x)
    u = opt.aux
    bcov = (conditional_cov or model.conditional_cov)(opt.x, u)
    lams = rs.lambdas(model.s, theta)
    return RawFit(theta=theta, beta=beta, sigma=jnp.asarray(jnp.nan, opt.x.dtype),
                  family_params=phi, u=u, b=tuple(rs.random_effects(model.s, lams, u)),
                  b_cov=tuple(bcov), vcov=fixef_vcov(opt.hessian, model.layout),
                  deviance=opt.value, loglik=-0.5 * opt.value, x=opt.x, grad=opt.grad,
                  hessian=opt.hessian, n_iter=opt.n_iter, status=opt.status,
                  objective0=opt.value0)


# From this many rows a single-factor Laplace fit takes the many-rows path too (one pass over
# the rows per Newton step, the mode's adjoint for the gradient): warm bernoulli fits of
# 300, 1,000 and 3,000 rows (30, 100 and 300 groups) took 2.5, 6.3 and 13.4 ms there against
# 11.3, 17.4 and 70.9 ms on GlmmModel's path, and compiled in 1.1-1.4 s against 1.7-2.3 s
# (glmm: 1.6 and 9.1 ms at 300 and 3,000 rows); below it (cbpp, 56 rows: 6.1 ms against
# 4.8 ms) the general path is as fast or faster.  Families without parameters only (binomial,
# poisson): with a shape or a zero-inflation parameter the many-rows path, which ends
# without a Newton step, stopped 4e-5 to 2e-4 (relative) from the general path's optimum in
# tests/test_offset_weights.py; those fits take it from LARGE_N rows, as before.
SPARSE_LAPLACE_ROWS = 200


def fit_glmm(structure: rs.ReStructure, family, a: ProblemArrays, phi0: jnp.ndarray,
             n_agq: int = 1, maxiter: int = 500, sparse: bool | None = None,
             verbose: bool = False, pattern=None) -> RawFit:
    """Fit by Laplace (``n_agq == 1``) or adaptive Gauss-Hermite quadrature.  Pure, jittable.

    ``sparse``: the many-rows Laplace path (:mod:`jaxglmm.core.glmm_sparse`: one pass over
    the rows per Newton step, two for the gradient); by default from ``SPARSE_LAPLACE_ROWS`` rows on
    (families without parameters; ``LARGE_N`` otherwise) and
    for crossed or nested designs (several grouping factors), for models with one linear
    predictor.  ``verbose``: print the deviance at each outer evaluation.  ``pattern``: the
    sparse pattern of a large crossed design (:func:`core.glmm_sparse.sparse_pattern`; L21
    kept sparse on the many-rows path)."""
    if sparse is None:
        rows = a.y.shape[0]
        sparse = (rows >= LARGE_N or (rows >= SPARSE_LAPLACE_ROWS and phi0.shape[0] == 0)
                  or len(structure.factors) > 1 or pattern is not None)
    if sparse and n_agq == 1 and structure.n_channels == 1:
        return fit_glmm_sparse(structure, family, a, phi0, maxiter=maxiter, verbose=verbose,
                               pattern=pattern)
    model = GlmmModel(structure, family, a, phi0.shape[0])
    objective = glmm_objective(model, n_agq)
    if verbose:
        objective = _printing(objective, "laplace" if n_agq == 1 else "agq")
    opt = minimize(objective, glmm_start(model, phi0), has_aux=True,
                   maxiter=maxiter, aux0=jnp.zeros(structure.n_u), polish=True)
    return glmm_finish(model, opt)


def _printing(objective, label: str):
    """``objective`` (``x -> deviance`` or ``(x, u0) -> (deviance, mode)``) printing each
    deviance it computes, as ``label: deviance D``."""
    def printed(*args):
        out = objective(*args)
        dev = out[0] if isinstance(out, tuple) else out
        jax.debug.print(label + ": deviance {d:.10g}", d=dev, ordered=True)
        return out
    return printed


def fit_glmm_sparse(structure: rs.ReStructure, family, a: ProblemArrays, phi0: jnp.ndarray,
                    maxiter: int = 500, verbose: bool = False, pattern=None) -> RawFit:
    """The Laplace fit of :func:`fit_glmm` for many rows (see :mod:`jaxglmm.core.glmm_sparse`):
    the GLM start stopped at convergence, then BFGS evaluating the objective once per loop
    iteration (:func:`~jaxglmm.fit.optimize.run_then_hessian`, with Powell's damped update;
    its last 2k evaluations make the finite-difference Hessian), each evaluation
    warm-starting the mode at the last one's."""
    sl = SparseLaplace(structure, family, a, phi0.shape[0], verbose=verbose, pattern=pattern)
    x0 = jnp.concatenate([jnp.asarray(structure.theta_init()), sl.glm_start(phi0), phi0])
    k = x0.shape[0]
    start = hessian_run(init(x0, jnp.zeros(structure.n_u)))
    state = run_then_hessian(sl.value_and_grad, start, ONE_TRIAL, maxiter + 2 * k,
                             maxiter=maxiter, damped=True)
    model = GlmmModel(structure, family, a, phi0.shape[0])
    return glmm_finish(model, hessian_result(state), sl.conditional_cov)


def fixef_vcov(hessian, layout: Layout):
    """Covariance of beta from the Hessian of the deviance in (theta, beta, phi), as lme4's
    ``vcov(use.hessian = TRUE)``; where that Hessian is not positive definite (a variance at
    its boundary) the beta block alone is used, conditional on theta."""
    t, p = layout.n_theta, layout.p
    full = 2.0 * linalg.dense_inv(hessian)[t:t + p, t:t + p]     # unbatched under vmap
    cond = 2.0 * linalg.dense_inv(hessian[t:t + p, t:t + p])
    pd = jnp.min(linalg.eigvalsh(hessian)) > 0
    return jnp.where(pd & jnp.all(jnp.isfinite(full)), full, cond)


# ----------------------------------------------------------------------------- methods
# ``method`` below is a :class:`jaxglmm.methods.Method` record (a higher layer, so not
# imported here): the fitters read its attributes (``reml``, ``exact_lmm_only``,
# ``bayesian``, ``quadrature``, ``points(options)``), never its name.
def uses_lmm(problem: Problem, method) -> bool:
    """Whether ``method`` runs the exact LMM fit (REML/ML; Laplace is exact ML there)."""
    return method.exact_lmm_only or (problem.exact_lmm and not method.bayesian
                                     and not method.quadrature)


def check_optimizer(problem: Problem, method, name: str | None) -> str:
    """The outer optimizer a likelihood fit runs (option ``optimizer``; a one-line error
    for a name it cannot use): the host's L-BFGS-B or COBYQA for the sparse crossed LMM
    (:func:`sparse_lmm_optimizer`), the compiled BFGS (:mod:`jaxglmm.fit.optimize`) for
    every other fit."""
    if uses_sparse_lmm(problem, method):
        return sparse_lmm_optimizer(problem, name)
    return choose_optimizer(name, ("bfgs",), "bfgs", "this model's likelihood fit "
                            "(the sparse crossed LMM's host optimizers need several "
                            "grouping factors, not nested, and a large trailing block)")


def jit_options(problem: Problem) -> dict:
    """``cache.jit``'s keyword arguments for a program over ``problem``: the compile options
    above for a small problem, XLA's defaults for a large one (``problem.large``, so a
    program's key that uses them holds ``problem.large``)."""
    return {} if problem.large else {"compiler_options": COMPILER_OPTIONS}


def _program(problem: Problem, lmm: bool, reml: bool, n_agq: int, verbose: bool = False,
             nested_lmm: bool = False):
    """The compiled single fit: ``(arrays, start[, pattern]) -> RawFit``; ``nested_lmm``:
    the nested LMM's, ``(arrays, parent, theta0) -> RawFit``."""
    s, fam = problem.structure, problem.family
    opts = jit_options(problem)

    def make(key, one):         # a printing program has callbacks: it is never stored
        return program(key, lambda: cache.jit(one, **opts) if verbose else
                       stored.Stored(key, cache.jit(one, **opts), opts))
    if nested_lmm:
        return make(("lmm_nested", s, reml, problem.large, verbose),
                    lambda a, parent, t0: fit_lmm_nested(s, a, parent, reml, t0,
                                                         verbose=verbose))
    if lmm:
        return make(("lmm", s, reml, problem.large, verbose),
                    lambda a, t0: fit_lmm(s, a, reml, t0, verbose=verbose))
    if n_agq == 1 and uses_sparse_blocks(s):
        # the sparse pattern is an argument (its shapes depend on the data)
        return make(("glmm_sparse_blocks", s, fam, problem.large, verbose),
                    lambda a, p0, pat: fit_glmm(s, fam, a, p0, verbose=verbose, pattern=pat))
    return make(("glmm", s, fam, n_agq, problem.large, verbose),
                lambda a, p0: fit_glmm(s, fam, a, p0, n_agq=n_agq, verbose=verbose))


def run(problem: Problem, method, options: dict, pad: bool = True) -> RawFit:
    """Fit ``method`` (a :class:`jaxglmm.methods.Method`) to the problem's arrays (one
    dataset; many datasets go through the batch engine, :mod:`jaxglmm.fit.batched`).
    Returns host (NumPy) arrays.  ``pad``: run the program of the problem's shape bucket
    (:mod:`jaxglmm.fit.buckets`; False: of its own shapes, the same fit)."""
    check_optimizer(problem, method, options.get("optimizer"))
    return _run(problem, uses_lmm(problem, method), method.reml, method.points(options),
                bool(options.get("verbose")), options.get("optimizer"), pad)


def run_ml(problem: Problem) -> RawFit:
    """The maximum-likelihood fit of the problem: exact ML for a linear mixed model, the
    Laplace approximation otherwise (a Bayesian start, :mod:`jaxglmm.bayes.drivers`)."""
    return _run(problem, problem.exact_lmm, False, 1, False)


def _run(problem: Problem, lmm: bool, reml: bool, n_agq: int, verbose: bool,
         optimizer: str | None = None, pad: bool = True) -> RawFit:
    if lmm and _sparse_pays(problem):
        parent = nested_parent(problem)
        if parent is None:
            return fit_lmm_sparse(problem, reml, verbose=verbose, optimizer=optimizer)
        fn = _program(problem, True, reml, 1, verbose, nested_lmm=True)
        return jax.device_get(fn(problem.arrays, parent, problem.starts[0]))
    bucketed, levels = _PADDED.get(problem, (None, None)) if pad else (problem, None)
    if bucketed is None:       # once per problem: a warm refit transfers nothing
        bucketed, levels = _PADDED[problem] = buckets.padded(problem)
    fn = _program(bucketed, lmm, reml, n_agq, verbose=verbose)
    theta0, phi_start = problem.starts
    if not lmm and n_agq == 1 and uses_sparse_blocks(bucketed.structure):
        pattern = _SPARSE_PATTERN.get(problem) if pad else None
        if pattern is None:     # once per dataset, as the sparse LMM's system
            parent = nested_parent(bucketed)
            pattern = (sparse_pattern(bucketed.structure, bucketed.arrays) if parent is None
                       else NestedPattern(parent))
            if pad:
                _SPARSE_PATTERN[problem] = pattern
        raw = fn(bucketed.arrays, phi_start, pattern)
    else:
        raw = fn(bucketed.arrays, theta0 if lmm else phi_start)
    # one transfer of the whole fit (the result is built on the host)
    return buckets.cut(jax.device_get(raw), bucketed.structure, levels)
