"""Likelihood-ratio tests of nested models, lme4's ``anova.merMod``."""
from __future__ import annotations

import warnings

import numpy as np
from .._lazy import pandas as pd

from ..methods import get_method
from ..model import fit_problem

COLUMNS = ["npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df", "Pr(>Chisq)"]


def anova(*fits, names=None, refit: bool = True, **named) -> pd.DataFrame:
    """The likelihood-ratio table of likelihood fits of one dataset, as lme4's
    ``anova(fit0, fit1, ...)``: rows ordered by the number of parameters, columns npar,
    AIC, BIC, logLik, deviance, Chisq, Df and Pr(>Chisq) (each test against the row
    above).

    ``refit``: REML fits are refitted by ML first, with a warning, as lme4 does;
    ``refit=False`` compares them as fitted (lme4's ``refit = FALSE``: REML criteria, which
    compare only fits with the same fixed effects, so other fixed effects are refused).  A
    row whose model is not nested in the row above's (or is of another family or link) gets
    AIC, BIC and logLik but no test (Chisq, Df and Pr(>Chisq) NaN), with a warning and the
    reason in ``attrs["notes"]`` (lme4 tests them anyway).  Fits to different rows or
    responses are refused.  Rows are named by keyword (``anova(m0=a, m1=b)``, as lme4 names
    them by the arguments), else by ``names``, else ``model1``, ``model2``... in the order
    given; ``attrs["formulas"]`` maps them to the formulas."""
    if len(fits) == 1 and isinstance(fits[0], (list, tuple)):
        fits = tuple(fits[0])
    if named:
        if names is not None:
            raise ValueError("give row names either by keyword (anova(m0=a, m1=b)) or by "
                             "names=, not both")
        names = [f"model{k + 1}" for k in range(len(fits))] + list(named)
        fits = tuple(fits) + tuple(named.values())
    if len(fits) < 2:
        raise ValueError("anova compares two or more fits of nested models; got "
                         f"{len(fits)}")
    names = [f"model{k + 1}" for k in range(len(fits))] if names is None else list(names)
    if len(names) != len(fits) or len(set(names)) != len(names):
        raise ValueError(f"names must be {len(fits)} distinct labels, got {names}")
    for name, f in zip(names, fits):
        if not hasattr(f, "problem") or not hasattr(f, "loglik"):
            raise TypeError(f"{name} is not a fit (got {type(f).__name__})")
        if getattr(f, "draws", None) is not None or f.loglik is None:
            raise ValueError(f"{name} is a {f.method!r} fit: anova compares likelihood fits "
                             "(ml, laplace, agq; reml fits are refitted by ml)")
    _same_rows(fits, names)
    reml = [get_method(f.method).reml for f in fits]
    if any(reml) and refit:
        warnings.warn("refitting model(s) with ML (instead of REML)", UserWarning, stacklevel=2)
        fits = tuple(fit_problem(f.problem, f.spec, get_method(f.method).ml_refit) if r else f
                     for f, r in zip(fits, reml))
    elif any(reml):
        _reml_comparable(fits, names, reml)
    order = sorted(range(len(fits)), key=lambda k: fits[k].df)       # stable: ties as given
    fits = [fits[k] for k in order]
    names = [names[k] for k in order]
    notes = {}
    for (a, na), (b, nb) in zip(zip(fits, names), zip(fits[1:], names[1:])):
        why = _other_family(a, b) or _not_nested(a, b)
        if why:
            notes[nb] = f"{na} is not nested in {nb}: {why}; compare them by AIC and BIC"
    if notes:
        warnings.warn("no likelihood-ratio test for non-nested models: "
                      + "; ".join(notes.values()), UserWarning, stacklevel=2)
    ll = np.array([f.loglik for f in fits], float)
    npar = np.array([f.df for f in fits])
    tested = np.array([k > 0 and names[k] not in notes for k in range(len(fits))])
    chisq = np.concatenate([[np.nan], 2.0 * np.maximum(0.0, np.diff(ll))])
    df = np.concatenate([[np.nan], np.diff(npar).astype(float)])
    chisq, df = np.where(tested, chisq, np.nan), np.where(tested, df, np.nan)
    with np.errstate(invalid="ignore"):
        from scipy.stats import chi2  # loads when first used (import time)
        p = np.where(df > 0, chi2.sf(chisq, np.where(df > 0, df, 1)), np.nan)
    table = pd.DataFrame({"npar": npar, "AIC": [f.aic for f in fits],
                          "BIC": [f.bic for f in fits], "logLik": ll, "deviance": -2.0 * ll,
                          "Chisq": chisq, "Df": df, "Pr(>Chisq)": p},
                         index=pd.Index(names), columns=COLUMNS)
    table.attrs["formulas"] = {n: f.spec.formula for n, f in zip(names, fits)}
    table.attrs["notes"] = notes
    table.attrs["refit"] = bool(refit and any(reml))
    return table


