"""Differentiable fits: a likelihood (or MAP) fit as a pure JAX function of the data.

:func:`fit_fn` returns ``f(y=None, weights=None, offset=None, priors=None) -> FitArrays``.
The forward pass runs the project's own jittable optimizer (:func:`jaxglmm.fit.likelihood.
fit_lmm` / :func:`~jaxglmm.fit.likelihood.fit_glmm`, BFGS, or BFGS on the MAP objective),
then two Newton steps with the exact autodiff Hessian polish the optimum to rounding.
Derivatives go through the optimum by the implicit function theorem, never through the
optimizer's iterations: :func:`implicit_argmin` gives ``x*(p) = argmin_x F(x, p)`` a
custom JVP,

    dx* = -F_xx^{-1} F_xp dp,

whose rule calls ``x*`` itself, so the rule is differentiable again and second and third
derivatives (the gradients of standard errors, which are functions of the Hessian at the
optimum) are exact.  A custom JVP (rather than a custom VJP) serves ``jax.jvp``/``jacfwd``
as well as ``jax.grad``/``jacrev`` (JAX transposes the linear rule), and ``vmap``/``jit``.

The objective ``F`` in ``x``:

* REML/ML (gaussian, identity link): the profiled deviance in theta alone
  (:func:`jaxglmm.core.lmm.profiled_parts`); beta, sigma and vcov are its closed-form
  functions of ``(theta, data)``, differentiated by plain autodiff.
* Laplace: the Laplace deviance in ``(theta, beta, phi)``.  The library's objective
  differentiates the conditional mode by one Newton step from the stopped mode, which is
  exact to first order only; here three un-stopped Newton steps from the stopped mode
  (:class:`_ExactLaplace`) make it exact to third order, so the Hessian of the deviance,
  which the IFT needs, and its derivatives, which the standard errors' gradients need,
  are exact.
* MAP: minus the log posterior of the unconstrained vector (:mod:`jaxglmm.bayes.density`),
  random effects integrated out (exactly for gaussian/identity, else by the same exact
  Laplace); prior arguments are inputs, so the mode can be differentiated in them.

A custom JVP rather than optimistix's ``ImplicitAdjoint``: the comparison is in
docs/benchmarks.md.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..bayes import density as dn
from ..bayes.drivers import _starts
from ..core.laplace import GlmmModel
from ..core.linalg import dense_solve      # unbatched LAPACK under vmap (issue 22)
from ..core.lmm import lmm_data, profiled_parts
from ..core.predictor import joint_log_density
from ..fit import cache
from ..fit.likelihood import fit_glmm, fixef_vcov
from ..fit.optimize import minimize
from ..methods import METHODS, get_method

# the methods fit_fn differentiates (by their records' ``implicit``)
FIT_FN_METHODS = tuple(m.name for m in METHODS if m.implicit)
NEWTON_POLISH = 1
# derivatives of the conditional mode that are exact: the Hessian's third derivatives
# (gradients of standard errors) need three
MODE_ORDER = 3


class FitArrays(NamedTuple):
    """A fit's estimates as arrays (pure JAX outputs of :func:`fit_fn`'s function).

    ``beta`` (p,) fixed effects; ``theta`` covariance parameters on lme4's scale (relative to
    sigma for a gaussian model with the identity link, absolute otherwise; for MAP the same
    convention); ``sigma`` the residual SD (NaN where the family has none); ``family_params``
    the family's natural parameters, flattened in ``family.natural_params`` order (empty for
    gaussian REML/ML, whose sigma is its own field); ``loglik`` the maximised log-likelihood
    on R's basis (REML: -REMLcrit/2; MAP: the log posterior density at the mode, up to the
    priors' normalising constants); ``se`` the fixed effects' standard errors (lme4's vcov;
    MAP: the normal approximation at the mode, by the delta method)."""

    beta: jnp.ndarray
    theta: jnp.ndarray
    sigma: jnp.ndarray
    family_params: jnp.ndarray
    loglik: jnp.ndarray
    se: jnp.ndarray


# ----------------------------------------------------------------------------- the IFT
def _dense_solve(objective):
    def solve(x, p, rhs):
        return dense_solve(jax.hessian(objective)(x, p), rhs)
    return solve


def implicit_argmin(objective: Callable, solve: Callable, linear_solve: Callable | None = None):
    """``p -> x*(p) = argmin_x objective(x, p)`` with derivatives by the implicit function
    theorem.

    ``solve(p)`` finds the minimum (any jittable optimizer; it is never differentiated);
    ``linear_solve(x, p, rhs)`` solves ``objective``'s Hessian in ``x`` at ``(x, p)`` against
    ``rhs`` (default: the dense autodiff Hessian).  The JVP rule evaluates ``x*`` through
    this same function, so its own derivatives are again implicit ones (exact higher
    orders)."""
    linear_solve = linear_solve or _dense_solve(objective)
    grad_x = jax.grad(objective)

    @jax.custom_jvp
    def argmin(p):
        return jax.lax.stop_gradient(solve(p))

    @argmin.defjvp
    def argmin_jvp(primals, tangents):
        (p,), (dp,) = primals, tangents
        x = argmin(p)
        _, cross = jax.jvp(lambda q: grad_x(x, q), (p,), (dp,))
        return x, -linear_solve(x, p, cross)

    return argmin


def newton_polish(objective: Callable, x, value, hessian, steps: int = NEWTON_POLISH):
    """Newton steps on ``objective`` (``x -> value``) from the optimizer's ``x`` (where it is
    ``value``), with its finite-difference ``hessian``, each taken only where it does not
    raise the objective: the optimizer stops at a gradient tolerance, and the IFT and
    finite differences of refits want the stationary point to rounding (one step from
    BFGS's stop, with a Hessian good to ~1e-8, lands there)."""
    for _ in range(steps):
        xn = x - dense_solve(hessian, jax.grad(objective)(x))
        fn = objective(xn)
        ok = jnp.all(jnp.isfinite(xn)) & (fn <= value + 1e-12 * (1.0 + jnp.abs(value)))
        x, value = jnp.where(ok, xn, x), jnp.where(ok, fn, value)
    return x


# ----------------------------------------------------------------------------- the data
def _inputs(problem, y, weights, offset):
    a = problem.arrays
    n = a.y.shape[0]

    def take(v, default, name):
        if v is None:
            return default
        v = jnp.asarray(v, jnp.float64)
        if v.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) (one value per row the model "
                             f"uses), got {v.shape}")
        return v
    return {"y": take(y, a.y, "y"), "weights": take(weights, a.weights, "weights"),
            "offset": take(offset, a.offset, "offset")}


