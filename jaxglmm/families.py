"""Response families as data.

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

The families beyond the four core ones live in :mod:`jaxglmm.families_count` (negative
binomial, zero-inflated and hurdle counts), :mod:`jaxglmm.families_continuous` (Gamma,
lognormal, beta, Student-t) and :mod:`jaxglmm.families_ordinal` (cumulative); each registers
itself when imported at the end of this module.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
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
    """A response distribution with its link.

    Attributes
    ----------
    name: the family's name as users write it (``"binomial"``).
    link: the :class:`~jaxglmm.links.Link` in use.
    links: names of the links this family accepts; the first is the default.
    loglik: ``(y, eta, trials, fparams) -> (n,)`` log-likelihood per observation.
    natural_params: ``phi -> dict`` of natural-scale family parameters.
    init_params: ``(y, trials) -> phi`` starting values (NumPy).
    validate: ``(y, trials) -> None``; raises ``ValueError`` naming the problem.
    simulate: ``(key, eta, trials, fparams) -> y`` draws from the family.
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
    """

    name: str
    link: Link
    links: tuple[str, ...]
    loglik: Callable
    natural_params: Callable = _no_params
    init_params: Callable = _no_init
    validate: Callable = lambda y, trials: None
    simulate: Callable | None = None
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

    def n_params(self, y, trials=None) -> int:
        return int(np.size(self.init_params(y, trials)))

    def with_link(self, link: str | None) -> "Family":
        """The same family with another link (closures are rebuilt, not patched)."""
        if link is None or link == self.link.name:
            return self
        if link not in self.links:
            raise ValueError(
                f"link {link!r} is not available for family {self.name!r}; "
                f"choose one of {list(self.links)}")
        return FAMILIES[self.name](get_link(link))


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


def _logit(p) -> float:
    return float(np.log(p) - np.log1p(-p))


# ----------------------------------------------------------------------------- gaussian
def _gaussian(link: Link) -> Family:
    """Normal response.

    ``log f(y) = -log(2 pi)/2 - log(sigma) - (y - mu)^2 / (2 sigma^2)``, ``mu = g^{-1}(eta)``;
    R's ``dnorm(y, mu, sigma, log=TRUE)``.  Parameter ``sigma = exp(phi[0])``.
    """
    def loglik(y, eta, trials, fp):
        mu = link.linkinv(eta)
        sigma = fp["sigma"]
        return -0.5 * jnp.log(2 * jnp.pi) - jnp.log(sigma) - 0.5 * jnp.square((y - mu) / sigma)

    def init(y, trials):
        return np.array([np.log(max(np.std(np.asarray(y, float)), 1e-8))])

    def simulate(key, eta, trials, fp):
        return link.linkinv(eta) + fp["sigma"] * jax.random.normal(key, jnp.shape(eta))

    return Family(
        "gaussian", link, ("identity", "log", "inverse"), loglik,
        natural_params=lambda phi: {"sigma": jnp.exp(phi[0])},
        init_params=init, validate=lambda y, trials: _validate_finite("gaussian", y),
        simulate=simulate, mean=lambda eta, fp: link.linkinv(eta),
        variance=lambda eta, fp: jnp.broadcast_to(fp["sigma"] ** 2, jnp.shape(eta)),
        fisher_weight=lambda eta, trials, fp: _glm_weight(link, eta, fp["sigma"] ** 2),
        param_names=("sigma",))


# ----------------------------------------------------------------------------- binomial
def _log_p_and_q(link: Link, eta):
    if link.log_mu is not None:
        return link.log_mu(eta), link.log1m_mu(eta)
    mu = link.linkinv(eta)
    return jnp.log(mu), jnp.log1p(-mu)


def _binomial_loglik(link: Link):
    def loglik(y, eta, trials, fp):
        logp, logq = _log_p_and_q(link, eta)
        lchoose = gammaln(trials + 1) - gammaln(y + 1) - gammaln(trials - y + 1)
        # 0 * log(0) terms are zero; jnp.where keeps gradients finite.
        a = jnp.where(y > 0, y * logp, 0.0)
        b = jnp.where(trials - y > 0, (trials - y) * logq, 0.0)
        return lchoose + a + b
    return loglik


def _binomial_fisher(link: Link):
    def weight(eta, trials, fp):
        mu = jnp.clip(link.linkinv(eta), 1e-300, 1.0)
        q = jnp.clip(1.0 - mu, 1e-300, 1.0)
        return trials * jnp.square(_dmu_deta(link, eta)) / (mu * q)
    return weight


def _binomial(link: Link) -> Family:
    """Binomial successes ``y`` out of ``trials``.

    ``log f(y) = log C(trials, y) + y log(mu) + (trials - y) log(1 - mu)``; R's ``dbinom``.
    No family parameters.
    """
    def validate(y, trials):
        y = np.asarray(y, float)
        t = np.asarray(trials, float)
        if not (_is_integer_valued(y) and _is_integer_valued(t)):
            raise ValueError("binomial successes and trials must be whole numbers")
        if np.any(y < 0):
            raise ValueError("binomial successes must be non-negative")
        if np.any(t <= 0):
            raise ValueError("binomial trials must be positive")
        if np.any(y > t):
            raise ValueError("binomial successes exceed trials in "
                             f"{int(np.sum(y > t))} rows")

    def simulate(key, eta, trials, fp):
        return jax.random.binomial(key, trials, link.linkinv(eta)).astype(jnp.result_type(float))

    return Family(
        "binomial", link, ("logit", "probit", "cloglog", "cauchit", "log"),
        _binomial_loglik(link), validate=validate, simulate=simulate,
        mean=lambda eta, fp: link.linkinv(eta), fisher_weight=_binomial_fisher(link),
        variance=lambda eta, fp: link.linkinv(eta) * (1.0 - link.linkinv(eta)),
        needs_trials=True, laplace_information="expected")


def _bernoulli(link: Link) -> Family:
    """0/1 response: ``log f(y) = y log(mu) + (1 - y) log(1 - mu)``; R's ``dbinom(y, 1, mu)``."""
    base = _binomial(link)

    def validate(y, trials):
        y = np.asarray(y, float)
        if not np.all((y == 0) | (y == 1)):
            bad = np.unique(y[~((y == 0) | (y == 1))])[:5]
            raise ValueError(f"bernoulli response must be 0/1 (or a two-level factor); found {bad}")

    def loglik(y, eta, trials, fp):
        logp, logq = _log_p_and_q(link, eta)
        return jnp.where(y > 0.5, logp, logq)

    def simulate(key, eta, trials, fp):
        return jax.random.bernoulli(key, link.linkinv(eta)).astype(jnp.result_type(float))

    ones = lambda eta: jnp.ones_like(eta)
    return replace(base, name="bernoulli", loglik=loglik, validate=validate, simulate=simulate,
                   fisher_weight=lambda eta, trials, fp: _binomial_fisher(link)(eta, ones(eta), fp),
                   needs_trials=False)


