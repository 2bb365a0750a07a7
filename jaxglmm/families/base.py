"""The Family record and the helpers the family definitions share.

A :class:`Family` bundles everything the fitters need about a response distribution: its
per-observation log-likelihood on R's basis (normalising constants included), the link, the
family's own parameters with their unconstrained transforms and starting values, a support
check and a simulator.  The fitters never branch on a family's name; a new family is one new
definition registered in :data:`FAMILIES`.

Conventions
-----------
* ``loglik(y, eta, trials, fparams)`` returns the per-observation log-likelihood, an array
  shaped like ``y``.  ``trials`` is None except for binomial.  ``fparams`` is the dict of
  natural-scale family parameters returned by ``natural_params``.
* Family parameters travel through the optimizers as one unconstrained vector ``phi``;
  ``natural_params(phi)`` maps it to named natural values, ``init_params(y, trials)`` gives a
  starting ``phi`` from the data (its length is the number of family parameters).
* ``mean(eta, fparams)`` and ``variance(eta, fparams)`` are the moments of one observation
  (per trial for binomial: ``E[y] = trials * mean``, ``Var[y] = trials * variance``).

The families themselves live beside this module: :mod:`~jaxglmm.families.glm` (gaussian,
binomial, bernoulli, poisson), :mod:`~jaxglmm.families.count` (negative binomial,
zero-inflated and hurdle counts), :mod:`~jaxglmm.families.continuous` (Gamma, lognormal, beta,
Student-t), :mod:`~jaxglmm.families.ordinal` (cumulative) and
:mod:`~jaxglmm.families.categorical`.  :mod:`~jaxglmm.families.registry` names them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from .links import Link, get_link

Array = jnp.ndarray


def _no_params(phi):
    return {}


def _no_init(y, trials):
    return np.zeros(0)


@dataclass(frozen=True)
class Family:
    """A response distribution with its link: a value.

    Two families compare and hash equal when every field is equal, the functions by
    identity.  A registered factory builds each (family, link) once
    (:func:`build_family`), so ``get_family("poisson")``, a family passed back in, or one
    reached through ``with_link`` are one value and reuse one compiled program; a family
    changed with ``dataclasses.replace`` (another log-likelihood, say) is a different value
    and compiles its own.

    Attributes
    ----------
    name: the family's name as users write it (``"binomial"``).
    link: the :class:`~jaxglmm.families.links.Link` in use.
    links: names of the links this family accepts; the first is the default.
    loglik: ``(y, eta, trials, fparams) -> (n,)`` log-likelihood per observation.
    natural_params: ``phi -> dict`` of natural-scale family parameters.
    init_params: ``(y, trials) -> phi`` starting values (NumPy).
    validate: ``(y, trials) -> None``; raises ``ValueError`` naming the problem.
    simulate: ``(key, eta, trials, fparams) -> y`` draws from the family.
    simulate_bounded: optional ``(key, eta, trials, fparams, bound) -> y``, the same
        distribution for trials known to be integers of at most the static ``bound``, by a
        sampler that compiles faster (binomial: sums of Bernoulli draws in place of jax's
        binomial sampler; docs/benchmarks.md).
    mean: ``(eta, fparams) -> E[y]`` (per trial for binomial; the expected 0-based category
        code for ordinal families).
    fisher_weight: optional ``(eta, trials, fparams) -> (n,)`` expected information of
        eta.  The Laplace approximation uses it, as lme4's PIRLS weights do; when None the
        observed information (negative second derivative of ``loglik``) is used.
    needs_trials: True for binomial.
    has_intercept: False for families whose thresholds take the intercept's place.
    param_names: the names of the family parameters, in the order of ``phi`` (for ordinal
        families the single name ``"thresholds"`` stands for the whole block).
    variance: optional ``(eta, fparams) -> Var[y]`` (per trial for binomial).
    category_probs: optional ``(eta, fparams) -> (..., K)`` category probabilities, for
        ordinal families.
    response: how the design codes the response: ``"numeric"``; ``"binary"`` (0/1, and a
        two-level factor or booleans are accepted); ``"ordered"`` or ``"unordered"``
        (category codes 0..K-1 in level order).
    per_category: one linear predictor per non-reference category (categorical).
    residual: the name of the parameter that is a residual SD reported as the fit's
        ``sigma`` (gaussian), else None.
    exact_lmm_link: the link under which the model is a linear mixed model, fitted exactly
        by REML/ML with the random effects integrated out (gaussian: identity).
    response_scale_priors: brms's default intercept and SD priors take their location and
        scale from the response (False: the fixed ``student_t(3, 0, 2.5)``).
    dpar_links: ``((parameter, inverse link), ...)``: family parameters that may get their
        own formula (brms's distributional parameters, e.g. ``zi``).
    variant: what distinguishes a derived family from its base (e.g. ``("dpar", "zi")``).
    factory: the registered ``factory(link) -> Family`` that made it (for ``with_link``).
    mustart: optional ``(y, trials) -> mu``, a mean inside the support for every
        observation, as R's ``family$initialize``: where the fixed effects' usual start
        (all zero) has no finite likelihood, fits start from the link of it.
    loglik_split: optional ``(loglik, kernel, constant)``: ``loglik`` split into a part that
        depends on the parameters, ``kernel(y, eta, trials, fparams)``, and one that depends
        on the data alone, ``constant(y, trials)`` (binomial's log C(n, y), Poisson's
        -log y!), so the conditional-mode search, which compares and differentiates the
        log-likelihood, skips the log-gamma functions.  Used only while ``loglik`` is the
        first element (a family derived with another ``loglik`` does not inherit it).
    unit_deviance: optional ``(y, mu, trials, fparams) -> (n,)`` NumPy: R's
        ``family$dev.resids`` per observation before prior weights (the binomial's counts
        ``y`` of ``trials``, ``mu`` per trial), for deviance residuals; None where R has no
        deviance for the family (residuals of type "deviance" are then refused).
    canonical_kernel: optional ``(loglik, kernel)``: for a canonical link, ``loglik``'s
        kernel in closed form (``loglik`` less ``loglik_split``'s constant) with derivatives of
        a few operations per row, for which the expected and observed information agree
        (:mod:`~jaxglmm.families.canonical`); the many-rows Laplace fit uses it.  Used only
        while ``loglik`` is the first element, as ``loglik_split``.
    """

    name: str
    link: Link
    links: tuple[str, ...]
    loglik: Callable
    natural_params: Callable = _no_params
    init_params: Callable = _no_init
    validate: Callable = lambda y, trials: None
    simulate: Callable | None = None
    simulate_bounded: Callable | None = None
    mean: Callable | None = None
    fisher_weight: Callable | None = None
    needs_trials: bool = False
    has_intercept: bool = True
    param_names: tuple[str, ...] = field(default_factory=tuple)
    variance: Callable | None = None
    category_probs: Callable | None = None
    # Which information of eta enters the Laplace log-determinant at the mode: "expected"
    # (lme4's PIRLS weights, for lme4's own families) or "observed" (the exact Hessian, as
    # glmmTMB/TMB).  They coincide for canonical links.
    laplace_information: str = "observed"
    response: str = "numeric"
    per_category: bool = False
    residual: str | None = None
    exact_lmm_link: str | None = None
    response_scale_priors: bool = True
    dpar_links: tuple = ()
    variant: tuple = ()
    factory: Callable | None = field(default=None, repr=False)
    mustart: Callable | None = None
    loglik_split: tuple | None = None
    unit_deviance: Callable | None = None
    canonical_kernel: tuple | None = None

    # -- what fitters ask -----------------------------------------------------------------
    @property
    def exact_lmm(self) -> bool:
        """True when the model is a linear mixed model (gaussian with the identity link)."""
        return self.exact_lmm_link is not None and self.link.name == self.exact_lmm_link

    def loglik_parts(self):
        """``(kernel, constant)``: the log-likelihood's parameter-dependent part and its
        data-only part (None: the kernel is the whole log-likelihood)."""
        split = self.loglik_split
        if split is not None and split[0] is self.loglik:
            return split[1], split[2]
        return self.loglik, None

    def canonical_parts(self):
        """``(kernel, constant)`` with the declared closed-form kernel of a canonical link
        (:attr:`canonical_kernel`), or None where the family declares none."""
        fast = self.canonical_kernel
        if fast is None or fast[0] is not self.loglik:
            return None
        return fast[1], self.loglik_parts()[1]

    def n_predictors(self, response_levels) -> int:
        """Linear predictors the model needs: one, or one per non-reference category."""
        if not self.per_category:
            return 1
        if response_levels is None or len(response_levels) < 2:
            raise ValueError(f"a {self.name} response needs at least 2 categories")
        if len(response_levels) == 2:
            raise ValueError(f"a {self.name} response with two levels "
                             f"({', '.join(map(str, response_levels))}) is a bernoulli model: "
                             f"use family='bernoulli' (levels={{...}} sets which level is the "
                             "success, the second)")
        return len(response_levels) - 1

    def n_params(self, y, trials=None) -> int:
        return int(np.size(self.init_params(y, trials)))

    def with_link(self, link: str | None) -> "Family":
        """The same family with another link (closures are rebuilt by its factory)."""
        if link is None or link == self.link.name:
            return self
        if link not in self.links:
            raise ValueError(
                f"link {link!r} is not available for family {self.name!r}; "
                f"choose one of {list(self.links)}")
        if self.factory is None or self.variant:
            raise ValueError(f"family {self.name!r} was not made by a registered factory, so "
                             "its link cannot be changed; build it with the link you want")
        return build_family(self.factory, link)


# ----------------------------------------------------------------------------- helpers
def _is_integer_valued(y) -> bool:
    y = np.asarray(y, dtype=float)
    return bool(np.all(np.isfinite(y)) and np.all(np.abs(y - np.round(y)) < 1e-8))


def _dmu_deta(link: Link, eta):
    return jax.vmap(jax.grad(lambda e: link.linkinv(e)))(jnp.ravel(eta)).reshape(jnp.shape(eta))


def _glm_weight(link: Link, eta, var):
    """Expected information of eta for a mean-``mu`` family with ``Var[y] = var``.

    ``(dmu/deta)^2 / var``: exact for exponential-dispersion families (and their
    fixed-shape relatives such as the negative binomial with known shape).
    """
    return jnp.square(_dmu_deta(link, eta)) / var


def _log_mu(link: Link, eta):
    """``log(mu)`` without the round trip through ``exp`` for the log link."""
    if link.name == "log":
        return eta
    return jnp.log(link.linkinv(eta))


def _log1mexp(x):
    """``log(1 - exp(x))`` for ``x < 0``, accurate at both ends (Maechler 2012).

    Each branch gets only the inputs it is accurate for, so that neither produces an
    infinite value whose zero-weighted gradient would turn into NaN.
    """
    near = x > -0.6931471805599453
    return jnp.where(near, jnp.log(-jnp.expm1(jnp.where(near, x, -1.0))),
                     jnp.log1p(-jnp.exp(jnp.where(near, -1.0, x))))


def _xlogy0(y, log_x):
    """``y * log_x`` with the ``0 * log(0) = 0`` convention and finite gradients."""
    return jnp.where(y > 0, y * log_x, 0.0)


def _pois_lpmf(y, log_mu, mu):
    """Poisson log-pmf ``y log(mu) - mu - log(y!)``."""
    return _xlogy0(y, log_mu) - mu - gammaln(y + 1)


def _log_gamma_draw(key, a, shape, tries: int = 8):
    """``log`` of Gamma(``a``, rate 1) draws: Marsaglia & Tsang (2000), loop-free.

    Each element gets ``tries`` proposals at once and keeps the first accepted one (the
    acceptance rate is above 0.95 for ``a >= 1``, so all fail with probability below
    ``1e-10``; such an element then takes the first proposal's value).  ``a < 1`` uses
    ``G(a) = G(a + 1) U^(1/a)``.  Working on the log scale keeps tiny shapes finite (beta).
    Compiles several times faster than ``jax.random.gamma``'s rejection loop.
    """
    a = jnp.broadcast_to(a, shape)
    boost = a < 1.0
    d = jnp.where(boost, a + 1.0, a) - 1.0 / 3.0
    c = 1.0 / jnp.sqrt(9.0 * d)
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (tries,) + tuple(shape), dtype=d.dtype)
    log_u = jnp.log(jax.random.uniform(k2, (tries,) + tuple(shape), dtype=d.dtype))
    v = 1.0 + c * x
    log_v3 = 3.0 * jnp.log(jnp.where(v > 0, v, 1.0))
    ok = (v > 0) & (log_u < 0.5 * x * x + d - d * jnp.exp(log_v3) + d * log_v3)
    pick = jnp.argmax(ok, axis=0)[None]
    log_g = jnp.log(d) + jnp.take_along_axis(log_v3, pick, 0)[0]
    log_b = jnp.log(jax.random.uniform(k3, tuple(shape), dtype=d.dtype)) / a
    return jnp.where(boost, log_g + log_b, log_g)


def _validate_counts(name: str, y) -> None:
    """Counts: finite, non-negative whole numbers."""
    y = np.asarray(y, float)
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name} response has {int(np.sum(~np.isfinite(y)))} non-finite values")
    if np.any(y < 0):
        raise ValueError(f"{name} response has {int(np.sum(y < 0))} negative values")
    if not _is_integer_valued(y):
        bad = np.unique(y[np.abs(y - np.round(y)) >= 1e-8])[:5]
        raise ValueError(f"{name} response must be whole-number counts; found {bad}")


def _validate_finite(name: str, y) -> None:
    if not np.all(np.isfinite(np.asarray(y, float))):
        raise ValueError(f"{name} response has non-finite values")


def _validate_positive(name: str, y) -> None:
    """Strictly positive, finite responses (Gamma, lognormal)."""
    _validate_finite(name, y)
    y = np.asarray(y, float)
    if np.any(y <= 0):
        raise ValueError(f"{name} response must be strictly positive; "
                         f"{int(np.sum(y <= 0))} values are <= 0")


def _ylogy_ratio(y, m):
    """``y log(y / m)``, 0 where y is 0 (R's ``y_log_y`` in its family C code)."""
    y, m = np.asarray(y, float), np.asarray(m, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(y > 0, y * np.log(y / m), 0.0)


def _logit(p) -> float:
    return float(np.log(p) - np.log1p(-p))


def _log_p_and_q(link: Link, eta):
    if link.log_mu is not None:
        return link.log_mu(eta), link.log1m_mu(eta)
    mu = link.linkinv(eta)
    return jnp.log(mu), jnp.log1p(-mu)


@lru_cache(maxsize=None)
def build_family(factory: Callable, link: str) -> Family:
    """The family ``factory`` makes with ``link``, built once: equal families are then one
    object, with the same functions, and so compare equal."""
    return replace(factory(get_link(link)), factory=factory)