def _arrays(problem, p):
    """The problem's arrays with the inputs ``p``; with case weights (a ``w0`` entry: the
    model's own weights) the prior weights are ``weights * w0``."""
    w = p["weights"] * p["w0"] if "w0" in p else p["weights"]
    return problem.arrays._replace(y=p["y"], weights=w, offset=p["offset"])


def _lmm_data(problem, p):
    """:func:`lmm_data` of the inputs.  With case weights ``c`` (see :func:`_arrays`) each
    row's whole log-likelihood is multiplied by ``c``: ``n = sum c`` and the log-weight
    term ``sum c log w0``, so ``c = 0`` deletes a row exactly and ``c`` is smooth in
    between (lme4's precision weights count a row in n whatever its weight)."""
    d = lmm_data(problem.structure, _arrays(problem, p))
    if "w0" not in p:
        return d
    c, w0 = p["weights"], p["w0"]
    pos = w0 > 0
    return d._replace(n=jnp.sum(jnp.where(pos, c, 0.0)),
                      sum_log_w=jnp.sum(jnp.where(pos, c * jnp.log(jnp.where(pos, w0, 1.0)),
                                                  0.0)))


def _natural_flat(family, phi):
    if not phi.shape[0]:
        return jnp.zeros(0)
    return jnp.concatenate([jnp.ravel(v) for v in family.natural_params(phi).values()])


def _sigma(family, phi):
    if family.residual is None or not phi.shape[0]:
        return jnp.asarray(jnp.nan)
    return jnp.asarray(family.natural_params(phi)[family.residual], jnp.float64).reshape(())


def canonical_theta(structure, theta):
    """theta with each term's Cholesky factor's columns signed so its diagonal is >= 0
    (lme4's convention; the deviance is even in each column's sign, and the optimizer may
    end on either side)."""
    parts = []
    for t in structure.terms:
        th = theta[t.theta_start:t.theta_start + t.n_theta]
        rows, cols = np.array(t.theta_rows) - t.col0, np.array(t.theta_cols) - t.col0
        diag = jnp.zeros(t.q).at[rows[rows == cols]].set(th[rows == cols])
        parts.append(th * jnp.where(diag < 0, -1.0, 1.0)[cols])
    return jnp.concatenate(parts) if parts else theta


