"""The Laplace fit for many rows: few passes over the data per outer step.

The same approximation as :class:`jaxglmm.core.laplace.GlmmModel` (spherical random effects
``u``, conditional mode by Newton/PIRLS, blocked Cholesky of ``Lambda'Z'WZ Lambda + I`` from
:mod:`jaxglmm.core.blocked`), organised around the cost that dominates at 1e6 rows: a
*pass* over the rows (gather the levels' effects, evaluate the family's log-likelihood and its
derivatives, segment-sum them back to the levels).  Everything else works on per-level
arrays (levels x q) and the small dense trailing block of a crossed design.

- **One pass per Newton step.**  A pass at ``u`` gives ``h(u)``, ``grad h`` and the
  cross-products of the PIRLS weights together; the step is accepted when ``h`` does not
  fall (else halved), and the accepted point's pass already holds the next step's system.
  The search stops when the next Newton step is below ``MODE_TOL`` and returns the point
  *after* that step unevaluated (Newton's error is quadratic: about ``MODE_TOL**2``).  From
  the previous outer point's mode that is two passes.
- **Two passes for the exact gradient.**  With ``F(x, u) = h(u; x) - log|H(u; x)| / 2`` and
  the mode's condition ``g(u*; x) = grad_u h = 0``, the implicit-function theorem gives
  ``dF/dx = d/dx [F(x, u) + s'g(x, u)]`` at ``u = u*`` with ``s = H_obs^{-1} dF/du`` (the
  adjoint of the mode; ``H_obs`` the observed information, as ``du*/dx = H_obs^{-1} dg/dx``).
  One forward pass (kept by ``jax.vjp``) serves both pullbacks: one for ``dF/du``, then one
  for the Lagrangian's gradient in ``x``.  No pass differentiates the Newton iteration.
- **One call site per pass kind.**  The outer BFGS is :func:`jaxglmm.fit.optimize.run_then_hessian`
  (one objective evaluation per loop iteration, the finite-difference Hessian from the same
  loop), the mode search evaluates its trial point at one place, and the GLM start is a
  Newton loop of the same shape: the compiled program holds each graph once.

Nothing here forms a dense ``n x q`` matrix or copies the data per evaluation; the only
per-row arrays are the pass's own temporaries (a few ``(n,)`` float64 vectors, which the
gradient's forward pass keeps for its two pullbacks).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from . import blocked, linalg, nested, sparse as sps
from . import restructure as rs
from .nested import NestedPattern
from .ops import segment_sum, take_levels
from .problem import ProblemArrays

MODE_TOL = 1e-6          # Newton step (relative to 1 + max|u|) below which the mode is taken
MODE_MAXITER = 100
START_MAXITER = 50
ROUNDING = 1e-13


def uses_sparse_blocks(structure: rs.ReStructure) -> bool:
    """Whether the Laplace Hessian keeps L21 sparse (a crossed or nested design whose dense
    Schur update, G1 * q1 * m^2 flops a Newton step, passes
    :data:`jaxglmm.core.sparse.SPARSE_MIN_WORK`)."""
    return structure.n_channels == 1 and sps.sparse_schur_pays(structure, 0)


# ----------------------------------------------------------------------------- the model
class SparseLaplace:
    """Closures over one problem's arrays for a single-predictor GLMM (``n_channels == 1``).

    ``x = (theta, beta, phi)`` as :class:`jaxglmm.core.laplace.Layout`; :meth:`value_and_grad`
    is the deviance (-2 log-likelihood, Laplace) and its exact gradient, in the form
    :func:`jaxglmm.fit.optimize.run_then_hessian` takes: ``(x, u0) -> ((deviance, u*), gradient)``.
    """

    def __init__(self, structure: rs.ReStructure, family, a: ProblemArrays, n_phi: int,
                 verbose: bool = False, pattern=None):
        if structure.n_channels != 1:
            raise ValueError("SparseLaplace is for models with one linear predictor")
        self.s = structure
        self.family = family
        self.a = a
        self.n_theta = structure.n_theta
        self.p = a.X.shape[1]
        self.n_phi = n_phi
        self.verbose = verbose
        # a canonical link's closed-form kernel where the family declares one
        # (Family.canonical_kernel): cheap derivatives, expected = observed information
        fast = family.canonical_parts()
        self.canonical = fast is not None
        self.kernel, self.constant = fast if fast is not None else family.loglik_parts()
        # crossed designs whose dense Schur update is large: L21 kept sparse, on the pattern
        # of jaxglmm.design.sparse.sparse_pattern (built on the host), its values at each
        # step; nested ones (a core.nested.NestedPattern): the nested factor
        self.pattern = pattern

    def unpack(self, x):
        t, p = self.n_theta, self.p
        return x[:t], x[t:t + p], x[t + p:]

    # -- one pass over the rows -------------------------------------------------------
    def eta(self, beta, b):
        a = self.a
        e = a.offset + a.X @ beta
        for bf, idx, z in zip(b, a.index, a.Z):
            e = e + jnp.sum(z * take_levels(bf, idx), axis=-1)
        return e

    def row_terms(self, eta, phi, weights: str):
        """Per row: weighted log-likelihood kernel, its first derivative in eta and the
        weights ``weights`` ("fisher": PIRLS; "both": (the determinant's, observed))."""
        a, fam = self.a, self.family
        fp = fam.natural_params(phi)
        kernel = self.kernel
        k = lambda e: a.weights * kernel(a.y, e, a.trials, fp)                # noqa: E731
        d1f = jax.grad(lambda e: jnp.sum(k(e)))
        ll, (d1, d2) = k(eta), jax.jvp(d1f, (eta,), (jnp.ones_like(eta),))
        if self.canonical:          # a canonical link: expected = observed information
            return (ll, d1, -d2) if weights == "fisher" else (ll, d1, (-d2, -d2))
        expected = fam.fisher_weight is not None
        fisher = (a.weights * fam.fisher_weight(eta, a.trials, fp) if expected
                  else jnp.maximum(-d2, 0.0))
        if weights == "fisher":
            return ll, d1, fisher
        lap = fisher if fam.laplace_information == "expected" and expected else -d2
        return ll, d1, (lap, -d2)

    def level_grad(self, lams, d1, u):
        """``grad_u h = Lambda' Z' d1 - u`` (per factor, flattened as u)."""
        parts = []
        for lam, idx, z, f in zip(lams, self.a.index, self.a.Z, self.s.factors):
            zd = segment_sum(z * d1[:, None], idx, f.n_levels)           # (levels, q)
            parts.append((zd @ lam).reshape(-1))
        return jnp.concatenate(parts) - u

    def system(self, lams, w):
        if isinstance(self.pattern, NestedPattern):
            return nested.nested_factor(self.s, lams, nested.nested_system(
                self.s, self.pattern.parent, self.a.index, self.a.Z, w))
        if self.pattern is not None:
            sp, row_pair = self.pattern
            return sps.sparse_factor(self.s, lams, sps.sparse_values(
                self.s, sp, row_pair, self.a.index, self.a.Z, w))
        return blocked.factor(*blocked.scaled_system(self.s, lams, blocked.cross_products(
            self.s, self.a.index, self.a.Z, w)))

    def logdet(self, ch):
        """log|Lambda'Z'WZ Lambda + I| from :meth:`system`'s factor."""
        if isinstance(self.pattern, NestedPattern):
            return nested.logdet_z(ch)
        return blocked.logdet_z(ch, self.s.p2)

    def conditional_cov(self, x, u):
        """Per-level conditional covariances of b at the mode ``u`` (lme4's condVar, as
        :meth:`jaxglmm.core.laplace.GlmmModel.conditional_cov`), through this model's factor:
        no dense Schur update of a large trailing block."""
        theta, beta, phi = self.unpack(x)
        lams = rs.lambdas(self.s, theta)
        _, _, w = self.row_terms(self.eta(beta, rs.random_effects(self.s, lams, u)), phi,
                                 "fisher")
        ch = self.system(lams, w)
        if isinstance(self.pattern, NestedPattern):
            ucov = nested.conditional_covariances(ch, self.pattern.parent)
        elif self.pattern is not None:
            ucov = sps.sparse_conditional_covariances(ch, self.pattern[0], self.s, lams)
        else:
            ucov = blocked.conditional_covariances(ch, self.s)
        return [jnp.einsum("qr,grs,ts->gqt", lam, v, lam) for lam, v in zip(lams, ucov)]

    def solve(self, ch, g):
        f0 = self.s.factors[0]
        n1 = f0.n_levels * f0.q
        r1 = g[:n1].reshape(f0.n_levels, f0.q)
        if isinstance(self.pattern, NestedPattern):
            x1, x2 = nested.solve(ch, self.pattern.parent, r1, g[n1:])
        elif self.pattern is not None:
            x1, x2 = sps.sparse_solve(ch, self.pattern[0], r1, g[n1:])
        else:
            x1, x2 = blocked.solve(ch, r1, g[n1:])
        return jnp.concatenate([x1.reshape(-1), x2])

    def newton_pass(self, theta, beta, phi, u):
        """h (kernel part), the Newton step and its predicted gain at ``u``: one pass."""
        lams = rs.lambdas(self.s, theta)
        ll, d1, w = self.row_terms(self.eta(beta, rs.random_effects(self.s, lams, u)), phi,
                                   "fisher")
        g = self.level_grad(lams, d1, u)
        d = self.solve(self.system(lams, w), g)
        return jnp.sum(ll) - 0.5 * jnp.dot(u, u), d, jnp.dot(g, d)

    # -- conditional mode ---------------------------------------------------------------
    def mode(self, theta, beta, phi, u0):
        """Newton with step halving, one pass per trial point; returns (mode, passes)."""
        def cond(c):
            return c[-1] < 0

        def body(c):
            u, f, d, gd, t, it, _ = c
            ut = u + t * d
            ft, dt, gdt = self.newton_pass(theta, beta, phi, ut)
            dt = jnp.where(jnp.all(jnp.isfinite(dt)), dt, 0.0)
            # the predicted gain below the rounding of h: at the mode (see GlmmModel.mode)
            tiny = 0.5 * jnp.abs(gd) <= ROUNDING * (1.0 + jnp.abs(f))
            ok = jnp.isfinite(ft) & ((ft >= f) | tiny)
            small = jnp.max(jnp.abs(dt)) <= MODE_TOL * (1.0 + jnp.max(jnp.abs(ut)))
            done = jnp.where(ok, small | (it + 1 >= MODE_MAXITER),
                             (t < 1e-8) | (it + 1 >= MODE_MAXITER))
            return (jnp.where(ok, ut, u), jnp.where(ok, ft, f), jnp.where(ok, dt, d),
                    jnp.where(ok, gdt, gd), jnp.where(ok, 1.0, 0.5 * t), it + 1,
                    jnp.where(done, jnp.where(ok & small, 1, 0), -1))

        zero = jnp.zeros((), u0.dtype)
        # the first trial is u0 itself (t = 0, f = -inf): one call site for the pass
        c = (u0, jnp.asarray(-jnp.inf, u0.dtype), jnp.zeros_like(u0), zero, zero,
             jnp.asarray(0), jnp.asarray(-1))
        u, _, d, _, _, it, conv = jax.lax.while_loop(cond, body, c)
        return jnp.where(conv == 1, u + d, u), it

    # -- the objective ------------------------------------------------------------------
    def laplace_parts(self, x, u):
        """``(F, g)`` at ``u``: the Laplace log-likelihood with u held there, and grad_u h;
        aux: the observed-information factorization (for the mode's adjoint)."""
        theta, beta, phi = self.unpack(x)
        lams = rs.lambdas(self.s, theta)
        ll, d1, (w_lap, w_obs) = self.row_terms(
            self.eta(beta, rs.random_effects(self.s, lams, u)), phi, "both")
        ch = self.system(lams, w_lap)
        F = jnp.sum(ll) - 0.5 * jnp.dot(u, u) - 0.5 * self.logdet(ch)
        sg = jax.lax.stop_gradient
        ch_obs = (jax.tree.map(sg, ch) if self.canonical      # the same matrix
                  else self.system(sg(lams), sg(w_obs)))
        return (F, self.level_grad(lams, d1, u)), ch_obs

    def value_and_grad(self, x, u0):
        theta, beta, phi = self.unpack(x)
        u, passes = self.mode(theta, beta, phi, jax.lax.stop_gradient(u0))
        u = jax.lax.stop_gradient(u)
        (F, g), pull, ch_obs = jax.vjp(self.laplace_parts, x, u, has_aux=True)
        _, F_u = pull((jnp.ones_like(F), jnp.zeros_like(g)))
        s = self.solve(ch_obs, F_u)
        F_x, _ = pull((jnp.ones_like(F), s))
        dev, grad = -2.0 * (F + self.data_constant()), -2.0 * F_x
        if self.verbose:
            jax.debug.print("laplace: deviance {d:.10g}  max|grad| {g:.3g}  (mode: {m} passes)",
                            d=dev, g=jnp.max(jnp.abs(grad)), m=passes, ordered=True)
        return (dev, u), grad

    def data_constant(self):
        if self.constant is None:
            return 0.0
        return jnp.sum(self.a.weights * self.constant(self.a.y, self.a.trials))

    # -- GLM start ----------------------------------------------------------------------
    def glm_start(self, phi0):
        """The GLM's fixed effects without random effects, by damped Newton from beta = 0
        (or from the family's ``mustart``, as :func:`jaxglmm.core.laplace.glm_start`),
        stopped at convergence: one pass per trial point."""
        a, fam, p = self.a, self.family, self.p
        fp = fam.natural_params(phi0)

        def trial(beta):
            eta = a.offset + a.X @ beta
            k = lambda e: a.weights * self.kernel(a.y, e, a.trials, fp)      # noqa: E731
            d1f = jax.grad(lambda e: jnp.sum(k(e)))
            d1, d2 = jax.jvp(d1f, (eta,), (jnp.ones_like(eta),))
            H = a.X.T @ (jnp.maximum(-d2, 1e-10)[:, None] * a.X) + 1e-8 * jnp.eye(p)
            g = a.X.T @ d1
            L = linalg.dense_chol(H)
            d = linalg.dense_solve_upper_t(L, linalg.dense_solve_lower(L, g[:, None]))[:, 0]
            return jnp.sum(k(eta)), d, jnp.dot(g, d)

        def cond(c):
            return c[-1] < 0

        def body(c):
            beta, f, d, gd, t, it, _ = c
            bt = beta + t * d
            ft, dt, gdt = trial(bt)
            tiny = 0.5 * jnp.abs(gd) <= ROUNDING * (1.0 + jnp.abs(f))
            ok = jnp.isfinite(ft) & ((ft >= f) | tiny)
            conv = 0.5 * jnp.abs(gdt) <= ROUNDING * (1.0 + jnp.abs(ft))
            done = jnp.where(ok, conv, t < 1e-6) | (it + 1 >= START_MAXITER)
            return (jnp.where(ok, bt, beta), jnp.where(ok, ft, f), jnp.where(ok, dt, d),
                    jnp.where(ok, gdt, gd), jnp.where(ok, 1.0, 0.5 * t), it + 1,
                    jnp.where(done, 0, -1))

        beta0 = jnp.zeros(p)
        # the canonical links' log-likelihoods are finite at beta = 0
        if fam.mustart is not None and not self.canonical:
            target = fam.link.linkfun(fam.mustart(a.y, a.trials)) - a.offset
            wx = a.X * a.weights[:, None]
            fitted = linalg.dense_solve(wx.T @ a.X + 1e-8 * jnp.eye(p), wx.T @ target)
            at0 = jnp.sum(a.weights * self.kernel(a.y, a.offset, a.trials, fp))
            beta0 = jnp.where(jnp.isfinite(at0), beta0, fitted)
        zero = jnp.zeros(())
        c = (beta0, jnp.asarray(-jnp.inf), jnp.zeros(p), zero, zero, jnp.asarray(0),
             jnp.asarray(-1))
        return jax.lax.while_loop(cond, body, c)[0]
