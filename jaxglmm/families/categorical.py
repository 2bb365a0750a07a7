"""The categorical family: multinomial logit against a reference category.

With K categories coded 0..K-1 (0 the reference), there are C = K - 1 linear predictors
``eta_c``; with ``eta_0 = 0``::

    P(Y = k) = exp(eta_k) / sum_j exp(eta_j)

The likelihood of one observation depends on all C predictors jointly, so the fitters build
its Laplace system from Hessian-vector products (:mod:`jaxglmm.core.laplace`), and the model
expands the design into one block of coefficients and random effects per category
(:mod:`jaxglmm.design.channels`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .base import Family, _is_integer_valued
from .links import Link


def _with_reference(eta):
    return jnp.concatenate([jnp.zeros(eta.shape[:-1] + (1,), eta.dtype), eta], axis=-1)


def category_probs(eta, fp=None):
    """(..., C) linear predictors -> (..., K) category probabilities."""
    return jax.nn.softmax(_with_reference(eta), axis=-1)


def _categorical(link: Link) -> Family:
    def loglik(y, eta, trials, fp):
        full = _with_reference(eta)
        code = y.astype(jnp.int32)
        return jnp.take_along_axis(full, code[..., None], axis=-1)[..., 0] - \
            jax.nn.logsumexp(full, axis=-1)

    def validate(y, trials):
        y = np.asarray(y, float)
        if not _is_integer_valued(y) or np.any(y < 0):
            raise ValueError("categorical response must be category codes 0..K-1 "
                             "(pass a string/categorical column)")
        if np.unique(y).size < 2:
            raise ValueError("categorical response has fewer than 2 observed categories")

    def simulate(key, eta, trials, fp):
        return jax.random.categorical(key, _with_reference(eta), axis=-1).astype(jnp.float64)

    return Family("categorical", link, ("logit",), loglik, validate=validate,
                  simulate=simulate, mean=lambda eta, fp: category_probs(eta),
                  response="unordered", per_category=True, response_scale_priors=False)


#: name -> (factory, default link)
FACTORIES = {"categorical": (_categorical, "logit")}