# ----------------------------------------------------------------------------- LMM
def _lmm(problem, reml: bool):
    s, P = problem.structure, problem.design.n_fixef
    theta0 = jnp.asarray(s.theta_init(), jnp.float64)

    def parts(theta, p, full):
        d = _lmm_data(problem, p)
        return profiled_parts(s, d.cp, theta, d.n, P, reml, d.sum_log_w, full=full)

    objective = lambda theta, p: parts(theta, p, False)        # noqa: E731

    def solve(p):
        fun = lambda t: objective(t, p)        # noqa: E731
        opt = minimize(fun, theta0)             # as fit_lmm, on this objective
        return newton_polish(fun, opt.x, opt.value, opt.hessian)

    def report(theta, p):
        r = parts(theta, p, True)
        return FitArrays(r.beta, canonical_theta(s, theta), r.sigma, jnp.zeros(0),
                         -0.5 * r.deviance, jnp.sqrt(jnp.diagonal(r.vcov)))

    return objective, solve, None, report


# ----------------------------------------------------------------------------- Laplace
class _ExactLaplace(GlmmModel):
    """:class:`GlmmModel` whose conditional mode has exact derivatives up to order
    ``MODE_ORDER`` in (theta, beta, phi) and the data, so the Hessian of the Laplace
    deviance (the IFT's) and its derivatives (the SEs') are exact.

    The mode ``u*`` is found by the library's Newton search and stopped; then ``k`` Newton
    steps ``N(u) = u + A(u)^-1 grad h(u)`` (``A = -d^2 h / du du'``, not stopped) are taken
    from it.  Their value is ``u*``; since ``dN/du = 0`` along the solution (Newton's
    quadratic convergence), the k-th step has the implicit function's derivatives to order
    k (the library's one stopped step, :meth:`GlmmModel.implicit_mode`, is exact to first
    order).  No loop is differentiated."""

    def implicit_mode(self, theta, beta, phi, u0=None):
        sg = jax.lax.stop_gradient
        u = sg(self.mode(sg(theta), sg(beta), sg(phi)))
        grad = jax.grad(self.h_kernel)
        for _ in range(MODE_ORDER):
            u = u + self.solve(self.system(u, theta, beta, phi, fisher=False),
                               grad(u, theta, beta, phi))
        return u


def exact_laplace(problem) -> Callable:
    """``p -> model``: the problem's :class:`GlmmModel` on the data ``p`` (y, weights,
    offset), its conditional mode differentiable to order ``MODE_ORDER``."""
    return lambda p: _ExactLaplace(problem.structure, problem.family, _arrays(problem, p),
                                   problem.n_phi)


def _laplace(problem):
    s, fam = problem.structure, problem.family
    phi0 = jnp.asarray(problem.phi0, jnp.float64)
    model = exact_laplace(problem)

    def objective(x, p):
        return model(p).laplace_deviance(x)[0]

    def solve(p):
        a = _arrays(problem, p)
        raw = fit_glmm(s, fam, a, phi0)
        lib = GlmmModel(s, fam, a, problem.n_phi)      # exact first derivatives: enough here
        return newton_polish(lambda x: lib.laplace_deviance(x, raw.u)[0], raw.x, raw.deviance,
                             raw.hessian)

    def report(x, p):
        m = model(p)
        theta, beta, phi = m.layout.unpack(x)
        H = jax.hessian(objective)(x, p)
        vcov = fixef_vcov(H, m.layout)
        return FitArrays(beta, canonical_theta(s, theta), _sigma(fam, phi),
                         _natural_flat(fam, phi), -0.5 * objective(x, p),
                         jnp.sqrt(jnp.diagonal(vcov)))

    return objective, solve, None, report


# ----------------------------------------------------------------------------- MAP
def map_host(problem, options: dict) -> dict:
    """A MAP fit's host-side pieces, made from the problem's data before tracing: ``bm``
    (the :class:`~jaxglmm.bayes.density.BayesModel`, whose spec is static), ``data`` (its
    data other than the arrays: column means, prior arguments and constants) and ``z0``
    (the optimizer's start)."""
    bm = dn.BayesModel(problem, options["priors"])
    z0 = _starts(bm, options["init"], 1, 0, jitter=False, marginal=True)[0]
    data = {k: v for k, v in bm.data.items() if k not in ("arrays", "lmm")}
    return {"bm": bm, "data": data, "z0": np.asarray(z0, np.float64)}


