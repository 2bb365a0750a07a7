"""Continuous families beyond the normal: Gamma, lognormal, beta and Student-t.

Each family registers itself in :data:`jaxglmm.families.FAMILIES` on import.  Parameters
follow brms (Gamma ``shape``, lognormal ``sigma``, beta precision ``phi``, Student-t
``sigma`` and ``nu``); log-likelihoods match R's ``d*`` functions with ``log = TRUE``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, polygamma

from .base import (Family, _glm_weight, _log_gamma_draw, _log_mu, _log_p_and_q,
                       _validate_finite, _validate_positive)
from .links import Link

_FLOAT = jnp.result_type(float)
_HALF_LOG_2PI = 0.9189385332046727


def _sd(x) -> float:
    return max(float(np.std(np.asarray(x, float))), 1e-8)


# ----------------------------------------------------------------------------- Gamma
def _gamma(link: Link) -> Family:
    """Gamma response with mean ``mu`` and ``shape`` (brms's parameterisation).

    Parameters
    ----------
    link : Link
        ``log`` (default), ``inverse`` or ``identity``; ``mu = g^{-1}(eta)``.

    Returns
    -------
    Family
        Family parameter ``shape = exp(phi[0])``; ``y > 0`` required.

    Notes
    -----
    With ``a = shape``::

        log f(y) = a log(a / mu) - lgamma(a) + (a - 1) log(y) - a y / mu

    i.e. R's ``dgamma(y, shape = a, rate = a / mu, log = TRUE)``.  ``E[y] = mu``,
    ``Var[y] = mu^2 / a``; expected information of eta ``a (dmu/deta)^2 / mu^2``.
    """
    def loglik(y, eta, trials, fp):
        a = fp["shape"]
        log_mu = _log_mu(link, eta)
        return (a * (jnp.log(a) - log_mu) - gammaln(a) + (a - 1.0) * jnp.log(y)
                - a * y * jnp.exp(-log_mu))

    def init(y, trials):
        y = np.asarray(y, float)
        return np.array([np.log(np.clip(np.mean(y) ** 2 / _sd(y) ** 2, 1e-2, 1e4))])

    def simulate(key, eta, trials, fp):
        mu = link.linkinv(eta)
        a = fp["shape"]
        return jnp.exp(_log_gamma_draw(key, a, jnp.shape(mu))) * mu / a

    def variance(eta, fp):
        return jnp.square(link.linkinv(eta)) / fp["shape"]

    return Family(
        "Gamma", link, ("log", "inverse", "identity"), loglik,
        natural_params=lambda phi: {"shape": jnp.exp(phi[0])}, init_params=init,
        validate=lambda y, trials: _validate_positive("Gamma", y), simulate=simulate,
        mean=lambda eta, fp: link.linkinv(eta), variance=variance,
        fisher_weight=lambda eta, trials, fp: _glm_weight(link, eta, variance(eta, fp)),
        # R's Gamma()$dev.resids
        unit_deviance=lambda y, mu, trials, fp: -2.0 * (np.log(np.asarray(y, float) / mu)
                                                        - (np.asarray(y, float) - mu) / mu),
        param_names=("shape",), mustart=lambda y, trials: y)     # R's Gamma()$initialize


# ----------------------------------------------------------------------------- lognormal
def _lognormal(link: Link) -> Family:
    """Log-normal response; ``mu = g^{-1}(eta)`` is the mean of ``log(y)`` (meanlog).

    Parameters
    ----------
    link : Link
        ``identity`` (default) or ``inverse``, on the log scale.

    Returns
    -------
    Family
        Family parameter ``sigma = exp(phi[0])`` (sdlog); ``y > 0`` required.

    Notes
    -----
    ::

        log f(y) = -log(y) - log(2 pi) / 2 - log(sigma) - (log(y) - mu)^2 / (2 sigma^2)

    R's ``dlnorm(y, meanlog = mu, sdlog = sigma, log = TRUE)``.
    ``E[y] = exp(mu + sigma^2 / 2)``, ``Var[y] = (exp(sigma^2) - 1) exp(2 mu + sigma^2)``;
    expected information of eta ``(dmu/deta)^2 / sigma^2``.
    """
    def loglik(y, eta, trials, fp):
        sigma = fp["sigma"]
        log_y = jnp.log(y)
        z = (log_y - link.linkinv(eta)) / sigma
        return -log_y - _HALF_LOG_2PI - jnp.log(sigma) - 0.5 * z * z

    def simulate(key, eta, trials, fp):
        mu = link.linkinv(eta)
        return jnp.exp(mu + fp["sigma"] * jax.random.normal(key, jnp.shape(mu), dtype=_FLOAT))

    def variance(eta, fp):
        s2 = jnp.square(fp["sigma"])
        return jnp.expm1(s2) * jnp.exp(2 * link.linkinv(eta) + s2)

    return Family(
        "lognormal", link, ("identity", "inverse"), loglik,
        natural_params=lambda phi: {"sigma": jnp.exp(phi[0])},
        init_params=lambda y, trials: np.array([np.log(_sd(np.log(np.asarray(y, float))))]),
        validate=lambda y, trials: _validate_positive("lognormal", y), simulate=simulate,
        mean=lambda eta, fp: jnp.exp(link.linkinv(eta) + 0.5 * jnp.square(fp["sigma"])),
        variance=variance,
        fisher_weight=lambda eta, trials, fp: _glm_weight(link, eta, jnp.square(fp["sigma"])),
        param_names=("sigma",))


# ----------------------------------------------------------------------------- beta
def _validate_unit_interval(y, trials) -> None:
    _validate_finite("beta", y)
    y = np.asarray(y, float)
    bad = (y <= 0) | (y >= 1)
    if np.any(bad):
        raise ValueError(f"beta response must lie strictly inside (0, 1); {int(np.sum(bad))} "
                         f"values do not (e.g. {np.unique(y[bad])[:5]})")


def _beta(link: Link) -> Family:
    """Beta response in mean-precision form (Ferrari & Cribari-Neto; brms).

    Parameters
    ----------
    link : Link
        ``logit`` (default), ``probit``, ``cloglog`` or ``cauchit``; ``mu = g^{-1}(eta)``.

    Returns
    -------
    Family
        Family parameter: precision ``phi = exp(phi[0])`` (of the unconstrained vector);
        ``0 < y < 1`` required.

    Notes
    -----
    With ``a = mu phi`` and ``b = (1 - mu) phi``::

        log f(y) = lgamma(phi) - lgamma(a) - lgamma(b) + (a - 1) log(y) + (b - 1) log(1 - y)

    R's ``dbeta(y, shape1 = a, shape2 = b, log = TRUE)``.  ``E[y] = mu``,
    ``Var[y] = mu (1 - mu) / (1 + phi)``; expected information of eta
    ``phi^2 (psi'(a) + psi'(b)) (dmu/deta)^2`` (``psi'`` the trigamma function).
    """
    def shapes(eta, fp):
        log_p, log_q = _log_p_and_q(link, eta)
        return jnp.exp(log_p) * fp["phi"], jnp.exp(log_q) * fp["phi"]

    def loglik(y, eta, trials, fp):
        a, b = shapes(eta, fp)
        return (gammaln(fp["phi"]) - gammaln(a) - gammaln(b)
                + (a - 1.0) * jnp.log(y) + (b - 1.0) * jnp.log1p(-y))

    def init(y, trials):
        y = np.asarray(y, float)
        m = float(np.mean(y))
        return np.array([np.log(np.clip(m * (1 - m) / _sd(y) ** 2 - 1.0, 0.5, 1e4))])

    def simulate(key, eta, trials, fp):
        # y = G_a / (G_a + G_b), on the log scale so that tiny shapes stay finite
        a, b = shapes(eta, fp)
        k1, k2 = jax.random.split(key)
        log_a = _log_gamma_draw(k1, a, jnp.shape(a))
        log_b = _log_gamma_draw(k2, b, jnp.shape(b))
        return jnp.exp(log_a - jnp.logaddexp(log_a, log_b))

    def variance(eta, fp):
        mu = link.linkinv(eta)
        return mu * (1 - mu) / (1 + fp["phi"])

    def weight(eta, trials, fp):
        a, b = shapes(eta, fp)
        info_mu = jnp.square(fp["phi"]) * (polygamma(1, a) + polygamma(1, b))
        return _glm_weight(link, eta, 1.0 / info_mu)

    return Family(
        "beta", link, ("logit", "probit", "cloglog", "cauchit"), loglik,
        natural_params=lambda phi: {"phi": jnp.exp(phi[0])}, init_params=init,
        validate=_validate_unit_interval, simulate=simulate,
        mean=lambda eta, fp: link.linkinv(eta), variance=variance, fisher_weight=weight,
        param_names=("phi",))


# ----------------------------------------------------------------------------- student
def _student(link: Link) -> Family:
    """Student-t response with location ``mu = g^{-1}(eta)``, scale ``sigma``, ``nu`` df.

    Parameters
    ----------
    link : Link
        ``identity`` (default), ``log`` or ``inverse``.

    Returns
    -------
    Family
        Family parameters ``sigma = exp(phi[0])`` and ``nu = 1 + exp(phi[1])`` (``nu > 1``
        so that the mean exists; brms's ``gamma(2, 0.1)`` prior on nu belongs to the
        Bayesian fitter, not here).

    Notes
    -----
    With ``z = (y - mu) / sigma``::

        log f(y) = lgamma((nu + 1) / 2) - lgamma(nu / 2) - log(nu pi) / 2 - log(sigma)
                   - (nu + 1) / 2 log(1 + z^2 / nu)

    R's ``dt((y - mu) / sigma, nu, log = TRUE) - log(sigma)``.  ``E[y] = mu``,
    ``Var[y] = sigma^2 nu / (nu - 2)`` for ``nu > 2`` (infinite otherwise); expected
    information of eta ``(nu + 1) / ((nu + 3) sigma^2) (dmu/deta)^2``.
    """
    def loglik(y, eta, trials, fp):
        sigma, nu = fp["sigma"], fp["nu"]
        z = (y - link.linkinv(eta)) / sigma
        return (gammaln(0.5 * (nu + 1)) - gammaln(0.5 * nu) - 0.5 * jnp.log(nu * jnp.pi)
                - jnp.log(sigma) - 0.5 * (nu + 1) * jnp.log1p(z * z / nu))

    def simulate(key, eta, trials, fp):
        # t = Z / sqrt(chi2_nu / nu) with chi2_nu = 2 Gamma(nu / 2)
        mu = link.linkinv(eta)
        nu = fp["nu"]
        k1, k2 = jax.random.split(key)
        z = jax.random.normal(k1, jnp.shape(mu), dtype=_FLOAT)
        log_g = _log_gamma_draw(k2, 0.5 * nu, jnp.shape(mu))
        return mu + fp["sigma"] * z * jnp.exp(0.5 * (jnp.log(0.5 * nu) - log_g))

    def variance(eta, fp):
        nu = fp["nu"]
        v = jnp.square(fp["sigma"]) * nu / jnp.where(nu > 2, nu - 2, 1.0)
        return jnp.broadcast_to(jnp.where(nu > 2, v, jnp.inf), jnp.shape(eta))

    def weight(eta, trials, fp):
        nu = fp["nu"]
        return _glm_weight(link, eta, jnp.square(fp["sigma"]) * (nu + 3) / (nu + 1))

    return Family(
        "student", link, ("identity", "log", "inverse"), loglik,
        natural_params=lambda phi: {"sigma": jnp.exp(phi[0]), "nu": 1.0 + jnp.exp(phi[1])},
        init_params=lambda y, trials: np.array([np.log(_sd(y)), np.log(9.0)]),
        validate=lambda y, trials: _validate_finite("student", y), simulate=simulate,
        mean=lambda eta, fp: link.linkinv(eta), variance=variance, fisher_weight=weight,
        param_names=("sigma", "nu"))


#: name -> (factory, default link)
FACTORIES = {
    "Gamma": (_gamma, "log"),
    "lognormal": (_lognormal, "identity"),
    "beta": (_beta, "logit"),
    "student": (_student, "identity"),
}
