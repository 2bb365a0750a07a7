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

import re
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from jax.scipy import special, stats

_DISTS = {
    # name: (number of arguments, log density(x, *args))
    "normal": (2, lambda x, m, s: stats.norm.logpdf(x, m, s)),
    "student_t": (3, lambda x, df, m, s: stats.t.logpdf(x, df, m, s)),
    "cauchy": (2, lambda x, m, s: stats.cauchy.logpdf(x, m, s)),
    "exponential": (1, lambda x, r: jnp.log(r) - r * x),
    "gamma": (2, lambda x, a, b: stats.gamma.logpdf(x, a, scale=1.0 / b)),
    "beta": (2, lambda x, a, b: stats.beta.logpdf(x, a, b)),
    "lkj": (1, None),
    "flat": (0, lambda x: jnp.zeros_like(x)),
}
_HALF = {"normal", "student_t", "cauchy"}


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
        fn = _DISTS[self.dist][1]
        if fn is None:
            raise ValueError(f"{self} is a prior on correlation matrices only")
        lp = fn(x, *self.args)
        if half and self.dist in _HALF:
            loc = self.args[-2]
            scale = self.args[-1]
            # mass above zero of the untruncated distribution
            if self.dist == "normal":
                above = special.ndtr(loc / scale)
            elif self.dist == "cauchy":
                above = 0.5 + jnp.arctan(loc / scale) / jnp.pi
            else:   # Student-t: P(T > -loc/scale) through the regularized incomplete beta
                df = self.args[0]
                t = -loc / scale
                tail = 0.5 * special.betainc(df / 2.0, 0.5, df / (df + t * t))
                above = jnp.where(t <= 0, 1.0 - tail, tail)
            lp = lp - jnp.log(above)
        return lp


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


def default_priors(model) -> dict[str, Prior]:
    """brms's default priors for a :class:`~jaxglmm.model.Model`."""
    fam = model.family
    d = model.design
    if fam.name in ("categorical", "cumulative") or fam.name.startswith(("bernoulli", "binomial")):
        loc, scale = 0.0, 2.5
    else:
        y = d.y if d.trials is None else d.y / np.maximum(d.trials, 1)
        loc, scale = response_scale(y, fam.link.name)
    pri = {
        "Intercept": Prior("student_t", (3.0, loc if fam.name != "cumulative" else 0.0, scale)),
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


def resolve_priors(model, user: dict | None) -> dict[str, Prior]:
    """Defaults overridden by the user's priors (by class or by name); unknown names are
    errors, so a typo never silently leaves a default in place."""
    pri = default_priors(model)
    valid = set(pri) | {f"b_{n}" for n in model.design.fixef_names} \
        | {f"sd_{t.group}" for t in model.design.terms} | set(model.family.param_names)
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