def _map(problem, options: dict, host: dict | None = None):
    host = host or map_host(problem, options)
    bm, base = host["bm"], host["data"]
    spec, s, fam = bm.spec, problem.structure, problem.family
    blocks = bm.blocks(marginal=True)
    full = bm.blocks(marginal=False)
    u_block = next(b for b in full if b.site == "u")
    laplace = None if spec.exact_marginal else exact_laplace(problem)
    z0 = jnp.asarray(host["z0"])

    def data(p):
        arrays = _arrays(problem, p)
        out = dict(base, arrays=arrays, priors=p["priors"])
        if spec.exact_marginal:
            out["lmm"] = _lmm_data(problem, p)
        return out

    def report_sites(z):
        sites = dn.constrain(blocks, z)[0]
        beta, theta = dn._beta_theta(spec.layout, sites, base["x_means"])
        phi = sites.get("phi", jnp.zeros(0))
        return beta, theta, phi

    def objective(z, p):
        d = data(p)
        if laplace is None:
            return -dn.log_posterior(spec, z, d, marginal=True)
        # the priors (and Jacobians) alone: the joint posterior at u = 0 less the joint
        # density there; then the exact Laplace approximation of the likelihood
        zu = jnp.concatenate([z[:u_block.start], jnp.zeros(u_block.size), z[u_block.start:]])
        beta, theta, phi = report_sites(z)
        params = {"beta": beta, "theta": theta, "phi": phi, "u": jnp.zeros(u_block.size)}
        prior = dn.log_posterior(spec, zu, d, marginal=False) - \
            joint_log_density(s, fam, d["arrays"], params)
        x = jnp.concatenate([theta, beta, phi])
        return -prior + 0.5 * laplace(p).laplace_deviance(x)[0]

    def solve(p):
        fun = lambda v: objective(v, p)        # noqa: E731
        opt = minimize(fun, z0, maxiter=int(options["maxiter"]))
        return newton_polish(fun, opt.x, opt.value, opt.hessian)

    def report(z, p):
        beta, theta, phi = report_sites(z)
        H = jax.hessian(objective)(z, p)
        J = jax.jacfwd(lambda v: report_sites(v)[0])(z)
        cov = J @ dense_solve(H, J.T)
        sigma = _sigma(fam, phi)
        if spec.exact_marginal:       # lme4's scale: relative to sigma
            theta = theta / sigma
        return FitArrays(beta, canonical_theta(s, theta), sigma, _natural_flat(fam, phi),
                         -objective(z, p),
                         jnp.sqrt(jnp.diagonal(cov)))

    defaults = {k: jnp.asarray(v, jnp.float64) for k, v in base["priors"].items()}
    return objective, solve, None, report, defaults, bm


# ----------------------------------------------------------------------------- fit_fn
def fit_fn(model, method: str | None = None, **options) -> Callable:
    """A pure JAX function of the data: ``f(y=None, weights=None, offset=None,
    priors=None) -> FitArrays`` (see :class:`FitArrays`).

    ``method``: ``"ml"``, ``"reml"`` (gaussian, identity link), ``"laplace"`` or ``"map"``
    (``options``: ``priors`` as :meth:`Model.fit` takes them, ``init``, ``maxiter``).
    Arguments left None take the model's own values (one per row the model uses);
    ``priors`` (MAP only) maps a prior's class or name (as ``fit.priors`` names them:
    ``"Intercept"``, ``"sd"``, ``"b_Days"``...) to its arguments in brms's order
    (``student_t``: df, location, scale).  ``f`` can be jitted, vmapped and differentiated
    (``jax.grad``, ``jax.jacobian``, ``jax.jvp``); derivatives come from the implicit
    function theorem at the optimum (an interior, non-degenerate optimum: a variance at
    zero has none).

    ``case_weights=True``: ``weights`` are case weights ``c`` (default 1) multiplying each
    row's whole log-likelihood, on top of the model's own weights: ``c = 0`` deletes a row
    exactly, so derivatives in ``c`` are influence functions (for gaussian models lme4's
    precision weights do not delete a row at 0: n still counts it).

    Examples
    --------
    >>> f = model.fit_fn("ml")
    >>> jax.grad(lambda y: f(y=y).beta[1])(model.arrays.y)   # d slope / d y_i
    """
    method = (method or model.default_method()).lower()
    if model.dpars:
        raise ValueError("fit_fn handles models with one linear predictor (no categorical "
                         "response, no distributional-parameter formula) for now")
    case = bool(options.pop("case_weights", False))
    f = problem_fn(model.problem, method, case, options)
    # jitted (compiled once per input shapes, while f lives): called eagerly, f and
    # jax.grad(f) run a few programs instead of dispatching the IFT's ops one at a time
    # (README's eager jax.grad of a sleepstudy fit_fn: 8 compiles and 6 s, against 777
    # and 33 s); inside a user's jit, grad or vmap it is traced inline.  (problem_fn's
    # own function is not: the library's programs trace it over their traced arrays.)
    jitted = cache.jit(f, nested=True)

    def fitted(y=None, weights=None, offset=None, priors=None) -> FitArrays:
        return jitted(y=y, weights=weights, offset=offset, priors=priors)

    fitted.__doc__ = f.__doc__
    fitted.__dict__.update(f.__dict__)
    return fitted


