"""The families lme4 fits: gaussian, binomial, bernoulli and poisson."""
from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from .base import (Family, _dmu_deta, _glm_weight, _is_integer_valued, _log_mu, _log_p_and_q,
                   _pois_lpmf, _validate_counts, _validate_finite, _xlogy0, _ylogy_ratio)
from .canonical import log_kernel, logit_kernel
from .links import Link


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
        param_names=("sigma",), residual="sigma", exact_lmm_link="identity",
        unit_deviance=lambda y, mu, trials, fp: np.square(np.asarray(y) - mu))


# ----------------------------------------------------------------------------- binomial
def _binomial_parts(link: Link):
    """(loglik, kernel, constant) of the binomial (see Family.loglik_split)."""
    def kernel(y, eta, trials, fp):
        logp, logq = _log_p_and_q(link, eta)
        # 0 * log(0) terms are zero; jnp.where keeps gradients finite.
        a = jnp.where(y > 0, y * logp, 0.0)
        b = jnp.where(trials - y > 0, (trials - y) * logq, 0.0)
        return a + b

    def constant(y, trials):
        return gammaln(trials + 1) - gammaln(y + 1) - gammaln(trials - y + 1)

    def loglik(y, eta, trials, fp):
        return constant(y, trials) + kernel(y, eta, trials, fp)
    return loglik, kernel, constant


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
        # a row with zero trials (0 of 0) is accepted, as lme4 does: its log-likelihood is
        # log C(0, 0) = 0 and its Fisher weight trials * ... is 0, so it adds nothing
        if np.any(t < 0):
            raise ValueError("binomial trials must be non-negative")
        if np.any(y > t):
            raise ValueError("binomial successes exceed trials in "
                             f"{int(np.sum(y > t))} rows")

    def simulate(key, eta, trials, fp):
        return jax.random.binomial(key, trials, link.linkinv(eta)).astype(jnp.result_type(float))

    def simulate_bounded(key, eta, trials, fp, bound):
        # Binomial(n, p) as the sum of n Bernoulli(p) draws, n <= bound
        p = link.linkinv(eta)
        u = jax.random.uniform(key, jnp.shape(p) + (bound,), dtype=p.dtype)
        used = jnp.arange(bound) < jnp.asarray(trials)[..., None]
        return jnp.sum((u < p[..., None]) & used, axis=-1).astype(jnp.result_type(float))

    parts = _binomial_parts(link)
    return Family(
        "binomial", link, ("logit", "probit", "cloglog", "cauchit", "log"),
        parts[0], loglik_split=parts, validate=validate, simulate=simulate,
        canonical_kernel=(parts[0], logit_kernel) if link.name == "logit" else None,
        simulate_bounded=simulate_bounded,
        mean=lambda eta, fp: link.linkinv(eta), fisher_weight=_binomial_fisher(link),
        variance=lambda eta, fp: link.linkinv(eta) * (1.0 - link.linkinv(eta)),
        needs_trials=True, laplace_information="expected", response="binary",
        response_scale_priors=False, mustart=lambda y, trials: (y + 0.5) / (trials + 1.0),
        unit_deviance=_binomial_deviance)


def _binomial_deviance(y, mu, trials, fp):
    """R's ``binomial()$dev.resids`` in counts: 2 [y log(y / (n mu)) + (n - y) log((n - y) /
    (n (1 - mu)))]."""
    y, n = np.asarray(y, float), np.broadcast_to(np.asarray(trials, float), np.shape(y))
    return 2.0 * (_ylogy_ratio(y, n * mu) + _ylogy_ratio(n - y, n * (1.0 - mu)))


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
                   needs_trials=False,
                   canonical_kernel=(loglik, logit_kernel) if link.name == "logit" else None,
                   unit_deviance=lambda y, mu, trials, fp: _binomial_deviance(y, mu, 1.0, fp))


# ----------------------------------------------------------------------------- poisson
def _poisson(link: Link) -> Family:
    """Poisson counts: ``log f(y) = y log(mu) - mu - log(y!)``; R's ``dpois``."""
    def kernel(y, eta, trials, fp):
        return _xlogy0(y, _log_mu(link, eta)) - link.linkinv(eta)

    def constant(y, trials):
        return -gammaln(y + 1)

    def loglik(y, eta, trials, fp):
        return _pois_lpmf(y, _log_mu(link, eta), link.linkinv(eta))

    def simulate(key, eta, trials, fp):
        return jax.random.poisson(key, link.linkinv(eta)).astype(jnp.result_type(float))

    return Family("poisson", link, ("log", "identity", "sqrt"), loglik,
                  loglik_split=(loglik, kernel, constant),
                  canonical_kernel=(loglik, log_kernel) if link.name == "log" else None,
                  validate=lambda y, trials: _validate_counts("poisson", y),
                  simulate=simulate, mean=lambda eta, fp: link.linkinv(eta),
                  variance=lambda eta, fp: link.linkinv(eta),
                  fisher_weight=lambda eta, trials, fp: _glm_weight(link, eta, link.linkinv(eta)),
                  laplace_information="expected",
                  mustart=lambda y, trials: y + 0.1,      # R's poisson()$initialize
                  unit_deviance=lambda y, mu, trials, fp:
                      2.0 * (_ylogy_ratio(y, mu) - (np.asarray(y, float) - mu)))


#: name -> (factory, default link)
FACTORIES = {
    "gaussian": (_gaussian, "identity"),
    "binomial": (_binomial, "logit"),
    "bernoulli": (_bernoulli, "logit"),
    "poisson": (_poisson, "log"),
}
