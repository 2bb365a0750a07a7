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
    mean: ``(eta, fparams) -> E[y]`` (per trial for binomial).
    fisher_weight: optional ``(eta, trials, fparams) -> (n,)`` expected information of
        eta.  The Laplace approximation uses it, as lme4's PIRLS weights do; when None the
        observed information (negative second derivative of ``loglik``) is used.
    needs_trials: True for binomial.
    has_intercept: False for families whose thresholds take the intercept's place.
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


# ----------------------------------------------------------------------------- gaussian
def _gaussian(link: Link) -> Family:
    def loglik(y, eta, trials, fp):
        mu = link.linkinv(eta)
        sigma = fp["sigma"]
        return -0.5 * jnp.log(2 * jnp.pi) - jnp.log(sigma) - 0.5 * jnp.square((y - mu) / sigma)

    def init(y, trials):
        return np.array([np.log(max(np.std(np.asarray(y, float)), 1e-8))])

    def simulate(key, eta, trials, fp):
        return link.linkinv(eta) + fp["sigma"] * jax.random.normal(key, jnp.shape(eta))

    def validate(y, trials):
        if not np.all(np.isfinite(np.asarray(y, float))):
            raise ValueError("gaussian response has non-finite values")

    return Family(
        "gaussian", link, ("identity", "log", "inverse"), loglik,
        natural_params=lambda phi: {"sigma": jnp.exp(phi[0])},
        init_params=init, validate=validate, simulate=simulate,
        mean=lambda eta, fp: link.linkinv(eta),
        fisher_weight=lambda eta, trials, fp: jnp.square(_dmu_deta(link, eta)) / fp["sigma"] ** 2,
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
        needs_trials=True)


def _bernoulli(link: Link) -> Family:
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
    def loglik(y, eta, trials, fp):
        if link.name == "log":
            log_mu, mu = eta, jnp.exp(eta)
        else:
            mu = link.linkinv(eta)
            log_mu = jnp.log(mu)
        return jnp.where(y > 0, y * log_mu, 0.0) - mu - gammaln(y + 1)

    def validate(y, trials):
        y = np.asarray(y, float)
        if np.any(y < 0):
            raise ValueError(f"poisson response has {int(np.sum(y < 0))} negative values")
        if not _is_integer_valued(y):
            raise ValueError("poisson response must be whole-number counts")

    def simulate(key, eta, trials, fp):
        return jax.random.poisson(key, link.linkinv(eta)).astype(jnp.result_type(float))

    def weight(eta, trials, fp):
        mu = link.linkinv(eta)
        return jnp.square(_dmu_deta(link, eta)) / mu

    return Family("poisson", link, ("log", "identity", "sqrt"), loglik, validate=validate,
                  simulate=simulate, mean=lambda eta, fp: link.linkinv(eta),
                  fisher_weight=weight)


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
