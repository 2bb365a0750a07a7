"""The cumulative (proportional-odds) ordinal family.

``y`` holds category codes ``0 .. K-1`` (as floats).  With ordered thresholds
``theta_0 < ... < theta_{K-2}`` and the link's inverse ``F`` as the latent CDF,

    ``P(Y <= j) = F(theta_j - eta)``,   ``P(Y = j) = F(theta_j - eta) - F(theta_{j-1} - eta)``

(``theta_{-1} = -inf``, ``theta_{K-1} = +inf``), the parameterisation of ``ordinal::clmm``
and brms.  Thresholds replace the intercept (``has_intercept=False``).  Registers itself on
import.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .base import Family, _dmu_deta, _is_integer_valued, _log1mexp
from .links import Link

_FLOAT = jnp.result_type(float)
_NEG_TINY = -1e-100


def thresholds_from_phi(phi):
    """``theta_0 = phi[0]``, ``theta_j = theta_{j-1} + exp(phi[j])``: ordered for any phi."""
    phi = jnp.asarray(phi)
    steps = jnp.concatenate([jnp.zeros(1, phi.dtype), jnp.cumsum(jnp.exp(phi[1:]))])
    return phi[0] + steps


def _n_categories(y) -> int:
    """K = max code + 1; at least 3 (a binary response is a bernoulli)."""
    y = np.asarray(y, float)
    if y.size == 0 or not np.all(np.isfinite(y)):
        raise ValueError("cumulative response must be finite category codes 0..K-1")
    if np.any(y < 0) or not _is_integer_valued(y):
        raise ValueError("cumulative response must hold whole-number category codes 0..K-1")
    k = int(np.max(y)) + 1
    if k < 3:
        raise ValueError(f"cumulative needs at least 3 ordered categories, found {k}; "
                         "a binary response is a bernoulli family")
    return k


_SYMMETRIC = ("logit", "probit", "cauchit")  # F(-x) = 1 - F(x)
_MEDIAN = {"cloglog": float(np.log(np.log(2.0)))}  # F^{-1}(1/2); 0 for the symmetric links


def _padded(thr):
    """Lower and upper bounds of each category: ``(theta_{j-1}, theta_j)`` for ``j = 0..K-1``.

    The infinite end points are replaced by finite dummies (``theta_0 - 1`` and
    ``theta_{K-2} + 1``) so that every branch stays finite for ``jnp.where``'s gradients;
    the end categories are recognised by their index instead.
    """
    return (jnp.concatenate([thr[:1] - 1.0, thr]), jnp.concatenate([thr, thr[-1:] + 1.0]))


def _interval_log_prob(link: Link, lo, hi, first, last):
    """``log(F(hi) - F(lo))`` elementwise, with ``lo = -inf`` where ``first`` and
    ``hi = +inf`` where ``last`` (the finite dummies there are ignored).

    In the lower half (``lo + hi`` below twice the median of ``F``) this is
    ``log F(hi) + log1mexp(log F(lo) - log F(hi))``; in the upper half
    ``log S(lo) + log1mexp(log S(hi) - log S(lo))`` with ``S = 1 - F``, so neither tail loses
    digits.  For symmetric ``F`` one call of ``log F`` serves both (``S(x) = F(-x)``).
    """
    median = _MEDIAN.get(link.name, 0.0)
    lower = jnp.where(first, True, jnp.where(last, False, lo + hi < 2.0 * median))
    x = jnp.stack([jnp.where(lower, hi, lo), jnp.where(lower, lo, hi)])
    if link.name in _SYMMETRIC:
        logs = link.log_mu(jnp.where(lower, x, -x))
    else:
        logs = jnp.where(lower, link.log_mu(x), link.log1m_mu(x))
    big, small = logs[0], logs[1]
    inner = big + _log1mexp(jnp.minimum(small - big, _NEG_TINY))
    return jnp.where(first | last, big, inner)


def _all_log_probs(link: Link, eta, thr):
    """``log P(Y = j)`` for every category: shape ``eta.shape + (K,)``."""
    lo, hi = _padded(thr)
    eta = jnp.asarray(eta)[..., None]
    j = jnp.arange(thr.shape[0] + 1)
    return _interval_log_prob(link, lo - eta, hi - eta, j == 0, j == thr.shape[0])


def _cumulative(link: Link) -> Family:
    """Cumulative ordinal family: ``P(Y <= j) = F(theta_j - eta)``.

    Parameters
    ----------
    link : Link
        ``logit`` (default), ``probit``, ``cloglog`` or ``cauchit``: ``F = g^{-1}``.

    Returns
    -------
    Family
        ``has_intercept=False``.  ``phi`` has length ``K - 1``: ``theta_0 = phi[0]`` and
        ``theta_j - theta_{j-1} = exp(phi[j])``; ``natural_params`` returns
        ``{"thresholds": theta}``.  ``init_params`` sets ``theta_j = F^{-1}(P_hat(Y <= j))``
        from the empirical cumulative proportions (``K = max code + 1 >= 3``).
        ``category_probs(eta, fparams)`` gives the ``(..., K)`` category probabilities;
        ``mean`` is the expected 0-based code ``sum_j j P(Y = j)``, ``variance`` its variance.

    Notes
    -----
    For codes ``y = 0..K-1``::

        log f(y) = log(F(theta_y - eta) - F(theta_{y-1} - eta))

    Expected information of eta: ``sum_j (f(theta_{j-1} - eta) - f(theta_j - eta))^2 / P(Y=j)``
    with ``f = F'``.
    """
    def loglik(y, eta, trials, fp):
        thr = fp["thresholds"]
        y, eta = jnp.broadcast_arrays(jnp.asarray(y), jnp.asarray(eta))
        k = thr.shape[0] + 1
        onehot = (y[..., None] == jnp.arange(k)).astype(eta.dtype)  # gather without scatter
        lo, hi = _padded(thr)
        return _interval_log_prob(link, onehot @ lo - eta, onehot @ hi - eta, y < 0.5,
                                  y > k - 1.5)

    def category_probs(eta, fp):
        return jnp.exp(_all_log_probs(link, eta, fp["thresholds"]))

    def moments(eta, fp):
        p = category_probs(eta, fp)
        j = jnp.arange(p.shape[-1], dtype=p.dtype)
        m = jnp.sum(p * j, -1)
        return m, jnp.sum(p * jnp.square(j - m[..., None]), -1)

    def init(y, trials):
        k = _n_categories(y)
        y = np.asarray(y, float)
        cum = np.clip(np.array([np.mean(y <= j) for j in range(k - 1)]), 1e-4, 1 - 1e-4)
        thr = np.asarray(link.linkfun(jnp.asarray(cum)), float)
        return np.concatenate([thr[:1], np.log(np.maximum(np.diff(thr), 1e-3))])

    def validate(y, trials):
        k = _n_categories(y)
        missing = np.setdiff1d(np.arange(k), np.unique(np.asarray(y, float)).astype(int))
        if missing.size:
            raise ValueError(f"cumulative response has no observations in categories "
                             f"{missing.tolist()} of 0..{k - 1}; their thresholds are not "
                             "identified (recode the categories without gaps)")

    def simulate(key, eta, trials, fp):
        # latent Y* = eta + e with e ~ F (inverse-CDF draw), Y = #{j : theta_j < Y*}
        eta = jnp.asarray(eta)
        u = jax.random.uniform(key, jnp.shape(eta), dtype=_FLOAT, minval=1e-15,
                               maxval=1.0 - 1e-15)
        latent = eta + link.linkfun(u)
        return jnp.sum(latent[..., None] > fp["thresholds"], -1).astype(_FLOAT)

    def weight(eta, trials, fp):
        thr = fp["thresholds"]
        lo, hi = _padded(thr)
        eta = jnp.asarray(eta)[..., None]
        j = jnp.arange(thr.shape[0] + 1)
        dens_lo = jnp.where(j == 0, 0.0, _dmu_deta(link, lo - eta))
        dens_hi = jnp.where(j == thr.shape[0], 0.0, _dmu_deta(link, hi - eta))
        lp = _all_log_probs(link, eta[..., 0], thr)
        return jnp.sum(jnp.square(dens_lo - dens_hi) * jnp.exp(-jnp.maximum(lp, -700.0)), -1)

    return Family(
        "cumulative", link, ("logit", "probit", "cloglog", "cauchit"), loglik,
        natural_params=lambda phi: {"thresholds": thresholds_from_phi(phi)},
        init_params=init, validate=validate, simulate=simulate,
        mean=lambda eta, fp: moments(eta, fp)[0],
        variance=lambda eta, fp: moments(eta, fp)[1],
        fisher_weight=weight, has_intercept=False, param_names=("thresholds",),
        category_probs=category_probs, response="ordered", response_scale_priors=False)


#: name -> (factory, default link)
FACTORIES = {"cumulative": (_cumulative, "logit")}