def _reml_comparable(fits, names, reml) -> None:
    """refit=False: REML criteria compare only REML fits with the same fixed effects."""
    if not all(reml):
        ml = [n for n, r in zip(names, reml) if not r]
        raise ValueError(f"refit=False compares fits as fitted, but {ml} are not REML fits "
                         "while others are: a REML criterion and a likelihood are not "
                         "comparable (use refit=True)")
    X0 = np.asarray(fits[0].problem.design.X, float)
    for name, f in zip(names[1:], fits[1:]):
        X = np.asarray(f.problem.design.X, float)
        if X.shape != X0.shape or not (_spans(X, X0) and _spans(X0, X)):
            raise ValueError(f"refit=False: {names[0]} and {name} have different fixed "
                             "effects, and REML criteria compare only fits with the same "
                             "fixed effects (use refit=True: ML refits)")


def _other_family(a, b) -> str:
    fa, fb = a.problem.family, b.problem.family
    if (fa.name, fa.link.name) != (fb.name, fb.link.name):
        return (f"they are of different families or links ({fa.name}({fa.link.name}) and "
                f"{fb.name}({fb.link.name}))")
    return ""


def _same_rows(fits, names) -> None:
    d0 = fits[0].problem.design
    for name, f in zip(names[1:], fits[1:]):
        d = f.problem.design
        if d.nobs != d0.nobs:
            raise ValueError(f"models were not all fitted to the same rows: {names[0]} has "
                             f"{d0.nobs} observations, {name} {d.nobs}")
        same = (np.array_equal(np.asarray(d.row_index), np.asarray(d0.row_index))
                and np.allclose(np.asarray(d.y, float), np.asarray(d0.y, float))
                and np.allclose(np.asarray(d.weights, float), np.asarray(d0.weights, float)))
        if not same:
            raise ValueError(f"models were not all fitted to the same rows and response: "
                             f"{name} differs from {names[0]}")


def _spans(big: np.ndarray, small: np.ndarray) -> bool:
    """Whether every column of ``small`` lies in the column space of ``big``."""
    if small.shape[1] == 0:
        return True
    if big.shape[1] == 0:
        return False
    coef, *_ = np.linalg.lstsq(big, small, rcond=None)
    resid = small - big @ coef
    return bool(np.all(np.linalg.norm(resid, axis=0) <= 1e-8 * (1.0 + np.linalg.norm(small, axis=0))))


def _not_nested(small, big, both: bool = True) -> str:
    """Why ``small`` is not a special case of ``big`` ("" when it is): its fixed-effect
    columns must lie in ``big``'s, and each random term's columns in those of ``big``'s
    terms on the same grouping factor (per level)."""
    ds, db = small.problem.design, big.problem.design
    if not _spans(np.asarray(db.X, float), np.asarray(ds.X, float)):
        return "its fixed effects are not within the other's"
    for t in ds.terms:
        same = [u for u in db.terms if u.group == t.group
                and np.array_equal(np.asarray(u.group_index), np.asarray(t.group_index))]
        if not same:
            return f"the other has no random effects for {t.group!r}"
        Zb = np.concatenate([np.asarray(u.Z, float) for u in same], axis=1)
        idx = np.asarray(t.group_index)
        for g in np.unique(idx):
            rows = idx == g
            if not _spans(Zb[rows], np.asarray(t.Z, float)[rows]):
                return f"its random effects for {t.group!r} are not within the other's"
    if both and small.df == big.df and _not_nested(big, small, both=False):
        return "the two have as many parameters but different models"
    return ""
