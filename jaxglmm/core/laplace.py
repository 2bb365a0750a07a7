"""GLMMs by maximum likelihood: the Laplace approximation and adaptive Gauss-Hermite quadrature.

In spherical random effects ``u ~ N(0, I)``, ``b = Lambda u``, the joint log-density is::

    h(u; x) = sum_i w_i log p(y_i | eta_i) - |u|^2 / 2,   eta = offset + X beta + Z Lambda u

with outer parameters ``x = (theta, beta, phi)``.  The conditional mode ``u*`` is found by a
Newton/PIRLS iteration whose linear systems ``(Lambda'Z'WZ Lambda + I) d = grad h`` use the
blocked Cholesky of :mod:`jaxglmm.core.blocked` (per-group blocks, vectorized over groups).  The
Laplace approximation to the marginal log-likelihood is::

    l(x) ~= h(u*; x) - log|Lambda'Z'W*Z Lambda + I| / 2,   W* = -d^2 log p / d eta^2 at u*

Its gradient is exact: ``u*`` enters through one Newton step from the stopped mode with the
stopped Hessian, ``u1 = u* + H^{-1} grad h(u*; x)``, whose derivative is the implicit-function
derivative ``du*/dx = H^{-1} d(grad h)/dx`` (as TMB does), while its value is ``u*``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import blocked, linalg
from . import restructure as rs
from .ops import gather_levels, segment_sum
from .predictor import fixed_predictor, spherical_predictor
from .problem import ProblemArrays

PIRLS_MAXITER = 100
PIRLS_TOL = 1e-10
PIRLS_ROUNDING = 1e-13


class Layout(NamedTuple):
    """Positions of theta, beta and family parameters in the outer vector."""

    n_theta: int
    p: int
    n_phi: int

    def unpack(self, x):
        t, p = self.n_theta, self.p
        return x[:t], x[t:t + p], x[t + p:]


def _obs_derivs(family, a: ProblemArrays, eta, fp):
    """First and second derivatives of the weighted log-likelihood in eta, per observation."""
    kernel = family.loglik_parts()[0]

    def total(e):
        return jnp.sum(a.weights * kernel(a.y, e, a.trials, fp))
    d1_fn = jax.grad(total)
    d1, d2 = jax.jvp(d1_fn, (eta,), (jnp.ones_like(eta),))
    return d1, d2


class GlmmModel:
    """Closures over one problem's arrays: the joint density, the mode and the approximations."""

    def __init__(self, structure: rs.ReStructure, family, a: ProblemArrays, n_phi: int):
        self.s = structure
        self.family = family
        self.a = a
        self.layout = Layout(structure.n_theta, a.X.shape[1], n_phi)

    # -- pieces ---------------------------------------------------------------------------
    def eta(self, u, theta, beta):
        """Linear predictor: (n,), or (n, C) for a model with C linear predictors."""
        return spherical_predictor(self.s, self.a, beta, theta, u)

    def h(self, u, theta, beta, phi):
        """The joint log-density: the log-likelihood and the random effects' prior."""
        _, constant = self.family.loglik_parts()
        out = self.h_kernel(u, theta, beta, phi)
        if constant is not None:
            out = out + jnp.sum(self.a.weights * constant(self.a.y, self.a.trials))
        return out

    def h_kernel(self, u, theta, beta, phi):
        """:meth:`h` less the log-likelihood's data-only part (the mode search's objective:
        it compares and differentiates, so the log-gamma constants are left out)."""
        kernel, _ = self.family.loglik_parts()
        fp = self.family.natural_params(phi)
        e = self.eta(u, theta, beta)
        return jnp.sum(self.a.weights * kernel(self.a.y, e, self.a.trials, fp)) - 0.5 * jnp.dot(u, u)

    def weights(self, u, theta, beta, phi, fisher: bool):
        fp = self.family.natural_params(phi)
        e = self.eta(u, theta, beta)
        if fisher and self.family.fisher_weight is not None:
            return self.a.weights * self.family.fisher_weight(e, self.a.trials, fp)
        _, d2 = _obs_derivs(self.family, self.a, e, fp)
        w = -d2
        return jnp.maximum(w, 0.0) if fisher else w

    def system(self, u, theta, beta, phi, fisher: bool) -> blocked.BlockedCholesky:
        """Blocked Cholesky of ``-d^2 h / du du' = Lambda'Z'WZ Lambda + I`` at ``u``."""
        if self.s.n_channels > 1:
            return self._system_hvp(u, theta, beta, phi, damp=fisher)
        W = self.weights(u, theta, beta, phi, fisher)
        lams = rs.lambdas(self.s, theta)
        cp = blocked.cross_products(self.s, self.a.index, self.a.Z, W)
        return blocked.factor(*blocked.scaled_system(self.s, lams, cp))

    def _system_hvp(self, u, theta, beta, phi, damp: bool = False) -> blocked.BlockedCholesky:
        """The same blocks from Hessian-vector products, for likelihoods whose Hessian in the
        linear predictors is not diagonal (several linear predictors per observation).

        Levels of the first factor never share an observation, so one product with a
        direction that is 1 in column k of *every* level's block gives column k of all the
        diagonal blocks at once ("colouring"): q1 products for the block-diagonal part, plus
        one per dense column.

        Away from the mode the observed information of a likelihood that is not log-concave
        in its linear predictors jointly (zero-inflated: mean and zero probability) can be
        indefinite; with ``damp`` (the Newton steps of the mode search) each block is shifted
        by just enough to be positive definite, a Levenberg-Marquardt step.  At the mode the
        exact matrix is used.
        """
        f0 = self.s.factors[0]
        G1, q1, p2 = f0.n_levels, f0.q, self.s.p2
        n1 = G1 * q1
        D = np.zeros((q1 + p2, n1 + p2))
        for k in range(q1):
            D[k, k:n1:q1] = 1.0
        D[q1 + np.arange(p2), n1 + np.arange(p2)] = 1.0
        grad = jax.grad(lambda v: self.h_kernel(v, theta, beta, phi))
        A = -jax.vmap(lambda d: jax.jvp(grad, (u,), (d,))[1])(jnp.asarray(D))   # (q1+p2, n_u)
        a11 = jnp.transpose(A[:q1, :n1].reshape(q1, G1, q1), (1, 2, 0))
        a21 = A[q1:, :n1].reshape(p2, G1, q1)
        a22 = A[q1:, n1:]
        if damp:
            a11 = 0.5 * (a11 + jnp.swapaxes(a11, 1, 2))
            shift = jnp.maximum(0.0, 1e-3 - linalg.eigvalsh(a11)[:, 0])
            a11 = a11 + shift[:, None, None] * jnp.eye(q1)
            if p2:
                a22 = 0.5 * (a22 + a22.T)
                a22 = a22 + jnp.maximum(0.0, 1e-3 - linalg.eigvalsh(a22)[0]) * jnp.eye(p2)
        return blocked.factor(a11, a21, a22)

    def solve(self, ch, g):
        f0 = self.s.factors[0]
        n1 = f0.n_levels * f0.q
        x1, x2 = blocked.solve(ch, g[:n1].reshape(f0.n_levels, f0.q), g[n1:])
        return jnp.concatenate([x1.reshape(-1), x2])

    # -- conditional mode ---------------------------------------------------------------
    def mode(self, theta, beta, phi, u0=None):
        u0 = jnp.zeros(self.s.n_u) if u0 is None else u0
        hfun = lambda u: self.h_kernel(u, theta, beta, phi)
        gfun = jax.grad(hfun)

        def cond(c):
            u, f, it, delta = c
            return (it < PIRLS_MAXITER) & (delta > PIRLS_TOL)

        def body(c):
            u, f, it, _ = c
            ch = self.system(u, theta, beta, phi, fisher=True)
            g = gfun(u)
            d = self.solve(ch, g)
            d = jnp.where(jnp.all(jnp.isfinite(d)), d, 0.0)
            # At the mode the step's predicted gain (g'd / 2) falls below the rounding of h,
            # and rounding can make h(u + d) < h(u): the step is taken and the search ends,
            # rather than halving it to nothing (under vmap every member waited for that).
            tiny = 0.5 * jnp.abs(jnp.dot(g, d)) <= PIRLS_ROUNDING * (1.0 + jnp.abs(f))

            def hcond(s):
                t, fn = s
                return (t > 1e-8) & ~(fn >= f) & ~tiny

            def hbody(s):
                t, _ = s
                t = 0.5 * t
                return t, hfun(u + t * d)

            t, fn = jax.lax.while_loop(hcond, hbody, (jnp.asarray(1.0), hfun(u + d)))
            ok = (fn >= f) | (tiny & jnp.isfinite(fn))
            un = jnp.where(ok, u + t * d, u)
            delta = jnp.where(ok & ~tiny, jnp.max(jnp.abs(t * d)) / (1.0 + jnp.max(jnp.abs(u))), 0.0)
            return un, jnp.where(ok, fn, f), it + 1, delta

        u, f, it, _ = jax.lax.while_loop(cond, body, (u0, hfun(u0), jnp.asarray(0), jnp.asarray(jnp.inf)))
        return u

    def implicit_mode(self, theta, beta, phi, u0=None):
        """The mode, with exact first derivatives in (theta, beta, phi) by implicit
        differentiation; ``u0`` starts the Newton iteration (a warm start)."""
        sg = jax.lax.stop_gradient
        us = sg(self.mode(sg(theta), sg(beta), sg(phi), None if u0 is None else sg(u0)))
        ch = sg(self.system(us, sg(theta), sg(beta), sg(phi), fisher=False))
        g = jax.grad(self.h_kernel)(us, theta, beta, phi)
        return us + self.solve(ch, g)

    # -- objectives (deviance scale: -2 log-likelihood) ---------------------------------
    def laplace_deviance(self, x, u0=None):
        theta, beta, phi = self.layout.unpack(x)
        u = self.implicit_mode(theta, beta, phi, u0)
        expected = self.family.laplace_information == "expected"
        ch = self.system(u, theta, beta, phi, fisher=expected)
        ll = self.h(u, theta, beta, phi) - 0.5 * blocked.logdet_z(ch, self.s.p2)
        return -2.0 * ll, jax.lax.stop_gradient(u)

    def agq_deviance(self, x, n_points: int, u0=None):
        """Adaptive Gauss-Hermite for one grouping factor with one scalar random effect."""
        theta, beta, phi = self.layout.unpack(x)
        f0 = self.s.factors[0]
        u = self.implicit_mode(theta, beta, phi, u0)
        W = self.weights(u, theta, beta, phi, fisher=self.family.laplace_information == "expected")
        idx, z = self.a.index[0], self.a.Z[0][:, 0]
        lam = theta[0]
        prec = 1.0 + lam ** 2 * segment_sum(W * z * z, idx, f0.n_levels)
        sd = 1.0 / jnp.sqrt(prec)
        nodes, wts = np.polynomial.hermite.hermgauss(n_points)
        shift = jnp.sqrt(2.0) * sd[:, None] * nodes[None, :]           # (G, K)
        ug = u[:, None] + shift
        fp = self.family.natural_params(phi)
        eta0 = self.eta(u, theta, beta)
        eta_k = eta0[:, None] + (z * lam)[:, None] * gather_levels(shift, idx)         # (n, K)
        ll = self.a.weights[:, None] * self.family.loglik(
            self.a.y[:, None], eta_k, self.a.trials[:, None], fp)
        llg = segment_sum(ll, idx, f0.n_levels)                 # (G, K)
        logf = llg - 0.5 * ug ** 2 - 0.5 * jnp.log(2 * jnp.pi) + nodes[None, :] ** 2
        per_group = jnp.log(jnp.sqrt(2.0) * sd) + jax.scipy.special.logsumexp(
            logf, b=wts[None, :], axis=1)
        return -2.0 * jnp.sum(per_group), jax.lax.stop_gradient(u)

    def conditional_cov(self, x, u):
        """Per-level conditional covariances of b at the mode ``u`` (lme4's condVar)."""
        theta, beta, phi = self.layout.unpack(x)
        ch = self.system(u, theta, beta, phi, fisher=True)
        lams = rs.lambdas(self.s, theta)
        ucov = blocked.conditional_covariances(ch, self.s)
        return [jnp.einsum("qr,grs,ts->gqt", lam, v, lam) for lam, v in zip(lams, ucov)]