def problem_fn(problem, method: str, case_weights: bool = False, options: dict | None = None,
               host: dict | None = None) -> Callable:
    """:func:`fit_fn`'s function for a :class:`~jaxglmm.core.problem.Problem` and a method
    named in full.  Only the problem's arrays and ``phi0`` are read inside the function, so
    a problem whose arrays are traced (an argument of a compiled program) gives a program
    that same-shape data reuse; a MAP fit's host-side pieces are ``host``
    (:func:`map_host`, made from the problem when None)."""
    options = dict(options or {})
    case = bool(case_weights)
    try:
        spec = get_method(method)
    except ValueError:
        spec = None
    if spec is None or not spec.implicit:
        raise ValueError(f"fit_fn takes method one of {list(FIT_FN_METHODS)}, got {method!r} "
                         "(nuts and vi are not optimisers; agq is not differentiable here)")
    allowed = {"priors", "init", "maxiter"} if spec.bayesian else set()
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"unknown option(s) for fit_fn(method={method!r}): {sorted(unknown)}"
                         + (f"; it takes {sorted(allowed)}" if allowed else ""))
    # the MAP record's defaults for the options fit_fn takes (init, maxiter; priors None)
    options = {k: v for k, v in spec.settings(options).items() if k in allowed}
    if spec.exact_lmm_only and not problem.exact_lmm:
        raise ValueError(f"method {method!r} is for gaussian models with the identity link; "
                         f"use 'laplace' or 'map' for family {problem.family.name!r}")
    if problem.structure.n_channels > 1:
        raise ValueError("fit_fn handles models with one linear predictor (no categorical "
                         "response, no distributional-parameter formula) for now")
    defaults = None
    if spec.bayesian:           # MAP: the posterior mode
        objective, solve, lsolve, report, defaults, bm = _map(problem, options, host)
    elif problem.exact_lmm:
        objective, solve, lsolve, report = _lmm(problem, spec.reml)
    else:
        objective, solve, lsolve, report = _laplace(problem)
    argmin = implicit_argmin(objective, solve, lsolve)

    def f(y=None, weights=None, offset=None, priors=None) -> FitArrays:
        p = _inputs(problem, y, weights, offset)
        if case:
            p["w0"] = problem.arrays.weights
            p["weights"] = jnp.ones_like(p["y"]) if weights is None else p["weights"]
        if defaults is not None:
            p["priors"] = _priors(defaults, priors)
        elif priors is not None:
            raise ValueError(f"priors= is for method='map'; this is a {method!r} fit_fn")
        return report(argmin(p), p)

    f.method = method
    if defaults is not None:
        f.prior_defaults, f.prior_dists = defaults, dict(bm.spec.prior_dists)
    return f


def _priors(defaults: dict, given) -> dict:
    out = dict(defaults)
    for k, v in (given or {}).items():
        if k not in defaults:
            raise ValueError(f"no prior {k!r} in this model; its priors are {sorted(defaults)}")
        v = jnp.asarray(v, jnp.float64)
        if v.shape != defaults[k].shape:
            raise ValueError(f"prior {k!r} takes {defaults[k].shape[0]} arguments, got shape "
                             f"{v.shape}")
        out[k] = v
    return out


__all__ = ["FitArrays", "fit_fn", "problem_fn", "map_host", "implicit_argmin", "newton_polish", "exact_laplace"]