# ----------------------------------------------------------------------------- poisson
def _poisson(link: Link) -> Family:
    """Poisson counts: ``log f(y) = y log(mu) - mu - log(y!)``; R's ``dpois``."""
    def loglik(y, eta, trials, fp):
        return _pois_lpmf(y, _log_mu(link, eta), link.linkinv(eta))

    def simulate(key, eta, trials, fp):
        return jax.random.poisson(key, link.linkinv(eta)).astype(jnp.result_type(float))

    return Family("poisson", link, ("log", "identity", "sqrt"), loglik,
                  validate=lambda y, trials: _validate_counts("poisson", y),
                  simulate=simulate, mean=lambda eta, fp: link.linkinv(eta),
                  variance=lambda eta, fp: link.linkinv(eta),
                  fisher_weight=lambda eta, trials, fp: _glm_weight(link, eta, link.linkinv(eta)),
                  laplace_information="expected")


# ----------------------------------------------------------------------------- registry
FAMILIES: dict[str, Callable[[Link], Family]] = {
    "gaussian": _gaussian,
    "binomial": _binomial,
    "bernoulli": _bernoulli,
    "poisson": _poisson,
}
DEFAULT_LINKS: dict[str, str] = {
    "gaussian": "identity",
    "binomial": "logit",
    "bernoulli": "logit",
    "poisson": "log",
}
ALIASES = {"normal": "gaussian", "gamma_poisson": "negbinomial", "nbinom2": "negbinomial",
           "ordinal": "cumulative", "multinomial": "categorical", "gamma": "Gamma"}


def register_family(name: str, factory: Callable[[Link], Family], default_link: str) -> None:
    """Add a family: ``factory(link) -> Family``."""
    FAMILIES[name] = factory
    DEFAULT_LINKS[name] = default_link


def get_family(family: str | Family, link: str | None = None) -> Family:
    """Look up a family by name (``"binomial"``) with an optional link name."""
    if isinstance(family, Family):
        return family.with_link(link)
    name = ALIASES.get(family, family)
    if name not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {sorted(FAMILIES)}")
    fam = FAMILIES[name](get_link(DEFAULT_LINKS[name]))
    return fam.with_link(link)


# The remaining families register themselves (they import the helpers above).
from . import families_continuous, families_count, families_ordinal  # noqa: E402,F401