def glm_start(structure: rs.ReStructure, family, a: ProblemArrays, phi0, n_iter: int = 50):
    """Fixed effects of the GLM without random effects (damped Newton), as a starting point.

    The Newton steps start at beta = 0.  Where the log-likelihood is not finite there (a
    binomial with the log link: mu = 1 at eta = 0), they start instead where glm() starts,
    from the family's ``mustart`` (binomial: (y + 1/2) / (n + 1)): the least-squares fit of
    the link of it."""
    fp = family.natural_params(phi0)
    p = a.X.shape[1]
    kernel = family.loglik_parts()[0]

    def total(beta):
        eta = fixed_predictor(structure, a, beta)
        return jnp.sum(a.weights * kernel(a.y, eta, a.trials, fp))

    def body(_, beta):
        if structure.n_channels == 1:
            d1, d2 = _obs_derivs(family, a, a.offset + a.X @ beta, fp)
            H = a.X.T @ (jnp.maximum(-d2, 1e-10)[:, None] * a.X) + 1e-8 * jnp.eye(p)
            g = a.X.T @ d1
        else:
            H = -jax.hessian(total)(beta) + 1e-8 * jnp.eye(p)
            g = jax.grad(total)(beta)
        d = linalg.dense_solve(H, g)
        f = total(beta)
        # converged: the predicted gain is below rounding (see GlmmModel.mode)
        tiny = 0.5 * jnp.abs(jnp.dot(g, d)) <= PIRLS_ROUNDING * (1.0 + jnp.abs(f))

        def hcond(s):
            t, fn = s
            return (t > 1e-6) & ~(fn >= f) & ~tiny

        t, fn = jax.lax.while_loop(hcond, lambda s: (0.5 * s[0], total(beta + 0.5 * s[0] * d)),
                                   (jnp.asarray(1.0), total(beta + d)))
        return jnp.where((fn >= f) | (tiny & jnp.isfinite(fn)), beta + t * d, beta)

    beta0 = jnp.zeros(p)
    if family.mustart is not None and structure.n_channels == 1:
        target = family.link.linkfun(family.mustart(a.y, a.trials)) - a.offset
        wx = a.X * a.weights[:, None]
        fitted = linalg.dense_solve(wx.T @ a.X + 1e-8 * jnp.eye(p), wx.T @ target)
        beta0 = jnp.where(jnp.isfinite(total(beta0)), beta0, fitted)
    return jax.lax.fori_loop(0, n_iter, body, beta0)
