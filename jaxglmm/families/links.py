"""Link functions: eta = g(mu) and mu = g^{-1}(eta), written to be stable in float64 and float32."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr, ndtr, ndtri


@dataclass(frozen=True)
class Link:
    """A link function.  ``linkinv`` maps the linear predictor to the mean."""

    name: str
    linkfun: Callable[[jnp.ndarray], jnp.ndarray]
    linkinv: Callable[[jnp.ndarray], jnp.ndarray]
    # log(mu) and log(1 - mu) for links onto (0, 1): stable in the tails.
    log_mu: Callable[[jnp.ndarray], jnp.ndarray] | None = None
    log1m_mu: Callable[[jnp.ndarray], jnp.ndarray] | None = None

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"Link({self.name})"


def _cloglog_inv(eta):
    return -jnp.expm1(-jnp.exp(eta))


LINKS: dict[str, Link] = {
    "identity": Link("identity", lambda mu: mu, lambda eta: eta),
    "log": Link("log", jnp.log, jnp.exp),
    "logit": Link("logit", jax.scipy.special.logit, jax.nn.sigmoid,
                  jax.nn.log_sigmoid, lambda eta: jax.nn.log_sigmoid(-eta)),
    "probit": Link("probit", ndtri, ndtr, log_ndtr, lambda eta: log_ndtr(-eta)),
    "cloglog": Link("cloglog", lambda mu: jnp.log(-jnp.log1p(-mu)), _cloglog_inv,
                    lambda eta: jnp.log(_cloglog_inv(eta)), lambda eta: -jnp.exp(eta)),
    "cauchit": Link("cauchit", lambda mu: jnp.tan(jnp.pi * (mu - 0.5)),
                    lambda eta: 0.5 + jnp.arctan(eta) / jnp.pi,
                    lambda eta: jnp.log(0.5 + jnp.arctan(eta) / jnp.pi),
                    lambda eta: jnp.log(0.5 - jnp.arctan(eta) / jnp.pi)),
    "inverse": Link("inverse", lambda mu: 1.0 / mu, lambda eta: 1.0 / eta),
    "sqrt": Link("sqrt", jnp.sqrt, jnp.square),
}


def get_link(name: str) -> Link:
    try:
        return LINKS[name]
    except KeyError:
        raise ValueError(f"unknown link {name!r}; choose one of {sorted(LINKS)}") from None
