"""Count families beyond Poisson: negative binomial, zero-inflated and hurdle counts.

Each family registers itself in :data:`jaxglmm.families.FAMILIES` on import (the import sits
at the end of :mod:`jaxglmm.families`).  Densities follow brms's definitions; the negative
binomial is R's ``dnbinom(y, size = shape, mu = mu)`` (NB2, ``Var = mu + mu^2 / shape``).

The zero-inflated and hurdle families read their probability (``zi``, ``hu``) from
``fparams`` and only broadcast it against ``y``, so a per-observation array (from a future
``zi ~`` / ``hu ~`` formula) works as well as the intercept-only scalar of ``natural_params``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betaln, gammaln

from .base import (Family, _dmu_deta, _glm_weight, _log1mexp, _log_gamma_draw, _log_mu, _logit,
                   _pois_lpmf, _validate_counts, _xlogy0, _ylogy_ratio)
from .links import Link

COUNT_LINKS = ("log", "identity", "sqrt")
_FLOAT = jnp.result_type(float)
# Keeps log(1 - p0) finite (and its gradient) when p0 rounds to 1.
_NEG_TINY = -1e-100


# ----------------------------------------------------------------------------- count kernels
@dataclass(frozen=True)
class _Count:
    """A count distribution in terms of ``mu`` (and ``log mu``), shared by the wrappers.

    ``lpmf(y, mu, log_mu, fp)``, ``log_p0(mu, log_mu, fp)`` (log P(y = 0)),
    ``var(mu, fp)``, ``sample(key, mu, fp)`` and ``sample_positive(key, mu, fp)`` (draws
    from the zero-truncated distribution).  ``param_names`` / ``natural`` / ``init`` describe
    the kernel's own parameters, which come first in ``phi``.
    """

    name: str
    param_names: tuple[str, ...]
    natural: Callable
    init: Callable
    lpmf: Callable
    log_p0: Callable
    var: Callable
    sample: Callable
    sample_positive: Callable


def _ztp_sample(key, mu):
    """Exact zero-truncated Poisson draws.

    The first arrival ``t`` of a unit-rate Poisson process, conditioned on ``t < mu``, is a
    truncated exponential; the remaining arrivals in ``(t, mu]`` are Poisson(``mu - t``).
    So ``y = 1 + Poisson(mu - t)`` with ``t = -log(1 - u (1 - exp(-mu)))``.
    """
    k1, k2 = jax.random.split(key)
    u = jax.random.uniform(k1, jnp.shape(mu), dtype=_FLOAT)
    t = -jnp.log1p(u * jnp.expm1(-mu))
    rest = jax.random.poisson(k2, jnp.maximum(mu - t, 0.0), jnp.shape(mu))
    return 1.0 + rest.astype(_FLOAT)


def _pois_positive(key, mu, fp):
    return _ztp_sample(key, mu)


POISSON = _Count(
    "poisson", (), lambda phi: {}, lambda y: np.zeros(0),
    lpmf=lambda y, mu, log_mu, fp: _pois_lpmf(y, log_mu, mu),
    log_p0=lambda mu, log_mu, fp: -mu,
    var=lambda mu, fp: mu,
    sample=lambda key, mu, fp: jax.random.poisson(key, mu, jnp.shape(mu)).astype(_FLOAT),
    sample_positive=_pois_positive)


def _nb_logs(log_mu, shape):
    """``log(k / (k + mu))`` and ``log(mu / (k + mu))`` via softplus (no cancellation)."""
    d = log_mu - jnp.log(shape)
    return -jax.nn.softplus(d), -jax.nn.softplus(-d)


def _nb_lpmf(y, mu, log_mu, fp):
    k = fp["shape"]
    log_p, log_q = _nb_logs(log_mu, k)
    # log C(y + k - 1, y): the gammaln difference cancels catastrophically for a large shape
    # (about 1e-3 wrong at 1e12), the beta form is exact there but off by ~1e-6 for small
    # arguments in jax, so each is used where it is accurate.
    small = gammaln(y + k) - gammaln(k) - gammaln(y + 1.0)
    large = -betaln(jnp.maximum(k, 1.0), y + 1.0) - jnp.log(y + k)
    log_choose = jnp.where(k > 1e4, large, small)
    return log_choose + k * log_p + _xlogy0(y, log_q)


def _nb_log_p0(mu, log_mu, fp):
    return fp["shape"] * _nb_logs(log_mu, fp["shape"])[0]


def _nb_sample(key, mu, fp):
    """Gamma-Poisson mixture: ``lambda ~ Gamma(shape, rate = shape / mu)``, ``y ~ Poisson``."""
    k1, k2 = jax.random.split(key)
    k = jnp.broadcast_to(fp["shape"], jnp.shape(mu))
    lam = jnp.exp(_log_gamma_draw(k1, k, jnp.shape(mu))) * mu / k
    return jax.random.poisson(k2, lam, jnp.shape(mu)).astype(_FLOAT)


def _nb_positive(key, mu, fp, max_rounds: int = 200):
    """Zero-truncated NB draws.

    Given ``lambda ~ Gamma(k, rate = k / mu)`` the count is Poisson, and
    ``P(y > 0 | lambda) = 1 - exp(-lambda)``: so ``lambda`` is drawn from its law given
    ``y > 0`` by rejection, then ``y`` from the exact zero-truncated Poisson.  For
    ``mu > 1`` the proposal is the Gamma itself (accepted with probability
    ``1 - exp(-lambda)``, overall ``1 - p0``); for ``mu <= 1`` it is the size-biased
    ``Gamma(k + 1, k / mu)`` (accepted with probability ``(1 - exp(-lambda)) / lambda``,
    overall ``(1 - p0) / mu``, which tends to 1 as ``mu -> 0``).  The worse of the two, at
    ``mu = 1``, is ``1 - (k / (k + 1))^k``: 0.42 at ``shape = 0.5``, 0.30 at 0.2.  After
    ``max_rounds`` proposals an element still unaccepted (only for very small shapes) keeps
    its last proposal, i.e. is approximate.
    """
    shape = jnp.shape(mu)
    k = jnp.broadcast_to(fp["shape"], shape)
    biased = mu <= 1.0

    def propose(key):
        k1, k2 = jax.random.split(key)
        lam = jnp.exp(_log_gamma_draw(k1, jnp.where(biased, k + 1.0, k), shape)) * mu / k
        p_pos = -jnp.expm1(-lam)
        p_acc = jnp.where(biased, p_pos / jnp.maximum(lam, 1e-300), p_pos)
        return lam, jax.random.uniform(k2, shape, dtype=_FLOAT) < p_acc

    def cond(state):
        _, _, done, i = state
        return jnp.logical_and(~jnp.all(done), i < max_rounds)

    def body(state):
        key, lam, done, i = state
        key, sub = jax.random.split(key)
        new, accept = propose(sub)
        return key, jnp.where(done, lam, new), done | accept, i + 1

    start = (key, jnp.ones(shape, _FLOAT), jnp.zeros(shape, bool), 0)
    key, lam, _, _ = jax.lax.while_loop(cond, body, start)
    return _ztp_sample(key, jnp.maximum(lam, 1e-300))


def _nb_init(y) -> np.ndarray:
    """Method of moments: ``Var = m + m^2 / shape``; shape 100 when not overdispersed."""
    y = np.asarray(y, float)
    m, v = float(np.mean(y)), float(np.var(y))
    shape = m * m / (v - m) if v > 1.05 * m and m > 0 else 100.0
    return np.array([np.log(np.clip(shape, 1e-2, 1e4))])


NEGBINOMIAL = _Count(
    "negbinomial", ("shape",), lambda phi: {"shape": jnp.exp(phi[0])}, _nb_init,
    lpmf=_nb_lpmf, log_p0=_nb_log_p0,
    var=lambda mu, fp: mu + mu * mu / fp["shape"],
    sample=_nb_sample, sample_positive=_nb_positive)


def _nb_deviance(y, mu, trials, fp):
    """MASS's ``negative.binomial(theta)$dev.resids``: 2 [y log(y / mu) - (y + k)
    log((y + k) / (mu + k))]."""
    y, k = np.asarray(y, float), float(np.asarray(fp["shape"]))
    return 2.0 * (_ylogy_ratio(y, mu) - (y + k) * np.log((y + k) / (mu + k)))


# ----------------------------------------------------------------------------- negbinomial
def _negbinomial(link: Link) -> Family:
    """Negative binomial (NB2, gamma-Poisson) counts.

    Parameters
    ----------
    link : Link
        ``log`` (default), ``identity`` or ``sqrt``; ``mu = g^{-1}(eta)``.

    Returns
    -------
    Family
        Family parameter ``shape = exp(phi[0])``; whole-number counts required.

    Notes
    -----
    With ``k = shape``::

        log f(y) = lgamma(y + k) - lgamma(k) - log(y!) + k log(k / (k + mu))
                   + y log(mu / (k + mu))

    R's ``dnbinom(y, size = shape, mu = mu, log = TRUE)``.  ``E[y] = mu``,
    ``Var[y] = mu + mu^2 / shape``; expected information of eta
    ``(dmu/deta)^2 / (mu + mu^2 / shape)``, which is ``mu / (1 + mu / shape)`` for the log
    link.
    """
    nb = NEGBINOMIAL

    def loglik(y, eta, trials, fp):
        return nb.lpmf(y, link.linkinv(eta), _log_mu(link, eta), fp)

    return Family(
        "negbinomial", link, COUNT_LINKS, loglik,
        natural_params=nb.natural, init_params=lambda y, trials: nb.init(y),
        validate=lambda y, trials: _validate_counts("negbinomial", y),
        simulate=lambda key, eta, trials, fp: nb.sample(key, link.linkinv(eta), fp),
        mean=lambda eta, fp: link.linkinv(eta),
        variance=lambda eta, fp: nb.var(link.linkinv(eta), fp),
        fisher_weight=lambda eta, trials, fp: _glm_weight(link, eta, nb.var(link.linkinv(eta), fp)),
        param_names=nb.param_names,
        mustart=lambda y, trials: y + (y == 0) / 6.0,   # MASS's negative.binomial()$initialize
        unit_deviance=_nb_deviance)


# ----------------------------------------------------------------------------- wrappers
def _split_phi(count: _Count, phi, extra: str):
    """Kernel parameters first, then the zero/hurdle probability (logit scale)."""
    m = len(count.param_names)
    return {**count.natural(phi[:m]), extra: jax.nn.sigmoid(phi[m])}


def _zero_or(key, mu, fp, p_zero, sample):
    """A structural zero with probability ``p_zero``, else a draw ``sample(key, mu, fp)``."""
    k1, k2 = jax.random.split(key)
    zero = jax.random.bernoulli(k1, jnp.broadcast_to(p_zero, jnp.shape(mu)))
    return jnp.where(zero, 0.0, sample(k2, mu, fp))


def _zero_fraction(y) -> float:
    return float(np.mean(np.asarray(y, float) == 0))


def _zero_inflated(count: _Count) -> Callable[[Link], Family]:
    name = f"zero_inflated_{count.name}"

    def factory(link: Link) -> Family:
        """Zero-inflated counts (brms).

        Parameters
        ----------
        link : Link
            ``log`` (default), ``identity`` or ``sqrt``; ``mu = g^{-1}(eta)``.

        Returns
        -------
        Family
            Family parameters: the count's own (``shape = exp(phi[0])`` for NB), then
            ``zi = sigmoid(phi[-1])``.  ``fparams["zi"]`` may also be an array
            broadcastable to ``y``.  ``fisher_weight`` is None (no closed form).

        Notes
        -----
        With ``f`` the count pmf of mean ``mu`` (Poisson, or NB2 with ``shape``)::

            P(y = 0) = zi + (1 - zi) f(0),     P(y) = (1 - zi) f(y)  for y > 0

        ``E[y] = (1 - zi) mu``, ``Var[y] = (1 - zi) V(mu) + zi (1 - zi) mu^2``.
        """
        def loglik(y, eta, trials, fp):
            mu, log_mu = link.linkinv(eta), _log_mu(link, eta)
            zi = fp["zi"]
            log_zi, log1m_zi = jnp.log(zi), jnp.log1p(-zi)
            lp0 = log1m_zi + count.log_p0(mu, log_mu, fp)
            lp = log1m_zi + count.lpmf(y, mu, log_mu, fp)
            return jnp.where(y == 0, jnp.logaddexp(log_zi, lp0), lp)

        def init(y, trials):
            # excess zeros over a Poisson with the same mean
            y = np.asarray(y, float)
            p0_pois = np.exp(-max(float(np.mean(y)), 1e-8))
            zi = (_zero_fraction(y) - p0_pois) / max(1.0 - p0_pois, 1e-8)
            return np.append(count.init(y), _logit(np.clip(zi, 0.05, 0.9)))

        def simulate(key, eta, trials, fp):
            return _zero_or(key, link.linkinv(eta), fp, fp["zi"], count.sample)

        def variance(eta, fp):
            mu, zi = link.linkinv(eta), fp["zi"]
            return (1 - zi) * count.var(mu, fp) + zi * (1 - zi) * mu * mu

        return Family(
            name, link, COUNT_LINKS, loglik,
            natural_params=lambda phi: _split_phi(count, phi, "zi"), init_params=init,
            validate=lambda y, trials: _validate_counts(name, y), simulate=simulate,
            mean=lambda eta, fp: (1 - fp["zi"]) * link.linkinv(eta), variance=variance,
            param_names=count.param_names + ("zi",), dpar_links=(("zi", jax.nn.sigmoid),))
    return factory


def _hurdle(count: _Count) -> Callable[[Link], Family]:
    name = f"hurdle_{count.name}"

    def factory(link: Link) -> Family:
        """Hurdle counts (brms): a zero part and a zero-truncated count part.

        Parameters
        ----------
        link : Link
            ``log`` (default), ``identity`` or ``sqrt``; ``mu = g^{-1}(eta)``.

        Returns
        -------
        Family
            Family parameters: the count's own (``shape = exp(phi[0])`` for NB), then
            ``hu = sigmoid(phi[-1])``; ``fparams["hu"]`` may be per observation.

        Notes
        -----
        With ``f`` the count pmf of mean ``mu`` (Poisson, or NB2 with ``shape``)::

            P(y = 0) = hu,     P(y) = (1 - hu) f(y) / (1 - f(0))  for y > 0

        With ``p0 = f(0)`` and ``V = V(mu)``: ``E[y] = (1 - hu) mu / (1 - p0)``,
        ``Var[y] = (1 - hu) (V + mu^2) / (1 - p0) - E[y]^2``.  Expected information of
        eta: ``(1 - hu) Var_trunc(y) (dmu/deta)^2 / V^2`` (the truncated count is an
        exponential family in ``theta`` with ``dtheta/dmu = 1/V``).
        """
        def moments(eta, fp):
            mu = link.linkinv(eta)
            lp0 = jnp.minimum(count.log_p0(mu, _log_mu(link, eta), fp), _NEG_TINY)
            p_pos = -jnp.expm1(lp0)
            v = count.var(mu, fp)
            m_t = mu / p_pos
            return mu, v, m_t, (v + mu * mu) / p_pos - m_t * m_t

        def loglik(y, eta, trials, fp):
            mu, log_mu = link.linkinv(eta), _log_mu(link, eta)
            lp0 = jnp.minimum(count.log_p0(mu, log_mu, fp), _NEG_TINY)
            hu = fp["hu"]
            pos = jnp.log1p(-hu) + count.lpmf(y, mu, log_mu, fp) - _log1mexp(lp0)
            return jnp.where(y == 0, jnp.log(hu) + jnp.zeros_like(pos), pos)

        def init(y, trials):
            y = np.asarray(y, float)
            pos = y[y > 0]
            own = count.init(pos if pos.size > 1 else y)
            return np.append(own, _logit(np.clip(_zero_fraction(y), 0.02, 0.98)))

        def simulate(key, eta, trials, fp):
            return _zero_or(key, link.linkinv(eta), fp, fp["hu"], count.sample_positive)

        def mean(eta, fp):
            return (1 - fp["hu"]) * moments(eta, fp)[2]

        def variance(eta, fp):
            mu, v, m_t, var_t = moments(eta, fp)
            hu = fp["hu"]
            return (1 - hu) * (var_t + m_t * m_t) - jnp.square((1 - hu) * m_t)

        def weight(eta, trials, fp):
            mu, v, m_t, var_t = moments(eta, fp)
            return (1 - fp["hu"]) * var_t * jnp.square(_dmu_deta(link, eta) / v)

        return Family(
            name, link, COUNT_LINKS, loglik,
            natural_params=lambda phi: _split_phi(count, phi, "hu"), init_params=init,
            validate=lambda y, trials: _validate_counts(name, y), simulate=simulate,
            mean=mean, variance=variance, fisher_weight=weight,
            param_names=count.param_names + ("hu",), dpar_links=(("hu", jax.nn.sigmoid),))
    return factory


#: name -> (factory, default link)
FACTORIES = {"negbinomial": (_negbinomial, "log")}
for _count in (POISSON, NEGBINOMIAL):
    FACTORIES[f"zero_inflated_{_count.name}"] = (_zero_inflated(_count), "log")
    FACTORIES[f"hurdle_{_count.name}"] = (_hurdle(_count), "log")
