"""Formulas for a family's own parameters (brms's distributional parameters).

``Model("count ~ x + (1 | g)", df, "zero_inflated_poisson", dpars={"zi": "~ z + (1 | g)"})``
models the zero-inflation probability on the logit scale with its own fixed and random
effects, as brms's ``bf(count ~ x + (1 | g), zi ~ z + (1 | g))``.  The parameter becomes a
second linear predictor (channel 1, see :mod:`jaxglmm.design.channels`); its coefficients are named
``zi_<term>`` (brms's ``b_zi_<term>``).  Without a formula the parameter stays a single
family parameter (an intercept on the logit scale).
"""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import jax.numpy as jnp
import numpy as np
from .._lazy import pandas as pd

from ..families import FAMILIES, Family, get_family
from ..formula import parse_formula
from .design import Design


def _rhs(text: str, dpar: str) -> str:
    text = text.strip()
    if "~" in text:
        lhs, rhs = text.split("~", 1)
        if lhs.strip() not in ("", dpar):
            raise ValueError(f"the formula for {dpar!r} must read '{dpar} ~ ...' or '~ ...', "
                             f"got {text!r}")
        return rhs.strip()
    return text


def _families_with(dpar: str) -> list[str]:
    """Registered families whose parameter ``dpar`` can take a formula."""
    return [n for n in FAMILIES if dpar in dict(get_family(n).dpar_links)]


def _has_predictor(family: Family, dpar: str) -> bool:
    """Whether ``family`` already takes ``dpar`` from a linear predictor (a fitted model's
    family, passed again to rebuild the model for one dataset of fit_many)."""
    return ("dpar", dpar) in family.variant


def check_dpars(family: Family, dpars: dict) -> None:
    for name in dpars:
        if name not in dict(family.dpar_links) and not _has_predictor(family, name):
            owners = _families_with(name)
            if not owners:
                known = sorted({p for n in FAMILIES for p, _ in get_family(n).dpar_links})
                raise ValueError(f"no formula can be given for parameter {name!r}; "
                                 f"distributional formulas exist for {known}")
            raise ValueError(f"family {family.name!r} has no parameter {name!r} "
                             f"(it belongs to {owners})")
    if len(dpars) > 1:
        raise ValueError("only one distributional formula is supported per model")


def complete_rows(data: pd.DataFrame, formulas: list[str]) -> tuple[pd.DataFrame, int]:
    """Drop rows with NA in any column that any of the formulas uses, so that the designs of
    all linear predictors describe the same observations."""
    cols = []
    for f in formulas:
        cols += [c for c in parse_formula(f).columns if c in data.columns]
    cols = list(dict.fromkeys(cols))
    keep = data[cols].notna().all(axis=1) if cols else pd.Series(True, index=data.index)
    return data.loc[keep], int((~keep).sum())


def dpar_formula(main: str, dpar: str, text: str) -> str:
    response = main.split("~", 1)[0].strip()
    return f"{response} ~ {_rhs(text, dpar)}"


def combine(main: Design, extra: Design, dpar: str) -> Design:
    """Stack the parameter's design onto the main one as channel 1."""
    X = np.concatenate([main.X, extra.X], axis=1)
    names = tuple(main.fixef_names) + tuple(f"{dpar}_{n}" for n in extra.fixef_names)
    channels = (0,) * main.X.shape[1] + (1,) * extra.X.shape[1]
    terms = tuple(main.terms) + tuple(
        replace(t, names=tuple(f"{dpar}_{n}" for n in t.names), channel=1) for t in extra.terms)
    # each linear predictor keeps its own offset (the main formula's stays in the mean)
    offset = np.stack([main.offset, extra.offset], axis=1)
    return replace(main, X=X, fixef_names=names, terms=terms, offset=offset, n_channels=2,
                   fixef_channels=channels)


@lru_cache(maxsize=None)
def with_dpar_predictor(family: Family, dpar: str) -> Family:
    """The family with its last parameter taken from linear predictor 1 (eta[..., 1])."""
    if _has_predictor(family, dpar):
        return family
    inv = dict(family.dpar_links)[dpar]
    base = family

    def natural(phi):
        fp = base.natural_params(jnp.concatenate([phi, jnp.zeros(1, phi.dtype)]))
        fp.pop(dpar)
        return fp

    def with_param(eta, fp):
        return eta[..., 0], {**fp, dpar: inv(eta[..., 1])}

    def loglik(y, eta, trials, fp):
        e, f = with_param(eta, fp)
        return base.loglik(y, e, trials, f)

    def simulate(key, eta, trials, fp):
        e, f = with_param(eta, fp)
        return base.simulate(key, e, trials, f)

    def mean(eta, fp):
        e, f = with_param(eta, fp)
        return base.mean(e, f)

    def variance(eta, fp):
        e, f = with_param(eta, fp)
        return base.variance(e, f)

    return replace(base, loglik=loglik, natural_params=natural, variance=variance,
                   init_params=lambda y, trials: np.asarray(base.init_params(y, trials))[:-1],
                   simulate=simulate, mean=mean, fisher_weight=None,
                   param_names=tuple(p for p in base.param_names if p != dpar),
                   variant=base.variant + (("dpar", dpar),), dpar_links=())
