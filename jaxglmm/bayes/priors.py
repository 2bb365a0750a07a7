"""Priors, with brms's defaults.

A prior is written as brms writes it, ``"student_t(3, 0, 2.5)"``, ``"normal(0, 5)"``,
``"lkj(1)"``, ``"flat"``, and is set by class or by name:

* ``Intercept``: the intercept of the *centred* predictors (as brms), per linear predictor;
  for cumulative models, each threshold of the centred predictors.
* ``b``: every slope; ``b_<name>`` one slope (``b_Days``, ``b_period[2]``).
* ``sd``: every random-effect SD (a half distribution); ``sd_<group>`` one grouping factor.
* ``cor``: the LKJ prior on correlation matrices (``lkj(eta)``).
* family parameters by name: ``sigma``, ``shape``, ``phi``, ``nu``, ``zi``, ``hu``.

Defaults follow brms 2.18: ``student_t(3, m, s)`` on the intercept and ``student_t(3, 0, s)``
on SDs and sigma, with ``m = link(median(y))`` and ``s = max(2.5, link(mad(y)))`` (one
decimal) for identity and log links, else ``m = 0, s = 2.5`` (checked against
``brms::get_prior`` on sleepstudy, grouseticks and wine); flat slopes; ``lkj(1)``;
``gamma(0.01, 0.01)`` on shape and precision parameters, ``gamma(2, 0.1)`` on ``nu``,
``beta(1, 1)`` on ``zi`` and ``hu``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from .._lazy import scipy_special as special

# name: (number of arguments, log-density kernel(x, *args) with the terms that depend on x,
# log normaliser(*args) on the host).  The kernel runs inside compiled samplers with the
# arguments as data; the normaliser is a constant there, computed once per fit.
_DISTS = {
    "normal": (2, lambda x, m, s: -0.5 * jnp.square((x - m) / s),
               lambda m, s: -math.log(s) - 0.5 * math.log(2 * math.pi)),
    "student_t": (3, lambda x, df, m, s: -0.5 * (df + 1) * jnp.log1p(jnp.square((x - m) / s) / df),
                  lambda df, m, s: math.lgamma(0.5 * (df + 1)) - math.lgamma(0.5 * df)
                  - 0.5 * math.log(df * math.pi) - math.log(s)),
    "cauchy": (2, lambda x, m, s: -jnp.log1p(jnp.square((x - m) / s)),
               lambda m, s: -math.log(math.pi * s)),
    "exponential": (1, lambda x, r: -r * x, lambda r: math.log(r)),
    "gamma": (2, lambda x, a, b: (a - 1) * jnp.log(x) - b * x,
              lambda a, b: a * math.log(b) - math.lgamma(a)),
    "beta": (2, lambda x, a, b: (a - 1) * jnp.log(x) + (b - 1) * jnp.log1p(-x),
             lambda a, b: math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)),
    "lkj": (1, None, None),
    "flat": (0, lambda x: jnp.zeros_like(x), lambda: 0.0),
}
_HALF = {"normal", "student_t", "cauchy"}


def _mass_above_zero(dist: str, args) -> float:
    """P(X > 0) for the untruncated location-scale prior (the half prior's renormaliser)."""
    loc, scale = args[-2], args[-1]
    if dist == "normal":
        return float(special.ndtr(loc / scale))
    if dist == "cauchy":
        return 0.5 + math.atan(loc / scale) / math.pi
    return float(special.stdtr(args[0], loc / scale))


def kernel(dist: str, x, args):
    """The x-dependent part of a prior's log density, ``args`` possibly traced."""
    fn = _DISTS[dist][1]
    if fn is None:
        raise ValueError(f"{dist} is a prior on correlation matrices only")
    return fn(x, *(args[i] for i in range(_DISTS[dist][0])))


def log_normalizer(prior: "Prior", half: bool = False) -> float:
    """The constant part of a prior's log density (renormalised over x > 0 for a half
    prior, as brms does)."""
    fn = _DISTS[prior.dist][2]
    if fn is None:
        raise ValueError(f"{prior} is a prior on correlation matrices only")
    c = fn(*prior.args)
    if half and prior.dist in _HALF:
        c -= math.log(_mass_above_zero(prior.dist, prior.args))
    return c


def lkj_log_normalizer(eta: float, q: int) -> float:
    """Log normaliser of the LKJ(eta) density of a q x q correlation Cholesky factor."""
    dm1 = q - 1
    alpha = eta + 0.5 * dm1
    multigamma = 0.25 * dm1 * (dm1 - 1) * math.log(math.pi) + sum(
        math.lgamma(alpha - 0.5 + 0.5 * (1 - j)) for j in range(1, dm1 + 1))
    return -(0.5 * dm1 * math.log(math.pi) + multigamma - dm1 * math.lgamma(alpha))


@dataclass(frozen=True)
class Prior:
    """A prior distribution as brms writes it."""

    dist: str
    args: tuple[float, ...] = ()

    def __str__(self) -> str:
        if self.dist == "flat":
            return "(flat)"
        return f"{self.dist}({', '.join(_fmt(a) for a in self.args)})"

    def log_prob(self, x, half: bool = False):
        """Log density at ``x``; ``half=True`` for a parameter bounded below by 0 (the
        density is renormalised over the positive half, as brms does)."""
        return kernel(self.dist, x, self.args) + log_normalizer(self, half)


def parse_prior(text: str | Prior) -> Prior:
    """``"student_t(3, 0, 2.5)"`` -> :class:`Prior`.  Errors name the problem."""
    if isinstance(text, Prior):
        return text
    s = str(text).strip()
    if s in ("flat", "(flat)", ""):
        return Prior("flat")
    m = re.fullmatch(r"([a-z_]+)\s*\((.*)\)", s)
    if not m:
        raise ValueError(f"cannot read prior {text!r}; write it as brms does, e.g. 'normal(0, 5)'")
    name, body = m.group(1), m.group(2)
    if name not in _DISTS:
        raise ValueError(f"unknown prior distribution {name!r} in {text!r}; "
                         f"choose one of {sorted(_DISTS)}")
    try:
        args = tuple(float(a) for a in body.split(",")) if body.strip() else ()
    except ValueError:
        raise ValueError(f"prior {text!r} has a non-numeric argument") from None
    if len(args) != _DISTS[name][0]:
        raise ValueError(f"prior {name} takes {_DISTS[name][0]} arguments, got {len(args)} in {text!r}")
    return Prior(name, args)


def _fmt(v: float) -> str:
    return f"{v:g}"


def _mad(x) -> float:
    x = np.asarray(x, float)
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def _round1(v: float) -> float:
    return float(np.round(v, 1))


def response_scale(y, link: str) -> tuple[float, float]:
    """brms's (location, scale) for intercept and scale priors: the link applied to the
    response's median and MAD (identity and log links), one decimal, scale at least 2.5."""
    y = np.asarray(y, float)
    if link not in ("identity", "log") or y.size == 0:
        return 0.0, 2.5
    fn = (lambda v: v) if link == "identity" else (lambda v: np.log(v) if v > 0 else -np.inf)
    loc, scale = fn(np.median(y)), fn(_mad(y))
    loc = _round1(loc) if np.isfinite(loc) else 0.0
    scale = max(2.5, _round1(scale)) if np.isfinite(scale) else 2.5
    return loc, scale


FAMILY_PARAM_DEFAULTS = {
    "shape": "gamma(0.01, 0.01)",
    "phi": "gamma(0.01, 0.01)",
    "nu": "gamma(2, 0.1)",
    "zi": "beta(1, 1)",
    "hu": "beta(1, 1)",
}


def default_priors(problem) -> dict[str, Prior]:
    """brms's default priors for a problem (:class:`~jaxglmm.core.problem.Problem`)."""
    fam = problem.family
    d = problem.design
    if not fam.response_scale_priors:
        loc, scale = 0.0, 2.5
    else:
        y = d.y if d.trials is None else d.y / np.maximum(d.trials, 1)
        loc, scale = response_scale(y, fam.link.name)
    pri = {
        "Intercept": Prior("student_t", (3.0, loc, scale)),
        "b": Prior("flat"),
        "sd": Prior("student_t", (3.0, 0.0, scale)),
        "cor": Prior("lkj", (1.0,)),
    }
    for p in fam.param_names:
        if p == "sigma":
            pri["sigma"] = Prior("student_t", (3.0, 0.0, scale))
        elif p in FAMILY_PARAM_DEFAULTS:
            pri[p] = parse_prior(FAMILY_PARAM_DEFAULTS[p])
    return pri


def resolve_priors(problem, user: dict | None) -> dict[str, Prior]:
    """Defaults overridden by the user's priors (by class or by name); unknown names are
    errors, so a typo never silently leaves a default in place."""
    pri = default_priors(problem)
    valid = set(pri) | {f"b_{n}" for n in problem.design.fixef_names} \
        | {f"sd_{t.group}" for t in problem.design.terms} | set(problem.family.param_names)
    for key, value in (user or {}).items():
        if key not in valid:
            raise ValueError(f"no parameter or class {key!r} to set a prior on; "
                             f"choose from {sorted(valid)}")
        p = parse_prior(value)
        if key == "cor" and p.dist != "lkj":
            raise ValueError("the prior on correlations must be lkj(eta)")
        if key != "cor" and p.dist == "lkj":
            raise ValueError(f"lkj(...) is a prior on correlations, not on {key!r}")
        pri[key] = p
    return pri


def describe(priors: dict[str, Prior]) -> list[str]:
    return [f"{k} ~ {v}" for k, v in priors.items()]


__all__ = ["Prior", "parse_prior", "default_priors", "resolve_priors", "describe"]
